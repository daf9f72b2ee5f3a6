# AuthorizationPolicy path templates (edge/compiler/authorization.path_template_regex), table-driven: which
# templates Istio's CheckValidPathTemplate (pkg/config/security/security_test.go TestCheckValidPathTemplate) and
# Envoy's uri_template parser accept, and what the accepted ones match — the regex Envoy builds from Istio's
# translation (`{*}` → `*` = `[pchar]+`, `{**}` → `**` = `[pchar/]*`, literals as themselves, a trailing "/" kept).
from __future__ import annotations

import re

import pytest

from edge.compiler.authorization import path_template_regex
from edge.errors import ERROR
from tests.edge.routing import compile_text, messages
from tests.workers.test_authz import GATEWAY, policy

# (template, paths it matches, paths it does not match)
MATCHES = [
    ("/{*}/foo", ["/a/foo", "/a.b-c~d/foo"], ["/foo", "//foo", "/a/b/foo", "/a/foo/"]),
    ("/{*}/foo/", ["/a/foo/"], ["/a/foo", "/a/foo/b"]),
    ("/foo/{*}", ["/foo/bar", "/foo/x=1"], ["/foo/", "/foo", "/foo/bar/baz"]),
    ("/foo/bar/{**}", ["/foo/bar/", "/foo/bar/a", "/foo/bar/a/b/c", "/foo/bar//"], ["/foo/bar", "/foo/barx", "/foo/baz/a"]),
    ("/foo/{**}/bar", ["/foo/a/bar", "/foo/a/b/bar", "/foo//bar"], ["/foo/bar", "/foo/a/bar/", "/foo/a/baz"]),
    # A trailing "/" after {**} is a required "/": below /foo/ and ending in "/"; /foo/ itself is not enough.
    ("/foo/{**}/", ["/foo//", "/foo/a/", "/foo/a/b/"], ["/foo/", "/foo", "/foo/a", "/foo/a/b"]),
    ("/{*}/foo/{**}/bar", ["/x/foo/a/b/bar"], ["/foo/a/bar", "/x/y/foo/bar"]),
    ("/{*}/{*}/foo/{**}", ["/a/b/foo/", "/a/b/foo/c/d"], ["/a/foo/c"]),
    # Characters outside pchar ("?", "#", "*", space) are never matched by a glob.
    ("/api/{*}", ["/api/%20x", "/api/a:b@c"], ["/api/a b", "/api/a*b"]),
]


@pytest.mark.parametrize(("template", "good", "bad"), MATCHES, ids=[m[0] for m in MATCHES])
def test_template_matches_as_envoy(template, good, bad):
    pattern, why = path_template_regex(template)
    assert pattern is not None, why
    compiled = re.compile(pattern, re.DOTALL)
    assert [p for p in good if not compiled.fullmatch(p)] == []
    assert [p for p in bad if compiled.fullmatch(p)] == []


# (template, fragment of the reason): Istio's invalid cases, plus what Envoy's parser refuses that Istio passes.
REFUSED = [
    ("/foo/{**}buzz/bar", "'{' or '}'"),
    ("/{*}/foo/{}/bar", "'{' or '}'"),
    ("/foo/{*}/bar/*", "invalid string literal"),
    ("/foo/{*}/bar/**/buzz", "invalid string literal"),
    ("/foo/{buzz}/bar/{**}", "'{' or '}'"),
    ("/foo/{buzz=*}/bar/{**}", "'{' or '}'"),
    ("/{*}/foo/{**}bar", "'{' or '}'"),
    ("/{*}/foo/{*}.txt", "'{' or '}'"),
    ("/{*}/foo/{temp", "'{' or '}'"),
    ("/{*}/foo/temp}/bar", "'{' or '}'"),
    ("/{**}/foo/temp/{*}/bar", "not the last operator"),
    ("/{**}/{**}", "not the last operator"),
    ("/{**}/foo/temp/{**}/bar", "not the last operator"),
    ("/{*}/foo/?abc", "invalid string literal"),
    ("/foo//{*}", "invalid string literal"),  # an empty inner segment: Istio's validLiteral needs one char
    ("{*}/foo", "starts with '/'"),  # Istio's check trims the "/" and passes it; Envoy's parser refuses it
    ("/" + "a/" * 130 + "{*}", "at most 256"),
]


@pytest.mark.parametrize(("template", "fragment"), REFUSED, ids=[r[0][:40] for r in REFUSED])
def test_invalid_templates_are_refused(template, fragment):
    pattern, why = path_template_regex(template)
    assert pattern is None
    assert fragment in why


def test_a_refused_template_is_a_config_error_at_its_field():
    result = compile_text(GATEWAY, policy('rules:\n- to:\n  - operation:\n      notPaths: ["/ok", "/foo/{*}/x?y"]'))
    errors = [d for d in result.diagnostics if d.severity == ERROR]
    assert errors, messages(result)
    assert errors[0].path == "$.spec.rules[0].to[0].operation.notPaths"
    assert "invalid or unsupported path template /foo/{*}/x?y" in errors[0].message
    assert result.table is None
