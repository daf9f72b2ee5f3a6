"""The per-request cost of RequestAuthentication: one JWT validation (RS256, ES256) against no policy.

    python -m loadtest.bench_jwt [--codec httptools|h11] [--requests N] [--rounds R]

The worker's in-memory hot path of loadtest/bench_hotpath.py (real worker objects, no network) serves the same
keep-alive request three ways, rounds interleaved so that drift on a shared machine hits all alike:
  none   the built-in config, no RequestAuthentication (the token header is sent and ignored);
  RS256  a RequestAuthentication with an inline JWKS of one RSA-2048 key; the request carries a valid token;
  ES256  the same with a P-256 key.
Every request repeats its token, so after the first one RS256 and ES256 are hits of the verified-token cache
(workers/jwt.py, Envoy's jwt_cache_config): time re-checked, no parsing, no signature. RS256-full and ES256-full
are the same with the cache off (tokens longer than the cache takes), the cost of a token seen for the first time:
each request parses the token, checks time, issuer and signature (PyJWT over OpenSSL). Every validated request
removes the Authorization header and sets req.auth. Prints the median µs/request of each and the ratio to none;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jwt as pyjwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from jwt.algorithms import get_default_algorithms  # noqa: E402

from edge.compiler import CompileOptions, load_and_compile  # noqa: E402
from edge.table import encode_table  # noqa: E402
from loadtest import bench_hotpath  # noqa: E402
from workers import jwt as verifier  # noqa: E402

ISSUER = "bench@edge.test"


def variant(alg: str | None) -> tuple[bytes, bytes]:
    """(table payload, request bytes) for one variant."""
    config = bench_hotpath.CONFIG
    if alg is None:
        key = ec.generate_private_key(ec.SECP256R1())
        token = pyjwt.encode({"iss": ISSUER, "sub": "u", "exp": int(time.time()) + 86400}, key, algorithm="ES256")
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(get_default_algorithms()[alg].to_jwk(key.public_key()))
        jwk.update(kid="k1", alg=alg)
        config += (
            "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: istio-system}\n"
            f"spec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{json.dumps({'keys': [jwk]})}'\n"
        )
        token = pyjwt.encode({"iss": ISSUER, "sub": "u", "exp": int(time.time()) + 86400}, key, algorithm=alg, headers={"kid": "k1"})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.yaml")
        with open(path, "w") as f:
            f.write(config)
        _, result = load_and_compile([path], CompileOptions())
    assert result.table is not None, [str(d) for d in result.diagnostics]
    request = bench_hotpath.REQUEST.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n")
    return encode_table(result.table), request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="httptools", choices=["h11", "httptools"])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    rs256, es256 = variant("RS256"), variant("ES256")
    variants = {"none": variant(None), "RS256": rs256, "ES256": es256, "RS256-full": rs256, "ES256-full": es256}
    figures: dict[str, list[float]] = {name: [] for name in variants}
    cacheable = verifier.JWT_CACHE_MAX_TOKEN_BYTES
    for _ in range(args.rounds):
        for name, (payload, request) in variants.items():
            bench_hotpath.REQUEST = request  # what the in-memory client sends
            verifier.JWT_CACHE_MAX_TOKEN_BYTES = 0 if name.endswith("-full") else cacheable
            figures[name].append(trio.run(bench_hotpath.one_round, args.codec, args.requests, payload))
    verifier.JWT_CACHE_MAX_TOKEN_BYTES = cacheable
    base = statistics.median(figures["none"])
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"{name:10s} {median:7.1f} µs/request (median of {len(values)}; min {min(values):.1f}, max {max(values):.1f}); ×{median / base:.2f} of none, +{median - base:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
