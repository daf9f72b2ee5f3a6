# Files → Istio resources, with every problem pinned to a file, a line and a `$.spec…` path.
#
# Rules:
# - Paths may be files or directories; directories are walked recursively in sorted order, keeping
#   `.yaml`, `.yml` and `.json` files and skipping names that start with "." (Kubernetes ConfigMap mounts
#   keep their real files in `..2024_…` folders behind `..data` symlinks; the visible names are enough).
# - A file holds one or more YAML documents (JSON is read as YAML); a document is one object or a kubectl
#   `List` (`kind: List` / `…List` with `items`). Empty documents are ignored.
# - Objects of the kinds in edge/kinds.py (the networking.istio.io group's Gateway, VirtualService,
#   DestinationRule and ServiceEntry, and every other input's rows) are decoded strictly. Anything else (Deployment,
#   Service, Gateway API objects, other Istio kinds) is skipped with a note.
# - `metadata.namespace` defaults to "default". `metadata.name` is required.
# - Load order = sorted file path order, then document order; it is the creation order of resources that
#   carry no `metadata.creationTimestamp`.
# - Fields that only mean something inside a Kubernetes mesh are accepted and produce a warning saying they
#   have no effect here: a file pasted from istio.io must not fail because of them.
# - Speed (10,000 VirtualServices load in under a second): libyaml composes the nodes (their marks give every
#   line), a memoised resolver tags the scalars, and _construct builds plain documents into dicts and lists;
#   a document it does not handle (timestamps, merge keys, explicit tags, collection keys) goes to PyYAML's
#   SafeConstructor, so data and errors are PyYAML's either way. The cyclic GC is paused during a load.
from __future__ import annotations

import gc
import os
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import yaml

from edge import istio, kinds, spec_fields
from edge.errors import ERROR, HINT, NOTE, WARNING, Diagnostic

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_NAMESPACE = "default"

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
RESOLVE_CACHE_MAX = 50_000
_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class _YamlLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The C loader with its (pure-Python) implicit-tag resolver memoised: Kubernetes YAML repeats the same
    keys and short values thousands of times, and resolving each with regexes dominated load time.

    Equivalent to PyYAML's resolver because SafeLoader has no path resolvers (yaml_path_resolvers is empty:
    edge never adds any): then a scalar's tag depends only on its text when it is plain, and is `str` when it
    is quoted; a collection's tag is the default one; and the composer's descend/ascend hooks do nothing, so
    they are C builtins here that take the same arguments and return at once (one Python frame less per node)."""

    _resolved: dict = {}
    descend_resolver = slice  # (parent, index) → ignored
    ascend_resolver = int  # () → ignored

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode:
            if not implicit[0]:
                return _STR_TAG
            tag = self._resolved.get(value)
            if tag is not None:
                return tag
            tag = super().resolve(kind, value, implicit)
            if len(value) <= 64:
                if len(self._resolved) >= RESOLVE_CACHE_MAX:
                    self._resolved.clear()
                self._resolved[value] = tag
            return tag
        return _MAP_TAG if kind is yaml.MappingNode else _SEQ_TAG


assert not _YamlLoader.yaml_path_resolvers, "the resolver shortcuts of _YamlLoader assume no path resolvers"


# YAML aliases can make a small document describe an enormous one (the "billion laughs" of CVE-2019-11253 in
# the Kubernetes API server; go-yaml now refuses "excessive aliasing"). A document is refused when its aliases
# expand it past both limits; without aliases it is never refused, however large.
MAX_EXPANDED_NODES = 1_000_000
MAX_ALIAS_EXPANSION = 10


def expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(nodes once every alias is expanded, distinct nodes) of a composed document, in time linear in the
    distinct nodes. A node that contains itself (a recursive alias) counts as infinitely large."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = ()
        if children_done:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            continue
        if key in sizes:
            continue
        in_progress.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in in_progress:
                return 1 << 62, len(sizes) + len(in_progress)
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)], len(sizes)


class _Constructor(yaml.constructor.SafeConstructor):
    """PyYAML's safe constructor, except that a scalar its explicit tag cannot hold (`!!int x`,
    `!!timestamp 2026-13-45`) is a YAML error at that scalar's line, not a ValueError from int()."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            shown = f"{tag} {node.value}" if isinstance(node, yaml.ScalarNode) else tag
            raise yaml.constructor.ConstructorError(None, None, f"{shown}: {exc}", node.start_mark) from None


