# Loader: files → resources with diagnostics, and compile-level diagnostics of broken files pinned to the
# exact line (edge.compiler.load_and_compile refines compile diagnostics to the line of their $.spec path).
from __future__ import annotations

import os
import pathlib
import textwrap

import pytest
import yaml

from edge import loader as loader_module
from edge.compiler import load_and_compile
from edge.errors import ERROR, NOTE, WARNING
from edge.loader import LoadResult, find_config_files, load_paths, load_text

BROKEN = pathlib.Path(__file__).parent / "broken"


def load(text: str, path: str = "conf.yaml") -> LoadResult:
    result = LoadResult()
    load_text(textwrap.dedent(text), path, result)
    return result


GW = """\
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: gw
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""


def test_multi_document_files_keep_document_order_and_lines():
    result = load(GW + "---\n" + GW.replace("name: gw", "name: gw2").replace("v1beta1", "v1alpha3") + "---\n")
    assert [(r.name, r.line, r.document, r.order) for r in result.resources] == [("gw", 1, 0, 0), ("gw2", 10, 1, 1)]
    assert [r.api_version for r in result.resources] == ["networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]


NAMELESS = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {}\nspec: {}\n"


@pytest.mark.parametrize(
    "text, expected_names, expected_diagnostics",
    [
        # One document: no "(document N)" in its messages.
        (NAMELESS, [], [(ERROR, 3, "Gateway: metadata.name is required")]),
        # Several: each message says which document (an empty document between two `---` counts).
        ("---\n" + GW + "---\n---\n" + NAMELESS, ["gw"], [(ERROR, 14, "Gateway (document 3): metadata.name is required")]),
        (NAMELESS + "---\n" + GW, ["gw"], [(ERROR, 3, "Gateway (document 1): metadata.name is required")]),
        # A syntax error in a later document fails the whole file with that one message, after earlier documents
        # (one of them broken) were already converted.
        (NAMELESS + "---\n" + GW + "---\nkind: [\n", [], [(ERROR, 16, "invalid YAML: while parsing a flow node, did not find expected node content")]),
        # A value its explicit tag cannot hold, or an unknown tag, loses only its own document.
        (GW + "---\nkind: Gateway\nport: !!int x\n", ["gw"], [(ERROR, 11, "invalid YAML: !!int x: invalid literal for int() with base 10: 'x'")]),
        (GW + "---\nkind: Gateway\nwhen: !!timestamp 2026-13-45\n", ["gw"], [(ERROR, 11, "invalid YAML: !!timestamp 2026-13-45: month must be in 1..12")]),
        (GW + "---\nkind: !thing x\n", ["gw"], [(ERROR, 10, "invalid YAML: could not determine a constructor for the tag '!thing'")]),
    ],
    ids=["single", "multi-later", "multi-first", "late-syntax-error", "bad-int", "bad-timestamp", "unknown-tag"],
)
def test_documents_are_converted_one_at_a_time_with_the_same_outcome(text, expected_names, expected_diagnostics):
    result = load(text)
    assert [r.name for r in result.resources] == expected_names
    assert [(d.severity, d.line, d.message.split("\n")[0]) for d in result.diagnostics] == expected_diagnostics


def test_kubectl_lists_are_flattened():
    text = """\
    apiVersion: v1
    kind: List
    items:
    - apiVersion: networking.istio.io/v1
      kind: ServiceEntry
      metadata: {name: a}
      spec: {hosts: [a.example.com]}
    - apiVersion: networking.istio.io/v1
      kind: VirtualServiceList
      metadata: {name: nested}
      spec: {hosts: [b.example.com], http: [{route: [{destination: {host: b}}]}]}
    """
    result = load(text)
    assert [(r.kind, r.name, r.line) for r in result.resources] == [("ServiceEntry", "a", 4)]
    # A kind that merely ends in "List" but has no items is not a list: skipped like any unknown kind.
    assert [(d.severity, d.line) for d in result.diagnostics if "skipped VirtualServiceList" in d.message] == [(NOTE, 8)]


def test_other_kinds_are_skipped_with_a_note():
    text = """\
    apiVersion: v1
    kind: Service
    metadata: {name: productpage}
    ---
    apiVersion: telemetry.istio.io/v1
    kind: Telemetry
    metadata: {name: r}
    """
    result = load(text)
    assert result.resources == []
    assert [(d.severity, d.line, d.message) for d in result.diagnostics] == [
        (NOTE, 1, "skipped Service (v1) (document 1): not a resource edge serves"),
        (NOTE, 5, "skipped Telemetry (telemetry.istio.io/v1) (document 2): not a resource edge serves"),
    ]


def test_namespace_defaults_to_default():
    result = load(GW)
    assert (result.resources[0].namespace, result.resources[0].key) == ("default", "default/gw")
    result = load(GW.replace("  name: gw\n", "  name: gw\n  namespace: edge\n"))
    assert result.resources[0].key == "edge/gw"


def test_mesh_only_fields_are_warnings_not_errors():
    text = """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: v}
    spec:
      hosts: [a.example.com]
      gateways: [gw]
      exportTo: ["."]
      http:
      - match:
        - sourceLabels: {app: x}
        route: [{destination: {host: a}}]
    """
    result = load(text)
    assert result.ok
    assert [(d.severity, d.line, d.path) for d in result.diagnostics] == [
        (WARNING, 7, "$.spec.exportTo"),
        (WARNING, 10, "$.spec.http[0].match[0].sourceLabels"),
    ]


def test_creation_timestamps_are_kept_as_rfc3339_text():
    result = load(GW.replace("  name: gw\n", "  name: gw\n  creationTimestamp: 2024-05-01T10:00:00Z\n"))
    assert result.resources[0].creation_timestamp == "2024-05-01T10:00:00Z"
    result = load(GW.replace("  name: gw\n", "  name: gw\n  creationTimestamp: '2024-05-01T10:00:00Z'\n"))
    assert result.resources[0].creation_timestamp == "2024-05-01T10:00:00Z"


def test_directories_are_walked_in_sorted_order_and_configmap_links_skipped(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.yaml").write_text(GW.replace("name: gw", "name: z"))
    (tmp_path / "a.yml").write_text(GW.replace("name: gw", "name: a"))
    (tmp_path / "notes.txt").write_text("not config")
    (tmp_path / "c.json").write_text('{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "j"}, "spec": {"hosts": ["j.example.com"]}}')
    # A Kubernetes ConfigMap mount: real files in a timestamped dot-folder, `..data` → it, visible symlinks.
    real = tmp_path / "cm" / "..2024_05_01_10_00_00.123"
    real.mkdir(parents=True)
    (real / "gw.yaml").write_text(GW.replace("name: gw", "name: mounted"))
    os.symlink("..2024_05_01_10_00_00.123", tmp_path / "cm" / "..data")
    os.symlink("..data/gw.yaml", tmp_path / "cm" / "gw.yaml")
    files, problems = find_config_files([str(tmp_path)])
    assert problems == []
    assert [os.path.relpath(f, tmp_path) for f in files] == ["a.yml", "b/z.yaml", "c.json", "cm/gw.yaml"]
    result = load_paths([str(tmp_path)])
    assert [r.name for r in result.resources] == ["a", "z", "j", "mounted"]
    assert [r.order for r in result.resources] == [0, 1, 2, 3]


def test_missing_paths_are_errors(tmp_path):
    result = load_paths([str(tmp_path / "nope")])
    assert [(d.severity, d.message) for d in result.diagnostics] == [(ERROR, "no such file or directory")]


# Each broken file with the exact first error `edge check` prints for it (file:line: message).
BROKEN_CASES = [
    ("weight-string.yaml", "14: VirtualService default/reviews: $.spec.http[0].route[0].weight: expected int, got str"),
    ("unknown-field.yaml", "14: Gateway default/typo: $.spec.servers[0]: unknown field 'hostz'"),
    ("bad-yaml.yaml", "9: invalid YAML: while parsing a block mapping, did not find expected key"),
    ("missing-name.yaml", "4: ServiceEntry: metadata.name is required"),
    ("two-actions.yaml", "12: VirtualService default/both: $.spec.http[0]: an HTTP route takes only one of route, redirect, directResponse, delegate (got route, redirect)"),
    ("bad-duration.yaml", "15: VirtualService default/slow: $.spec.http[0].timeout: invalid duration 'ten seconds': use a number with a unit, e.g. \"10s\", \"250ms\", \"1h\""),
    (
        "bad-regex.yaml",
        "14: VirtualService default/lookahead: $.spec.http[0].match[0].uri.regex: invalid regex '/api/(?!internal).*': invalid or unsupported Perl syntax at position 5: '(?!i' (RE2 has no look-arounds, atomic groups, conditionals or comments); Istio uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)",
    ),
    (
        "port-conflict.yaml",
        "21: Gateway default/raw: $.spec.servers[0]: conflicts with Gateway default/web server http (HTTP 9000) on port 9000: plain HTTP, TLS (HTTPS/TLS) and TCP servers cannot share a port and bind; this server is skipped",
    ),
    ("zero-weights.yaml", "12: VirtualService default/nothing: $.spec.http[0].route: total destination weight = 0"),
    ("duplicate-port-names.yaml", "16: Gateway default/twice: $.spec.servers[1].port.name: port names in servers must be unique: duplicate name web (also servers[0])"),
    ("https-without-tls.yaml", "8: Gateway default/notls: $.spec.servers[0].tls: server must have TLS settings for HTTPS/TLS protocols"),
    (
        "auto-passthrough.yaml",
        "15: Gateway default/eastwest: $.spec.servers[0].tls.mode: AUTO_PASSTHROUGH is not supported: it routes by SNI names of the form outbound_.<port>_.<subset>_.<host> that only mesh clients send; use PASSTHROUGH with VirtualService tls routes",
    ),
    ("prefix-rewrite-exact.yaml", "16: VirtualService default/moved: $.spec.http[0].redirect.prefixRewrite: redirect prefix_rewrite requires all URI matches to use prefix match type"),
    ("authority-twice.yaml", '15: VirtualService default/host: $.spec.http[0].headers.request: authority header cannot be set multiple times: have "b.example.com", attempting to set "c.example.com"'),
    ("negative-weight.yaml", "15: VirtualService default/minus: $.spec.http[0].route[0].weight: weight -10 < 0"),
    ("short-timeout.yaml", "15: VirtualService default/hurry: $.spec.http[0].timeout: duration must be greater than 1ms"),
    ("bad-redirect-code.yaml", "14: VirtualService default/teapot: $.spec.http[0].redirect.redirectCode: 418 is not a valid redirect code, must be 3xx"),
]


def test_every_broken_file_is_covered():
    assert sorted(name for name, _ in BROKEN_CASES) == sorted(p.name for p in BROKEN.glob("*.yaml"))


@pytest.mark.parametrize("name, expected", BROKEN_CASES, ids=[name for name, _ in BROKEN_CASES])
def test_broken_files_report_the_exact_message_and_line(name, expected):
    path = f"tests/edge/broken/{name}"
    loaded, result = load_and_compile([str(BROKEN / name)])
    errors = [d for d in loaded.diagnostics + result.diagnostics if d.severity == ERROR]
    assert result.table is None
    assert str(errors[0]).replace(str(BROKEN) + "/", "tests/edge/broken/") == f"{path}:{expected}"


def test_file_cache_reparses_only_changed_files(tmp_path):
    from edge.loader import FileCache

    def vs(name: str) -> str:
        return (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            f"metadata: {{name: {name}}}\nspec:\n  hosts: [{name}.example.com]\n  http:\n  - route: [{{destination: {{host: x}}}}]\n"
        )

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text(vs(name))
    cache = FileCache()
    first = load_paths([str(tmp_path)], cache)
    assert [r.name for r in first.resources] == ["a", "b", "c"]
    (tmp_path / "b.yaml").write_text(vs("b2"))
    (tmp_path / "a.yaml").unlink()
    second = load_paths([str(tmp_path)], cache)
    assert [r.name for r in second.resources] == ["b2", "c"]
    assert [r.order for r in second.resources] == [0, 1]  # load order renumbered
    assert second.resources[1].spec is first.resources[2].spec  # c.yaml was not parsed again
    assert sorted(cache.entries) == [str(tmp_path / "b.yaml"), str(tmp_path / "c.yaml")]


def _alias_bomb(width: int) -> str:
    """A VirtualService whose aliases multiply: width routes of width matches of width headers each."""
    headers = ", ".join(f"h{i}: {{exact: v}}" for i in range(width))
    matches = ", ".join(["*m"] * width)
    routes = "\n".join(["  - *r"] * (width - 1))
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bomb}\nspec:\n"
        "  hosts: [a.example.com]\n  http:\n"
        f"  - &r\n    match: [&m {{headers: {{{headers}}}}}, {matches}]\n    route: [{{destination: {{host: x}}}}]\n"
        f"{routes}\n"
    )


def test_excessive_aliasing_is_refused_quickly():
    # 120 routes × 121 matches × 120 headers ≈ 1.7 million StringMatch objects from a 4 KB file.
    result = load(_alias_bomb(120))
    assert result.resources == []
    [error] = result.diagnostics
    assert error.severity == ERROR and error.line == 1
    assert error.message.startswith("excessive aliasing: ")
    assert "the document is skipped" in error.message


@pytest.mark.parametrize(
    "text, routes",
    [
        # Anchors used the way people use them: one retry policy shared by several routes.
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: shared}\nspec:\n"
            "  hosts: [a.example.com]\n  http:\n"
            "  - {match: [{uri: {prefix: /a}}], retries: &retry {attempts: 3, perTryTimeout: 2s}, route: [{destination: {host: x}}]}\n"
            "  - {match: [{uri: {prefix: /b}}], retries: *retry, route: [{destination: {host: x}}]}\n",
            2,
        ),
        (_alias_bomb(8), 8),  # aliasing that stays small is fine
        # An "&" that is not an anchor.
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: amp}\nspec:\n"
            "  hosts: [a.example.com]\n  http:\n  - {match: [{uri: {exact: '/a&b'}}], route: [{destination: {host: x}}]}\n",
            1,
        ),
    ],
    ids=["shared-retry-policy", "small-expansion", "ampersand-in-a-string"],
)
def test_ordinary_anchors_load(text, routes):
    result = load(text)
    assert [d for d in result.diagnostics if d.severity == ERROR] == []
    [vs] = result.resources
    assert len(vs.spec.http) == routes


def test_a_recursive_alias_is_refused():
    result = load("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: &s\n  hosts: [*s]\n")
    assert result.resources == []
    assert [d.message.split(":")[0] for d in result.diagnostics] == ["excessive aliasing"]


# ---------------------------------------------------------------------------------------------------------
# The fast path: documents are composed by libyaml (with a memoised resolver) and built into Python data by
# edge.loader._construct, which leaves anything but plain mappings, sequences, strings, null, bools, ints and
# floats to PyYAML's SafeConstructor. Each case below must give what PyYAML alone gives: the same node tags
# and lines, the same data (or the same error), and the same load_text outcome, diagnostics included.

VS_DOC = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs
  creationTimestamp: "2024-01-01T00:00:00Z"
spec:
  hosts: [a.example.com]
  gateways: [gw]
  http:
  - match:
    - uri: {prefix: /api/}
    route:
    - destination: {host: a.internal, port: {number: 80}}
      weight: 100
"""

