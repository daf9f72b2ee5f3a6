"""workers/http/engines.py: `--http-codec` names → codec classes; `auto` (the default) is httptools when installed,
else h11, as uvicorn's `--http auto`."""

from __future__ import annotations

import pytest

from edge.settings import SettingsError, build_settings
from workers.http import engines
from workers.http.codec_fast import FastClient, FastServer
from workers.http.codec_h11 import H11Client, H11Server


@pytest.mark.parametrize(
    "name, installed, resolved",
    [
        ("auto", True, "httptools"),
        ("auto", False, "h11"),
        ("h11", True, "h11"),
        ("h11", False, "h11"),
        ("httptools", True, "httptools"),
    ],
)
def test_resolve_codec(monkeypatch, name, installed, resolved):
    if not installed:
        monkeypatch.setattr(engines, "httptools", None)
    assert engines.resolve_codec(name) == resolved


@pytest.mark.parametrize("name, classes", [("auto", (FastServer, FastClient)), ("httptools", (FastServer, FastClient)), ("h11", (H11Server, H11Client))])
def test_codec_classes(name, classes):
    assert engines.codec_classes(name) == classes


def test_auto_without_httptools_serves_h11(monkeypatch):
    monkeypatch.setattr(engines, "httptools", None)
    assert engines.codec_classes("auto") == (H11Server, H11Client)
    with pytest.raises(RuntimeError, match="httptools"):
        engines.codec_classes("httptools")


def test_the_default_is_auto_and_httptools_requested_without_it_is_a_settings_error(monkeypatch):
    assert build_settings({}, {}).http_codec == "auto"
    monkeypatch.setattr(engines, "httptools", None)
    assert build_settings({"http_codec": "auto"}, {}).http_codec == "auto"
    with pytest.raises(SettingsError, match="httptools is not installed"):
        build_settings({"http_codec": "httptools"}, {})