class _NotPlain(Exception):
    """The document holds something _construct leaves to PyYAML's constructor."""


_SAFE = yaml.constructor.SafeConstructor()
# Plain scalars of these tags (every implicit one but timestamps) are built by PyYAML's own functions, once per
# distinct (tag, text): the values are immutable, so sharing them changes nothing.
_SCALAR_CONSTRUCTORS = {
    "tag:yaml.org,2002:null": _SAFE.construct_yaml_null,
    "tag:yaml.org,2002:bool": _SAFE.construct_yaml_bool,
    "tag:yaml.org,2002:int": _SAFE.construct_yaml_int,
    "tag:yaml.org,2002:float": _SAFE.construct_yaml_float,
}
_SCALAR_CACHE_MAX = 10_000
_SCALARS: dict[tuple[str, str], Any] = {}  # (tag, text) → value, for the tags above


def _construct(root: yaml.Node, shared: bool, keys: set | None = None) -> Any:
    """A composed document → Python data, as PyYAML's SafeConstructor builds it, for the documents people
    write: mappings, sequences, strings, null, bools, ints and floats. Anything else (timestamps, merge keys
    `<<`, explicit tags such as !!binary, !!set or !foo, a key that is a collection, a value its tag cannot
    hold) raises _NotPlain, and the caller builds the document with _Constructor instead, which gives the same
    data or the same error. `shared`: the document may hold aliases, whose node is then built once and the
    object shared, as SafeConstructor does (recursive aliases never get here: expanded_size refuses them).
    `keys` (when given) receives every mapping key of the document.
    About five times faster than SafeConstructor, whose per-node generators and state checks cost most of a load."""
    try:
        return _build(root, {} if shared else None, set() if keys is None else keys)
    except Exception:  # _NotPlain, a scalar its tag cannot hold, a nesting deeper than the Python stack
        raise _NotPlain from None


def _build(node: yaml.Node, built: dict | None, keys: set) -> Any:
    """One node of _construct; `built`: id(node) → object, for documents that may share nodes."""
    cls = node.__class__
    if cls is yaml.ScalarNode:
        tag = node.tag
        if tag == _STR_TAG:
            return node.value
        key = (tag, node.value)
        value = _SCALARS.get(key, _SCALARS)
        if value is _SCALARS:
            make = _SCALAR_CONSTRUCTORS.get(tag)
            if make is None:
                raise _NotPlain
            value = make(node)
            if len(_SCALARS) < _SCALAR_CACHE_MAX:
                _SCALARS[key] = value
        return value
    if built is not None:
        known = built.get(id(node), built)
        if known is not built:
            return known
    if cls is yaml.MappingNode:
        if node.tag != _MAP_TAG:
            raise _NotPlain
        mapping: dict = {}
        if built is not None:
            built[id(node)] = mapping
        for key_node, value_node in node.value:  # strings inline: most keys and values are
            if key_node.__class__ is not yaml.ScalarNode:
                raise _NotPlain
            key = key_node.value if key_node.tag == _STR_TAG else _build(key_node, built, keys)
            if value_node.__class__ is yaml.ScalarNode and value_node.tag == _STR_TAG:
                mapping[key] = value_node.value
            else:
                mapping[key] = _build(value_node, built, keys)
        keys.update(mapping)
        return mapping
    if cls is yaml.SequenceNode:
        if node.tag != _SEQ_TAG:
            raise _NotPlain
        sequence: list = []
        if built is not None:
            built[id(node)] = sequence
        sequence.extend([_build(item, built, keys) for item in node.value])
        return sequence
    raise _NotPlain


# Keys that are mesh- or Kubernetes-only wherever they appear in a spec, with why they do nothing here.
MESH_ONLY_KEYS: dict[str, str] = {
    "exportTo": "namespace visibility is a Kubernetes mesh setting; every resource is visible here",
    "sourceLabels": "sidecar source selectors have no effect at a gateway that has no such labels",
    "sourceNamespace": "sidecar source selectors have no effect at a standalone gateway",
    "destinationSubnets": "destination subnets only apply to sidecars",
    "sourceSubnet": "source subnets only apply to sidecars",
    "workloadSelector": "workload selectors pick Kubernetes workloads; this gateway has none",
    "localityLbSetting": "locality load balancing needs mesh topology; endpoints are balanced without it",
    "zoneAwareLbSetting": "zone-aware load balancing needs mesh topology; endpoints are balanced without it",
    "retryRemoteLocalities": "locality-aware retries need mesh topology",
    "network": "multi-network routing is a mesh feature",
    "serviceAccount": "workload identities are a mesh feature",
    "locality": "locality is a mesh feature",
    "location": "MESH_INTERNAL/EXTERNAL only changes mesh mTLS and policy",
    "caCertCredentialName": "not supported yet; put ca.crt in the credentialName folder instead",
}


