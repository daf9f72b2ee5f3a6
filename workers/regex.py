# Regular expressions from the configuration (StringMatch regex, uriRegexRewrite), matched with RE2 as Envoy's
# safe_regex is: linear time in the input whatever the pattern. Python's backtracking `re` can be driven into
# exponential time ((a+)+$) or high polynomial time (several .*) by a request path, freezing a worker's event loop.
#
# Rules:
# - Patterns are RE2 syntax as written in the YAML (the compiler validated them); a full match is required, as
#   Envoy's regex matchers do.
# - Text is matched as UTF-8 of the str the proxy holds (request bytes are decoded as latin-1, so one byte is
#   one character for the pattern, whatever RE2 counts).
# - The match goes straight to the RE2 object when the binding exposes it (about 0.7 µs against 3.6 µs through
#   the re-compatible wrapper); the wrapper is the fallback and does the substitutions.
from __future__ import annotations

from typing import Any

# google-re2 is loaded with the first pattern, so a table without regexes never pays its memory (~2.5 MiB).
_RE2: Any = None
_OPTIONS: Any = None
_ANCHOR_BOTH: Any = None


def _re2() -> Any:
    global _RE2, _OPTIONS, _ANCHOR_BOTH
    if _RE2 is None:
        import re2

        options = re2.Options()
        options.log_errors = False  # a bad pattern is an exception here, not a line on stderr
        try:
            _ANCHOR_BOTH = re2._re2.RE2.Anchor.ANCHOR_BOTH
        except AttributeError:  # a binding without the low-level object: the wrapper alone
            _ANCHOR_BOTH = None
        _OPTIONS, _RE2 = options, re2
    return _RE2


class Regex:
    """One compiled RE2 pattern: fullmatch(text) → bool, sub(template, text) with Python's \\g<n> groups."""

    __slots__ = ("pattern", "groups", "_compiled", "_raw")

    def __init__(self, pattern: str, ignore_case: bool = False):
        self.pattern = pattern
        self._compiled = _re2().compile(("(?i)" if ignore_case else "") + pattern, _OPTIONS)
        self.groups = self._compiled.groups
        raw = getattr(self._compiled, "_regexp", None)
        self._raw = raw if _ANCHOR_BOTH is not None and hasattr(raw, "Match") else None

    def fullmatch(self, text: str) -> bool:
        raw = self._raw
        if raw is None:
            return self._compiled.fullmatch(text) is not None
        data = text.encode("utf-8", "surrogatepass")
        return raw.Match(_ANCHOR_BOTH, data, 0, len(data))[0][0] != -1

    def sub(self, template: str, text: str) -> str:
        return self._compiled.sub(template, text)

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in `text` (the admin /stats?filter= reads it so)."""
        return self._compiled.search(text) is not None


def regex_error() -> type[Exception]:
    """The exception a pattern RE2 refuses raises (re2.error)."""
    return _re2().error
