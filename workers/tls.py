# TLS in the worker: HTTPS termination with SNI-chosen filter chains, client-certificate checks, TLS
# passthrough dispatch, certificate rotation, and the contexts for TLS origination.
#
# Rules:
# - A TLS listener (PROTO_HTTPS or PROTO_TLS) reads the ClientHello first (workers/sni.py), picks the filter
#   chain by SNI, and only then creates the TLS session, from that chain's own SSLContext, replaying the bytes
#   it read. (An sni_callback that swaps `sslobj.context` is not enough: OpenSSL's SSL_set_SSL_CTX swaps the
#   certificate only, so the verify mode — MUTUAL — and the protocol versions would stay the first context's.)
# - Chain precedence (Envoy filter_chain_match.server_names): exact SNI → the longest "*.suffix" (a.b.c tries
#   "*.b.c", then "*.c") → the first chain with no server names. No SNI: that catch-all chain only. No chain
#   → the connection is closed (Envoy: filter_chain_not_found). Decided by SniIndex, a pure value.
# - A passthrough chain (tls None) splices the raw bytes, hello included (workers/tcp_proxy.py). A
#   terminating chain serves HTTP (route_config, scheme "https", the chain's own router) or splices the
#   decrypted bytes to its tcp route (Gateway protocol TLS + SIMPLE).
# - The ClientHello and the handshake share one deadline: Options.tls_handshake_timeout_s (Istio: 15 s).
# - Terminated sessions run on TLSTransport: an ssl.SSLObject between memory BIOs over the raw non-blocking
#   socket, try-first like workers/netio.py, with the surface of netio's transports plus recv_nowait and a
#   close_notify half-close. Unlike trio.SSLStream it sends the alert of a failed handshake ("certificate
#   required") instead of dropping it. (Requests/s measured on par with trio.SSLStream.)
# - Client certificates (MUTUAL, or OPTIONAL_MUTUAL when one is presented): the chain is verified by OpenSSL
#   against the chain's CA; subjectAltNames (any SAN equal, DNS SANs with a leading "*." wildcard) and the
#   verifyCertificateHash / verifyCertificateSpki pins (either list may match) are checked right after the
#   handshake; a failure closes the connection before any byte is read from it.
# - Rotation: contexts are cached per (settings, ALPN). On use, at most every ROTATION_CHECK_INTERVAL_S, the
#   files the context came from are stat()ed (following symlinks, so Kubernetes' `..data` symlink swap
#   shows as a new inode); a changed signature rebuilds the context. A rebuild that fails (a half-written
#   pair) keeps the previous context and is retried on the next check. Sessions already established keep the
#   context they started with, so existing connections are untouched. No supervisor or table change needed.
# - TLS origination (DestinationRule tls SIMPLE/MUTUAL, Istio's cluster_tls.go): SNI = `sni` or the request
#   Host (auto SNI). The server certificate is verified against `caCertificates` or the system store, then:
#   with subjectAltNames, one SAN must match them; without, and with no `sni`, the Host must match (auto SAN
#   validation); with `sni` and no SANs, only the chain is checked. insecureSkipVerify skips all checks.
#   TCP proxies have no Host: their contexts verify the chain and the SANs only.
from __future__ import annotations

import base64
import errno
import hashlib
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import trio

from edge.table import FilterChain, ServerTLS, UpstreamTLS
from workers.http_proxy import Downstream, serve_http_connection
from workers.netio import FAIRNESS_OPS, TransportClosed
from workers.sni import ClientHello, ClientHelloReader, SNIParseError
from workers.tcp_proxy import new_tcp_log, proxy_socket, proxy_transport
from workers.xfcc import forwarded_client_cert

if TYPE_CHECKING:
    from workers.main import Worker
    from workers.tableview import Compiled, ListenerRuntime

ROTATION_CHECK_INTERVAL_S = 1.0
CLIENT_HELLO_READ_BYTES = 16 * 1024
TRANSPORT_RECV_BYTES = 64 * 1024
HTTP_ALPN = ("http/1.1",)

TLS_VERSIONS = {
    "TLSV1_0": ssl.TLSVersion.TLSv1,
    "TLSV1_1": ssl.TLSVersion.TLSv1_1,
    "TLSV1_2": ssl.TLSVersion.TLSv1_2,
    "TLSV1_3": ssl.TLSVersion.TLSv1_3,
}
DEFAULT_MIN_VERSION = ssl.TLSVersion.TLSv1_2  # TLS_AUTO as a minimum (Envoy server default)
DEFAULT_MAX_VERSION = ssl.TLSVersion.TLSv1_3  # TLS_AUTO as a maximum