@dataclass
class LoadResult:
    resources: list[istio.Resource] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.severity == ERROR for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == WARNING]


def find_config_files(paths: list[str]) -> tuple[list[str], list[Diagnostic]]:
    files: list[str] = []
    problems: list[Diagnostic] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith(".") and name.endswith(CONFIG_SUFFIXES):
                        files.append(os.path.join(root, name))
        elif os.path.isfile(path):
            files.append(path)
        else:
            problems.append(Diagnostic(severity=ERROR, file=path, message="no such file or directory"))
    # Sorted overall so that creation order does not depend on the order paths were given in.
    return sorted(dict.fromkeys(files)), problems


class FileCache:
    """What each file loaded into, keyed by the file's identity (inode, size, mtime, ctime), so a reload
    parses only the files that changed. The supervisor keeps one for its lifetime."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[tuple, list[istio.Resource], list[Diagnostic]]] = {}


def _identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def load_paths(paths: list[str], cache: FileCache | None = None) -> LoadResult:
    # A load allocates millions of long-lived, acyclic objects (nodes, dicts, Structs); the cyclic collector
    # would rescan them over and over (a quarter of the time for 30,000 resources). Paused, then restored, as
    # compile_resources does.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _load_paths(paths, cache)
    finally:
        if paused:
            gc.enable()


def _load_paths(paths: list[str], cache: FileCache | None) -> LoadResult:
    files, problems = find_config_files(paths)
    result = LoadResult(diagnostics=problems, files=files)
    seen: dict[str, tuple] = {}
    for path in files:
        identity = _identity(path) if cache is not None else None
        if identity is not None:
            hit = cache.entries.get(path)
            if hit is not None and hit[0] == identity:
                result.resources.extend(hit[1])
                result.diagnostics.extend(hit[2])
                seen[path] = hit
                continue
        one = LoadResult()
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            one.diagnostics.append(Diagnostic(severity=ERROR, file=path, message=f"cannot read: {exc}"))
        else:
            load_text(text, path, one)
        if identity is not None and identity == _identity(path):  # not rewritten while we read it
            seen[path] = (identity, one.resources, one.diagnostics)
        result.resources.extend(one.resources)
        result.diagnostics.extend(one.diagnostics)
    if cache is not None:
        cache.entries = seen  # files that disappeared drop out
    # Load order is the creation order of resources without a creationTimestamp.
    for i, resource in enumerate(result.resources):
        if resource.order != i:
            result.resources[i] = msgspec.structs.replace(resource, order=i)
    return result


def load_text(text: str, path: str, result: LoadResult) -> None:
    """Parse one file's text and append its resources and diagnostics to `result`.

    Documents are composed and converted one at a time (with one of look-ahead, to know whether the file holds
    several) so a file of thousands of documents never has all its node trees alive at once. A YAML syntax
    error anywhere in the file fails the whole file with that one diagnostic, as if nothing had been read."""
    one = LoadResult()
    may_alias = "&" in text  # no anchor, no alias: the expansion check is skipped
    try:
        documents = (n for n in yaml.compose_all(text, Loader=_YamlLoader) if n is not None)
        first = next(documents, None)
        second = next(documents, None)
        multi = second is not None
        index = 0
        for node in (first, second):
            if node is not None:
                _load_document(node, path, index, multi, one, may_alias)
                index += 1
        del first, second
        for node in documents:
            _load_document(node, path, index, multi, one, may_alias)
            index += 1
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        message = f"invalid YAML: {context + ', ' if context else ''}{reason}"
        result.diagnostics.append(Diagnostic(severity=ERROR, file=path, line=line, message=message))
        return
    result.resources.extend(one.resources)
    result.diagnostics.extend(one.diagnostics)


def _load_document(node: yaml.Node, path: str, index: int, multi: bool, result: LoadResult, may_alias: bool = True) -> None:
    if may_alias:
        expanded, unique = expanded_size(node)
        if expanded > MAX_EXPANDED_NODES and expanded > MAX_ALIAS_EXPANSION * unique:
            where = f"document {index + 1}: " if multi else ""
            message = (
                f"{where}excessive aliasing: {unique:,} YAML nodes expand to {expanded:,} through anchors and aliases "
                f"(at most {MAX_EXPANDED_NODES:,}, or {MAX_ALIAS_EXPANSION}× the nodes written); the document is skipped"
            )
            result.diagnostics.append(Diagnostic(severity=ERROR, file=path, line=node.start_mark.line + 1, message=message))
            return
    try:
        keys: set = set()
        try:
            obj = _construct(node, may_alias, keys)
            mesh_keys = not keys.isdisjoint(MESH_ONLY_KEYS)
        except _NotPlain:
            obj = _Constructor().construct_document(node)
            mesh_keys = True
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else node.start_mark.line + 1
        result.diagnostics.append(Diagnostic(severity=ERROR, file=path, line=line, message=f"invalid YAML: {exc}"))
        return
    _load_object(obj, node, path, index, multi, result, mesh_keys)


def _load_object(obj: Any, node: yaml.Node, path: str, doc: int, multi: bool, result: LoadResult, mesh_keys: bool = True) -> None:
    """One object of a document: a kubectl List item by item, anything else as one resource."""
    if obj is None:
        return
    if not isinstance(obj, dict):
        result.diagnostics.append(
            Diagnostic(severity=ERROR, file=path, line=node.start_mark.line + 1, message="expected a Kubernetes object (a mapping)")
        )
        return
    kind = obj.get("kind")
    items = obj.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        items_node = _child(node, "items")
        for i, item in enumerate(items):
            item_node = _child(items_node, i) if items_node is not None else node
            _load_object(item, item_node if item_node is not None else node, path, doc, multi, result, mesh_keys)
        return
    _load_resource(obj, node, path, doc, f" (document {doc + 1})" if multi else "", result, mesh_keys)


def _load_resource(obj: dict, node: yaml.Node, path: str, doc: int, where: str, result: LoadResult, mesh_keys: bool = True) -> None:
    """One object that is not a List: a resource edge serves, decoded strictly, or the diagnostic saying why not.
    `where` names the document when the file has several; `mesh_keys` False: its document has no mesh-only key."""
    line0 = node.start_mark.line + 1
    row, problem = _kind_problem(obj, node, path, line0, where)
    if row is None:
        result.diagnostics.append(problem)
        return
    kind, api_version = obj["kind"], obj["apiVersion"]
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata.get("name"):
        result.diagnostics.append(
            Diagnostic(severity=ERROR, file=path, line=_line(node, ["metadata"]), message=f"{kind}{where}: metadata.name is required")
        )
        return
    name = metadata["name"]
    namespace = metadata.get("namespace") or DEFAULT_NAMESPACE
    ref = f"{kind} {namespace}/{name}{where}"
    if not isinstance(namespace, str):
        result.diagnostics.append(Diagnostic(severity=ERROR, file=path, line=_line(node, ["metadata", "namespace"]), resource=ref, message="metadata.namespace must be a string"))
        return

    spec = obj.get("spec")
    if spec is None:
        result.diagnostics.append(Diagnostic(severity=ERROR, file=path, line=line0, resource=ref, path="$.spec", message="spec is required"))
        return
    spec_node = _child(node, "spec")
    try:
        decoded = kinds.decode_spec(row, spec)
    except msgspec.ValidationError as exc:
        json_path, line, message = _explain_validation_error(str(exc), spec, spec_node, line0)
        result.diagnostics.append(Diagnostic(severity=ERROR, file=path, line=line, resource=ref, path=json_path, message=message))
        _more_unknown_fields(row.spec_type, spec, spec_node, path, ref, (json_path, message), result)
        return

    for json_path, key_line, why in _mesh_only_fields(spec, spec_node, "$.spec") if mesh_keys and row.mesh_fields else ():
        result.diagnostics.append(Diagnostic(severity=WARNING, file=path, line=key_line, resource=ref, path=json_path, message=f"has no effect here: {why}"))
    result.resources.append(_resource(row.key, api_version, name, namespace, metadata, decoded, path, line0, doc, len(result.resources)))


def _more_unknown_fields(spec_type: type, spec: Any, spec_node: yaml.Node | None, path: str, ref: str, first: tuple[str, str], result: LoadResult) -> None:
    """msgspec stops at the first error; every unknown field of the spec is reported (the first error as it was),
    each followed by a hint naming the closest known field when there is one."""
    for tokens, name in spec_fields.unknown_fields(spec_type, spec):
        json_path = "$.spec" + "".join(f"[{t}]" if isinstance(t, int) else f".{t}" for t in tokens)
        message = f"unknown field {name!r}"
        line = _line(spec_node, [*tokens, name]) if spec_node is not None else 0
        where = dict(file=path, line=line, resource=ref, path=json_path)
        if (json_path, message) != first:
            result.diagnostics.append(Diagnostic(severity=ERROR, message=message, **where))
        hint = spec_fields.suggestion(name, spec_fields.known_fields(spec_type, tokens))
        if hint:
            result.diagnostics.append(Diagnostic(severity=HINT, message=hint.strip(" ()"), **where))


def _kind_problem(obj: dict, node: yaml.Node, path: str, line0: int, where: str) -> tuple[kinds.Kind | None, Diagnostic | None]:
    """(the kind's row, None) for a resource edge serves; otherwise (None, why not): no kind/apiVersion (an
    error), another group or kind (a note: skipped), an API version edge does not know for the kind (an error)."""
    kind = obj.get("kind")
    api_version = obj.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return None, Diagnostic(severity=ERROR, file=path, line=line0, message=f"object{where} has no kind/apiVersion")
    row, why = kinds.lookup(api_version, kind)
    if why:
        return None, Diagnostic(severity=ERROR, file=path, line=_line(node, ["apiVersion"]), message=why)
    if row is None:
        return None, Diagnostic(severity=NOTE, file=path, line=line0, message=f"skipped {kind} ({api_version}){where}: not a resource edge serves")
    return row, None


def _resource(kind: str, api_version: str, name: str, namespace: str, metadata: dict, spec: Any, path: str, line: int, doc: int, order: int) -> istio.Resource:
    timestamp = metadata.get("creationTimestamp") or ""
    if not isinstance(timestamp, str):  # YAML may have turned an unquoted timestamp into a datetime
        timestamp = timestamp.isoformat().replace("+00:00", "Z")
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    return istio.Resource(
        kind=kind,
        name=name,
        namespace=namespace,
        spec=spec,
        api_version=api_version,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        annotations={str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {},
        creation_timestamp=timestamp,
        file=path,
        line=line,
        document=doc,
        order=order,
    )


# ---------------------------------------------------------------------------------------------------------
# Error locations
# ---------------------------------------------------------------------------------------------------------

_MSGSPEC_ERROR = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.S)
_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")
_GOT_TYPE = re.compile(r"got `(\w+)`")

_JSON_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", list: "array", dict: "object", type(None): "null"}


def _explain_validation_error(text: str, spec: Any, spec_node: yaml.Node | None, fallback_line: int) -> tuple[str, int, str]:
    """msgspec's "Expected `int`, got `str` - at `$.http[0].weight`" → ("$.spec.http[0].weight", line, "expected int, got str")."""
    m = _MSGSPEC_ERROR.match(text)
    message = m.group("message") if m else text
    tokens: list[str | int] = []
    for name, index in _PATH_TOKEN.findall((m.group("path") or "$")[1:] if m else ""):
        if name:
            tokens.append(name)
        elif index == "...":
            tokens.append(...)  # type: ignore[arg-type]
        else:
            tokens.append(int(index))
    got = _GOT_TYPE.search(message)
    unknown = _UNKNOWN_FIELD.search(message)
    resolved = _resolve_map_keys(spec, tokens, got.group(1) if got else None, unknown.group(1) if unknown else None)
    if unknown:
        resolved.append(unknown.group(1))
    line = _line(spec_node, resolved) if spec_node is not None else fallback_line
    json_path = "$.spec" + "".join(f"[{t}]" if isinstance(t, int) else f".{t}" for t in resolved)
    message = message.replace("`", "").replace(" | null", "")
    message = message[:1].lower() + message[1:]
    if unknown:
        message = f"unknown field {unknown.group(1)!r}"
        json_path = json_path.rsplit(".", 1)[0] or "$.spec"
    missing = _MISSING_FIELD.search(text)
    if missing:
        message = f"missing required field {missing.group(1)!r}"
    return json_path, line, message


