# Certificates and credential files, pure: SAN matching, SPKI and hash pins, the client-certificate verdict of a
# MUTUAL/OPTIONAL_MUTUAL chain, and which files of a credential folder a TLS setting uses.
#
# Rules:
# - subjectAltNames: any SAN equal, DNS SANs with a leading "*." wildcard (one label); verifyCertificateHash and
#   verifyCertificateSpki pins: either list may match (Envoy's CertificateValidationContext).
# - A credential folder is a Kubernetes TLS or generic Secret mounted as files: the first present of each
#   CREDENTIAL_*_FILES name wins; a separate "<name>-cacert" folder may hold the client CA (Istio's convention).
from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from edge.table import ServerTLS, UpstreamTLS

# Files of a credential folder (a Kubernetes TLS or generic Secret mounted as files), first present wins.
CREDENTIAL_CERT_FILES = ("tls.crt", "cert")
CREDENTIAL_KEY_FILES = ("tls.key", "key")
CREDENTIAL_CA_FILES = ("ca.crt", "cacert")
CREDENTIAL_CRL_FILES = ("ca.crl", "crl")
CA_CREDENTIAL_SUFFIX = "-cacert"  # Istio: a separate "<name>-cacert" Secret may hold the client CA


class TLSConfigError(Exception):
    """A TLS setting cannot be turned into a context (missing file, bad PEM, no usable cipher)."""


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


def credential_paths(files: ServerFiles | ClientFiles) -> tuple[str, ...]:
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
