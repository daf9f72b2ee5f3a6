# The `edge` command as users run it: a subprocess per call, exit codes and messages checked.
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EDGE_BIN = pathlib.Path(sys.executable).parent / "edge"


def edge(*args: str, env: dict | None = None, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", ["conf", "conf/gateway", "conf/examples/bookinfo", "conf/examples/httpbin", "conf/examples/egress"])
def test_check_accepts_the_samples(path):
    # The egress example is served with --gateway-labels istio=egressgateway; under the default labels its
    # Gateway is not selected, which is the one warning checking all of conf may give.
    labels = ("--gateway-labels", "istio=egressgateway") if path.endswith("egress") else ()
    p = edge("check", path, *labels)
    egress = "conf/examples/egress/egressgateway.yaml:6: warning: Gateway default/istio-egressgateway: $.spec.selector:"
    warnings = [line for line in p.stderr.splitlines() if not (path == "conf" and line.startswith(egress))]
    assert p.returncode == 0, p.stderr
    assert warnings == []
    assert p.stdout.startswith(f"{path}: ")
    assert p.stdout.rstrip().endswith("0 errors, 0 warnings: ok") or (path == "conf" and p.stdout.rstrip().endswith("0 errors, 1 warning: ok"))


def test_check_summary_counts_resources():
    p = edge("check", "conf/gateway")
    assert p.stdout == "conf/gateway: 7 files, 1 Gateway, 4 VirtualServices, 1 DestinationRule, 3 ServiceEntries; 3 listeners, 5 clusters; 0 errors, 0 warnings: ok\n"


def test_console_script_is_installed():
    assert EDGE_BIN.exists()
    p = subprocess.run([str(EDGE_BIN), "check", "conf/examples/bookinfo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_check_reports_broken_files_on_stderr_and_fails():
    p = edge("check", "tests/edge/broken/weight-string.yaml")
    assert p.returncode == 1
    assert p.stderr.splitlines()[0] == "tests/edge/broken/weight-string.yaml:14: VirtualService default/reviews: $.spec.http[0].route[0].weight: expected int, got str"
    assert p.stdout.rstrip().endswith("1 error, 0 warnings: FAILED")


def test_check_of_the_whole_broken_directory_lists_every_file():
    p = edge("check", "tests/edge/broken")
    assert p.returncode == 1
    files = {line.split(":")[0] for line in p.stderr.splitlines() if not line.startswith(" ")}
    assert files == {f"tests/edge/broken/{f.name}" for f in (ROOT / "tests/edge/broken").glob("*.yaml")}


def test_warnings_do_not_fail_and_notes_need_verbose(tmp_path):
    (tmp_path / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: lonely}\nspec:\n  hosts: [a.example.com]\n  http:\n  - route: [{destination: {host: a}}]\n"
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
    )
    p = edge("check", str(tmp_path))
    assert p.returncode == 0
    assert p.stderr == f"{tmp_path}/vs.yaml:4: warning: VirtualService default/lonely: $.spec.gateways: no gateways: the VirtualService applies to sidecars (the `mesh` gateway) only and is never bound to a Gateway here; list the Gateway in spec.gateways\n"
    p = edge("check", "-v", str(tmp_path))
    assert f"{tmp_path}/vs.yaml:9: note: skipped Service (v1) (document 2): not a resource edge serves" in p.stderr


def test_dump_prints_the_table_as_sorted_json():
    p = edge("dump", "conf/gateway")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert [listener["name"] for listener in data["listeners"]] == ["0.0.0.0_80", "0.0.0.0_443", "0.0.0.0_8443"]
    assert "outbound|9080|v1|reviews.default.svc.cluster.local" in data["clusters"]
    assert p.stdout == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert edge("dump", "conf/gateway").stdout == p.stdout  # deterministic


def test_dump_fails_on_errors():
    p = edge("dump", "tests/edge/broken/zero-weights.yaml")
    assert (p.returncode, p.stdout) == (1, "")
    assert "tests/edge/broken/zero-weights.yaml:12: VirtualService default/nothing: $.spec.http[0].route: total destination weight = 0" in p.stderr


def test_route_explains_a_match_and_the_routes_before_it():
    p = edge("route", "conf/gateway", "--port", "80", "--host", "shop.example.com", "--path", "/reviews/featured")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "listener 0.0.0.0_80: HTTP, from default/edge-demo"
    assert "  virtual host *.example.com:80 (domains *.example.com, shop.example.com) by exact domain shop.example.com" not in lines
    assert "    skipped VirtualService default/shop http[0] 'jason': header end-user is missing, which does not match exact 'jason'" in lines
    assert "    matched VirtualService default/shop http[1] 'featured' (conf/gateway/shop.yaml:5)" in lines
    assert "          endpoint 127.0.0.1:9003 weight 1 version=v3" in lines


def test_route_with_headers_and_weights():
    p = edge("route", "conf/gateway", "--port", "80", "--host", "shop.example.com", "--path", "/", "--header", "end-user=jason")
    assert "outbound|9080|v2|reviews.default.svc.cluster.local (STATIC, ROUND_ROBIN)" in p.stdout
    p = edge("route", "conf/gateway", "--port", "80", "--host", "shop.example.com", "--path", "/anything")
    assert "80% outbound|9080|v1|reviews.default.svc.cluster.local" in p.stdout
    assert "20% outbound|9080|v3|reviews.default.svc.cluster.local" in p.stdout


def test_route_redirect_and_direct_response():
    p = edge("route", "conf/gateway", "--port", "80", "--host", "old.example.com", "--path", "/a/b?c=d")
    assert "      redirect 301 to https://shop.example.com/a/b?c=d" in p.stdout.splitlines()
    p = edge("route", "conf/gateway", "--port", "80", "--host", "old.example.com", "--path", "/gone")
    assert "direct response 410, body 18 bytes: 'this page is gone\\n'" in p.stdout


def test_route_through_https_and_passthrough():
    p = edge("route", "conf/gateway", "--port", "443", "--host", "api.example.com", "--path", "/v1/headers")
    assert p.returncode == 0
    assert "TLS SIMPLE: terminated with credentialName edge-demo-cert, minimum TLSV1_2" in p.stdout
    assert "rewrite: prefix /v1/ → /" in p.stdout
    p = edge("route", "conf/gateway", "--port", "8443", "--host", "secure.example.com")
    assert p.returncode == 0
    assert "TLS passthrough" in p.stdout and "endpoint 127.0.0.1:9443" in p.stdout
    p = edge("route", "conf/gateway", "--port", "443", "--host", "nope.example.com")
    assert p.returncode == 1
    assert "no filter chain for SNI nope.example.com: the TLS handshake is reset (filter_chain_not_found)" in p.stdout


def test_route_404_explains_why():
    p = edge("route", "conf/examples/bookinfo", "--port", "8080", "--host", "x", "--path", "/nope")
    assert p.returncode == 1
    assert "404 Not Found (NR route_not_found): no route of virtual host *:8080 matches (there is no fallback to other hosts)" in p.stdout
    p = edge("route", "conf/examples/httpbin", "--port", "80", "--host", "other.example.com", "--path", "/status/200")
    assert p.returncode == 1
    assert "404 Not Found (NR route_not_found): no virtual host for other.example.com; hosts served here: httpbin.example.com" in p.stdout
    p = edge("route", "conf/examples/httpbin", "--port", "80", "--host", "httpbin.example.com:31080", "--path", "/status/200")
    assert p.returncode == 0  # the port in Host is ignored (ignore_port_in_host_matching)


def test_route_hints_name_the_unbound_virtual_service(tmp_path):
    (tmp_path / "c.yaml").write_text(
        (ROOT / "conf/examples/httpbin/gateway.yaml").read_text()
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: lost}\nspec:\n  hosts: [lost.example.com]\n  http:\n  - route: [{destination: {host: a}}]\n"
    )
    p = edge("route", str(tmp_path), "--port", "80", "--host", "lost.example.com")
    assert p.returncode == 1
    assert f"hint: VirtualService default/lost ({tmp_path}/c.yaml:16) has host lost.example.com but is not bound to any Gateway (gateways: is empty, so it applies to the mesh only)" in p.stdout
    p = edge("route", str(tmp_path), "--port", "81", "--host", "lost.example.com")
    assert "no listener on port 81 (connection refused); Gateway ports served: 80" in p.stdout


def test_route_with_a_broken_configuration_fails():
    p = edge("route", "tests/edge/broken/bad-regex.yaml", "--port", "80", "--host", "a.example.com")
    assert p.returncode == 1
    assert "the configuration does not compile" in p.stderr


def test_usage_errors_exit_2():
    assert edge().returncode == 2
    assert edge("check").returncode == 2
    assert edge("route", "conf", "--host", "x").returncode == 2  # --port is required
    p = edge("route", "conf", "--port", "80", "--host", "x", "--header", "novalue")
    assert p.returncode == 2 and "--header 'novalue' is not NAME=VALUE" in p.stderr


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--workers", "0"], {}, "edge run: --workers: needs at least 1 worker"),
        ([], {"EDGE_WORKERS": "many"}, "edge run: EDGE_WORKERS: 'many' is not a number"),
        (["--port-map", "80:8080"], {}, "edge run: --port-map: '80:8080' is not GATEWAY_PORT=BOUND_PORT"),
        (["--drain-timeout", "-1"], {}, "edge run: --drain-timeout: '-1' must be a finite number of seconds >= 0"),
        ([], {"EDGE_SHADOW_HOST_SUFFIX": "maybe"}, "edge run: EDGE_SHADOW_HOST_SUFFIX: 'maybe' is not a boolean"),
        (["--gateway-labels", "istio"], {}, "edge run: --gateway-labels: 'istio' is not KEY=VALUE"),
    ],
)
def test_run_rejects_bad_settings_before_starting(args, env, message):
    p = edge("run", *args, env=env)
    assert p.returncode == 2
    assert message in p.stderr


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    p = edge("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"edge {version('edge')}\n"
    assert version("edge") != ""