# Envoy's default server cipher suites for TLS ≤ 1.2 (TLS 1.3 suites are not configurable, as in BoringSSL).
ENVOY_DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)
# Envoy (BoringSSL) curve names → OpenSSL names.
ECDH_CURVES = {"X25519": "X25519", "P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}

# Files of a credential folder (a Kubernetes TLS or generic Secret mounted as files), first present wins.
CREDENTIAL_CERT_FILES = ("tls.crt", "cert")
CREDENTIAL_KEY_FILES = ("tls.key", "key")
CREDENTIAL_CA_FILES = ("ca.crt", "cacert")
CREDENTIAL_CRL_FILES = ("ca.crl", "crl")
CA_CREDENTIAL_SUFFIX = "-cacert"  # Istio: a separate "<name>-cacert" Secret may hold the client CA


class TLSConfigError(Exception):
    """A TLS setting cannot be turned into a context (missing file, bad PEM, no usable cipher)."""


# ---------------------------------------------------------------------------------------------------------
# SNI → filter chain (pure)
# ---------------------------------------------------------------------------------------------------------


class SniIndex:
    """Envoy's server_names precedence over a listener's filter chains; `select` answers a chain index."""

    __slots__ = ("catch_all", "exact", "suffix")

    def __init__(self, chains: Sequence[FilterChain]):
        self.exact: dict[str, int] = {}
        self.suffix: dict[str, int] = {}  # ".example.com" for "*.example.com"
        self.catch_all = -1
        for index, chain in enumerate(chains):
            if not chain.server_names:
                if self.catch_all < 0:
                    self.catch_all = index
                continue
            for name in chain.server_names:
                name = name.lower()
                if name.startswith("*."):
                    self.suffix.setdefault(name[1:], index)
                elif name == "*":
                    if self.catch_all < 0:
                        self.catch_all = index
                else:
                    self.exact.setdefault(name, index)

    def select(self, server_name: str | None) -> int | None:
        """The chain for this SNI (None when the client sent none), or None: no chain matches."""
        if server_name:
            name = server_name.lower()
            index = self.exact.get(name)
            if index is not None:
                return index
            if self.suffix:
                dot = name.find(".")
                while dot >= 0:
                    index = self.suffix.get(name[dot:])
                    if index is not None:
                        return index
                    dot = name.find(".", dot + 1)
        return self.catch_all if self.catch_all >= 0 else None


# ---------------------------------------------------------------------------------------------------------
# Certificate checks (pure)
# ---------------------------------------------------------------------------------------------------------


def dns_name_match(cert_name: str, wanted: str) -> bool:
    """Envoy's dnsNameMatch: equal ignoring case, or a "*.suffix" certificate name covering one label."""
    cert_name = cert_name.lower()
    wanted = wanted.lower()
    if cert_name == wanted:
        return True
    if cert_name.startswith("*."):
        dot = wanted.find(".")
        return dot > 0 and wanted[dot:] == cert_name[1:]
    return False


def certificate_sans(peer_cert: dict | None) -> tuple[tuple[str, str], ...]:
    """(type, value) SANs of a certificate decoded by SSLObject.getpeercert(): DNS, URI, IP Address, email."""
    if not peer_cert:
        return ()
    return tuple((str(kind), str(value)) for kind, value in peer_cert.get("subjectAltName", ()))


def sans_allowed(sans: Iterable[tuple[str, str]], allowed: Sequence[str]) -> bool:
    """Istio subjectAltNames (Envoy exact SAN matchers): any SAN of the certificate equals one of them;
    DNS SANs may be wildcards."""
    if not allowed:
        return True
    for kind, value in sans:
        for name in allowed:
            if kind == "DNS":
                if dns_name_match(value, name):
                    return True
            elif value == name:
                return True
    return False


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at offset; ValueError when malformed."""
    if offset + 2 > len(data):
        raise ValueError("DER element truncated")
    tag = data[offset]
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("DER element past its end")
    return tag, start, end


def spki_der(cert_der: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo (DER) of an X.509 certificate, None if the certificate is malformed.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
    issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
    """
    try:
        tag, start, _ = _der_element(cert_der, 0)
        if tag != 0x30:
            return None
        tag, offset, tbs_end = _der_element(cert_der, start)
        if tag != 0x30:
            return None
        tag, _, end = _der_element(cert_der, offset)
        if tag == 0xA0:  # explicit version
            offset = end
        for _field in ("serialNumber", "signature", "issuer", "validity", "subject"):
            _, _, offset = _der_element(cert_der, offset)
        tag, _, end = _der_element(cert_der, offset)
        if tag != 0x30 or end > tbs_end:
            return None
        return cert_der[offset:end]
    except ValueError:
        return None


def certificate_pinned(cert_der: bytes, hashes: Sequence[str], spkis: Sequence[str]) -> bool:
    """verifyCertificateHash (hex SHA-256 of the DER, colons and case ignored) or verifyCertificateSpki
    (base64 SHA-256 of the SPKI): with either list set, one entry of either must match."""
    if not hashes and not spkis:
        return True
    if hashes:
        digest = hashlib.sha256(cert_der).hexdigest()
        if any(h.replace(":", "").lower() == digest for h in hashes):
            return True
    if spkis:
        spki = spki_der(cert_der)
        if spki is not None:
            pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
            if pin in spkis:
                return True
    return False


def client_certificate_failure(tls: ServerTLS, peer_cert: dict | None, peer_der: bytes | None) -> str | None:
    """Why a verified handshake must still be refused (SAN or pin mismatch), or None to accept."""
    if peer_der is None:
        # OpenSSL already refused a missing certificate under MUTUAL; OPTIONAL_MUTUAL lets it through.
        return "client certificate required" if tls.mode == "MUTUAL" else None
    if tls.subject_alt_names and not sans_allowed(certificate_sans(peer_cert), tls.subject_alt_names):
        return "client certificate SAN not allowed"
    if not certificate_pinned(peer_der, tls.verify_certificate_hash, tls.verify_certificate_spki):
        return "client certificate hash/SPKI not pinned"
    return None


def openssl_cipher_names(names: Iterable[str]) -> list[str]:
    """Envoy cipherSuites → OpenSSL names: BoringSSL equal-preference groups "[A|B]" become A, B."""
    out: list[str] = []
    for name in names:
        for part in name.strip().strip("[]").split("|"):
            part = part.strip().strip("[]")
            if part and part not in out:
                out.append(part)
    return out


# ---------------------------------------------------------------------------------------------------------
# Files behind a TLS setting
# ---------------------------------------------------------------------------------------------------------


class ServerFiles(NamedTuple):
    cert: str
    key: str
    ca: str
    crl: str
    extra: tuple[tuple[str, str], ...]


class ClientFiles(NamedTuple):
    cert: str
    key: str
    ca: str
    crl: str


def _first_present(folder: str, names: Sequence[str], exists: Callable[[str], bool]) -> str:
    for name in names:
        path = os.path.join(folder, name)
        if exists(path):
            return path
    return ""


def credential_files(credentials_dir: str | None, name: str, exists: Callable[[str], bool] = os.path.exists) -> ClientFiles:
    """The files of credential `name`: `<dir>/<name>/{tls.crt|cert, tls.key|key, ca.crt|cacert, ca.crl|crl}`;
    the CA may also come from `<dir>/<name>-cacert/`. Missing files are "". The compiler admits only Secret names
    (edge/wire.py); a name that could leave the directory is refused here too, as if it named nothing."""
    if not credentials_dir or not name or "/" in name or os.sep in name or name.startswith("."):
        return ClientFiles("", "", "", "")
    folder = os.path.join(credentials_dir, name)
    ca = _first_present(folder, CREDENTIAL_CA_FILES, exists)
    if not ca:
        ca = _first_present(os.path.join(credentials_dir, name + CA_CREDENTIAL_SUFFIX), CREDENTIAL_CA_FILES, exists)
    return ClientFiles(
        cert=_first_present(folder, CREDENTIAL_CERT_FILES, exists) or os.path.join(folder, CREDENTIAL_CERT_FILES[0]),
        key=_first_present(folder, CREDENTIAL_KEY_FILES, exists) or os.path.join(folder, CREDENTIAL_KEY_FILES[0]),
        ca=ca,
        crl=_first_present(folder, CREDENTIAL_CRL_FILES, exists),
    )


def server_files(tls: ServerTLS, credentials_dir: str | None, exists: Callable[[str], bool] = os.path.exists) -> ServerFiles:
    """Explicit paths win over the credential's files, field by field (Istio: credentialName takes the
    certificate; caCertificates may still be given as a file)."""
    cred = credential_files(credentials_dir, tls.credential_name, exists) if tls.credential_name else ClientFiles("", "", "", "")
    cert, key = tls.cert_chain_file, tls.private_key_file
    if tls.credential_name and not (cert and key):
        cert, key = cred.cert, cred.key
    return ServerFiles(cert=cert, key=key, ca=tls.ca_file or cred.ca, crl=tls.crl_file or cred.crl, extra=tls.extra_certificates)


def client_files(tls: UpstreamTLS, credentials_dir: str | None, exists: Callable[[str], bool] = os.path.exists) -> ClientFiles:
    cred = credential_files(credentials_dir, tls.credential_name, exists) if tls.credential_name else ClientFiles("", "", "", "")
    cert, key = tls.client_cert_file, tls.private_key_file
    if tls.credential_name and not (cert and key):
        cert, key = cred.cert, cred.key
    return ClientFiles(cert=cert, key=key, ca=tls.ca_file or cred.ca, crl=tls.crl_file or cred.crl)


def _paths(files: ServerFiles | ClientFiles) -> tuple[str, ...]:
    paths = [files.cert, files.key, files.ca, files.crl]
    if isinstance(files, ServerFiles):
        for cert, key in files.extra:
            paths += [cert, key]
    return tuple(p for p in paths if p)


def files_signature(paths: Sequence[str]) -> tuple:
    """What changes when a file is rewritten or its symlink retargeted: (dev, inode, size, mtime, ctime)."""
    signature = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            signature.append((path, None))
            continue
        signature.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(signature)


# ---------------------------------------------------------------------------------------------------------
# Context building
# ---------------------------------------------------------------------------------------------------------


def _tls_version(name: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    return TLS_VERSIONS.get(name, default)


def _set_ciphers(ctx: ssl.SSLContext, names: Sequence[str], legacy: bool) -> None:
    usable = []
    for name in openssl_cipher_names(names):
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.set_ciphers(name)
        except ssl.SSLError:
            continue  # unknown to OpenSSL: dropped, as Envoy drops invalid names
        usable.append(name)
    if not usable:
        raise TLSConfigError(f"none of the cipher suites {list(names)} is known to OpenSSL")
    spec = ":".join(usable)
    # OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 signatures) at its default security level.
    ctx.set_ciphers(spec + (":@SECLEVEL=0" if legacy else ""))


def _load_error(what: str, path: str, exc: Exception) -> TLSConfigError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return TLSConfigError(f"cannot load {what} {path}: {reason}")


def build_server_context(tls: ServerTLS, files: ServerFiles, alpn: Sequence[str] = HTTP_ALPN) -> ssl.SSLContext:
    """The SSLContext of one terminating filter chain; TLSConfigError when it cannot be built."""
    if not files.cert or not files.key:
        raise TLSConfigError("no server certificate: set serverCertificate/privateKey or credentialName")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # As BoringSSL in Envoy: no TLS 1.2 renegotiation (it would make writes wait for reads).
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    minimum = _tls_version(tls.min_version, DEFAULT_MIN_VERSION)
    maximum = _tls_version(tls.max_version, DEFAULT_MAX_VERSION)
    if minimum > maximum:
        raise TLSConfigError(f"minProtocolVersion {tls.min_version} is above maxProtocolVersion {tls.max_version}")
    legacy = minimum < ssl.TLSVersion.TLSv1_2
    _set_ciphers(ctx, tls.cipher_suites or ENVOY_DEFAULT_CIPHERS, legacy)
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    for cert, key in ((files.cert, files.key), *files.extra):
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise _load_error("certificate/key", f"{cert} / {key}", exc) from None
    if tls.ecdh_curves:
        curve = ECDH_CURVES.get(tls.ecdh_curves[0], tls.ecdh_curves[0])
        try:
            ctx.set_ecdh_curve(curve)
        except (ValueError, ssl.SSLError) as exc:
            raise TLSConfigError(f"unknown ECDH curve {tls.ecdh_curves[0]}: {exc}") from None
    if tls.mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
        if not files.ca:
            raise TLSConfigError(f"{tls.mode} needs caCertificates or a ca.crt in the credential")
        try:
            ctx.load_verify_locations(cafile=files.ca)
        except (OSError, ssl.SSLError) as exc:
            raise _load_error("client CA", files.ca, exc) from None
        if files.crl:
            try:
                ctx.load_verify_locations(cafile=files.crl)
            except (OSError, ssl.SSLError) as exc:
                raise _load_error("CRL", files.crl, exc) from None
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.mode == "MUTUAL" else ssl.CERT_OPTIONAL
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class _SANCheckingSSLObject(ssl.SSLObject):
    """An SSLObject that refuses, right after the handshake, a peer whose SANs are not allowed by its
    context's `subject_alt_names` (Python's ssl has no verify callback)."""

    def do_handshake(self) -> None:
        super().do_handshake()
        context = self.context
        allowed = getattr(context, "subject_alt_names", ())
        if allowed and context.verify_mode != ssl.CERT_NONE and not sans_allowed(certificate_sans(self.getpeercert()), allowed):
            error = ssl.SSLCertVerificationError(1, f"certificate verify failed: SANs match none of {list(allowed)}")
            # Shaped like OpenSSL's own verification errors, which callers read.
            error.library, error.reason = "SSL", "CERTIFICATE_VERIFY_FAILED"
            error.verify_code, error.verify_message = 1, f"SANs match none of {list(allowed)}"
            raise error


class UpstreamContext(ssl.SSLContext):
    """A client context that also checks the server certificate's SANs against `subject_alt_names`."""

    sslobject_class = _SANCheckingSSLObject
    subject_alt_names: tuple[str, ...] = ()


def build_upstream_tls_context(tls: UpstreamTLS, credentials_dir: str | None, *, for_http: bool = True) -> ssl.SSLContext:
    """An SSLContext for TLS origination (DestinationRule trafficPolicy.tls SIMPLE/MUTUAL).

    for_http: the caller passes the request Host as server_hostname when `sni` is empty, and it is
    verified (auto SAN validation). TCP proxies have no Host and verify the chain and SANs only."""
    return _build_upstream(tls, client_files(tls, credentials_dir), for_http=for_http)


def _build_upstream(tls: UpstreamTLS, files: ClientFiles, *, for_http: bool) -> ssl.SSLContext:
    ctx = UpstreamContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if files.ca:
                ctx.load_verify_locations(cafile=files.ca)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise _load_error("CA", files.ca, exc) from None
        if files.crl:
            try:
                ctx.load_verify_locations(cafile=files.crl)
            except (OSError, ssl.SSLError) as exc:
                raise _load_error("CRL", files.crl, exc) from None
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        ctx.subject_alt_names = tuple(tls.subject_alt_names)
        # Auto SAN validation: only when neither SANs nor an explicit SNI are configured (cluster_tls.go).
        ctx.check_hostname = for_http and not tls.subject_alt_names and not tls.sni
    if tls.mode == "MUTUAL":
        if not files.cert or not files.key:
            raise TLSConfigError("MUTUAL needs clientCertificate/privateKey or credentialName")
        try:
            ctx.load_cert_chain(files.cert, files.key)
        except (OSError, ssl.SSLError) as exc:
            raise _load_error("client certificate/key", f"{files.cert} / {files.key}", exc) from None
    if for_http:
        ctx.set_alpn_protocols(list(HTTP_ALPN))
    return ctx


# ---------------------------------------------------------------------------------------------------------
# The per-worker cache (rotation)
# ---------------------------------------------------------------------------------------------------------


class _Entry:
    __slots__ = ("checked_at", "context", "error", "signature")

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None
        self.signature: tuple | None = None
        self.checked_at = -1e18
        self.error = ""


class TLSContexts:
    """Per-worker SSLContexts, rebuilt when their files change (see the module rules)."""

    def __init__(self, credentials_dir: str | None, log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.credentials_dir = credentials_dir
        self.log = log or (lambda message: None)
        self.clock = clock
        self.entries: dict[tuple, _Entry] = {}
        self.rebuilds = 0
        self.sni_indexes: dict[int, tuple[object, SniIndex]] = {}
        self._generation = -1

    # -- contexts

    def server(self, tls: ServerTLS, alpn: Sequence[str] = HTTP_ALPN) -> ssl.SSLContext | None:
        """The context of a terminating chain, None while it cannot be built (logged once per reason)."""
        return self._get(("server", tls, tuple(alpn)))

    def upstream(self, tls: UpstreamTLS, *, for_http: bool = True) -> ssl.SSLContext:
        """The origination context; raises TLSConfigError while it cannot be built."""
        key = ("upstream", tls, for_http)
        ctx = self._get(key)
        if ctx is None:
            raise TLSConfigError(self.entries[key].error)
        return ctx

    def upstream_l4(self, tls: UpstreamTLS) -> ssl.SSLContext | None:
        """The origination context of a TCP proxy (no Host to verify), None while it cannot be built."""
        return self._get(("upstream", tls, False))

    async def connect_l4(self, sock: socket.socket, tls: UpstreamTLS) -> TLSTransport | None:
        """TLS origination for a TCP proxy over a connected socket; None when it cannot be established
        (the caller bounds the time and closes the socket)."""
        ctx = self.upstream_l4(tls)
        if ctx is None:
            return None
        transport = TLSTransport(sock, ctx, server_side=False, server_hostname=tls.sni or None)
        try:
            await transport.do_handshake()
        except (ssl.SSLError, TransportClosed, trio.ClosedResourceError):
            return None
        return transport

    def _get(self, key: tuple) -> ssl.SSLContext | None:
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry()
        now = self.clock()
        if now - entry.checked_at < ROTATION_CHECK_INTERVAL_S:
            return entry.context
        entry.checked_at = now
        kind, tls, option = key
        files = server_files(tls, self.credentials_dir) if kind == "server" else client_files(tls, self.credentials_dir)
        signature = files_signature(_paths(files))
        if signature == entry.signature and (entry.context is not None or entry.error):
            return entry.context
        try:
            if kind == "server":
                context = build_server_context(tls, files, option)
            else:
                context = _build_upstream(tls, files, for_http=option)
        except TLSConfigError as exc:
            message = str(exc)
            if message != entry.error:
                state = "keeping the previous certificate" if entry.context is not None else "connections using it are refused"
                self.log(f"TLS {kind} context: {message}; {state}")
            entry.error = message
            if entry.context is None:
                entry.signature = signature
            # else: keep the old signature so the next check retries (a half-written pair completes)
            return entry.context
        if entry.context is not None:
            self.log(f"TLS {kind} context reloaded: {', '.join(_paths(files))}")
        self.rebuilds += 1
        entry.context = context
        entry.signature = signature
        entry.error = ""
        return context

    # -- per-table state

    def follow(self, compiled: Compiled) -> None:
        """On a new table generation, forget SNI indexes and contexts no chain or cluster uses any more."""
        if compiled.generation == self._generation:
            return
        self._generation = compiled.generation
        self.sni_indexes.clear()
        live: set = set()
        for lr in compiled.listeners.values():
            for chain in lr.listener.filter_chains:
                if chain.tls is not None:
                    live.add(chain.tls)
        for cr in compiled.clusters.values():
            if cr.cluster.tls is not None:
                live.add(cr.cluster.tls)
        for key in [k for k in self.entries if k[1] not in live]:
            del self.entries[key]

    def sni_index(self, lr: ListenerRuntime) -> SniIndex:
        cached = self.sni_indexes.get(id(lr))
        if cached is not None and cached[0] is lr:
            return cached[1]
        index = SniIndex(lr.listener.filter_chains)
        self.sni_indexes[id(lr)] = (lr, index)
        return index


# ---------------------------------------------------------------------------------------------------------
# I/O: the ClientHello, the replaying transport stream, the connection handler
# ---------------------------------------------------------------------------------------------------------


class HelloRead(NamedTuple):
    hello: ClientHello | None
    buffered: bytes
    failure: str  # "" when hello is set


async def read_client_hello(sock: socket.socket) -> HelloRead:
    """Read from a non-blocking socket until the ClientHello is complete. Garbage, EOF and resets are a
    failure value; the caller bounds the time."""
    reader = ClientHelloReader()
    while True:
        try:
            data = sock.recv(CLIENT_HELLO_READ_BYTES)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as exc:
            return HelloRead(None, b"", f"read failed: {exc.strerror or exc}")
        if not data:
            return HelloRead(None, b"", "closed before a ClientHello")
        try:
            hello = reader.feed(data)
        except SNIParseError as exc:
            return HelloRead(None, b"", f"not a TLS ClientHello: {exc}")
        if hello is not None:
            return HelloRead(hello, reader.buffered, "")


def close_socket(sock: socket.socket) -> None:
    if sock.fileno() >= 0:
        try:
            trio.lowlevel.notify_closing(sock)
        except (RuntimeError, ValueError):
            pass
        sock.close()


class TLSTransport:
    """TLS over a connected non-blocking socket: an ssl.SSLObject between two memory BIOs, with the
    recv/recv_nowait/send_all/send_eof/close surface of workers/netio.py transports.

    - Socket calls are try-first; a task waits (wait_readable/wait_writable) only when a call would block,
      and yields with a real checkpoint every FAIRNESS_OPS calls that did not wait.
    - One reader and one writer may run at once (the HTTP proxy reads a request body while it relays the
      response). Encrypted bytes leave in the order OpenSSL produced them: whoever flushes takes every
      pending byte of the outgoing BIO, and a flush that has to wait holds `_send_lock` until it is done.
    - `prefix` is ciphertext already read from the socket (the ClientHello read for routing).
    - A failed handshake still sends what OpenSSL queued (the alert, e.g. "certificate required") before
      the caller closes the socket.
    - recv() returns b"" on close_notify and on a bare EOF (HTTPS clients often skip close_notify).
    """

    __slots__ = ("_fast_ops", "_incoming", "_outgoing", "_send_lock", "closed", "sock", "ssl_object")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, prefix: bytes = b"", *, server_side: bool = True, server_hostname: str | None = None):
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        if prefix:
            self._incoming.write(prefix)
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname)
        self._send_lock = trio.Lock()
        self._fast_ops = 0
        self.closed = False

    # -- socket edge

    async def _fill(self) -> None:
        """Move ciphertext from the socket into the incoming BIO (EOF marks the BIO)."""
        sock = self.sock
        while True:
            if self.closed:
                raise trio.ClosedResourceError("transport closed")
            try:
                data = sock.recv(TRANSPORT_RECV_BYTES)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                self._fast_ops = 0
                continue
            except OSError as exc:
                raise self._broken(exc) from exc
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            return

    async def _flush(self) -> None:
        """Send every byte OpenSSL has produced so far, in order."""
        outgoing = self._outgoing
        if not outgoing.pending:
            return
        lock = self._send_lock
        if lock.locked():
            async with lock:
                await self._send(outgoing.read())
            return
        data = outgoing.read()
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._broken(exc) from exc
        if sent == len(data):
            return
        lock.acquire_nowait()
        try:
            await self._send(memoryview(data)[sent:])
        finally:
            lock.release()

    async def _send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        sock = self.sock
        while view:
            if self.closed:
                raise trio.ClosedResourceError("transport closed")
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
            except OSError as exc:
                raise self._broken(exc) from exc

    def _flush_nowait(self) -> None:
        """Best effort, never waits: hand what OpenSSL queued (an alert, close_notify) to the kernel."""
        if self._send_lock.locked() or self.closed:
            return
        data = self._outgoing.read()
        if data:
            try:
                self.sock.send(data)
            except OSError:
                pass

    def _broken(self, exc: OSError) -> Exception:
        if exc.errno == errno.EBADF or self.closed:
            return trio.ClosedResourceError("transport closed")
        return TransportClosed(str(exc))

    async def _fairness(self) -> None:
        self._fast_ops += 1
        if self._fast_ops >= FAIRNESS_OPS:
            self._fast_ops = 0
            await trio.lowlevel.checkpoint()

    # -- TLS

    async def do_handshake(self) -> None:
        """Raises ssl.SSLError (after sending its alert) or TransportClosed."""
        ssl_object = self.ssl_object
        while True:
            try:
                ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLError:
                self._flush_nowait()
                raise
        await self._flush()  # the last flight (TLS 1.3 session tickets)

    async def recv(self, max_bytes: int = TRANSPORT_RECV_BYTES) -> bytes:
        ssl_object = self.ssl_object
        waited = False
        while True:
            try:
                data = ssl_object.read(max_bytes)
            except ssl.SSLWantReadError:
                if self._outgoing.pending:
                    await self._flush()  # a post-handshake reply (KeyUpdate)
                await self._fill()
                waited = True
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise TransportClosed(f"TLS error: {exc}") from exc
            if not waited:
                await self._fairness()
            return data

    recv_waiting = recv  # the TLS layer reads records as they come either way

    def recv_nowait(self, max_bytes: int = TRANSPORT_RECV_BYTES) -> bytes | None:
        """Plaintext if some is ready now, b"" at EOF, None if a read would block."""
        ssl_object = self.ssl_object
        for _ in range(2):
            try:
                return ssl_object.read(max_bytes)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise TransportClosed(f"TLS error: {exc}") from exc
            try:
                data = self.sock.recv(TRANSPORT_RECV_BYTES)
            except BlockingIOError:
                return None
            except OSError as exc:
                raise self._broken(exc) from exc
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
        return None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise trio.ClosedResourceError("transport closed")
        try:
            self.ssl_object.write(data)
        except ssl.SSLError as exc:
            raise TransportClosed(f"TLS error: {exc}") from exc
        await self._flush()
        await self._fairness()

    async def send_eof(self) -> None:
        """close_notify, then FIN: the peer reads EOF; reading from it goes on (TLS 1.3 half-close)."""
        if self.closed:
            return
        try:
            self.ssl_object.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # close_notify is queued; the peer's answer is not awaited
        except ssl.SSLError:
            pass
        try:
            await self._flush()
        except (TransportClosed, trio.ClosedResourceError):
            pass
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            close_socket(self.sock)

    async def aclose(self) -> None:
        """close_notify when the session is up (best effort, no wait), then close."""
        if not self.closed:
            try:
                self.ssl_object.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            self._flush_nowait()
            self.close()
        await trio.lowlevel.checkpoint()

    # -- what the session negotiated

    def getpeercert(self, binary_form: bool = False):
        return self.ssl_object.getpeercert(binary_form)

    def selected_alpn_protocol(self) -> str | None:
        return self.ssl_object.selected_alpn_protocol()

    def version(self) -> str | None:
        return self.ssl_object.version()


async def serve_tls_connection(worker: Worker, sock: socket.socket, key: str) -> None:
    """PROTO_HTTPS and PROTO_TLS listeners: route on the ClientHello, then pass through or terminate."""
    compiled = worker.view.current()
    lr = compiled.listeners.get(key) if compiled is not None else None
    if lr is None:
        return
    contexts: TLSContexts = worker.tls
    contexts.follow(compiled)
    deadline = trio.current_time() + compiled.options.tls_handshake_timeout_s
    with trio.move_on_at(deadline):
        read = await read_client_hello(sock)
    if read.hello is None:  # garbage, EOF or the deadline: nothing to answer (Envoy closes too)
        return
    server_name = read.hello.server_name
    index = contexts.sni_index(lr).select(server_name)
    if index is None:
        _log_no_chain(worker, sock, key, server_name)
        return
    chain = lr.listener.filter_chains[index]
    if chain.tls is None:
        if chain.tcp is not None:
            await proxy_socket(worker, compiled, sock, chain.tcp, new_tcp_log(sock, key, server_name), read.buffered)
        return
    ctx = contexts.server(chain.tls, HTTP_ALPN if chain.route_config is not None else ())
    if ctx is None:
        return
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        return
    transport = TLSTransport(sock, ctx, read.buffered)
    try:
        if not await _handshake(transport, deadline) or _refused_client(transport, chain.tls):
            return
        if chain.route_config is not None:
            await serve_http_connection(Downstream(worker, transport, peer, local, "https", key, index, server_name or "", _client_cert_header(transport, chain.tls)))
        elif chain.tcp is not None:
            await proxy_transport(worker, compiled, transport, chain.tcp, new_tcp_log(sock, key, server_name))
    finally:
        await transport.aclose()


def _log_no_chain(worker: Worker, sock: socket.socket, key: str, server_name: str | None) -> None:
    """Envoy's `"- - -" 0 NR filter_chain_not_found` line; no TCP counters (no filter chain ran)."""
    log = new_tcp_log(sock, key, server_name)
    log.flags = "NR"
    log.details = "filter_chain_not_found"
    log.duration_ms = int((time.time() - log.start) * 1000)
    worker.access_log.write_tcp(log)


async def _handshake(transport: TLSTransport, deadline: float) -> bool:
    with trio.move_on_at(deadline):
        try:
            await transport.do_handshake()
        except (ssl.SSLError, TransportClosed, trio.ClosedResourceError):
            return False
        return True
    return False  # Options.tls_handshake_timeout_s


def _client_cert_header(transport: TLSTransport, tls: ServerTLS) -> bytes | None:
    """x-forwarded-client-cert for the certificate a MUTUAL/OPTIONAL_MUTUAL client presented (verified by the
    handshake), None without one."""
    if tls.mode not in ("MUTUAL", "OPTIONAL_MUTUAL"):
        return None
    der = transport.getpeercert(binary_form=True)
    if not der:
        return None
    return forwarded_client_cert(der, transport.getpeercert() or {})


def _refused_client(transport: TLSTransport, tls: ServerTLS) -> bool:
    if tls.mode not in ("MUTUAL", "OPTIONAL_MUTUAL"):
        return False
    return client_certificate_failure(tls, transport.getpeercert(), transport.getpeercert(binary_form=True)) is not None


__all__ = [
    "SniIndex",
    "TLSConfigError",
    "TLSContexts",
    "TLSTransport",
    "build_server_context",
    "build_upstream_tls_context",
    "certificate_pinned",
    "client_certificate_failure",
    "read_client_hello",
    "sans_allowed",
    "serve_tls_connection",
    "spki_der",
]
