# `./dev run` (python -m edge.dev.demo): the gateway on the sample config in conf/gateway with its sample backends.
#
# Rules:
# - Everything on loopback. Backends listen where conf/gateway/services.yaml says (127.0.0.1:9001-9004 plain
#   HTTP, 9443 TLS for the passthrough server); Gateway ports are mapped to unprivileged ones:
#   80 → 8080, 443 → 8443, 8443 → 8444.
# - Certificates are made at start with trustme into .demo/ (never committed): the gateway's edge-demo-cert
#   credential (shop.example.com, api.example.com) and the passthrough backend's (secure.example.com), both
#   signed by .demo/ca.pem, which the printed curl lines trust.
# - Ctrl-C (or SIGTERM) stops the gateway (graceful drain) and then the backends, by PID. The children run in
#   their own sessions so a terminal's signal is delivered once, by this runner.
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / ".demo"
CONFIG_DIR = REPO / "conf" / "gateway"
PORT_MAP = "80=8080,443=8443,8443=8444"
BACKENDS = [
    ("--listen", "127.0.0.1:9001=reviews-v1"),
    ("--listen", "127.0.0.1:9002=reviews-v2"),
    ("--listen", "127.0.0.1:9003=reviews-v3"),
    ("--listen", "127.0.0.1:9004=httpbin"),
    ("--listen-tls", "127.0.0.1:9443=secure-backend"),
]
READY_TIMEOUT_S = 30.0

CURL_LINES = """\
edge is serving conf/gateway on 127.0.0.1 (Gateway port 80 → 8080, 443 → 8443, 8443 → 8444). Try:

  curl -H 'Host: shop.example.com' http://127.0.0.1:8080/reviews/1
  curl -H 'Host: shop.example.com' -H 'end-user: jason' http://127.0.0.1:8080/
  curl -i -H 'Host: old.example.com' http://127.0.0.1:8080/gone
  curl --cacert .demo/ca.pem --resolve api.example.com:8443:127.0.0.1 https://api.example.com:8443/v1/headers
  curl --cacert .demo/ca.pem --resolve secure.example.com:8444:127.0.0.1 https://secure.example.com:8444/
  curl http://127.0.0.1:15021/healthz/ready

Ctrl-C stops it.
"""


def make_certificates(directory: Path) -> dict[str, Path]:
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    gateway = ca.issue_cert("shop.example.com", "api.example.com", "*.example.com")
    cred = directory / "credentials" / "edge-demo-cert"
    cred.mkdir(parents=True, exist_ok=True)
    gateway.cert_chain_pems[0].write_to_path(str(cred / "tls.crt"))
    for extra in gateway.cert_chain_pems[1:]:
        extra.write_to_path(str(cred / "tls.crt"), append=True)
    gateway.private_key_pem.write_to_path(str(cred / "tls.key"))
    backend = ca.issue_cert("secure.example.com")
    backend.cert_chain_pems[0].write_to_path(str(directory / "backend.crt"))
    backend.private_key_pem.write_to_path(str(directory / "backend.key"))
    return {"credentials": directory / "credentials", "backend_cert": directory / "backend.crt", "backend_key": directory / "backend.key"}


def _wait(predicate, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"edge demo: {what} exited with {process.returncode}")
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"edge demo: {what} not ready after {READY_TIMEOUT_S:.0f} s")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(process: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge.dev.demo", description=__doc__)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--access-log", default="-", help="access log of the gateway (default: stdout)")
    args = parser.parse_args(argv)
    certs = make_certificates(DEMO_DIR)
    ready_file = DEMO_DIR / "backends.ready.json"
    ready_file.unlink(missing_ok=True)
    backend_args = [part for pair in BACKENDS for part in pair]
    backends = edge = None
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        backends = subprocess.Popen(
            [sys.executable, "-m", "edge.dev.sample_backend", *backend_args, "--tls-cert", str(certs["backend_cert"]), "--tls-key", str(certs["backend_key"]), "--ready-file", str(ready_file)],
            cwd=REPO,
            start_new_session=True,  # Ctrl-C reaches only this runner, which stops its children once
        )
        _wait(ready_file.exists, "the sample backends", backends)
        edge = subprocess.Popen(
            [
                sys.executable, "-m", "edge", "run",
                "--config", str(CONFIG_DIR),
                "--workers", args.workers,
                "--port-map", PORT_MAP,
                "--credentials-dir", str(certs["credentials"]),
                "--access-log", args.access_log,
            ],  # fmt: skip
            cwd=REPO,
            start_new_session=True,  # Ctrl-C reaches only this runner, which stops its children once
        )
        _wait(lambda: _ready("http://127.0.0.1:15021/healthz/ready"), "edge", edge)
        listeners = json.loads(ready_file.read_text())["listeners"]
        names = ", ".join(f"{entry['name']} on {entry['port']}" for entry in listeners)
        print(f"sample backends: {names}", file=sys.stderr)

        print(CURL_LINES, file=sys.stderr, flush=True)
        while not stop["now"] and edge.poll() is None and backends.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(edge)
        _stop(backends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
