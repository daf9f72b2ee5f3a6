"""edge/wire.py: what configuration may put on the wire, table by table (None = fine)."""

from __future__ import annotations

import pytest

from edge import wire


@pytest.mark.parametrize(("name", "ok"), [
    ("x-a", True), ("X_A", True), ("a!#$%&'*+-.^_`|~9", True),
    ("", False), ("x a", False), ("x:a", False), ("x\n", False), ("x\r\nSet-Cookie", False), ("é", False), ("(x)", False),
])  # fmt: skip
def test_header_names(name, ok):
    assert (wire.header_name_problem(name) is None) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("plain", True), ("a\tb", True), ("é ✓", True), ("", True), (" x ", True),
    ("a\r\nb", False), ("a\nb", False), ("a\x00b", False), ("a\x7fb", False), ("\x1b[31m", False),
])  # fmt: skip
def test_header_values(value, ok):
    assert (wire.header_value_problem(value) is None) is ok


@pytest.mark.parametrize(("path", "absolute", "ok"), [
    ("/a/b?c=d", True, True), ("/%20", True, True), ("a", True, False), ("a", False, True), ("", False, True),
    ("/a b", True, False), ("/a\r\nb", True, False), ("/é", True, False), ("/a\tb", False, False),
])  # fmt: skip
def test_paths(path, absolute, ok):
    assert (wire.path_problem(path, absolute=absolute) is None) is ok


@pytest.mark.parametrize(("authority", "ok"), [
    ("a.example", True), ("a.example:8080", True), ("[::1]:80", True), ("10.0.0.1", True),
    ("", False), ("a b", False), ("a\r\nb", False), ("é.example", False), ("u@h", False), ("h:123456", False), ("h#x", False),
])  # fmt: skip
def test_authorities(authority, ok):
    assert (wire.authority_problem(authority) is None) is ok


@pytest.mark.parametrize(("name", "ok"), [
    ("app.example.com", True), ("a", True), ("a-b.c", True), ("x.", True),
    ("", False), ("a b", False), ("-a", False), ("a..b", False), ("10.0.0.1", False), ("::1", False), ("a" * 64, False),
])  # fmt: skip
def test_sni(name, ok):
    assert (wire.sni_problem(name) is None) is ok


@pytest.mark.parametrize(("name", "ok", "folder"), [
    ("app-cert", True, "app-cert"), ("a.b-c", True, "a.b-c"), ("kubernetes://app-cert", True, "app-cert"),
    ("../outside", False, None), ("/etc/edge", False, None), ("a/b", False, None), ("..", False, None), (".hidden", False, None),
    ("Upper", False, None), ("kubernetes://ns/name", False, None), ("a" * 254, False, None), ("", False, None),
])  # fmt: skip
def test_credential_names(name, ok, folder):
    assert (wire.credential_name_problem(name) is None) is ok
    if ok:
        assert wire.credential_folder(name) == folder


@pytest.mark.parametrize(("name", "ok"), [("sid", True), ("a;b", False), ("a b", False), ("", False)])
def test_cookie_names(name, ok):
    assert (wire.cookie_name_problem(name) is None) is ok


@pytest.mark.parametrize(("value", "ok"), [("/", True), ("/a b", True), ("a;b", False), ("a\r\n", False), ("é", False)])
def test_cookie_attributes(value, ok):
    assert (wire.cookie_attribute_problem(value) is None) is ok


@pytest.mark.parametrize(("name", "ok"), [("user", True), ("a.b", True), ("a&b", False), ("a=b", False), ("a b", False), ("", False)])
def test_query_names(name, ok):
    assert (wire.query_name_problem(name) is None) is ok
