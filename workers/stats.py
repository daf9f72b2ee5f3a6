# A worker's statistics: what it counts into its slot of the stats segment (edge/stats_shm.py).
#
# Rules:
# - record_request(log) runs once per HTTP request (RecordSink.request): one dict lookup on
#   (listener, route, cluster, status, flags, gRPC status) and a handful of 8-byte stores. Nothing else on the hot
#   path (the gRPC status is a method comparison for anything but a POST: workers/route_policies.grpc_metric_status).
# - TCP API, reached through workers/context.RecordSink (tcp_opened, track_tcp, tcp), all cheap and safe to call
#   whether or not stats are enabled:
#     tcp_connection_opened(listener, cluster)   once the connection chose its cluster
#     tcp_bytes(listener, cluster, sent, received)   optional, progress of a long connection
#     track_tcp(TcpLog, Splice)   the same, done every publish from the splice's counters, so long connections
#                                 show up in the metrics every PUBLISH_INTERVAL_S, not only when they close
#     untrack_tcp / tcp_connection_closed(listener, cluster, sent, received)   at the end, with the bytes not
#                                 yet reported (RecordSink.tcp does both, and writes the access-log line)
#   `sent` = bytes to the downstream client (istio_tcp_sent_bytes_total), `received` = from it.
# - Gauges (active connections, upstream pool sizes, outlier state) and the /clusters status document are
#   published every PUBLISH_INTERVAL_S by serve_publisher, off the request path. Ejections are a counter in the
#   slot, advanced by the growth of each cluster's Balancer.ejections_total, so it survives table reloads and
#   worker restarts without going backwards.
# - Without a stats segment (a worker started by hand) every call is a no-op.
from __future__ import annotations

import time

import orjson
import trio

from edge.stats_shm import (
    W_ACCESS_LOG_DROPPED,
    W_CONNECTION_ERRORS,
    W_ACTIVE_CONNECTIONS,
    W_EJECTED_ENDPOINTS,
    W_EJECTIONS_TOTAL,
    W_POOL_ACTIVE,
    W_POOL_IDLE,
    W_PUBLISHED_AT_MS,
    W_TABLE_GENERATION,
    W_TCP_ACTIVE,
    SlotWriter,
)
from workers.route_policies import grpc_metric_status


PUBLISH_INTERVAL_S = 1.0
RBAC_FIELDS = ("allowed", "denied", "logged", "not_logged")  # Envoy's RBAC filter stats, in RbacCounts' order


