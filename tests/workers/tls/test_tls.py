"""workers/tls/ (certs, contexts, sni, transport, listener): SNI chain selection, certificate checks, context building (versions, ciphers, client
certificates, origination SAN rules), rotation of cached contexts, and the ClientHello reader on a real
socket pair. Handshakes run between two SSLObjects over memory BIOs: real OpenSSL, no network."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge.table import FilterChain, ServerTLS, UpstreamTLS
from workers.netio import TransportClosed
from workers.tls.certs import (
    ServerFiles,
    TLSConfigError,
    certificate_pinned,
    certificate_sans,
    client_certificate_failure,
    credential_files,
    dns_name_match,
    files_signature,
    openssl_cipher_names,
    sans_allowed,
    server_files,
    spki_der,
)
from workers.tls.contexts import ENVOY_DEFAULT_CIPHERS, ROTATION_CHECK_INTERVAL_S, TLSContexts, build_server_context, build_upstream_tls_context
from workers.tls.listener import read_client_hello
from workers.tls.sni import SniIndex
from workers.tls.transport import TLSTransport

# ---------------------------------------------------------------------------------------------------------
# SNI → chain


def chains(*server_names: tuple[str, ...]) -> tuple[FilterChain, ...]:
    return tuple(FilterChain(server_names=names) for names in server_names)


PRECEDENCE = chains(
    ("a.example.com",),  # 0
    ("*.example.com",),  # 1
    ("*.b.example.com",),  # 2
    ("*.com", "exact.org"),  # 3
    (),  # 4: catch-all
    (),  # 5: a second catch-all is never chosen
)

SNI_CASES = [
    ("exact", PRECEDENCE, "a.example.com", 0),
    ("exact ignores case", PRECEDENCE, "A.Example.COM", 0),
    ("wildcard", PRECEDENCE, "x.example.com", 1),
    ("longest suffix wins", PRECEDENCE, "x.b.example.com", 2),
    ("wildcard covers deeper names", PRECEDENCE, "x.y.example.com", 1),
    ("*.com covers example.com", PRECEDENCE, "example.com", 3),
    ("exact in a list", PRECEDENCE, "exact.org", 3),
    ("wildcard is not the apex", chains(("*.example.com",), ()), "example.com", 1),
    ("no match → catch-all", PRECEDENCE, "other.net", 4),
    ("no SNI → catch-all", PRECEDENCE, None, 4),
    ("empty SNI → catch-all", PRECEDENCE, "", 4),
    ("no SNI, no catch-all", chains(("a.example.com",)), None, None),
    ("no match, no catch-all", chains(("a.example.com",), ("*.example.org",)), "b.example.com", None),
    ("first chain wins a duplicate name", chains(("dup.example",), ("dup.example",)), "dup.example", 0),
    ("first wildcard wins a duplicate", chains(("*.dup",), ("*.dup",)), "x.dup", 0),
    ("star name is a catch-all", chains(("a",), ("*",)), "zzz", 1),
    ("no chains", (), "a", None),
]


@pytest.mark.parametrize("chains_, sni, expected", [c[1:] for c in SNI_CASES], ids=[c[0] for c in SNI_CASES])
def test_sni_index_precedence(chains_, sni, expected):
    assert SniIndex(chains_).select(sni) == expected


# ---------------------------------------------------------------------------------------------------------
# SANs, pins, cipher names


@pytest.mark.parametrize(
    "cert_name, wanted, ok",
    [
        ("a.example.com", "a.example.com", True),
        ("A.EXAMPLE.com", "a.example.COM", True),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", False),  # one label only
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("a.example.com", "*.example.com", False),  # the configured name is literal
        ("b.example.com", "a.example.com", False),
    ],
)
def test_dns_name_match(cert_name, wanted, ok):
    assert dns_name_match(cert_name, wanted) is ok


@pytest.mark.parametrize(
    "sans, allowed, ok",
    [
        ((("DNS", "a.example.com"),), (), True),  # nothing configured: anything goes
        ((("DNS", "a.example.com"),), ("a.example.com",), True),
        ((("DNS", "*.example.com"),), ("x.example.com",), True),
        ((("DNS", "a.example.com"),), ("b.example.com",), False),
        ((("URI", "spiffe://cluster.local/ns/a/sa/b"),), ("spiffe://cluster.local/ns/a/sa/b",), True),
        ((("URI", "spiffe://cluster.local/ns/a/sa/b"),), ("spiffe://cluster.local/ns/a/sa/c",), False),
        ((("IP Address", "127.0.0.1"), ("DNS", "x")), ("127.0.0.1",), True),
        ((("URI", "*.example.com"),), ("a.example.com",), False),  # wildcards only for DNS SANs
        ((), ("a",), False),
    ],
)
def test_sans_allowed(sans, allowed, ok):
    assert sans_allowed(sans, allowed) is ok


def test_certificate_sans_from_getpeercert_dict():
    decoded = {"subject": ((("commonName", "x"),),), "subjectAltName": (("DNS", "a"), ("URI", "spiffe://b"))}
    assert certificate_sans(decoded) == (("DNS", "a"), ("URI", "spiffe://b"))
    assert certificate_sans(None) == ()
    assert certificate_sans({}) == ()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca):
    return ca.issue_cert("client.example.com")


def der_of(issued: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


def test_spki_der_matches_cryptography(ca, leaf):
    for issued in (leaf, ca.issue_cert("rsa.example", key_type=trustme.KeyType.RSA), ca.issue_cert("ec.example", key_type=trustme.KeyType.ECDSA)):
        der = der_of(issued)
        expected = x509.load_der_x509_certificate(der).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert spki_der(der) == expected


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x05\x30\x03", b"\x02\x01\x00", b"\x30\x84\xff\xff\xff\xff", b"\x30\x80"])
def test_spki_der_malformed_is_none(data):
    assert spki_der(data) is None


def test_spki_der_truncated_certificates_never_raise(leaf):
    der = der_of(leaf)
    for cut in range(0, len(der), 7):
        assert spki_der(der[:cut]) is None or cut == len(der)


def test_certificate_pinned(leaf, ca):
    der = der_of(leaf)
    digest = hashlib.sha256(der).hexdigest()
    colons = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()
    spki = spki_der(der)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    other = der_of(ca.issue_cert("x.example"))
    assert certificate_pinned(der, (), ())
    assert certificate_pinned(der, (digest,), ())
    assert certificate_pinned(der, (colons,), ())
    assert certificate_pinned(der, (), (pin,))
    assert certificate_pinned(der, ("00" * 32,), (pin,))  # either list may match
    assert not certificate_pinned(other, (digest,), (pin,))
    assert not certificate_pinned(der, ("00" * 32,), ())


def test_client_certificate_failure(leaf):
    der = der_of(leaf)
    decoded = {"subjectAltName": (("DNS", "client.example.com"), ("URI", "spiffe://cluster.local/ns/default/sa/client"))}
    mutual = ServerTLS(mode="MUTUAL")
    optional = ServerTLS(mode="OPTIONAL_MUTUAL", subject_alt_names=("client.example.com",))
    assert client_certificate_failure(mutual, None, None) == "client certificate required"
    assert client_certificate_failure(optional, None, None) is None  # no certificate, no SAN check
    assert client_certificate_failure(optional, decoded, der) is None
    assert client_certificate_failure(ServerTLS(mode="MUTUAL", subject_alt_names=("spiffe://cluster.local/ns/default/sa/client",)), decoded, der) is None
    assert "SAN" in client_certificate_failure(ServerTLS(mode="MUTUAL", subject_alt_names=("nope",)), decoded, der)
    assert "pinned" in client_certificate_failure(ServerTLS(mode="MUTUAL", verify_certificate_hash=("00" * 32,)), decoded, der)


@pytest.mark.parametrize(
    "names, expected",
    [
        (["ECDHE-RSA-AES128-GCM-SHA256"], ["ECDHE-RSA-AES128-GCM-SHA256"]),
        (["[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]", "AES128-SHA"],
         ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305", "AES128-SHA"]),
        ([" AES256-SHA ", "AES256-SHA"], ["AES256-SHA"]),
        ([], []),
    ],
)
def test_openssl_cipher_names(names, expected):
    assert openssl_cipher_names(names) == expected


# ---------------------------------------------------------------------------------------------------------
# Files


def write_credential(root: Path, name: str, issued: trustme.LeafCert, ca: trustme.CA | None = None, *, style: str = "tls") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    cert, key, cacert = ("tls.crt", "tls.key", "ca.crt") if style == "tls" else ("cert", "key", "cacert")
    issued.cert_chain_pems[0].write_to_path(str(folder / cert))
    issued.private_key_pem.write_to_path(str(folder / key))
    if ca is not None:
        ca.cert_pem.write_to_path(str(folder / cacert))
    return folder


def test_credential_files_layouts(tmp_path, ca, leaf):
    write_credential(tmp_path, "k8s", leaf, ca)
    write_credential(tmp_path, "generic", leaf, ca, style="generic")
    write_credential(tmp_path, "split", leaf)
    (tmp_path / "split-cacert").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "split-cacert" / "ca.crt"))
    k8s = credential_files(str(tmp_path), "k8s")
    assert (k8s.cert, k8s.key, k8s.ca) == tuple(str(tmp_path / "k8s" / f) for f in ("tls.crt", "tls.key", "ca.crt"))
    generic = credential_files(str(tmp_path), "generic")
    assert (generic.cert, generic.key, generic.ca) == tuple(str(tmp_path / "generic" / f) for f in ("cert", "key", "cacert"))
    assert credential_files(str(tmp_path), "split").ca == str(tmp_path / "split-cacert" / "ca.crt")
    missing = credential_files(str(tmp_path), "missing")
    assert missing.cert == str(tmp_path / "missing" / "tls.crt") and missing.ca == ""
    assert credential_files(None, "k8s").cert == ""


def test_server_files_explicit_paths_win(tmp_path, ca, leaf):
    write_credential(tmp_path, "cred", leaf, ca)
    tls = ServerTLS(mode="MUTUAL", credential_name="cred", ca_file="/etc/other-ca.pem")
    files = server_files(tls, str(tmp_path))
    assert files.cert == str(tmp_path / "cred" / "tls.crt")
    assert files.ca == "/etc/other-ca.pem"
    plain = server_files(ServerTLS(mode="SIMPLE", cert_chain_file="/c", private_key_file="/k"), str(tmp_path))
    assert plain == ServerFiles("/c", "/k", "", "", ())


def test_files_signature_follows_symlink_swaps(tmp_path):
    # The Kubernetes secret volume layout: name -> ..data/name, ..data -> ..<timestamp>/.
    first, second = tmp_path / "..2024_01", tmp_path / "..2024_02"
    for folder, text in ((first, "one"), (second, "two")):
        folder.mkdir()
        (folder / "tls.crt").write_text(text)
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "tls.crt").symlink_to("..data/tls.crt")
    path = str(tmp_path / "tls.crt")
    before = files_signature([path])
    assert files_signature([path]) == before
    tmp_link = tmp_path / "..data_tmp"
    tmp_link.symlink_to(second.name)
    os.replace(tmp_link, tmp_path / "..data")  # the atomic swap kubelet does
    assert files_signature([path]) != before
    assert files_signature([str(tmp_path / "absent")]) == ((str(tmp_path / "absent"), None),)


# ---------------------------------------------------------------------------------------------------------
# Handshakes over memory BIOs


class HandshakeFailed(Exception):
    def __init__(self, side: str, error: ssl.SSLError):
        super().__init__(f"{side}: {error}")
        self.side = side
        self.error = error


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, server_hostname: str | None = None):
    """Run a full handshake between two SSLObjects; (client, server) or HandshakeFailed."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, obj in (("client", client), ("server", server)):
            if done[side]:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                raise HandshakeFailed(side, exc) from None
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server judges the client's certificate after the client is done; make the client
            # read once so a server alert surfaces on its side too.
            server.write(b"x")
            c_in.write(s_out.read())
            try:
                assert client.read(1) == b"x"
            except ssl.SSLError as exc:
                raise HandshakeFailed("client", exc) from None
            return client, server
    raise AssertionError("handshake did not finish")