FAST_PATH_CASES = {
    "comments": "# leading\n" + GW.replace("kind: Gateway", "kind: Gateway  # trailing") + "# closing\n",
    "multi-document": GW + "---\n" + VS_DOC + "---\n" + GW.replace("name: gw", "name: gw2"),
    "empty-documents": "---\n---\n# only a comment\n---\n" + GW + "---\n...\n---\n",
    "explicit-document-end": GW + "...\n---\n" + VS_DOC + "...\n",
    "empty-file": "",
    "only-comments": "# nothing\n# here\n",
    "kubectl-list": "apiVersion: v1\nkind: List\nitems:\n" + textwrap.indent(GW, "  ").replace("  apiVersion", "- apiVersion", 1)
    + textwrap.indent(VS_DOC, "  ").replace("  apiVersion", "- apiVersion", 1),
    "nested-list": "kind: List\nitems:\n- kind: GatewayList\n  items:\n" + textwrap.indent(GW, "  - ").replace("  - ", "    ").replace("    apiVersion", "  - apiVersion", 1),
    "list-with-empty-and-scalar-items": "kind: List\nitems:\n- \n- just text\n- [1, 2]\n",
    "sequence-document": "- a\n- b\n",
    "scalar-document": "just a string\n",
    "number-document": "42\n",
    "null-document": "~\n",
    "anchors-and-aliases": GW.replace('hosts: ["*"]', 'hosts: &hosts ["*"]') + "---\n" + "kind: x\nlist: &l [1, {a: &s text}]\nagain: *l\nscalar: *s\n",
    "merge-key": "base: &b {number: 80, name: http}\nport:\n  <<: *b\n  name: web\n",
    "merge-key-list": "a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n",
    "duplicate-keys": "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: a\n  name: b\nspec: {}\nspec:\n  servers: []\n",
    "duplicate-keys-mixed": "a: 1\nb: 2\na: 3\n1: one\n1: uno\n",
    "tab-after-colon": "apiVersion:\tnetworking.istio.io/v1\nkind:\tGateway\nmetadata: {name:\tgw}\nspec: {}\n",
    "tab-in-value": "kind: x\nvalue: a\tb\n",
    "tab-indentation": "kind: x\nspec:\n\tservers: []\n",
    "ints": "a: 0x1F\nb: 0o17\nc: 017\nd: 1_000\ne: -42\nf: +7\ng: 1:30\nh: 0b101\ni: 0\n",
    "floats": "a: 1.5\nb: .inf\nc: -.Inf\nd: .NaN\ne: 1e3\nf: 6.8523015e+5\ng: 190:20:30.15\nh: 1_000.5\n",
    "bools": "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: False\ng: y\nh: n\n",
    "nulls": "a: ~\nb: null\nc:\nd: Null\ne: ''\n",
    "timestamps": "a: 2024-01-01\nb: 2024-01-01T10:00:00Z\nc: 2001-12-14 21:59:43.10 -5\n",
    "creation-timestamp-unquoted": VS_DOC.replace('"2024-01-01T00:00:00Z"', "2024-01-01T00:00:00Z"),
    "quoted-scalars": "a: 'yes'\nb: \"123\"\nc: \"\\x41\\u00e9\"\nd: 'it''s'\ne: \"~\"\n",
    "block-scalars": "a: |\n  line 1\n  line 2\nb: >\n  folded\n  text\nc: |-\n  kept\n",
    "explicit-tags": "a: !!str 123\nb: !!int \"42\"\nc: !!float 1\nd: !!bool yes\ne: !!null ''\nf: !!str\n",
    "binary-tag": "a: !!binary aGVsbG8=\n",
    "set-and-omap": "a: !!set {x, y}\nb: !!omap [x: 1, y: 2]\nc: !!pairs [x: 1]\n",
    "unknown-tag": "kind: !thing x\n",
    "unknown-tag-on-mapping": "kind: x\nspec: !thing {a: 1}\n",
    "bad-int": "port: !!int x\n",
    "no-kind": GW + "---\nkind: x\n",
    "non-string-keys": "80: http\n~: nothing\ntrue: yes\n1.5: x\n",
    "sequence-key": "? [a, b]\n: x\n",
    "mapping-key": "? {a: 1}\n: x\n",
    "value-key": "=: x\n",
    "long-values": "a: " + "x" * 100 + "\nb: " + "1" * 80 + "\nc: " + "1." + "5" * 70 + "\n",
    "unicode-and-bom": "\ufeffkind: Gateway\nname: \u00e9t\u00e9 \U0001f600\n",
    "json": '{"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"}, "spec": {"servers": []}}',
    "json-escapes": '{"kind": "x", "spec": {"export\\u0054o": ["."], "a\\tb": "\\n"}}\n',
    "mesh-only-keys": GW.replace("spec:\n", "spec:\n  exportTo: ['.']\n"),
    "mesh-only-key-escaped": '{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "vs"}, '
    '"spec": {"export\\u0054o": ["."], "hosts": ["a.example.com"], "http": [{"route": [{"destination": {"host": "a"}}]}]}}',
    "mesh-only-key-in-list-item": "kind: List\nitems:\n- kind: Other\n  network: x\n" + textwrap.indent(VS_DOC.replace("spec:\n", "spec:\n  exportTo: ['.']\n"), "  ").replace("  apiVersion", "- apiVersion", 1),
    "mesh-only-key-behind-merge": "x: &x {exportTo: ['.']}\n---\n" + VS_DOC.replace("spec:\n", "spec:\n  <<: {exportTo: ['.']}\n"),
    "deep-nesting": "a: " + "[" * 300 + "]" * 300 + "\n",
    "flow-mappings": "a: {b: {c: [1, 2, {d: e}]}, f: []}\ng: {}\n",
    "syntax-error": GW + "---\nkind: [\n",
    "recursive-alias": "a: &a [*a]\n",
}


