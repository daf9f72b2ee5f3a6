# The fields a spec Struct accepts at a `$.spec…` path, in their wire (camelCase) form, for the loader's messages:
# "unknown field 'prefx' (did you mean 'prefix'?)", and every unknown field of a document, not only the first one
# msgspec stops at.
#
# Rules:
# - Types are read with msgspec.inspect, so what is suggested is exactly what the decoder accepts (renames,
#   optional and nested Structs, lists and maps of Structs) — no second list of field names to keep in step.
# - A suggestion is difflib's closest known name (cutoff DIDYOUMEAN_CUTOFF), or none; a map's keys are the user's
#   own and never get suggestions.
# - unknown_fields walks the plain document (what YAML gave) against the types and yields the path of every key
#   that names no field, in document order; it does not judge values (the decoder does that).
# - Pure: no I/O.
from __future__ import annotations

import difflib
from functools import lru_cache
from typing import Any, Iterator

import msgspec.inspect as mi

DIDYOUMEAN_CUTOFF = 0.6  # difflib's default: close enough that the suggestion is usually the intended word


@lru_cache(maxsize=None)
def _info(type_: Any) -> mi.Type:
    return mi.type_info(type_)


def _struct_of(t: mi.Type) -> mi.StructType | None:
    """The Struct a value of type `t` is (through Optional / unions)."""
    if isinstance(t, mi.StructType):
        return t
    if isinstance(t, mi.UnionType):
        for member in t.types:
            found = _struct_of(member)
            if found is not None:
                return found
    return None


def _element(t: mi.Type, token: str | int) -> mi.Type | None:
    """The type one step (a field name, a list index, a map key) below a value of type `t`."""
    if isinstance(t, mi.UnionType):
        for member in t.types:
            found = _element(member, token)
            if found is not None:
                return found
        return None
    if isinstance(t, mi.StructType) and isinstance(token, str):
        return next((f.type for f in t.fields if f.encode_name == token), None)
    if isinstance(t, (mi.ListType, mi.TupleType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)) and isinstance(token, int):
        return getattr(t, "item_type", None)
    if isinstance(t, mi.DictType):
        return t.value_type
    return None


def known_fields(spec_type: Any, tokens: list[str | int]) -> list[str]:
    """The wire names of the Struct at `tokens` below the spec (empty when it is not a Struct)."""
    t: mi.Type | None = _info(spec_type)
    for token in tokens:
        if t is None:
            return []
        t = _element(t, token)
    struct = _struct_of(t) if t is not None else None
    return [f.encode_name for f in struct.fields] if struct is not None else []


def suggestion(name: str, known: list[str]) -> str:
    """" (did you mean 'prefix'?)" or ""."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=DIDYOUMEAN_CUTOFF)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_fields(spec_type: Any, data: Any) -> Iterator[tuple[list[str | int], str]]:
    """(path to the object, the unknown key) for every key of `data` that names no field of its Struct."""
    yield from _walk(_info(spec_type), data, [])


def _walk(t: mi.Type, data: Any, tokens: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
    struct = _struct_of(t)
    if struct is not None:
        if not isinstance(data, dict):
            return
        fields = {f.encode_name: f.type for f in struct.fields}
        for key, value in data.items():
            sub = fields.get(key) if isinstance(key, str) else None
            if sub is None:
                yield tokens, str(key)
            else:
                yield from _walk(sub, value, [*tokens, key])
        return
    if isinstance(data, list):
        item = _element(t, 0)
        if item is not None:
            for i, value in enumerate(data):
                yield from _walk(item, value, [*tokens, i])
    elif isinstance(data, dict) and isinstance(t, (mi.DictType, mi.UnionType)):
        value_type = _element(t, "")
        if value_type is not None and _struct_of(value_type) is not None:
            for key, value in data.items():
                yield from _walk(value_type, value, [*tokens, str(key)])
