# End to end: ServiceEntry `resolution: DNS` / `DNS_ROUND_ROBIN`, resolved by the supervisor (edge/dns.py) and
# published to the workers as addresses.
#
# - The real `python -m edge` with the system resolver, on the one name every machine resolves without a network:
#   an endpoint address `localhost` (/etc/hosts, 127.0.0.1).
# - Everything else through tests/e2e/dns_helper.py: the same CLI and supervisor, with lookups answered from a
#   JSON file this test rewrites (names that do not resolve, answers that change, refreshed every 0.2 s with
#   --dns-refresh-rate). No lookup of these tests reaches a DNS server.
from __future__ import annotations

import json
import re
import time

import pytest

from tests.e2e.harness import PYTHON, REPO_ROOT, EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

HELPER = (PYTHON, str(REPO_ROOT / "tests" / "e2e" / "dns_helper.py"))
REFRESH_S = 0.2

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""


def virtual_service(name: str, host: str, destination: str) -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n"
        f"  hosts: [{host}]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: {destination}}}}}]\n"
    )


def service_entry(name: str, host: str, port: int, resolution: str, endpoints: list[tuple[str, int]] = ()) -> str:
    text = (
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n"
        f"  hosts: [{host}]\n  resolution: {resolution}\n  ports: [{{number: {port}, name: http, protocol: HTTP}}]\n"
    )
    if endpoints:
        text += "  endpoints:\n" + "".join(f"  - {{address: {a}, ports: {{http: {p}}}}}\n" for a, p in endpoints)
    return text


def admin_table(edge: EdgeProcess) -> dict:
    status, body, _ = http_get(edge.admin_port, "/config_dump")
    assert status == 200, body
    return json.loads(body)["table"]


def endpoints_of(edge: EdgeProcess, cluster: str) -> list[tuple[str, int]]:
    return [(e["address"], e["port"]) for e in admin_table(edge)["clusters"][cluster].get("endpoints", [])]


def instance(edge: EdgeProcess, host: str) -> tuple[int, str]:
    status, body, _ = http_get(edge.port(80), "/", host=host)
    return status, (json.loads(body)["instance"] if status == 200 else body.decode())


# ------------------------------------------------------------------------------------- system resolver


def test_localhost_endpoint_is_resolved_by_the_supervisor(tmp_path):
    with SampleBackends(tmp_path, http=["a", "b"]) as backends:
        config = {
            "gw.yaml": GATEWAY,
            "vs.yaml": virtual_service("dns", "dns.example.com", "svc.dns.test") + "---\n" + virtual_service("rr", "rr.example.com", "rr.dns.test"),
            "se.yaml": service_entry("dns", "svc.dns.test", 80, "DNS", [("localhost", backends.port("a"))])
            + "---\n"
            + service_entry("rr", "rr.dns.test", 80, "DNS_ROUND_ROBIN", [("localhost", backends.port("b"))]),
        }
        with EdgeProcess(tmp_path, config, gateway_ports=(80,)) as edge:
            assert re.search(r"^edge: dns: localhost → 127\.0\.0\.1$", edge.log_text(), re.MULTILINE), edge.log_tail()
            # The workers got the address, never the name.
            assert endpoints_of(edge, "outbound|80||svc.dns.test") == [("127.0.0.1", backends.port("a"))]
            assert endpoints_of(edge, "outbound|80||rr.dns.test") == [("127.0.0.1", backends.port("b"))]
            for _ in range(5):
                assert instance(edge, "dns.example.com") == (200, "a")
                assert instance(edge, "rr.example.com") == (200, "b")


# ----------------------------------------------------------------------------------------- fake resolver


@pytest.fixture
def dns_stack(tmp_path):
    answers = tmp_path / "answers.json"

    def set_answers(mapping: dict) -> None:
        tmp = answers.with_suffix(".tmp")
        tmp.write_text(json.dumps(mapping))
        tmp.replace(answers)

    with SampleBackends(tmp_path, http=["web", "ep1", "ep2", "good", "rr"]) as backends:
        p = backends.port
        set_answers({
            "web.dns.test": ["127.0.0.1"],
            "ep1.dns.test": ["127.0.0.1"],
            "ep2.dns.test": ["127.0.0.1"],
            "good.dns.test": ["127.0.0.1"],
            # The first answer has nothing listening: DNS_ROUND_ROBIN uses only it, DNS uses both.
            "rr.dns.test": ["127.0.0.3", "127.0.0.1"],
        })  # fmt: skip
        config = {
            "gw.yaml": GATEWAY,
            "vs.yaml": "---\n".join(
                virtual_service(n, f"{n}.example.com", f"{n}.dns.test") for n in ("web", "multi", "partial", "rr", "all")
            ),
            # No endpoints: the host itself is resolved; its port is the service port.
            "se-web.yaml": service_entry("web", "web.dns.test", p("web"), "DNS"),
            "se-multi.yaml": service_entry("multi", "multi.dns.test", 80, "DNS", [("ep1.dns.test", p("ep1")), ("ep2.dns.test", p("ep2"))]),
            # One endpoint name does not resolve: the other keeps serving.
            "se-partial.yaml": service_entry("partial", "partial.dns.test", 80, "DNS", [("good.dns.test", p("good")), ("missing.dns.test", p("good"))]),
            "se-rr.yaml": service_entry("rr", "rr.dns.test", p("rr"), "DNS_ROUND_ROBIN"),
            "se-all.yaml": service_entry("all", "all.dns.test", 80, "DNS", [("rr.dns.test", p("rr"))]),
        }
        env = {"EDGE_TEST_DNS_FILE": str(answers)}
        args = ("--dns-refresh-rate", str(REFRESH_S))  # Istio's meshConfig.dnsRefreshRate, here 0.2 s
        with EdgeProcess(tmp_path, config, gateway_ports=(80,), program=HELPER, env=env, extra_args=args) as edge:
            yield edge, backends, set_answers


