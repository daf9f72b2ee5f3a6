# x-forwarded-client-cert, as an Istio gateway sets it: Envoy's forward_client_cert_details SANITIZE_SET with
# set_current_client_cert_details {subject, cert, dns, uri} (istio/istio gateway.go buildGatewayConnectionManager;
# Envoy conn_manager_utility.cc mutateXfccRequestHeader). Pure: takes the verified client certificate (its DER and
# the decoded fields Python's ssl gives), returns the header value.
#
# Rules:
# - SANITIZE_SET: a client's own x-forwarded-client-cert never crosses the gateway (workers/headers.py drops it);
#   the gateway sets the header only when the client presented a certificate on this connection (a MUTUAL or
#   OPTIONAL_MUTUAL server).
# - One element, its pairs joined by ";" in Envoy's order: Hash (hex SHA-256 of the DER certificate), Cert (the
#   PEM, percent-encoded: everything but ALPHA, DIGIT and "*-._", uppercase hex; double-quoted), Subject (the
#   RFC 2253 distinguished name as OpenSSL prints it with XN_FLAG_RFC2253; double-quoted, "" when empty), one
#   URI= per URI SAN (a bare "URI=" when there is none, as Envoy writes it), one DNS= per DNS SAN. A SAN that is
#   not visible ASCII is left out; the subject's other bytes are escaped as RFC 2253 says, so the value never
#   holds a control character.
# - `By=` (the gateway's own URI SANs) is left out: gateway certificates carry DNS names, and edge does not
#   decode its own certificates.
from __future__ import annotations

import base64
import hashlib

# OpenSSL's short names (XN_FLAG_FN_SN) for the long names Python's ssl reports.
SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "street",
    "domainComponent": "DC",
    "userId": "UID",
}
_RFC2253_SPECIAL = frozenset(',+"\\<>;')
_URL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._")


def der_to_pem(der: bytes) -> str:
    text = base64.standard_b64encode(der).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def url_encode(text: str) -> str:
    return "".join(chr(b) if b in _URL_SAFE else f"%{b:02X}" for b in text.encode("utf-8"))


def _escape_rfc2253(value: str) -> str:
    out = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        code = ord(ch)
        if ch in _RFC2253_SPECIAL or (i == 0 and ch in "# ") or (i == last and ch == " "):
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\{code:02X}")
        elif code > 0x7F:
            out.append("".join(f"\\{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def rfc2253_subject(subject) -> str:
    """The DN from ssl's getpeercert()['subject'] (RDNs in certificate order, each a tuple of (name, value)):
    RDNs in reverse order joined with ",", the attributes of one RDN with "+"."""
    rdns = []
    for rdn in reversed(subject or ()):
        rdns.append("+".join(f"{SHORT_NAMES.get(name, name)}={_escape_rfc2253(value)}" for name, value in rdn))
    return ",".join(rdns)


def peer_principal(decoded: dict) -> str:
    """The principal Envoy's RBAC `authenticated` matcher compares (source.principal, principals, namespaces): the
    certificate's first URI SAN, else its first DNS SAN, else its subject (RFC 2253)."""
    alt_names = decoded.get("subjectAltName", ())
    for wanted in ("URI", "DNS"):
        for kind, value in alt_names:
            if kind == wanted:
                return value
    return rfc2253_subject(decoded.get("subject"))


def forwarded_client_cert(der: bytes, decoded: dict) -> bytes:
    """The x-forwarded-client-cert value for a verified client certificate."""
    parts = [f"Hash={hashlib.sha256(der).hexdigest()}", f'Cert="{url_encode(der_to_pem(der))}"', f'Subject="{rfc2253_subject(decoded.get("subject"))}"']
    # SAN values go out unquoted, as Envoy writes them; one holding anything but visible ASCII (a certificate can
    # carry control characters in an IA5String) is left out rather than written into a header.
    alt_names = [(kind, value) for kind, value in decoded.get("subjectAltName", ()) if value.isascii() and value.isprintable() and " " not in value]
    uris = [value for kind, value in alt_names if kind == "URI"]
    parts += [f"URI={uri}" for uri in uris] or ["URI="]
    parts += [f"DNS={name}" for kind, name in alt_names if kind == "DNS"]
    return ";".join(parts).encode("utf-8")
