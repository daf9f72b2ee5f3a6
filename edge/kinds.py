# The kinds edge reads: one table from (API group, kind) to how the object is decoded and what it is called
# inside edge. Every input (Istio networking, Istio security, the Kubernetes Gateway API, Ingress) adds its rows
# here and nowhere else in the loader.
#
# Rules:
# - A row names the group, the YAML kind, the API versions accepted, the Struct its `spec` decodes into (strictly:
#   msgspec with forbid_unknown_fields, the same dec_hook as the Istio kinds), and `key`: the name the compiler
#   buckets it by. Keys are unique across groups: the Gateway API's `Gateway` is `KubernetesGateway`, as Istio's
#   own gvk names it, so that it never mixes with networking.istio.io's `Gateway`.
# - `mesh_fields`: the loader warns about mesh-only fields (edge/loader.py MESH_ONLY_KEYS) for this kind; only
#   the Istio networking kinds have them.
# - An object whose group or kind has no row is skipped with a note; a known kind under an unknown version is an
#   error (the user meant a resource edge serves and will otherwise wonder why it does nothing).
# - Pure: no I/O.
from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from edge import authentication, authorization, gateway_api, ingress, istio


class Kind(NamedTuple):
    group: str
    name: str  # as written in YAML
    versions: tuple[str, ...]
    spec_type: type
    key: str  # as the compiler buckets it (Resource.kind)
    mesh_fields: bool = False


KINDS: dict[tuple[str, str], Kind] = {}


def register(*kinds: Kind) -> None:
    for kind in kinds:
        if (kind.group, kind.name) in KINDS or any(k.key == kind.key for k in KINDS.values()):
            raise ValueError(f"kind {kind.group}/{kind.name} ({kind.key}) is registered twice")
        KINDS[(kind.group, kind.name)] = kind
        # What diagnostics (istio.Resource.ref) and `edge check` call it: the YAML kind, with its group when the
        # key differs from it ("Gateway (gateway.networking.k8s.io)" for KubernetesGateway).
        istio.DISPLAY_NAMES[kind.key] = kind.name if kind.key == kind.name else f"{kind.name} ({kind.group})"


register(*(Kind(istio.API_GROUP, name, istio.API_VERSIONS, spec_type, name, mesh_fields=True) for name, spec_type in istio.SPEC_TYPES.items()))
register(
    Kind(ingress.API_GROUP, "Ingress", ingress.API_VERSIONS, ingress.IngressSpec, "Ingress"),
    Kind(ingress.API_GROUP, "IngressClass", ingress.API_VERSIONS, ingress.IngressClassSpec, "IngressClass"),
)
register(*(Kind(gateway_api.API_GROUP, name, versions, spec_type, key) for name, (versions, spec_type, key) in gateway_api.KINDS.items()))
# security.istio.io: AuthorizationPolicy is enforced (edge/compiler/authorization.py); PeerAuthentication and
# EnvoyFilter are read only to warn that this gateway does not apply them.
register(
    Kind(authorization.SECURITY_GROUP, "AuthorizationPolicy", authorization.SECURITY_VERSIONS, authorization.AuthorizationPolicy, "AuthorizationPolicy"),
    Kind(authorization.SECURITY_GROUP, "PeerAuthentication", authorization.SECURITY_VERSIONS, authorization.PeerAuthentication, "PeerAuthentication"),
    Kind(authorization.NETWORKING_GROUP, "EnvoyFilter", authorization.ENVOY_FILTER_VERSIONS, authorization.EnvoyFilter, "EnvoyFilter"),
)
# RequestAuthentication: JWT rules verified at the gateway (edge/compiler/authentication.py, workers/jwt.py).
register(Kind(authorization.SECURITY_GROUP, "RequestAuthentication", authorization.SECURITY_VERSIONS, authentication.RequestAuthentication, "RequestAuthentication"))

# Keys in the order `edge check` counts them.
KEYS: tuple[str, ...] = tuple(k.key for k in KINDS.values())
KINDS_BY_KEY: dict[str, Kind] = {k.key: k for k in KINDS.values()}
DISPLAY: dict[str, str] = istio.DISPLAY_NAMES


def lookup(api_version: str, kind: str) -> tuple[Kind | None, str]:
    """(the row, "") for a kind edge reads under a version it accepts; (None, "") for one it does not read (skip
    it); (None, why) for a known kind under an unknown version (an error)."""
    group, _, version = api_version.rpartition("/")
    row = KINDS.get((group, kind))
    if row is None:
        return None, ""
    if version not in row.versions:
        return None, f"{kind}: apiVersion {api_version} is not one of " + ", ".join(f"{group}/{v}" for v in row.versions)
    return row, ""


def decode_spec(row: Kind, spec: Any) -> Any:
    """Strictly convert a plain spec (from YAML/JSON) to its Struct; raises msgspec.ValidationError."""
    return msgspec.convert(spec, row.spec_type, dec_hook=istio.dec_hook)