def _compose(text: str, loader: type) -> list:
    return [node for node in yaml.compose_all(text, Loader=loader) if node is not None]


def _shape(node: yaml.Node, seen: set | None = None):
    """A node tree as comparable data: class, tag, value, start line and column, recursively."""
    seen = set() if seen is None else seen
    head = (type(node).__name__, node.tag, node.start_mark.line, node.start_mark.column)
    if isinstance(node, yaml.ScalarNode):
        return (*head, node.value, node.style)
    if id(node) in seen:
        return (*head, "alias")
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        return (*head, [(_shape(k, seen), _shape(v, seen)) for k, v in node.value])
    return (*head, [_shape(item, seen) for item in node.value])


def _outcome(thunk):
    try:
        return "ok", thunk()
    except Exception as exc:  # noqa: BLE001 -- the outcome being compared
        return "error", type(exc).__name__, str(exc)


@pytest.mark.parametrize("name", FAST_PATH_CASES)
def test_the_resolver_shortcuts_compose_what_pyyaml_composes(name):
    text = FAST_PATH_CASES[name]
    plain = _outcome(lambda: [_shape(n) for n in _compose(text, yaml.CSafeLoader)])
    fast = _outcome(lambda: [_shape(n) for n in _compose(text, loader_module._YamlLoader)])
    assert fast == plain


