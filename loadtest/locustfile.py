# The request mix of loadtest/mix.py for locust users. bench.py does not use locust and the project does
# not install it; nothing imports this file. Run it against a target that bench.py's configs describe
# (edge on the generated conf, or the nginx-proxy reference), for example:
#   pip install locust
#   locust -f loadtest/locustfile.py --host http://127.0.0.1:PORT --headless -u 50 -r 50 -t 30s
# Each user sends USER_RATE_PER_S requests per second (locust's constant_throughput), so users x rate is
# the offered load. Locust measures from the actual send, so a stalled server lowers the rate instead of
# raising latency (coordinated omission); loadtest/constant_rate.py is the tool for latency figures.
from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locust import FastHttpUser, constant_throughput, task

from loadtest.mix import MIX, sequence

USER_RATE_PER_S = 10


class MixUser(FastHttpUser):
    wait_time = constant_throughput(USER_RATE_PER_S)

    def on_start(self) -> None:
        self.entries = itertools.cycle(sequence(MIX))

    @task
    def mix_request(self) -> None:
        entry = next(self.entries)
        headers = {"Host": entry.host}
        body = None
        if entry.body_bytes:
            body = b"x" * entry.body_bytes
            headers["Content-Type"] = "application/octet-stream"
        self.client.request(
            entry.method,
            entry.path,
            data=body,
            headers=headers,
            name=f"{entry.method} {entry.host}{entry.path.split('?')[0]}",
        )
