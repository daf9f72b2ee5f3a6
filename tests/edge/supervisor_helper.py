"""`edge <args>` exactly as the CLI runs it, except that workers are tests/edge/stub_worker.py.

    python supervisor_helper.py run --config DIR --workers 1 ...

The supervisor reads WORKER_ARGV when it starts workers; nothing else differs from `python -m edge`.
"""

import sys
from pathlib import Path

import edge.supervisor
from edge import cli

STUB_WORKER = Path(__file__).with_name("stub_worker.py")

if __name__ == "__main__":
    edge.supervisor.WORKER_ARGV = (sys.executable, str(STUB_WORKER))
    sys.argv = ["edge", *sys.argv[1:]]
    sys.exit(cli.main())
