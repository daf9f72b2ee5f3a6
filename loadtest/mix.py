# The request mix, defined once: wrk's mix.lua gets it as script arguments, constant_rate.py and the
# locustfile import it, and confgen.py builds the routes (edge VirtualServices, nginx server blocks)
# that make every entry answer 200 on every target.
#
# Hosts and routes of the generated config (confgen.py):
#   api.bench.local       prefix /api/v1/ and prefix /api/v2/   (anything else on this host: 404)
#   www.bench.local       exact / and prefix /static/
#   *.shop.bench.local    any path
#   * (any other host)    any path
# Bodies are ASCII 'x' bytes; POST goes to /api/v1/upload, which the backend reads and discards.
from __future__ import annotations

from dataclasses import dataclass

POST_BODY_BYTES = 1024


@dataclass(frozen=True)
class MixEntry:
    method: str
    host: str
    path: str
    body_bytes: int
    weight: int

    def wrk_arg(self) -> str:
        return f"{self.method}|{self.host}|{self.path}|{self.body_bytes}"

    def request_bytes(self) -> bytes:
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if self.body_bytes:
            head += f"Content-Length: {self.body_bytes}\r\nContent-Type: application/octet-stream\r\n"
        return head.encode("ascii") + b"\r\n" + b"x" * self.body_bytes


MIX: tuple[MixEntry, ...] = (
    MixEntry("GET", "api.bench.local", "/api/v1/items", 0, 3),
    MixEntry("GET", "api.bench.local", "/api/v2/users/42?fields=name", 0, 2),
    MixEntry("POST", "api.bench.local", "/api/v1/upload", POST_BODY_BYTES, 2),
    MixEntry("GET", "www.bench.local", "/", 0, 2),
    MixEntry("GET", "www.bench.local", "/static/app.js", 0, 2),
    MixEntry("GET", "eu.shop.bench.local", "/cart", 0, 1),
    MixEntry("GET", "other.example", "/anything", 0, 1),
)

# The same hosts and paths without the POSTs (`--script mix-get`): every VirtualService and route of the
# generated config is exercised, and nothing depends on how a proxy handles a request body.
MIX_GET: tuple[MixEntry, ...] = tuple(e for e in MIX if e.method == "GET")
SCRIPTS: dict[str, tuple[MixEntry, ...]] = {"mix": MIX, "mix-get": MIX_GET}

# The plain GET used by the default script (report.lua), sent with wrk's default Host.
PLAIN = MixEntry("GET", "127.0.0.1", "/", 0, 1)


def sequence(entries: tuple[MixEntry, ...] = MIX) -> list[MixEntry]:
    """Entries repeated by weight and spread out (smooth weighted round-robin), one cycle."""
    total = sum(e.weight for e in entries)
    current = [0] * len(entries)
    out = []
    for _ in range(total):
        for i, e in enumerate(entries):
            current[i] += e.weight
        best = max(range(len(entries)), key=lambda i: current[i])
        current[best] -= total
        out.append(entries[best])
    return out


def wrk_args(entries: tuple[MixEntry, ...] = MIX) -> list[str]:
    return [e.wrk_arg() for e in sequence(entries)]


if __name__ == "__main__":
    # `python -m loadtest.mix [mix-get]` prints the arguments for running mix.lua by hand:
    #   wrk -t1 -c64 -d10s -s loadtest/wrk/mix.lua http://127.0.0.1:PORT -- $(python -m loadtest.mix)
    import sys

    print(" ".join(wrk_args(SCRIPTS[sys.argv[1] if len(sys.argv) > 1 else "mix"])))
