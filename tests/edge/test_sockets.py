import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.control import listener_key
from edge.sockets import (
    ListenerError,
    ListenerSockets,
    bind_listener,
    parse_bind,
    parse_port_map,
)
from tests.e2e.harness import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT_S = 5.0
SPREAD_CONNECTIONS = 64  # enough that SO_REUSEPORT's hash lands on both sockets with near certainty
NOBODY_UID = 65534


def free_port() -> int:
    """A port free a moment ago, outside the kernel's ephemeral range: these tests bind it on wildcards, which an
    ephemeral port may not allow (an outgoing connection of another process can hold it as its local port)."""
    return free_ports(1)[0]


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)


def pending(listener: socket.socket) -> bool:
    """Is a connection waiting in this socket's accept queue (without taking it)?"""
    import select

    readable, _, _ = select.select([listener], [], [], 0.5)
    return bool(readable)


# ------------------------------------------------------------------------------------------ parse_port_map


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("80=8080", {80: 8080}),
        ("80=8080,443=8443", {80: 8080, 443: 8443}),
        (" 80 = 8080 , 443=8443 ,", {80: 8080, 443: 8443}),
        ("15021=15021", {15021: 15021}),
        ("1=65535", {1: 65535}),
        ("80=0,443=0", {80: 0, 443: 0}),  # the kernel chooses, once per listener
    ],
)
def test_parse_port_map(text, expected):
    assert parse_port_map(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("80", "expected GATEWAY_PORT=BOUND_PORT"),
        ("80:8080", "expected GATEWAY_PORT=BOUND_PORT"),
        ("http=8080", "gateway port 'http' is not a number"),
        ("80=", "bound port '' is not a number"),
        ("80=-1", "is not a number"),
        ("80=-0", "is not a number"),
        ("80=65536", "bound port 65536 is out of range"),
        ("0=8080", "gateway port 0 is out of range"),
        ("80=8080,80=9090", "gateway port 80 is mapped twice"),
        ("80=8080,443=8080", "binds port 8080 for gateway ports [80, 443]"),
    ],
)
def test_parse_port_map_rejects(text, message):
    with pytest.raises(ValueError) as info:
        parse_port_map(text)
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------- parse_bind


@pytest.mark.parametrize(
    ("bind", "family", "host"),
    [
        ("", socket.AF_INET, "0.0.0.0"),
        ("0.0.0.0", socket.AF_INET, "0.0.0.0"),
        ("127.0.0.1", socket.AF_INET, "127.0.0.1"),
        ("::", socket.AF_INET6, "::"),
        ("[::1]", socket.AF_INET6, "::1"),
        ("0:0::1", socket.AF_INET6, "::1"),
    ],
)
def test_parse_bind(bind, family, host):
    assert parse_bind(bind) == (family, host)


@pytest.mark.parametrize(
    ("bind", "message"),
    [
        ("localhost", "is not an IP address"),
        ("gateway.example.com", "is not an IP address"),
        ("unix:///run/edge.sock", "unix domain socket listeners are not supported"),
        ("127.0.0.1:80", "is not an IP address"),
    ],
)
def test_parse_bind_rejects(bind, message):
    with pytest.raises(ListenerError) as info:
        parse_bind(bind)
    assert message in str(info.value)


# -------------------------------------------------------------------------------------------- bind_listener


def test_bind_listener_sets_reuse_port_and_listens():
    with bind_listener("127.0.0.1", 0) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not sock.get_inheritable()
        with connect(sock.getsockname()[1]):
            conn, _ = sock.accept()
            conn.close()


def test_bind_listener_without_reuse_port():
    with bind_listener("127.0.0.1", 0, reuse_port=False) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        with pytest.raises(ListenerError, match="address already in use"):
            bind_listener("127.0.0.1", sock.getsockname()[1])


def test_two_reuse_port_sockets_share_a_port_and_both_get_connections():
    port = free_port()
    with bind_listener("127.0.0.1", port) as first, bind_listener("127.0.0.1", port) as second:
        accepted = {first: 0, second: 0}
        clients = []
        try:
            for _ in range(SPREAD_CONNECTIONS):
                clients.append(connect(port))
            for listener in (first, second):
                listener.setblocking(False)
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.close()
                    accepted[listener] += 1
        finally:
            for client in clients:
                client.close()
        assert accepted[first] + accepted[second] == SPREAD_CONNECTIONS
        assert accepted[first] > 0 and accepted[second] > 0


def test_ipv6_wildcard_is_v6_only_so_ipv4_wildcard_can_share_the_port():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port()
    try:
        v6 = bind_listener("::", port, reuse_port=False)
    except ListenerError as exc:
        pytest.skip(f"IPv6 unavailable: {exc}")
    with v6, bind_listener("0.0.0.0", port, reuse_port=False) as v4:
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert v4.family == socket.AF_INET
        with connect(port, "::1"):
            conn, _ = v6.accept()
            conn.close()


def test_an_address_of_another_host_is_explained():
    with pytest.raises(ListenerError, match="is not an address of this host"):
        bind_listener("192.0.2.1", 0)  # TEST-NET-1, never local


