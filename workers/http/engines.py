# The HTTP/1 codec engines by name (`--http-codec`): each is a (server codec, client codec) pair of classes
# with the interface of workers/http/codec.py.
from __future__ import annotations

from workers.http.codec_fast import FastClient, FastServer, httptools
from workers.http.codec_h11 import H11Client, H11Server

CODECS = ("h11", "httptools")


def codec_classes(name: str):
    """(server codec, client codec) classes for `--http-codec`."""
    if name == "h11":
        return H11Server, H11Client
    if name == "httptools":
        if httptools is None:
            raise RuntimeError("--http-codec httptools needs the httptools package (pip install 'edge[fast]')")
        return FastServer, FastClient
    raise ValueError(f"unknown HTTP codec {name!r}; choose one of {', '.join(CODECS)}")
