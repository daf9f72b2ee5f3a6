# The HTTP/1 codec engines by name (`--http-codec`): each is a (server codec, client codec) pair of classes
# with the interface of workers/http/codec.py. `auto`, the default, takes httptools when it is installed (a regular
# dependency) and h11, the reference, otherwise. Pure.
from __future__ import annotations

from workers.http.codec_fast import FastClient, FastServer, httptools
from workers.http.codec_h11 import H11Client, H11Server

CODECS = ("auto", "h11", "httptools")


def resolve_codec(name: str) -> str:
    """`auto` (the default) → httptools when it can be imported, else h11: uvicorn's `--http auto` convention."""
    if name == "auto":
        return "httptools" if httptools is not None else "h11"
    return name


def codec_classes(name: str):
    """(server codec, client codec) classes for `--http-codec`."""
    name = resolve_codec(name)
    if name == "h11":
        return H11Server, H11Client
    if name == "httptools":
        if httptools is None:
            raise RuntimeError("--http-codec httptools needs the httptools package (pip install httptools)")
        return FastServer, FastClient
    raise ValueError(f"unknown HTTP codec {name!r}; choose one of {', '.join(CODECS)}")
