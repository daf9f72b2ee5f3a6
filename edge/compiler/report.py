# Diagnostics of the compile: where each one points, in the order found, each once.
#
# Rules:
# - A diagnostic names the resource's file and the line where the resource starts, and where it can the
#   `$.spec…` path inside it; the compile itself never reads files. load_and_compile then moves each one to
#   the line of its path (edge/loader.refine_lines), re-reading the YAML, because only the files know lines.
# - The same diagnostic is kept once: a VirtualService's routes are built per gateway and port it binds to,
#   and would otherwise report, say, the same unknown destination host several times.
# - An error marks its Where and every enclosing Where as failed, so that a stage can drop exactly the part
#   (match block, rule, server) that has an error and keep translating the rest for more diagnostics.
from __future__ import annotations

from edge import istio
from edge.errors import ERROR, NOTE, WARNING, Diagnostic


class Report:
    """Diagnostics in the order found, each once (the same VS is visited for several servers)."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []
        self._seen: set[tuple] = set()
        self.errors = 0

    def add(self, severity: str, res: istio.Resource | None, path: str, message: str) -> None:
        key = (severity, res.file if res else "", res.line if res else 0, res.ref if res else "", path, message)
        if key in self._seen:
            return
        self._seen.add(key)
        if severity == ERROR:
            self.errors += 1
        self.items.append(
            Diagnostic(
                severity=severity,
                message=message,
                file=res.file if res else "",
                line=res.line if res else 0,
                resource=res.ref if res else "",
                path=path,
            )
        )


class Where:
    """One resource and a path inside it. An error marks it and every enclosing Where as failed."""

    __slots__ = ("report", "res", "path", "failed", "parent")

    def __init__(self, report: Report, res: istio.Resource, path: str = "$.spec", parent: "Where | None" = None):
        self.report = report
        self.res = res
        self.path = path
        self.failed = False
        self.parent = parent

    def at(self, sub: str) -> "Where":
        return Where(self.report, self.res, self.path + sub, self)

    def error(self, message: str, sub: str = "") -> None:
        w: Where | None = self
        while w is not None:
            w.failed = True
            w = w.parent
        self.report.add(ERROR, self.res, self.path + sub, message)

    def warn(self, message: str, sub: str = "") -> None:
        self.report.add(WARNING, self.res, self.path + sub, message)

    def note(self, message: str, sub: str = "") -> None:
        self.report.add(NOTE, self.res, self.path + sub, message)