@pytest.mark.parametrize("name", FAST_PATH_CASES)
def test_the_fast_constructor_builds_what_pyyaml_builds_or_steps_aside(name):
    text = FAST_PATH_CASES[name]
    try:
        nodes = _compose(text, loader_module._YamlLoader)
    except yaml.YAMLError:
        return  # a syntax error: no document reaches a constructor
    for node in nodes:
        if loader_module.expanded_size(node)[0] >= 1 << 62:
            continue  # recursive: refused before construction
        reference = _outcome(lambda: loader_module._Constructor().construct_document(node))
        for shared in (False, True):
            try:
                built = loader_module._construct(node, shared)
            except loader_module._NotPlain:
                continue  # PyYAML's constructor builds it (or fails) instead
            assert reference == ("ok", built)


def _slow_load(text: str, monkeypatch) -> LoadResult:
    """PyYAML's loader and constructor alone, and the mesh-only walk on every resource."""

    def refuse(*args):
        raise loader_module._NotPlain

    with monkeypatch.context() as patch:
        patch.setattr(loader_module, "_construct", refuse)
        patch.setattr(loader_module, "_YamlLoader", loader_module._BaseLoader)
        result = LoadResult()
        load_text(text, "conf.yaml", result)
    return result


@pytest.mark.parametrize("name", FAST_PATH_CASES)
def test_load_text_gives_what_pyyaml_alone_gives(name, monkeypatch):
    text = FAST_PATH_CASES[name]
    fast = _outcome(lambda: load(text))
    slow = _outcome(lambda: _slow_load(text, monkeypatch))
    if fast[0] == "ok" and slow[0] == "ok":
        assert fast[1].resources == slow[1].resources
        assert [str(d) for d in fast[1].diagnostics] == [str(d) for d in slow[1].diagnostics]
        assert fast[1].diagnostics == slow[1].diagnostics
    else:
        assert fast == slow


