# The `edge` command: check, dump, route (pure: load + compile + explain) and run (the supervisor). This module
# is the argparse wiring and thin command functions: the explainer is edge/explain.py, the flags of `edge run`
# are edge/flags.py's table.
#
# Rules:
# - check: every error and warning as a `file:line: …` line on stderr, one summary line on stdout;
#   exit 0 when there is no error (warnings allowed), 1 otherwise. Notes (skipped kinds…) only with -v; with
#   --listeners, the listeners and clusters follow the summary as tables with the protocols they speak
#   (edge/explain_protocols.py).
# - dump: the compiled RoutingTable as indented JSON with sorted keys on stdout; exit 1 (and the errors on
#   stderr) when the configuration does not compile.
# - route: explain which listener, filter chain, virtual host, VirtualService and route a request takes, and
#   why the routes before it did not match; exit 0 when the request is routed, 1 when the gateway would
#   answer 404 / refuse the connection, or the configuration does not compile.
# - run: flags (edge/flags.py) and EDGE_* variables → edge.settings.RunSettings → edge.supervisor.run(settings).
# - Usage errors exit 2 (argparse).
from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from edge import kinds, table
from edge.errors import ERROR, NOTE, WARNING, Diagnostic
from edge.flags import DEFAULT_GATEWAY_CLASS, DEFAULT_GATEWAY_LABELS, add_run_arguments, given_flags

EXIT_OK = 0
EXIT_FAILED = 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    return args.handler(args)


