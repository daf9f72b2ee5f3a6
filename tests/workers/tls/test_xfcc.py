"""workers/tls/xfcc.py: the x-forwarded-client-cert value, against OpenSSL's RFC 2253 rendering and Envoy's layout."""

from __future__ import annotations

import base64
import hashlib
import ssl
import urllib.parse

import pytest

from workers.tls.xfcc import der_to_pem, forwarded_client_cert, rfc2253_subject, url_encode


@pytest.mark.parametrize(("subject", "expected"), [
    ((), ""),
    (((("commonName", "client"),),), "CN=client"),
    (((("countryName", "US"),), (("organizationName", "Acme, Inc"),), (("commonName", "a+b"),)), "CN=a\\+b,O=Acme\\, Inc,C=US"),
    (((("commonName", "#lead"),),), "CN=\\#lead"),
    (((("commonName", " both "),),), "CN=\\ both\\ "),
    (((("commonName", 'q"<>;\\'),),), 'CN=q\\"\\<\\>\\;\\\\'),
    (((("commonName", "é"),),), "CN=\\C3\\A9"),
    (((("commonName", "a\x01b"),),), "CN=a\\01b"),
    (((("organizationalUnitName", "x"), ("commonName", "y")),), "OU=x+CN=y"),
    (((("emailAddress", "a@b"),),), "emailAddress=a@b"),
    (((("domainComponent", "com"),), (("domainComponent", "example"),), (("userId", "u1"),)), "UID=u1,DC=example,DC=com"),
])  # fmt: skip
def test_rfc2253_subject(subject, expected):
    assert rfc2253_subject(subject) == expected


def test_url_encoding_keeps_only_alpha_digit_and_four_marks():
    assert url_encode("a-b_c.d*e~f g\n+/=") == "a-b_c.d*e%7Ef%20g%0A%2B%2F%3D"


def test_layout_and_order():
    der = b"\x30\x03\x02\x01\x01" * 20
    decoded = {
        "subject": ((("commonName", "c"),),),
        "subjectAltName": (("DNS", "a.example"), ("URI", "spiffe://x/1"), ("DNS", "b.example"), ("URI", "spiffe://x/2"), ("IP Address", "10.0.0.1")),
    }
    value = forwarded_client_cert(der, decoded).decode()
    pem = ssl.DER_cert_to_PEM_cert(der)
    assert der_to_pem(der) == pem
    assert value == (
        f"Hash={hashlib.sha256(der).hexdigest()};Cert=\"{urllib.parse.quote(pem, safe='')}\";Subject=\"CN=c\";"
        "URI=spiffe://x/1;URI=spiffe://x/2;DNS=a.example;DNS=b.example"
    )


def test_no_uri_san_is_a_bare_uri_and_unsafe_sans_are_left_out():
    decoded = {"subject": (), "subjectAltName": (("DNS", "ok.example"), ("DNS", "bad\r\nx"), ("URI", "a b"))}
    value = forwarded_client_cert(b"\x00", decoded).decode()
    assert value.endswith(';Subject="";URI=;DNS=ok.example')
    assert "\r" not in value and "\n" not in value
    assert base64.b64decode(urllib.parse.unquote(value.split('Cert="')[1].split('"')[0]).splitlines()[1]) == b"\x00"
