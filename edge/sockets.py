# Listening sockets: the only module in edge that calls bind().
#
# Rules:
# - A Gateway listener is known by its key "<bind>:<gateway port>" (edge.control.listener_key); the port it is
#   really bound to is the gateway port translated through --port-map (80=8080 binds 8080), the way an Istio
#   gateway Service maps port 80 to targetPort 8080.
# - Binds are IP literals only: "" and "0.0.0.0" are the IPv4 wildcard, "::" is the IPv6 wildcard with
#   IPV6_V6ONLY set (no dual stack: "0.0.0.0" and "::" may both be bound on one port), "[::1]" brackets are
#   accepted. Host names and unix:// binds are rejected with a ListenerError that says so.
# - With SO_REUSEPORT the kernel gives every socket its own accept queue, and closing a socket resets the
#   connections queued on it. So ListenerSockets keeps one socket per (worker slot, listener key) open in the
#   supervisor for the whole life of the listener: a worker gets a duplicate (SCM_RIGHTS), a replacement worker
#   of the same slot gets the same socket, and nothing queued while the slot had no worker is lost.
# - A --port-map target of 0 lets the kernel choose: slot 0's socket gets an ephemeral port and every other
#   slot binds that same port (address() tells which); it stays for the life of the listener.
# - Adding listeners is all or nothing: if one bind fails, the sockets bound by that call are closed again and
#   the registry is as it was.
# - Sockets are created blocking and non-inheritable; whoever accepts on them (a worker) makes its copy
#   non-blocking (the flag is shared by every duplicate, which is harmless: the supervisor never accepts).
from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from typing import Self

from edge.control import listener_key
from edge.errors import EdgeError

LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
PRIVILEGED_PORT_LIMIT = 1024
MAX_PORT = 65535


class ListenerError(EdgeError):
    """A listening socket could not be created; the message says what to change."""


def parse_bind(bind: str) -> tuple[socket.AddressFamily, str]:
    """(address family, IP literal) for a Gateway bind / --bind value; ListenerError for anything else."""
    text = bind.strip()
    if text in ("", "0.0.0.0", "*"):
        return socket.AF_INET, "0.0.0.0"
    if text.startswith("unix://"):
        raise ListenerError(f"bind {bind!r}: unix domain socket listeners are not supported yet; use an IP address")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ListenerError(
            f"bind {bind!r} is not an IP address: use an IPv4 or IPv6 literal such as 0.0.0.0, 127.0.0.1, :: or ::1"
        ) from None
    if address.version == 6:
        return socket.AF_INET6, str(address)
    return socket.AF_INET, str(address)