def version() -> str:
    """The installed distribution's version (pyproject.toml through the package metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("edge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="An Istio-compatible gateway: Gateway, VirtualService, DestinationRule and ServiceEntry YAML, served.")
    parser.add_argument("--version", action="version", version=f"edge {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("paths", nargs="+", metavar="PATH", help="YAML/JSON files or directories (walked recursively)")
        p.add_argument("--gateway-labels", default=None, metavar="K=V,...", help="this gateway's labels, matched against Gateway.selector (default istio=ingressgateway)")
        p.add_argument("--cluster-domain", default="cluster.local", help="domain of short host names (default cluster.local)")
        p.add_argument("--gateway-namespace", default="istio-system", metavar="NS", help="the gateway's namespace: its AuthorizationPolicies apply (default istio-system)")
        p.add_argument("--root-namespace", default="istio-system", metavar="NS", help="Istio's root namespace: its AuthorizationPolicies apply (default istio-system)")
        p.add_argument("--gateway-class", default=DEFAULT_GATEWAY_CLASS, metavar="NAME,...", help="Gateway API GatewayClass names served (default istio)")

    p = sub.add_parser("check", help="validate configuration without serving it")
    config_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="also print notes (skipped objects and the like)")
    p.add_argument("--listeners", action="store_true", help="also print the listeners and clusters with the protocols they speak (HTTP/1.1, h2c, h2 by ALPN, TCP; upstream HTTP/1.1 or HTTP/2 and why)")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("dump", help="print the compiled routing table as JSON")
    config_args(p)
    p.set_defaults(handler=cmd_dump)

    p = sub.add_parser("route", help="explain how a request would be routed")
    config_args(p)
    p.add_argument("--port", type=int, required=True, help="Gateway port (port.number) the request arrives on")
    p.add_argument("--host", required=True, help="Host header (a port in it is ignored for host matching)")
    p.add_argument("--path", default="/", help="request path, optionally with ?query (default /)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="request header (repeatable)")
    p.add_argument("--method", default="GET")
    p.add_argument("--scheme", choices=("http", "https"), default=None, help="default: https on TLS listeners, else http")
    p.add_argument("--sni", default=None, help="TLS server name (default: the host, on TLS listeners)")
    p.add_argument("--jwt", default=None, metavar="TOKEN", help="a JWT sent as Authorization: Bearer TOKEN (RequestAuthentication decides on it)")
    p.add_argument("--peer-ip", default=None, metavar="IP", help="the client's address as AuthorizationPolicy's source.ip / ipBlocks see it (the PROXY protocol source when used; default 127.0.0.1)")
    p.add_argument("--remote-ip", default=None, metavar="IP", help="the client address after trusted X-Forwarded-For hops / PROXY protocol: remote.ip / remoteIpBlocks (default: --peer-ip)")
    p.add_argument("--client-principal", default=None, metavar="ID", help="a verified client certificate's identity (URI SAN), AuthorizationPolicy's source.principal / principals")
    p.set_defaults(handler=cmd_route)

    p = sub.add_parser("run", help="serve the configuration (supervisor and workers)")
    add_run_arguments(p)  # edge/flags.py
    p.set_defaults(handler=cmd_run)
    return parser


# ---------------------------------------------------------------------------------------------------------
# check / dump
# ---------------------------------------------------------------------------------------------------------


def _compile(args):
    from edge.compiler import CompileOptions, load_and_compile
    from edge.settings import SettingsError, gateway_classes, parse_labels

    try:
        labels = parse_labels(args.gateway_labels if args.gateway_labels is not None else DEFAULT_GATEWAY_LABELS)
    except SettingsError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return None, None
    options = CompileOptions(gateway_labels=labels, cluster_domain=args.cluster_domain, gateway_namespace=args.gateway_namespace, root_namespace=args.root_namespace, gateway_classes=gateway_classes(args.gateway_class))
    return load_and_compile(args.paths, options)


def _print_diagnostics(diagnostics: list[Diagnostic], out: TextIO, notes: bool = False) -> None:
    for d in diagnostics:
        if d.severity == NOTE and not notes:
            continue
        print(str(d) if d.severity != NOTE else f"{d.file}:{d.line}: note: {d.message}", file=out)


def cmd_check(args) -> int:
    loaded, result = _compile(args)
    if loaded is None:
        return 2
    diagnostics = loaded.diagnostics + result.diagnostics
    _print_diagnostics(diagnostics, sys.stderr, notes=args.verbose)
    errors = sum(d.severity == ERROR for d in diagnostics)
    warnings = sum(d.severity == WARNING for d in diagnostics)
    # The Istio networking kinds are always counted (0 included); other kinds when present.
    counts = {key: 0 for key in kinds.KEYS if kinds.KINDS_BY_KEY[key].mesh_fields}
    for res in loaded.resources:
        counts[res.kind] = counts.get(res.kind, 0) + 1
    parts = [f"{n} {_plural(kinds.DISPLAY[key], n)}" for key, n in counts.items()]
    summary = f"{' '.join(args.paths)}: {len(loaded.files)} file{'s' if len(loaded.files) != 1 else ''}, {', '.join(parts)}"
    if result.table is not None:
        summary += f"; {len(result.table.listeners)} listener{'s' if len(result.table.listeners) != 1 else ''}, {len(result.table.clusters)} cluster{'s' if len(result.table.clusters) != 1 else ''}"
    verdict = "ok" if errors == 0 else "FAILED"
    summary += f"; {errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}: {verdict}"
    print(summary)
    if args.listeners and result.table is not None:
        from edge.explain_protocols import protocol_tables

        print("\n".join(["", *protocol_tables(result.table)]))
    return EXIT_OK if errors == 0 else EXIT_FAILED


def _plural(word: str, n: int) -> str:
    """"Gateway (gateway.networking.k8s.io)" → "Gateways (gateway.networking.k8s.io)": the kind, not its group."""
    word, space, group = word.partition(" ")
    if n != 1:
        word = word[:-1] + "ies" if word.endswith(("ry", "cy")) else word + "s"
    return word + space + group


def cmd_dump(args) -> int:
    import orjson

    loaded, result = _compile(args)
    if loaded is None:
        return 2
    diagnostics = loaded.diagnostics + result.diagnostics
    if result.table is None:
        _print_diagnostics([d for d in diagnostics if d.severity == ERROR], sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(orjson.dumps(table.to_builtins(result.table), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    sys.stdout.write("\n")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# route
# ---------------------------------------------------------------------------------------------------------


def cmd_route(args) -> int:
    from edge.explain import RouteExplainer, parse_route_request

    loaded, result = _compile(args)
    if loaded is None:
        return 2
    diagnostics = loaded.diagnostics + result.diagnostics
    if result.table is None:
        print("the configuration does not compile:", file=sys.stderr)
        _print_diagnostics([d for d in diagnostics if d.severity == ERROR], sys.stderr)
        return EXIT_FAILED
    try:
        request = parse_route_request(args.method, args.host, args.path, args.header)
    except ValueError as exc:
        print(f"edge route: {exc}", file=sys.stderr)
        return 2
    routed = RouteExplainer(result.table, loaded.resources, args, sys.stdout).explain(request)
    return EXIT_OK if routed else EXIT_FAILED


# ---------------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from edge.settings import SettingsError, build_settings

    try:
        settings = build_settings(given_flags(args), os.environ)
    except SettingsError as exc:
        print(f"edge run: {exc}", file=sys.stderr)
        return 2
    from edge.supervisor import run

    return run(settings)