# What PyYAML made of these before the fast path existed, pinned (data of the first document).
PINNED_DATA = {
    "duplicate-keys-mixed": {"a": 3, "b": 2, 1: "uno"},
    "ints": {"a": 31, "b": "0o17", "c": 15, "d": 1000, "e": -42, "f": 7, "g": 90, "h": 5, "i": 0},
    "bools": {"a": True, "b": False, "c": True, "d": False, "e": True, "f": False, "g": "y", "h": "n"},
    "nulls": {"a": None, "b": None, "c": None, "d": None, "e": ""},
    "quoted-scalars": {"a": "yes", "b": "123", "c": "A\u00e9", "d": "it's", "e": "~"},
    "non-string-keys": {80: "http", None: "nothing", True: True, 1.5: "x"},
    "merge-key": {"base": {"number": 80, "name": "http"}, "port": {"number": 80, "name": "web"}},
    "tab-after-colon": {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"}, "spec": {}},
    "tab-in-value": {"kind": "x", "value": "a\tb"},
    "sequence-document": ["a", "b"],
    "number-document": 42,
    "null-document": None,
}


@pytest.mark.parametrize("name", PINNED_DATA)
def test_pinned_pyyaml_data(name):
    assert yaml.load(FAST_PATH_CASES[name], Loader=loader_module._YamlLoader) == PINNED_DATA[name]
    node = _compose(FAST_PATH_CASES[name], loader_module._YamlLoader)
    built = _outcome(lambda: loader_module._construct(node[0], False)) if node else ("ok", None)
    if built[0] == "ok":
        assert built[1] == PINNED_DATA[name]


# load_text outcomes pinned from the loader before the fast path: (resource names, diagnostics).
PINNED_LOADS = {
    "empty-file": ([], []),
    "only-comments": ([], []),
    "empty-documents": (["gw"], []),
    "sequence-document": ([], [(ERROR, 1, "expected a Kubernetes object (a mapping)")]),
    "scalar-document": ([], [(ERROR, 1, "expected a Kubernetes object (a mapping)")]),
    "null-document": ([], []),
    # The last of duplicate keys wins (PyYAML does not refuse them): `spec: {}` is replaced by the later one.
    "duplicate-keys": ([], [(ERROR, 6, "a Gateway needs at least one server")]),
    "tab-after-colon": ([], [(ERROR, 4, "a Gateway needs at least one server")]),
    "tab-indentation": ([], [(ERROR, 3, "invalid YAML: while scanning for the next token, found character that cannot start any token")]),
    "no-kind": (["gw"], [(ERROR, 10, "object (document 2) has no kind/apiVersion")]),
    "list-with-empty-and-scalar-items": ([], [(ERROR, 4, "expected a Kubernetes object (a mapping)"), (ERROR, 5, "expected a Kubernetes object (a mapping)")]),
    "mapping-key": ([], [(ERROR, 1, "invalid YAML: while constructing a mapping")]),
    "sequence-key": ([], [(ERROR, 1, "invalid YAML: while constructing a mapping")]),
    "unknown-tag-on-mapping": ([], [(ERROR, 2, "invalid YAML: could not determine a constructor for the tag '!thing'")]),
    "recursive-alias": ([], [(ERROR, 1, "excessive aliasing: 2 YAML nodes expand to 4,611,686,018,427,387,904 through anchors and aliases (at most 1,000,000, or 10× the nodes written); the document is skipped")]),
    "syntax-error": ([], [(ERROR, 11, "invalid YAML: while parsing a flow node, did not find expected node content")]),
    "mesh-only-key-escaped": (["vs"], [(WARNING, 1, "has no effect here: namespace visibility is a Kubernetes mesh setting; every resource is visible here")]),
    "mesh-only-key-in-list-item": (["vs"], [
        (ERROR, 3, "object has no kind/apiVersion"),
        (WARNING, 11, "has no effect here: namespace visibility is a Kubernetes mesh setting; every resource is visible here"),
    ]),
    "mesh-only-key-behind-merge": (["vs"], [
        (ERROR, 1, "object (document 1) has no kind/apiVersion"),
        (WARNING, 9, "has no effect here: namespace visibility is a Kubernetes mesh setting; every resource is visible here"),
    ]),
}


@pytest.mark.parametrize("name", PINNED_LOADS)
def test_pinned_load_outcomes(name):
    result = load(FAST_PATH_CASES[name])
    names, diagnostics = PINNED_LOADS[name]
    assert [r.name for r in result.resources] == names
    assert [(d.severity, d.line, d.message.split("\n")[0]) for d in result.diagnostics] == diagnostics