def bind_listener(bind: str, port: int, *, reuse_port: bool = True, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A listening TCP socket on bind:port (SO_REUSEADDR, and SO_REUSEPORT unless reuse_port=False)."""
    family, host = parse_bind(bind)
    if not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise ListenerError(f"port {port!r} is out of range 0-{MAX_PORT}")
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:  # EMFILE, ENFILE, EAFNOSUPPORT (no IPv6)
        raise ListenerError(f"cannot create a socket for {host} port {port}: {exc.strerror or exc}") from exc
    try:
        # SO_REUSEADDR: a restarted edge may bind while connections of the old one sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenerError(_explain_bind_error(exc, host, family, port)) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _explain_bind_error(exc: OSError, host: str, family: socket.AddressFamily, port: int) -> str:
    where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    if exc.errno == errno.EACCES and port < PRIVILEGED_PORT_LIMIT:
        return (
            f"cannot bind {where}: permission denied; ports below {PRIVILEGED_PORT_LIMIT} need root or "
            f"CAP_NET_BIND_SERVICE. Map the Gateway port to a high port with --port-map "
            f"(e.g. --port-map {port}={port + 8000 if port + 8000 <= MAX_PORT else 8080})"
        )
    if exc.errno == errno.EADDRINUSE:
        return f"cannot bind {where}: address already in use by another process (choose another port with --port-map)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot bind {where}: {host} is not an address of this host"
    return f"cannot bind {where}: {exc.strerror or exc}"


def parse_port_map(text: str) -> dict[int, int]:
    """"80=8080,443=8443" → {80: 8080, 443: 8443}; "" → {}; a bound port 0 lets the kernel choose.
    ValueError with the offending item otherwise."""
    mapping: dict[int, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        gateway_text, sep, bound_text = item.partition("=")
        if not sep:
            raise ValueError(f"port map item {item!r}: expected GATEWAY_PORT=BOUND_PORT, e.g. 80=8080")
        gateway_port = _parse_port(gateway_text, item, "gateway port", minimum=1)
        bound_port = _parse_port(bound_text, item, "bound port", minimum=0)
        if gateway_port in mapping:
            raise ValueError(f"port map item {item!r}: gateway port {gateway_port} is mapped twice")
        mapping[gateway_port] = bound_port
    bound = list(mapping.values())
    for port in set(bound) - {0}:
        if bound.count(port) > 1:
            sources = sorted(g for g, b in mapping.items() if b == port)
            raise ValueError(f"port map binds port {port} for gateway ports {sources}; each needs its own port")
    return mapping


def _parse_port(text: str, item: str, what: str, minimum: int) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ValueError(f"port map item {item!r}: {what} {text!r} is not a number")
    port = int(text)
    if not minimum <= port <= MAX_PORT:
        raise ValueError(f"port map item {item!r}: {what} {port} is out of range {minimum}-{MAX_PORT}")
    return port


class ListenerSockets:
    """The supervisor's registry: one SO_REUSEPORT socket per (worker slot, listener key), kept open."""

    def __init__(self, slots: int, port_map: dict[int, int] | None = None, *, backlog: int = LISTEN_BACKLOG):
        if slots < 1:
            raise ValueError(f"need at least one worker slot, got {slots}")
        self.slots = slots
        self.port_map = dict(port_map or {})
        self.backlog = backlog
        # key → (bind, gateway port); key → one socket per slot, index = slot.
        self._listeners: dict[str, tuple[str, int]] = {}
        self._sockets: dict[str, list[socket.socket]] = {}

    def bound_port(self, gateway_port: int) -> int:
        return self.port_map.get(gateway_port, gateway_port)

    def keys(self) -> list[str]:
        return sorted(self._sockets)

    def address(self, key: str) -> tuple[str, int]:
        """(bind, port really bound) of a listener key; a --port-map target 0 shows the port the kernel chose."""
        bind, _gateway_port = self._listeners[key]
        return bind, self._sockets[key][0].getsockname()[1]

    def socket(self, slot: int, key: str) -> socket.socket:
        return self._sockets[key][slot]

    def sockets_for_slot(self, slot: int) -> dict[str, socket.socket]:
        """Every listener socket of one slot, by key, in key order."""
        return {key: self._sockets[key][slot] for key in sorted(self._sockets)}

    def sync(self, listeners: Iterable[tuple[str, int]]) -> tuple[list[str], list[str]]:
        """Bind every (bind, gateway port) not held yet, for every slot; return (added keys, keys to remove).

        Removed keys stay open until close_keys(): the caller first tells the workers to let go of them.
        All or nothing: on a ListenerError the sockets bound by this call are closed and nothing changes.
        """
        wanted: dict[str, tuple[str, int]] = {}
        for bind, port in listeners:
            wanted[listener_key(bind, port)] = (bind, port)
        added = sorted(key for key in wanted if key not in self._sockets)
        removed = sorted(key for key in self._sockets if key not in wanted)
        self._check_distinct(wanted)
        created: dict[str, list[socket.socket]] = {}
        try:
            for key in added:
                bind, gateway_port = wanted[key]
                port = self.bound_port(gateway_port)
                row = created.setdefault(key, [])
                for _slot in range(self.slots):
                    try:
                        row.append(bind_listener(bind, port, backlog=self.backlog))
                        port = row[0].getsockname()[1]  # target 0: every slot shares the port chosen for slot 0
                    except ListenerError as exc:
                        mapped = f" (bound to port {port} by --port-map)" if port != gateway_port else ""
                        raise ListenerError(f"listener {key}{mapped}: {exc}") from exc
        except BaseException:
            for row in created.values():
                for sock in row:
                    sock.close()
            raise
        for key in added:
            self._listeners[key] = wanted[key]
            self._sockets[key] = created[key]
        return added, removed

    def _check_distinct(self, wanted: dict[str, tuple[str, int]]) -> None:
        # SO_REUSEPORT lets two of our own sockets share an address, so two listeners that map to one
        # address would silently split its connections between them; refuse that instead.
        seen: dict[tuple[socket.AddressFamily, str, int], str] = {}
        for key, (bind, gateway_port) in sorted(wanted.items()):
            try:
                family, host = parse_bind(bind)
            except ListenerError as exc:
                raise ListenerError(f"listener {key}: {exc}") from None
            address = (family, host, self.bound_port(gateway_port))
            if address[2] == 0:  # each gets a port of its own
                continue
            if address in seen:
                raise ListenerError(
                    f"listeners {seen[address]} and {key} would both bind {host} port {address[2]}; "
                    f"give them different ports (check --port-map)"
                )
            seen[address] = key

    def close_keys(self, keys: Iterable[str]) -> None:
        """Close the supervisor's sockets of these listeners (every slot); unknown keys are ignored."""
        for key in keys:
            for sock in self._sockets.pop(key, ()):
                sock.close()
            self._listeners.pop(key, None)

    def close_all(self) -> None:
        self.close_keys(list(self._sockets))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_all()
