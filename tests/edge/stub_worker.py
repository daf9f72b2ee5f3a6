"""A minimal worker that speaks the real control protocol (edge/control.py), for supervisor tests.

It is what tests/edge/test_supervisor.py starts instead of workers.main, so the supervisor's side of the
contract (sockets handed over and kept across restarts, TABLE/SERVING, PING/PONG, DRAIN, exits) is tested
without the data plane. The real worker is covered end to end in tests/e2e.

    python stub_worker.py --slot N --control-fd FD --table-shm NAME [--credentials-dir D] [--access-log X]
                          [--access-log-format F]

Every accepted connection gets one answer, then the connection closes:
    HTTP/1.1 200 OK ... body: JSON {"slot", "pid", "key", "generation", "incarnation"}
A request for /delay/<seconds> is answered after that many seconds (in-flight work for drain tests).

Behaviour is chosen per slot and per incarnation through the environment (the supervisor passes its own
environment on), so a test can make slot 1 misbehave once and then recover:
    STUB_STATE_DIR   where incarnation counters live (slot-N.count); required
    STUB_EXIT_<slot>=<k>       incarnations 1..k exit with status 3 right after start (crash loop)
    STUB_HANG_<slot>=<k>       incarnations 1..k stop answering PING once they serve (a hung worker)
    STUB_IGNORE_DRAIN=1        DRAIN is ignored (a straggler the supervisor must SIGKILL)
Each incarnation appends "<pid> <event>" lines to STUB_STATE_DIR/slot-N.events: start (+ " notify-socket"
when NOTIFY_SOCKET leaked into its environment), serving G, drain D, drained, exit C.
"""

import argparse
import json
import os
import signal
import socket
import sys
from pathlib import Path

import trio

from edge import control
from edge.shm import TableReader
from edge.table import decode_table

MAX_HEAD_BYTES = 16 * 1024
IO_TIMEOUT_S = 10.0


class Stub:
    def __init__(self, args):
        self.slot = args.slot
        self.channel = socket.socket(fileno=args.control_fd)
        self.channel.setblocking(False)
        self.reader = TableReader.attach(args.table_shm)
        self.state_dir = Path(os.environ["STUB_STATE_DIR"])
        counter = self.state_dir / f"slot-{self.slot}.count"
        self.incarnation = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(self.incarnation))
        self.generation = 0
        self.listeners: dict[str, tuple[trio.CancelScope, object]] = {}
        self.hang = self.incarnation <= int(os.environ.get(f"STUB_HANG_{self.slot}", "0"))
        self.ignore_drain = os.environ.get("STUB_IGNORE_DRAIN") == "1"
        self.in_flight = 0
        self.nursery = None

    def event(self, text: str) -> None:
        with open(self.state_dir / f"slot-{self.slot}.events", "a") as f:
            f.write(f"{os.getpid()} {text}\n")

    def send(self, message: control.Message) -> None:
        try:
            control.send_message(self.channel, message)
        except OSError:
            pass

    def serving(self) -> None:
        self.event(f"serving {self.generation}")
        self.send(control.Message(op=control.SERVING, generation=self.generation, keys=sorted(self.listeners), pid=os.getpid()))

    async def serve(self) -> int:
        self.event("start" + (" notify-socket" if "NOTIFY_SOCKET" in os.environ else ""))
        if self.incarnation <= int(os.environ.get(f"STUB_EXIT_{self.slot}", "0")):
            self.event("exit 3")
            return 3
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            code = await self.serve_control()
            nursery.cancel_scope.cancel()
        self.event(f"exit {code}")
        return code

    async def serve_control(self) -> int:
        while True:
            try:
                message, fds = control.recv_message(self.channel)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.channel)
                continue
            if message is None:
                return 0
            if message.op == control.LISTENERS:
                for key, fd in zip(message.keys, fds):
                    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
                    scope = trio.CancelScope()
                    self.listeners[key] = (scope, sock)
                    self.nursery.start_soon(self.accept_loop, key, sock, scope)
                for key in message.remove:
                    scope, sock = self.listeners.pop(key, (None, None))
                    if scope is not None:
                        scope.cancel()
                        sock.close()
                self.serving()
            elif message.op == control.TABLE:
                generation, payload = self.reader.read()
                decode_table(payload)
                self.generation = generation
                self.serving()
            elif message.op == control.PING:
                if not self.hang:
                    self.send(control.Message(op=control.PONG, seq=message.seq, pid=os.getpid()))
            elif message.op == control.DRAIN:
                self.event(f"drain {message.deadline_s:.1f}")
                if self.ignore_drain:
                    continue
                for scope, sock in self.listeners.values():
                    scope.cancel()
                    sock.close()
                self.listeners.clear()
                with trio.move_on_after(message.deadline_s):
                    while self.in_flight:
                        await trio.sleep(0.01)
                self.event("drained")
                self.send(control.Message(op=control.DRAINED, pid=os.getpid()))
                return 0

    async def accept_loop(self, key, sock, scope) -> None:
        with scope:
            while True:
                conn, _ = await sock.accept()
                self.in_flight += 1
                self.nursery.start_soon(self.answer, key, conn)

    async def answer(self, key, conn) -> None:
        try:
            with conn, trio.move_on_after(IO_TIMEOUT_S):
                head = b""
                while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
                    data = await conn.recv(4096)
                    if not data:
                        return
                    head += data
                target = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "/"
                if target.startswith("/delay/"):
                    await trio.sleep(float(target[len("/delay/") :]))
                body = json.dumps(
                    {"slot": self.slot, "pid": os.getpid(), "key": key, "generation": self.generation, "incarnation": self.incarnation}
                ).encode()
                await conn.send(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
        except OSError:
            pass
        finally:
            self.in_flight -= 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--table-shm", required=True)
    parser.add_argument("--credentials-dir")
    parser.add_argument("--access-log")
    parser.add_argument("--access-log-format")
    parser.add_argument("--http-codec")

    parser.add_argument("--stats-shm")  # the stub counts nothing; the real worker writes its stats slot
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # like workers.main: the supervisor decides
    stub = Stub(args)
    return trio.run(stub.serve)


if __name__ == "__main__":
    sys.exit(main())
