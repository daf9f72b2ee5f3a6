"""`edge <args>` exactly as the CLI runs it, except that ServiceEntry DNS names are looked up in a JSON file.

    EDGE_TEST_DNS_FILE=answers.json python dns_helper.py run --config DIR --dns-refresh-rate 0.2 ...

answers.json maps a name to a list of addresses; any other value, or a name not in it, fails like the system
resolver does (socket.gaierror EAI_NONAME). The file is read on every lookup, so a test changes DNS by
rewriting it. The supervisor builds its resolver around edge.dns.DEFAULT_RESOLVER, which this process
replaces; nothing else differs from `python -m edge`, and no lookup reaches the system resolver.
"""

import json
import os
import socket
import sys

import edge.dns
from edge import cli


def resolve_from_file(name: str) -> list[str]:
    with open(os.environ["EDGE_TEST_DNS_FILE"]) as f:
        answer = json.load(f).get(name)
    if not isinstance(answer, list):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return answer


if __name__ == "__main__":
    edge.dns.DEFAULT_RESOLVER = resolve_from_file
    sys.argv = ["edge", *sys.argv[1:]]
    sys.exit(cli.main())