def _resolve_map_keys(data: Any, tokens: list[Any], got_type: str | None, unknown: str | None) -> list[str | int]:
    """Replace msgspec's `[...]` (a map key it does not name) by the key whose value holds the error."""
    if not tokens:
        return []
    head, rest = tokens[0], tokens[1:]
    if head is ...:
        if not isinstance(data, dict):
            return []
        candidates = []
        for key, value in data.items():
            sub = _resolve_map_keys(value, rest, got_type, unknown)
            if len(sub) == len(rest):
                leaf = _walk(value, sub)
                score = 0
                if got_type is not None and _JSON_TYPE_NAMES.get(type(leaf)) == got_type:
                    score = 2
                if unknown is not None and isinstance(leaf, dict) and unknown in leaf:
                    score = 2
                candidates.append((score, str(key), sub))
        if not candidates:
            return []
        score, key, sub = max(candidates, key=lambda c: c[0])
        return [key, *sub]
    if isinstance(head, int):
        if isinstance(data, list) and 0 <= head < len(data):
            return [head, *_resolve_map_keys(data[head], rest, got_type, unknown)]
        return [head]
    if isinstance(data, dict) and head in data:
        return [head, *_resolve_map_keys(data[head], rest, got_type, unknown)]
    return [head]


def _walk(data: Any, tokens: list[str | int]) -> Any:
    for t in tokens:
        try:
            data = data[t]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _child(node: yaml.Node | None, key: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(key, str):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]
    return None