def client_context(ca: trustme.CA, *, cert: trustme.LeafCert | None = None, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@pytest.fixture
def creds(tmp_path, ca):
    """A credentials dir holding `web` (server cert for web.example.com + the client CA)."""
    write_credential(tmp_path, "web", ca.issue_cert("web.example.com"), ca)
    return tmp_path


def server_ctx(creds: Path, **fields) -> ssl.SSLContext:
    tls = ServerTLS(mode=fields.pop("mode", "SIMPLE"), credential_name="web", **fields)
    return build_server_context(tls, server_files(tls, str(creds)))


def test_simple_serves_credential_with_alpn(creds, ca):
    client, server = handshake(client_context(ca), server_ctx(creds), "web.example.com")
    assert server.selected_alpn_protocol() == "http/1.1"
    assert client.getpeercert()["subjectAltName"] == (("DNS", "web.example.com"),)
    assert server.getpeercert() is None  # SIMPLE asks for no client certificate


@pytest.mark.parametrize(
    "min_version, max_version, client_version, ok",
    [
        ("TLSV1_2", "TLS_AUTO", ssl.TLSVersion.TLSv1_2, True),
        ("TLSV1_2", "TLS_AUTO", ssl.TLSVersion.TLSv1_3, True),
        ("TLSV1_3", "TLS_AUTO", ssl.TLSVersion.TLSv1_2, False),
        ("TLS_AUTO", "TLSV1_2", ssl.TLSVersion.TLSv1_3, False),
        ("TLS_AUTO", "TLSV1_2", ssl.TLSVersion.TLSv1_2, True),
    ],
)
def test_protocol_versions(creds, ca, min_version, max_version, client_version, ok):
    ctx = server_ctx(creds, min_version=min_version, max_version=max_version)
    if ok:
        client, _ = handshake(client_context(ca, version=client_version), ctx, "web.example.com")
        assert client.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[client_version]
    else:
        with pytest.raises(HandshakeFailed):
            handshake(client_context(ca, version=client_version), ctx, "web.example.com")


def test_min_above_max_is_a_config_error(creds):
    with pytest.raises(TLSConfigError, match="above"):
        server_ctx(creds, min_version="TLSV1_3", max_version="TLSV1_2")


def test_cipher_suites_restrict_tls12(creds, ca):
    ctx = server_ctx(creds, cipher_suites=("[ECDHE-ECDSA-AES256-GCM-SHA384|ECDHE-ECDSA-CHACHA20-POLY1305]", "NOT-A-CIPHER"))
    client, _ = handshake(client_context(ca, version=ssl.TLSVersion.TLSv1_2), ctx, "web.example.com")
    assert client.cipher()[0] in ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305")
    default = server_ctx(creds)
    client, _ = handshake(client_context(ca, version=ssl.TLSVersion.TLSv1_2), default, "web.example.com")
    assert client.cipher()[0] in ENVOY_DEFAULT_CIPHERS
    with pytest.raises(TLSConfigError, match="cipher"):
        server_ctx(creds, cipher_suites=("NOT-A-CIPHER",))


def test_mutual_requires_a_client_certificate(creds, ca):
    ctx = server_ctx(creds, mode="MUTUAL")
    with pytest.raises(HandshakeFailed):
        handshake(client_context(ca), ctx, "web.example.com")
    client_cert = ca.issue_cert("client.example.com")
    _, server = handshake(client_context(ca, cert=client_cert), ctx, "web.example.com")
    assert certificate_sans(server.getpeercert()) == (("DNS", "client.example.com"),)


def test_mutual_rejects_a_certificate_from_another_ca(creds, ca):
    stranger = trustme.CA().issue_cert("client.example.com")
    with pytest.raises(HandshakeFailed):
        handshake(client_context(ca, cert=stranger), server_ctx(creds, mode="MUTUAL"), "web.example.com")


def test_optional_mutual(creds, ca):
    ctx = server_ctx(creds, mode="OPTIONAL_MUTUAL")
    _, server = handshake(client_context(ca), ctx, "web.example.com")
    assert server.getpeercert() is None
    _, server = handshake(client_context(ca, cert=ca.issue_cert("c.example")), ctx, "web.example.com")
    assert server.getpeercert() is not None
    with pytest.raises(HandshakeFailed):  # presented, so it must verify
        handshake(client_context(ca, cert=trustme.CA().issue_cert("c.example")), ctx, "web.example.com")


def test_server_context_errors(tmp_path, ca):
    with pytest.raises(TLSConfigError, match="no server certificate"):
        build_server_context(ServerTLS(mode="SIMPLE"), ServerFiles("", "", "", "", ()))
    with pytest.raises(TLSConfigError, match="cannot load certificate"):
        build_server_context(ServerTLS(mode="SIMPLE"), ServerFiles(str(tmp_path / "x.crt"), str(tmp_path / "x.key"), "", "", ()))
    write_credential(tmp_path, "noca", ca.issue_cert("a"))
    tls = ServerTLS(mode="MUTUAL", credential_name="noca")
    with pytest.raises(TLSConfigError, match="caCertificates"):
        build_server_context(tls, server_files(tls, str(tmp_path)))


def test_rsa_and_ecdsa_certificates_together(tmp_path, ca):
    rsa = ca.issue_cert("dual.example", key_type=trustme.KeyType.RSA)
    ec = ca.issue_cert("dual.example", key_type=trustme.KeyType.ECDSA)
    paths = {}
    for name, issued in (("rsa", rsa), ("ec", ec)):
        issued.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.crt"))
        issued.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        paths[name] = (str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"))
    tls = ServerTLS(mode="SIMPLE", cert_chain_file=paths["rsa"][0], private_key_file=paths["rsa"][1], extra_certificates=(paths["ec"],))
    ctx = build_server_context(tls, server_files(tls, None))
    client = client_context(ca, version=ssl.TLSVersion.TLSv1_2)
    client.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    c, _ = handshake(client, ctx, "dual.example")
    assert "ECDSA" in c.cipher()[0]
    client.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    c, _ = handshake(client, ctx, "dual.example")
    assert "RSA" in c.cipher()[0]


# ---------------------------------------------------------------------------------------------------------
# Origination contexts


@pytest.fixture
def upstream_server(ca):
    """A server context for api.example.com (SAN DNS api.example.com)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("api.example.com").configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_file(tmp_path, ca) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.mark.parametrize(
    "fields, server_hostname, ok",
    [
        # no sni, no SANs: auto SAN validation against the Host (= server_hostname)
        ({}, "api.example.com", True),
        ({}, "evil.example.com", False),
        # explicit SANs: those are checked, whatever the SNI
        ({"subject_alt_names": ("api.example.com",)}, "evil.example.com", True),
        ({"subject_alt_names": ("other.example.com",)}, "api.example.com", False),
        ({"subject_alt_names": ("other.example.com", "api.example.com")}, None, True),
        # explicit sni and no SANs: Istio validates only the chain
        ({"sni": "anything.example"}, "anything.example", True),
        # insecureSkipVerify: nothing is checked
        ({"insecure_skip_verify": True, "subject_alt_names": ("nope",)}, "nope", True),
    ],
)
def test_upstream_san_rules(upstream_server, ca_file, fields, server_hostname, ok):
    tls = UpstreamTLS(mode="SIMPLE", ca_file=ca_file, **fields)
    ctx = build_upstream_tls_context(tls, None)
    if ok:
        client, _ = handshake(ctx, upstream_server, server_hostname)
        assert client.selected_alpn_protocol() in (None, "http/1.1")
    else:
        with pytest.raises(HandshakeFailed) as info:
            handshake(ctx, upstream_server, server_hostname)
        assert info.value.side == "client"


def test_upstream_untrusted_ca_fails(upstream_server, tmp_path):
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    ctx = build_upstream_tls_context(UpstreamTLS(mode="SIMPLE", ca_file=str(other)), None)
    with pytest.raises(HandshakeFailed):
        handshake(ctx, upstream_server, "api.example.com")


def test_upstream_l4_context_has_no_host_check(upstream_server, ca_file):
    ctx = build_upstream_tls_context(UpstreamTLS(mode="SIMPLE", ca_file=ca_file), None, for_http=False)
    assert ctx.check_hostname is False and ctx.verify_mode == ssl.CERT_REQUIRED
    handshake(ctx, upstream_server, None)


def test_upstream_mutual_presents_the_credential(tmp_path, ca, upstream_server):
    write_credential(tmp_path, "client", ca.issue_cert("gateway.example"), ca)
    ca.configure_trust(upstream_server)
    upstream_server.verify_mode = ssl.CERT_REQUIRED
    ctx = build_upstream_tls_context(UpstreamTLS(mode="MUTUAL", credential_name="client"), str(tmp_path))
    _, server = handshake(ctx, upstream_server, "api.example.com")
    assert certificate_sans(server.getpeercert()) == (("DNS", "gateway.example"),)
    with pytest.raises(TLSConfigError, match="MUTUAL"):
        build_upstream_tls_context(UpstreamTLS(mode="MUTUAL", ca_file=str(tmp_path / "client" / "ca.crt")), None)


# ---------------------------------------------------------------------------------------------------------
# Rotation


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def served_name(ctx: ssl.SSLContext, ca: trustme.CA) -> int:
    """The serial number of the certificate a fresh handshake gets."""
    client, _ = handshake(client_context(ca), ctx, "web.example.com")
    return int(client.getpeercert()["serialNumber"], 16)


def k8s_secret(root: Path, name: str, issued: trustme.LeafCert, version: int) -> None:
    """Write a new `..<version>` folder and swap `..data` to it, as kubelet updates a secret volume."""
    folder = root / name
    folder.mkdir(exist_ok=True)
    data = folder / f"..v{version}"
    data.mkdir()
    issued.cert_chain_pems[0].write_to_path(str(data / "tls.crt"))
    issued.private_key_pem.write_to_path(str(data / "tls.key"))
    tmp = folder / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, folder / "..data")
    for file in ("tls.crt", "tls.key"):
        if not (folder / file).is_symlink():
            (folder / file).symlink_to(f"..data/{file}")


def serial_of(issued: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number


def test_rotation_on_symlink_swap(tmp_path, ca):
    first, second = ca.issue_cert("web.example.com"), ca.issue_cert("web.example.com")
    k8s_secret(tmp_path, "web", first, 1)
    logs: list[str] = []
    clock = FakeClock()
    contexts = TLSContexts(str(tmp_path), log=logs.append, clock=clock)
    tls = ServerTLS(mode="SIMPLE", credential_name="web")
    old = contexts.server(tls)
    assert served_name(old, ca) == serial_of(first)
    k8s_secret(tmp_path, "web", second, 2)
    assert contexts.server(tls) is old  # not re-checked within the interval
    clock.now += ROTATION_CHECK_INTERVAL_S
    new = contexts.server(tls)
    assert new is not old and served_name(new, ca) == serial_of(second)
    assert served_name(old, ca) == serial_of(first)  # a session on the old context is unaffected
    clock.now += ROTATION_CHECK_INTERVAL_S
    assert contexts.server(tls) is new  # unchanged files: same context
    assert any("reloaded" in line for line in logs)


def test_rotation_keeps_the_old_context_while_files_are_inconsistent(tmp_path, ca):
    first, second = ca.issue_cert("web.example.com"), ca.issue_cert("web.example.com")
    write_credential(tmp_path, "web", first)
    logs: list[str] = []
    clock = FakeClock()
    contexts = TLSContexts(str(tmp_path), log=logs.append, clock=clock)
    tls = ServerTLS(mode="SIMPLE", credential_name="web")
    old = contexts.server(tls)
    # The certificate is replaced first; the key a moment later (a non-atomic writer).
    second.cert_chain_pems[0].write_to_path(str(tmp_path / "web" / "tls.crt"))
    clock.now += ROTATION_CHECK_INTERVAL_S
    assert contexts.server(tls) is old
    assert any("keeping the previous certificate" in line for line in logs)
    second.private_key_pem.write_to_path(str(tmp_path / "web" / "tls.key"))
    clock.now += ROTATION_CHECK_INTERVAL_S
    new = contexts.server(tls)
    assert new is not old and served_name(new, ca) == serial_of(second)


def test_missing_credential_refuses_then_recovers(tmp_path, ca):
    logs: list[str] = []
    clock = FakeClock()
    contexts = TLSContexts(str(tmp_path), log=logs.append, clock=clock)
    tls = ServerTLS(mode="SIMPLE", credential_name="late")
    assert contexts.server(tls) is None
    assert contexts.server(tls) is None
    assert len(logs) == 1 and "refused" in logs[0]
    write_credential(tmp_path, "late", ca.issue_cert("web.example.com"))
    clock.now += ROTATION_CHECK_INTERVAL_S
    assert contexts.server(tls) is not None
    with pytest.raises(TLSConfigError):
        contexts.upstream(UpstreamTLS(mode="SIMPLE", ca_file=str(tmp_path / "absent.pem")))


# ---------------------------------------------------------------------------------------------------------
# The ClientHello on a socket


def client_hello_bytes(server_hostname: str | None) -> bytes:
    ctx = ssl.create_default_context()
    if server_hostname is None:
        ctx.check_hostname = False
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.parametrize(
    "chunks, sni, failure",
    [
        ([client_hello_bytes("a.example.com")], "a.example.com", ""),
        ([bytes([b]) for b in client_hello_bytes("b.example.com")], "b.example.com", ""),  # byte by byte
        ([client_hello_bytes(None)], None, ""),
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], None, "not a TLS ClientHello"),
        ([client_hello_bytes("a.example.com")[:20]], None, "closed before a ClientHello"),
        ([], None, "closed before a ClientHello"),
    ],
)
async def test_read_client_hello(chunks, sni, failure):
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        async def feed():
            for chunk in chunks:
                b.send(chunk)
                await trio.lowlevel.checkpoint()
            b.shutdown(socket.SHUT_WR)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            with trio.fail_after(5):
                read = await read_client_hello(a)
    assert read.failure.startswith(failure)
    if not failure:
        assert read.hello.server_name == sni
        assert read.buffered == b"".join(chunks)
    else:
        assert read.hello is None


async def test_read_client_hello_keeps_bytes_after_the_hello():
    hello = client_hello_bytes("a.example.com")
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        b.send(hello + b"\x17\x03\x03\x00\x01Z")
        with trio.fail_after(5):
            read = await read_client_hello(a)
    assert read.hello.server_name == "a.example.com"
    assert read.buffered == hello + b"\x17\x03\x03\x00\x01Z"  # forwarded as read


# ---------------------------------------------------------------------------------------------------------
# TLSTransport over a socket pair: server and client both TLSTransport (client side for origination)


async def tls_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str | None = "web.example.com"):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    server = TLSTransport(a, server_ctx)
    client = TLSTransport(b, client_ctx, server_side=False, server_hostname=server_hostname)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def read_exactly(transport, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await transport.recv()
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


async def test_tls_transport_full_duplex_large_payloads(creds, ca):
    server, client = await tls_pair(server_ctx(creds), client_context(ca))
    up = os.urandom(3 * 1024 * 1024 + 11)
    down = os.urandom(5 * 1024 * 1024 + 3)
    got = {}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            # four tasks at once: each side writes while it reads (one reader, one writer per transport)
            nursery.start_soon(client.send_all, up)
            nursery.start_soon(server.send_all, down)

            async def read(name, transport, n):
                got[name] = await read_exactly(transport, n)

            nursery.start_soon(read, "server", server, len(up))
            nursery.start_soon(read, "client", client, len(down))
    assert got["server"] == up and got["client"] == down
    assert server.selected_alpn_protocol() == "http/1.1" and server.version() in ("TLSv1.2", "TLSv1.3")
    server.close()
    client.close()


async def test_tls_transport_half_close_with_close_notify(creds, ca):
    server, client = await tls_pair(server_ctx(creds), client_context(ca))
    with trio.fail_after(10):
        await client.send_all(b"request")
        await client.send_eof()  # close_notify + FIN
        assert await read_exactly(server, 7) == b"request"
        assert await server.recv() == b""
        await server.send_all(b"reply after the client's EOF")  # the other direction still works
        await server.send_eof()
        assert await read_exactly(client, 28) == b"reply after the client's EOF"
        assert await client.recv() == b""
    await server.aclose()
    await client.aclose()
    assert server.closed and client.closed


async def test_tls_transport_recv_nowait(creds, ca):
    server, client = await tls_pair(server_ctx(creds), client_context(ca))
    assert server.recv_nowait() is None
    await client.send_all(b"ping")
    with trio.fail_after(5):
        while (data := server.recv_nowait()) is None:
            await trio.sleep(0.001)
    assert data == b"ping"
    client.sock.shutdown(socket.SHUT_WR)  # a bare FIN, no close_notify
    with trio.fail_after(5):
        while (data := server.recv_nowait()) is None:
            await trio.sleep(0.001)
    assert data == b""
    server.close()
    client.close()


async def test_tls_transport_failed_handshake_sends_the_alert(creds, ca):
    """MUTUAL and a client without a certificate: the server's "certificate required" alert reaches the
    client (curl prints it, as in the istio.io task)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    server = TLSTransport(a, server_ctx(creds, mode="MUTUAL"))
    with b, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async def serve():
                with pytest.raises(ssl.SSLError):
                    await server.do_handshake()
                    await server.recv()
                server.close()

            nursery.start_soon(serve)
            client = client_context(ca).wrap_socket(b, server_hostname="web.example.com", do_handshake_on_connect=False)

            def client_side():
                client.settimeout(5)
                client.do_handshake()  # TLS 1.3: completes before the server judges the certificate
                return client.recv(10)

            with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|certificate required"):
                await trio.to_thread.run_sync(client_side)


async def test_tls_transport_peer_reset_is_transport_closed(creds, ca):
    server, client = await tls_pair(server_ctx(creds), client_context(ca))
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()
    with trio.fail_after(5):
        try:
            assert await server.recv() == b""  # a socketpair may report the abort as EOF
        except TransportClosed:
            pass
    server.close()
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")


async def held_pair(creds, ca):
    """A TLS 1.3 pair whose server holds its last flight (the session tickets), as an HTTP listener does."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    server = TLSTransport(a, server_ctx(creds))
    client = TLSTransport(b, client_context(ca, version=ssl.TLSVersion.TLSv1_3), server_side=False, server_hostname="web.example.com")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(server.do_handshake, hold_last_flight=True))
            nursery.start_soon(client.do_handshake)
    return server, client


def tickets_received(client: TLSTransport) -> bool:
    """Whether the client has a resumable session: reading processes the NewSessionTicket records that arrived."""
    client.recv_nowait()
    return client.ssl_object.session is not None and client.ssl_object.session.has_ticket


async def test_held_tickets_leave_with_the_first_send(creds, ca):
    server, client = await held_pair(creds, ca)
    assert server.version() == "TLSv1.3"
    assert server.has_buffered()  # the tickets wait: such a connection is not parked
    assert not tickets_received(client)
    with pytest.raises(BlockingIOError):
        client.sock.recv(1)  # nothing was sent after the server's Finished
    await server.send_all(b"first response")
    with trio.fail_after(5):
        assert await read_exactly(client, 14) == b"first response"
    assert tickets_received(client)
    assert not server.has_buffered()
    server.close()
    client.close()


async def test_held_tickets_leave_before_the_server_waits_for_bytes(creds, ca):
    """A client that waits for its tickets before it speaks is not kept waiting: the first wait flushes them."""
    server, client = await held_pair(creds, ca)
    got = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def serve():
                got.append(await server.recv_waiting())

            nursery.start_soon(serve)
            while not tickets_received(client):
                await trio.sleep(0.005)
            await client.send_all(b"request after the tickets")
    assert got == [b"request after the tickets"]
    server.close()
    client.close()
