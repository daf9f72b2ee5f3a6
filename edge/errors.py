# Diagnostics shared by every stage: a problem is a value that knows where it came from.
#
# Rules:
# - Every diagnostic that comes from a file names the file and the 1-based line; the string form is the
#   `file:line: message` line that `edge check` prints and the supervisor logs.
# - Errors stop a load/compile (the last good table stays served); warnings never do.
# - Workers import this module, so it stays free of I/O and heavy imports.
from __future__ import annotations

import msgspec

ERROR = "error"
WARNING = "warning"
NOTE = "note"
HINT = "hint"  # a suggestion that goes with the diagnostic before it (printed always, counted as neither)


class Diagnostic(msgspec.Struct, frozen=True, kw_only=True):
    severity: str
    message: str
    file: str = ""
    line: int = 0
    # "Kind ns/name" of the resource the message is about, when there is one.
    resource: str = ""
    # JSONPath-like location inside the document, e.g. "$.spec.http[0].route[0].weight".
    path: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file else ""
        what = f"{self.resource}: " if self.resource else ""
        at = f"{self.path}: " if self.path else ""
        tag = "" if self.severity == ERROR else f"{self.severity}: "
        return f"{where}{tag}{what}{at}{self.message}"


class EdgeError(Exception):
    """Base class of edge's own exceptions."""


class ConfigError(EdgeError):
    """A load or compile failed; carries every error (and the warnings met on the way)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        errors = [d for d in diagnostics if d.severity == ERROR]
        super().__init__("\n".join(str(d) for d in errors) or "configuration error")

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == ERROR]


def has_errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.severity == ERROR for d in diagnostics)