def _line(node: yaml.Node | None, tokens: list[str | int]) -> int:
    """Line of the deepest node the path reaches (the key's own line for the last mapping step)."""
    if node is None:
        return 0
    line = node.start_mark.line + 1
    for token in tokens:
        if isinstance(node, yaml.MappingNode) and isinstance(token, str):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == token:
                    line = k.start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(token, int) and 0 <= token < len(node.value):
            node = node.value[token]
            line = node.start_mark.line + 1
        else:
            return line
    return line


# Maps whose keys are the user's own (header names, labels): never read as field names.
_USER_KEYED_MAPS = frozenset({"headers", "withoutHeaders", "queryParams", "labels", "selector", "matchLabels", "set", "add", "ports"})


def _mesh_only_fields(data: Any, node: yaml.Node | None, path: str):
    """(json path, line, why) for every mesh-only field in `data`; the YAML node is consulted only for the
    lines of what is found, so a clean resource costs one walk of plain dicts."""
    for tokens, key in _mesh_only_paths(data, []):
        json_path = path + "".join(f"[{t}]" if isinstance(t, int) else f".{t}" for t in tokens)
        yield json_path, _line(node, tokens), MESH_ONLY_KEYS[key]


def _mesh_only_paths(data: Any, tokens: list):
    if isinstance(data, dict):
        for key, value in data.items():
            if key in MESH_ONLY_KEYS and value not in (None, "", [], {}):
                yield [*tokens, key], key
            elif key not in _USER_KEYED_MAPS and isinstance(value, (dict, list)):
                yield from _mesh_only_paths(value, [*tokens, key])
    elif isinstance(data, list):
        for i, value in enumerate(data):
            if isinstance(value, (dict, list)):
                yield from _mesh_only_paths(value, [*tokens, i])


