# The supervisor's log: one human-readable line per event on stderr, "edge: …".
#
# Rules:
# - One line per call, flushed at once: systemd's journal and tests/e2e/harness.py read the lines as they come
#   (edge/supervisor.py lists the lines whose shape tests rely on).
from __future__ import annotations

import sys


def log(line: str) -> None:
    print(f"edge: {line}", file=sys.stderr, flush=True)
