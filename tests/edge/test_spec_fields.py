# edge/spec_fields.py and the loader's use of it: a document's every unknown field is reported, each with the
# closest known field as a hint, while the first error stays exactly what msgspec's first failure gave.
from __future__ import annotations

import textwrap

import pytest

from edge import istio
from edge.errors import ERROR, HINT
from edge.loader import LoadResult, load_text
from edge.spec_fields import known_fields, suggestion, unknown_fields

MISTAKES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v}
spec:
  hosts: [a]
  htp: []
  http:
  - match:
    - uri: {prefx: /a}
      hedaers: {x-a: {exact: b}}
    route: [{destination: {host: a, prot: {number: 1}}}]
"""


@pytest.mark.parametrize(
    "tokens, expected",
    [
        ([], "http"),
        (["http", 0], "match"),
        (["http", 0, "match", 0, "uri"], "prefix"),
        (["http", 0, "match", 0, "headers", "x-a"], "exact"),  # through a map of Structs
        (["http", 0, "route", 0, "destination"], "port"),
    ],
)
def test_known_fields_are_the_wire_names_at_the_path(tokens, expected):
    assert expected in known_fields(istio.VirtualService, tokens)


def test_known_fields_of_a_scalar_are_none():
    assert known_fields(istio.VirtualService, ["hosts", 0]) == []


@pytest.mark.parametrize("name, known, expected", [("prefx", ["exact", "prefix", "regex"], " (did you mean 'prefix'?)"), ("zzz", ["exact", "prefix"], "")])
def test_suggestion(name, known, expected):
    assert suggestion(name, known) == expected


def test_unknown_fields_walks_lists_and_maps_but_not_user_keys():
    spec = {"hosts": ["a"], "htp": [], "http": [{"match": [{"uri": {"prefx": "/a"}, "headers": {"x-custom": {"exact": "b"}}}]}]}
    assert list(unknown_fields(istio.VirtualService, spec)) == [([], "htp"), (["http", 0, "match", 0, "uri"], "prefx")]


def test_a_document_reports_every_unknown_field_with_hints():
    result = LoadResult()
    load_text(textwrap.dedent(MISTAKES), "m.yaml", result)
    lines = [str(d) for d in result.diagnostics if d.severity in (ERROR, HINT)]
    assert lines == [
        "m.yaml:6: VirtualService default/v: $.spec: unknown field 'htp'",
        "m.yaml:6: hint: VirtualService default/v: $.spec: did you mean 'http'?",
        "m.yaml:9: VirtualService default/v: $.spec.http[0].match[0].uri: unknown field 'prefx'",
        "m.yaml:9: hint: VirtualService default/v: $.spec.http[0].match[0].uri: did you mean 'prefix'?",
        "m.yaml:10: VirtualService default/v: $.spec.http[0].match[0]: unknown field 'hedaers'",
        "m.yaml:10: hint: VirtualService default/v: $.spec.http[0].match[0]: did you mean 'headers'?",
        "m.yaml:11: VirtualService default/v: $.spec.http[0].route[0].destination: unknown field 'prot'",
        "m.yaml:11: hint: VirtualService default/v: $.spec.http[0].route[0].destination: did you mean 'port'?",
    ]
    assert not result.resources and len(result.errors) == 4