class WorkerStats:
    def __init__(self, writer: SlotWriter | None):
        self.writer = writer
        self.enabled = writer is not None
        self.tcp_active = 0
        self._ejections_seen: dict[str, int] = {}  # cluster → Balancer.ejections_total already counted
        self._log_lost_seen = 0  # access-log lines dropped or failed, already counted
        # Open TCP connections whose bytes publish() reports as they grow: id(TcpLog) → [log, splice, bytes sent
        # reported, bytes received reported]. finish_tcp reports only the rest (untrack_tcp).
        self._tcp_live: dict[int, list] = {}
        self._rbac_names: dict[str, tuple[str, ...]] = {}  # stat prefix → its four RBAC counter names

    # ------------------------------------------------------------------------------------------- HTTP

    def record_request(self, log) -> None:
        self.writer.record_http(
            log.listener, log.route_name, log.upstream_cluster, log.status, log.flags,
            time.time() - log.start, log.bytes_received, log.bytes_sent,
            grpc_metric_status(log.request, log.grpc_status, log.status),
        )  # fmt: skip
        if log.rbac is not None:
            self.rbac("http." + log.listener, log.rbac)

    def rbac(self, prefix: str, counts) -> None:
        """Envoy's RBAC filter stats `<prefix>.rbac.{allowed,denied,logged,not_logged}` (workers/authz.RbacCounts;
        prefix "http.<listener>" for the HTTP filters, Istio's "tcp" for the network ones), named counters."""
        names = self._rbac_names.get(prefix)
        if names is None:
            names = self._rbac_names[prefix] = tuple(f"{prefix}.rbac.{field}" for field in RBAC_FIELDS)
        writer = self.writer
        for name, n in zip(names, counts):
            if n:
                writer.add_counter(name, n)

    def connection_error(self) -> None:
        """One connection ended by an unexpected error (RecordSink.connection_failed): counted at once."""
        if self.enabled:
            self.writer.add_word(W_CONNECTION_ERRORS, 1)

    # -------------------------------------------------------------------------------------------- TCP

    def tcp_connection_opened(self, listener: str, cluster: str) -> None:
        self.tcp_active += 1
        if self.writer is not None:
            self.writer.tcp_opened(listener, cluster or "-")

    def tcp_bytes(self, listener: str, cluster: str, sent: int, received: int) -> None:
        if self.writer is not None and (sent or received):
            self.writer.tcp_bytes(listener, cluster or "-", sent, received)

    def track_tcp(self, log, splice) -> None:
        """Report this connection's bytes (splice.bytes_down sent, splice.bytes_up received) every publish."""
        if self.writer is not None:
            self._tcp_live[id(log)] = [log, splice, 0, 0]

    def untrack_tcp(self, log, sent: int, received: int) -> tuple[int, int]:
        """The connection ended with these totals: the part publish() has not reported yet."""
        entry = self._tcp_live.pop(id(log), None)
        if entry is None:
            return sent, received
        return max(0, sent - entry[2]), max(0, received - entry[3])

    def _publish_tcp_progress(self) -> None:
        for entry in self._tcp_live.values():
            log, splice, sent_done, received_done = entry
            sent, received = splice.bytes_down - sent_done, splice.bytes_up - received_done
            if sent > 0 or received > 0:
                self.tcp_bytes(log.listener, log.upstream_cluster, sent, received)
                entry[2], entry[3] = sent_done + sent, received_done + received

    def tcp_connection_closed(self, listener: str, cluster: str, sent: int = 0, received: int = 0) -> None:
        self.tcp_active = max(0, self.tcp_active - 1)
        if self.writer is not None:
            self.writer.tcp_closed(listener, cluster or "-", sent, received)

    # --------------------------------------------------------------------------------------- publishing

    def publish(self, ctx) -> None:
        """Publish the worker's state (ctx: a workers/context.WorkerContext, which imports this module)."""
        writer = self.writer
        if writer is None:
            return
        self._publish_tcp_progress()
        now = trio.current_time()
        compiled = ctx.view.snapshot
        pool_stats: dict[str, dict[str, int]] = {}
        for key, pool in ctx.pools.pools.items():
            name = f"{key[0]}:{key[1]}" if len(key) >= 2 else str(key)
            entry = pool_stats.setdefault(name, {"active": 0, "idle": 0, "connects": 0, "reuses": 0})
            entry["active"] += pool.active
            entry["idle"] += len(pool.idle)
            entry["connects"] += pool.connects
            entry["reuses"] += pool.reuses
        clusters = {}
        ejected_now = 0
        ejections_delta = 0
        if compiled is not None:
            for name, cluster_rt in compiled.clusters.items():
                balancer = cluster_rt.balancer
                endpoints = []
                for state in balancer.states:
                    ejected = state.ejected_until > now
                    ejected_now += ejected
                    endpoints.append({
                        "address": state.endpoint.address,
                        "port": state.endpoint.port,
                        "weight": state.weight,
                        "active": state.active,
                        "ejected": ejected,
                        "ejected_for_s": round(state.ejected_until - now, 3) if ejected else 0.0,
                        "times_ejected": state.times_ejected,
                        "consecutive_5xx": state.consecutive_5xx,
                        "consecutive_gateway_errors": state.consecutive_gateway,
                    })  # fmt: skip
                total = balancer.ejections_total
                seen = self._ejections_seen.get(name, 0)
                ejections_delta += total - seen if total >= seen else total
                self._ejections_seen[name] = total
                clusters[name] = {"endpoints": endpoints, "ejections_total": total}
        writer.set_word(W_ACTIVE_CONNECTIONS, ctx.registry.active)
        writer.set_word(W_POOL_ACTIVE, sum(p["active"] for p in pool_stats.values()))
        writer.set_word(W_POOL_IDLE, sum(p["idle"] for p in pool_stats.values()))
        writer.set_word(W_EJECTED_ENDPOINTS, ejected_now)
        writer.add_word(W_EJECTIONS_TOTAL, ejections_delta)
        writer.set_word(W_TABLE_GENERATION, max(0, ctx.view.generation))
        writer.set_word(W_TCP_ACTIVE, self.tcp_active)
        access_log = ctx.records.access_log
        lost = access_log.dropped_lines + access_log.lost_lines if access_log is not None else 0
        writer.add_word(W_ACCESS_LOG_DROPPED, lost - self._log_lost_seen)
        self._log_lost_seen = lost
        writer.set_word(W_PUBLISHED_AT_MS, int(time.time() * 1000))
        document = {
            "generation": ctx.view.generation,
            "draining": ctx.draining,
            "active_connections": ctx.registry.active,
            "clusters": clusters,
            "pools": pool_stats,
        }
        data = orjson.dumps(document)
        if not writer.publish_status(data):
            writer.publish_status(orjson.dumps({**document, "clusters": {}, "pools": {}, "truncated": True}))

    async def serve_publisher(self, ctx) -> None:
        if self.writer is None:
            return
        while True:
            self.publish(ctx)
            await trio.sleep(PUBLISH_INTERVAL_S)


__all__ = ["WorkerStats", "PUBLISH_INTERVAL_S"]
