# `edge route`: what AuthorizationPolicy (workers/authz.py) makes of a request or connection, for the explainer.
#
# Rules:
# - The workers' own evaluator decides (workers/authz.authorize over the table's compiled filters), so the verdict
#   is what a worker would do; this module only lays the filters out as a table: each filter (AUDIT, DENY, ALLOW, in
#   Istio's order), each rule by Envoy's policy id (ns[<ns>]-policy[<name>]-rule[<i>]), matched or not and, for a
#   rule that did not match, the conditions that failed (CompiledRule.explain).
# - The connection attributes come from the `edge route` options, and the line saying what was assumed names
#   them: source.ip = --peer-ip (the PROXY protocol's source when the listener takes it), remote.ip = --remote-ip
#   (the client address a worker takes from trusted X-Forwarded-For hops or PROXY protocol: `edge route` does not
#   know `edge run`'s --num-trusted-proxies, so it is given, and defaults to the peer), destination.port = --port,
#   connection.sni = --sni (TLS listeners), source.principal = --client-principal; request.auth.* from --jwt
#   (edge/explain_jwt.py sets request.auth before this runs).
# - TCP and TLS passthrough chains get the TCP filters (no HTTP attributes), as workers/l4/tcp.py checks them.
# - No I/O: lines out through `say`; True when allowed.
from __future__ import annotations

from edge import table
from workers.authz import ACTION_ALLOW, ACTION_DENY, NO_POLICY, Authorizer, CompiledFilter, Facts, authorize

DEFAULT_PEER_IP = "127.0.0.1"  # what --peer-ip assumes when not given
RBAC_DENIED = "403 RBAC: access denied"  # Envoy's local reply (workers/http/replies.py rbac_denied)


def connection_facts(args, port: int, sni: str) -> tuple[str, str, str]:
    """(source.ip, remote.ip, principal) from the `edge route` arguments."""
    peer = getattr(args, "peer_ip", None) or DEFAULT_PEER_IP
    remote = getattr(args, "remote_ip", None) or peer
    return peer, remote, getattr(args, "client_principal", None) or ""


def explain_http(routing: table.RoutingTable, request, args, port: int, sni: str, say) -> bool:
    """The HTTP filter chain's policies for this request (after RequestAuthentication set request.auth)."""
    if routing.authorization is None or not routing.authorization.http:
        return True
    peer, remote, principal = connection_facts(args, port, sni)
    facts = Facts(peer, remote, "", port, sni, principal, host=request.authority, method=request.method, path=request.path, headers=request.headers, auth=request.auth)
    auth = request.auth
    who = f"request principal {auth.principal} (--jwt)" if auth is not None else "no request principal (no verified JWT)"
    say(f"AuthorizationPolicy: source.ip {peer}{_given(args, 'peer_ip')}, remote.ip {remote}{_given(args, 'remote_ip', '(= source.ip; --remote-ip)')}, destination.port {port}, connection.sni {sni or '-'}, source.principal {principal or '-'}, {who}")
    if remote == peer and any(n == b"x-forwarded-for" for n, _ in request.headers) and not getattr(args, "remote_ip", None):
        say("note: edge route does not apply X-Forwarded-For (edge run's --num-trusted-proxies decides which hop is remote.ip): give --remote-ip", 1)
    return _explain(Authorizer(routing.authorization).http, facts, say, http=True)


def explain_tcp(routing: table.RoutingTable, args, port: int, sni: str, say) -> bool:
    """The TCP filters (rules without HTTP attributes) for a connection on a TCP or TLS passthrough chain."""
    if routing.authorization is None or not routing.authorization.tcp:
        return True
    peer, _, principal = connection_facts(args, port, sni)
    say(f"AuthorizationPolicy (TCP rules: HTTP attributes never match here): source.ip {peer}{_given(args, 'peer_ip')}, destination.port {port}, connection.sni {sni or '-'}, source.principal {principal or '-'}")
    return _explain(Authorizer(routing.authorization).tcp, Facts(peer, peer, "", port, sni, principal), say, http=False)


def _given(args, name: str, default: str = "(default; --peer-ip)") -> str:
    return "" if getattr(args, name, None) else f" {default}"


def _explain(filters: tuple[CompiledFilter, ...], facts: Facts, say, *, http: bool) -> bool:
    verdict = authorize(filters, facts)
    for f in filters:
        say(f"{f.action} ({', '.join(f.policies)}):", 1)
        if not f.rules:
            say("no rule (a policy without rules): matches nothing" + (", so this ALLOW filter denies everything" if f.action == ACTION_ALLOW else ""), 2)
        for rule in f.rules:
            say(_rule_line(rule, facts), 2)
        if f.action == ACTION_DENY and verdict.action == ACTION_DENY:
            break  # Envoy stops at the denying filter: the ALLOW filter is not reached
    if verdict.audited:
        say(f"audited by {', '.join(verdict.audited)} (AUDIT only logs: %DYNAMIC_METADATA(envoy.common:access_log_hint)% true, http.<listener>.rbac.logged)", 1)
    if verdict.allowed:
        by = f"allowed by {verdict.policy}" if verdict.policy else "allowed: no DENY rule matched and there is no ALLOW policy"
        say(f"→ {by}", 1)
        return True
    details = f"rbac_access_denied_matched_policy[{verdict.policy}]"
    if verdict.action == ACTION_DENY:
        why = f"denied by DENY rule {verdict.policy}"
    else:
        why = "denied: ALLOW policies apply and none of their rules matched" if verdict.policy == NO_POLICY else "denied"
    outcome = f"{RBAC_DENIED} ({details})" if http else f"connection closed ({details} in the termination details)"
    say(f"→ {why}: {outcome}", 1)
    return False


def _rule_line(rule, facts: Facts) -> str:
    if rule.matches(facts):
        return f"{rule.name}: matched"
    failed = [field for field, ok in rule.explain(facts) if not ok]
    if not failed:  # every listed condition holds, so an empty alternative group is what is missing
        return f"{rule.name}: not matched"
    return f"{rule.name}: not matched: {', '.join(failed)} false"