# ---------------------------------------------------------------------------------------------------------
# Lines of compile diagnostics: the compiler names a resource's first line and a $.spec… path; the line of the
# path is found here, in the file, because only the files know lines.

_PATH_TOKENS = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def refine_lines(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Re-read the YAML of each diagnostic's file and move it to the line of its path inside its resource."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    documents: dict[str, list] = {}
    out = []
    for d in diagnostics:
        if not d.file or not d.path.startswith("$.") or not d.line:
            out.append(d)
            continue
        if d.file not in documents:
            try:
                with open(d.file, encoding="utf-8") as f:
                    documents[d.file] = [n for n in yaml.compose_all(f.read(), Loader=loader) if n is not None]
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                documents[d.file] = []
        node = _resource_node(documents[d.file], d.line)
        line = _node_line(node, d.path) if node is not None else 0
        out.append(msgspec.structs.replace(d, line=line) if line else d)
    return out


def _resource_node(nodes: list, line: int):
    """The mapping node of the object starting at `line` (a document, or an item of a kubectl List)."""
    for node in nodes:
        if node.start_mark.line + 1 == line and isinstance(node, yaml.MappingNode):
            return node
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == "items" and isinstance(value, yaml.SequenceNode):
                    found = _resource_node(value.value, line)
                    if found is not None:
                        return found
    return None


def _node_line(node, path: str) -> int:
    """Line of the deepest node `path` ($.spec.http[0].route) reaches: a key's own line for mapping steps."""
    line = node.start_mark.line + 1
    for name, index in _PATH_TOKENS.findall(path[1:]):
        if name and isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == name:
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            node = node.value[int(index)]
            line = node.start_mark.line + 1
        else:
            return line
    return line
