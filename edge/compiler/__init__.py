# The compiler: Istio resources → RoutingTable (see driver.py). This package's public API.
from edge.compiler.driver import (
    DEFAULT_RETRY,
    CompileOptions,
    CompileResult,
    RegexError,
    compile_resources,
    host_matches,
    intersect_hosts,
    load_and_compile,
    names_for_namespace,
    resolve_gateway_name,
    resolve_shortname,
    sanitize_server_hosts,
    selector_matches,
    translate_re2,
    translate_re2_rewrite,
)

__all__ = [
    "DEFAULT_RETRY", "CompileOptions", "CompileResult", "RegexError", "compile_resources", "host_matches",
    "intersect_hosts", "load_and_compile", "names_for_namespace", "resolve_gateway_name", "resolve_shortname",
    "sanitize_server_hosts", "selector_matches", "translate_re2", "translate_re2_rewrite",
]