def wait_for(predicate, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_dns_resolution_host_endpoints_failures_and_round_robin(dns_stack):
    edge, backends, _ = dns_stack
    p = backends.port
    # No endpoints: the ServiceEntry host itself, on the service port.
    assert endpoints_of(edge, f"outbound|{p('web')}||web.dns.test") == [("127.0.0.1", p("web"))]
    assert instance(edge, "web.example.com") == (200, "web")
    # Several endpoint names, each resolved.
    assert endpoints_of(edge, "outbound|80||multi.dns.test") == [("127.0.0.1", p("ep1")), ("127.0.0.1", p("ep2"))]
    assert {instance(edge, "multi.example.com")[1] for _ in range(20)} == {"ep1", "ep2"}
    # A name that does not resolve has no endpoint; the cluster serves with the rest, and the log says why.
    assert endpoints_of(edge, "outbound|80||partial.dns.test") == [("127.0.0.1", p("good"))]
    assert all(instance(edge, "partial.example.com") == (200, "good") for _ in range(5))
    assert "edge: dns: missing.dns.test: lookup failed: Name or service not known; it has no endpoints until it resolves" in edge.log_text()
    # DNS uses every address (the dead one is retried away by the default connect-failure retry) …
    assert endpoints_of(edge, "outbound|80||all.dns.test") == [("127.0.0.3", p("rr")), ("127.0.0.1", p("rr"))]
    assert all(instance(edge, "all.example.com") == (200, "rr") for _ in range(6))
    # … DNS_ROUND_ROBIN the first one only, where nothing listens.
    assert endpoints_of(edge, f"outbound|{p('rr')}||rr.dns.test") == [("127.0.0.3", p("rr"))]
    assert instance(edge, "rr.example.com")[0] == 503


def test_changed_answers_are_published_and_failures_keep_the_last_good(dns_stack):
    edge, backends, set_answers = dns_stack
    p = backends.port
    answers = {
        "web.dns.test": ["127.0.0.1"],
        "ep1.dns.test": ["127.0.0.1"],
        "ep2.dns.test": ["127.0.0.1"],
        "good.dns.test": ["127.0.0.1"],
        "rr.dns.test": ["127.0.0.1"],  # the dead address is gone
    }
    log_before = len(edge.log_text())
    set_answers(answers)
    wait_for(lambda: endpoints_of(edge, f"outbound|{p('rr')}||rr.dns.test") == [("127.0.0.1", p("rr"))])
    assert re.search(r"^edge: generation \d+ published: DNS addresses changed$", edge.log_text()[log_before:], re.MULTILINE)
    wait_for(lambda: instance(edge, "rr.example.com") == (200, "rr"))
    # The refresher keeps looking names up; an unchanged answer publishes nothing.
    generation = admin_generation(edge)
    time.sleep(REFRESH_S * 4)
    assert admin_generation(edge) == generation
    # A name that stops resolving keeps its last good addresses.
    set_answers({**answers, "web.dns.test": "SERVFAIL"})
    wait_for(lambda: "edge: dns: web.dns.test: lookup failed: Name or service not known; keeping 127.0.0.1" in edge.log_text())
    assert admin_generation(edge) == generation
    assert endpoints_of(edge, f"outbound|{p('web')}||web.dns.test") == [("127.0.0.1", p("web"))]
    assert instance(edge, "web.example.com") == (200, "web")
    # A name that resolves at last gets its endpoint.
    set_answers({**answers, "missing.dns.test": ["127.0.0.1"]})
    wait_for(lambda: len(endpoints_of(edge, "outbound|80||partial.dns.test")) == 2)


def admin_generation(edge: EdgeProcess) -> int:
    status, body, _ = http_get(edge.admin_port, "/config_dump")
    assert status == 200, body
    return json.loads(body)["generation"]


def test_a_reload_keeps_resolved_names_and_resolves_new_ones(dns_stack):
    edge, backends, _ = dns_stack
    p = backends.port
    edge.write_config("se-web.yaml", service_entry("web", "web.dns.test", p("web"), "DNS", [("ep1.dns.test", p("ep1"))]))
    outcome = edge.reload()
    assert "published" in outcome, outcome
    assert endpoints_of(edge, f"outbound|{p('web')}||web.dns.test") == [("127.0.0.1", p("ep1"))]
    assert instance(edge, "web.example.com") == (200, "ep1")