def test_privileged_port_without_privilege_names_port_map():
    unprivileged_start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    port = 80
    if unprivileged_start <= port:
        pytest.skip("this kernel lets anyone bind port 80")
    # Root may bind anything, so a root test process drops to nobody first (after the imports: the interpreter
    # itself may live where nobody cannot read). Leaving uid 0 drops every capability.
    code = textwrap.dedent(
        f"""
        import os
        from edge.sockets import ListenerError, bind_listener
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid({NOBODY_UID})
            os.setuid({NOBODY_UID})
        try:
            bind_listener("127.0.0.1", {port})
        except ListenerError as exc:
            print(exc)
        else:
            print("bound")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "permission denied" in message
    assert "--port-map 80=8080" in message


# ---------------------------------------------------------------------------------------- ListenerSockets


def test_registry_binds_one_socket_per_slot_and_listener_on_the_mapped_port():
    http_port, https_port = free_port(), free_port()
    with ListenerSockets(3, {80: http_port, 443: https_port}) as registry:
        added, removed = registry.sync([("127.0.0.1", 80), ("127.0.0.1", 443)])
        assert added == ["127.0.0.1:443", "127.0.0.1:80"] and removed == []
        assert registry.keys() == added
        assert registry.address("127.0.0.1:80") == ("127.0.0.1", http_port)
        for slot in range(3):
            sockets = registry.sockets_for_slot(slot)
            assert list(sockets) == ["127.0.0.1:443", "127.0.0.1:80"]
            assert sockets["127.0.0.1:80"].getsockname() == ("127.0.0.1", http_port)
            assert sockets["127.0.0.1:443"].getsockname() == ("127.0.0.1", https_port)
        all_fds = {registry.socket(slot, key).fileno() for slot in range(3) for key in added}
        assert len(all_fds) == 6


def test_registry_sync_reports_additions_and_removals_and_keeps_unchanged_sockets():
    a, b = free_port(), free_port()
    with ListenerSockets(2, {1: a, 2: b}) as registry:
        registry.sync([("127.0.0.1", 1)])
        kept = registry.socket(0, listener_key("127.0.0.1", 1))
        added, removed = registry.sync([("127.0.0.1", 1), ("127.0.0.1", 2)])
        assert (added, removed) == (["127.0.0.1:2"], [])
        assert registry.socket(0, "127.0.0.1:1") is kept
        added, removed = registry.sync([("127.0.0.1", 2)])
        assert (added, removed) == ([], ["127.0.0.1:1"])
        assert "127.0.0.1:1" in registry.keys()  # still open until the workers let go
        registry.close_keys(removed)
        assert registry.keys() == ["127.0.0.1:2"]
        assert kept.fileno() == -1
        with pytest.raises(ConnectionRefusedError):
            connect(a).close()


def test_registry_sync_is_all_or_nothing():
    taken = bind_listener("127.0.0.1", 0, reuse_port=False)
    free = free_port()
    with taken, ListenerSockets(2, {1: free, 2: taken.getsockname()[1]}) as registry:
        with pytest.raises(ListenerError) as info:
            registry.sync([("127.0.0.1", 1), ("127.0.0.1", 2)])
        assert "listener 127.0.0.1:2" in str(info.value)
        assert "bound to port" in str(info.value) and "already in use" in str(info.value)
        assert registry.keys() == []
        with pytest.raises(ConnectionRefusedError):  # the socket bound for listener 1 was closed again
            connect(free).close()


def test_registry_refuses_two_listeners_on_one_address():
    port = free_port()
    with ListenerSockets(1, {80: port}) as registry:
        with pytest.raises(ListenerError, match="would both bind"):
            registry.sync([("127.0.0.1", 80), ("127.0.0.1", port)])
        assert registry.keys() == []


def test_port_zero_gives_every_slot_one_kernel_chosen_port():
    with ListenerSockets(3, {80: 0, 443: 0, 8080: 0}) as registry:
        registry.sync([("127.0.0.1", 80), ("127.0.0.1", 443)])
        _, http_port = registry.address("127.0.0.1:80")
        _, https_port = registry.address("127.0.0.1:443")
        assert http_port != 0 and https_port != 0 and http_port != https_port
        for slot in range(3):
            assert registry.socket(slot, "127.0.0.1:80").getsockname() == ("127.0.0.1", http_port)
            assert registry.socket(slot, "127.0.0.1:443").getsockname() == ("127.0.0.1", https_port)
        registry.sync([("127.0.0.1", 80), ("127.0.0.1", 443), ("127.0.0.1", 8080)])
        assert registry.address("127.0.0.1:80") == ("127.0.0.1", http_port)  # kept across a reload


def test_a_connection_queued_on_a_slot_socket_survives_its_worker_copy():
    """The zero-loss premise: the worker's duplicate closes (worker died), the queued connection waits in the
    supervisor's socket for the replacement."""
    port = free_port()
    with ListenerSockets(1, {80: port}) as registry:
        registry.sync([("127.0.0.1", 80)])
        kept = registry.socket(0, "127.0.0.1:80")
        worker_copy = socket.socket(fileno=os.dup(kept.fileno()))
        with connect(port) as client:
            assert pending(kept)
            worker_copy.close()  # the worker dies without accepting
            replacement_copy = socket.socket(fileno=os.dup(kept.fileno()))
            with replacement_copy:
                conn, _ = replacement_copy.accept()
                with conn:
                    client.sendall(b"ping")
                    assert conn.recv(4) == b"ping"
