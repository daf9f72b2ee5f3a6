# security.istio.io AuthorizationPolicy and PeerAuthentication, and networking.istio.io EnvoyFilter, as msgspec
# Structs: the boundary where their YAML becomes trusted data (the compiler's stage is edge/compiler/authorization.py).
#
# Rules:
# - AuthorizationPolicy is istio/api security/v1beta1/authorization_policy.proto field for field (v1 is the same
#   message), with type/v1beta1/selector.proto's WorkloadSelector and PolicyTargetReference; camelCase on the wire,
#   unknown fields rejected, as edge/istio.py does for the networking kinds. `action` is the proto enum's name
#   (default ALLOW, the enum's zero); `provider` is the action_detail oneof, only meaningful with CUSTOM.
# - Only syntax here. Whether a value is a valid CIDR, port or attribute key, and what a policy means at this gateway,
#   is the compiler's (edge/compiler/authorization.py), so that those errors carry the policy's file:line:$.path.
# - PeerAuthentication (peer_authentication.proto) is decoded strictly so that a typo is still an error, but a gateway
#   does not enforce it: Istio applies it to sidecars' inbound mTLS only; the compiler says so in a warning.
# - EnvoyFilter is read loosely (any mapping) only to warn that edge applies none: its patches are Envoy config.
from __future__ import annotations

from typing import Any, Literal

import msgspec

from edge.istio import Message

SECURITY_GROUP = "security.istio.io"
SECURITY_VERSIONS = ("v1beta1", "v1")
NETWORKING_GROUP = "networking.istio.io"
ENVOY_FILTER_VERSIONS = ("v1alpha3",)


class WorkloadSelector(Message):
    match_labels: dict[str, str] = {}


class PolicyTargetReference(Message):
    kind: str
    name: str
    group: str = ""
    namespace: str = ""


class Source(Message):
    principals: list[str] = []
    not_principals: list[str] = []
    request_principals: list[str] = []
    not_request_principals: list[str] = []
    namespaces: list[str] = []
    not_namespaces: list[str] = []
    service_accounts: list[str] = []
    not_service_accounts: list[str] = []
    ip_blocks: list[str] = []
    not_ip_blocks: list[str] = []
    remote_ip_blocks: list[str] = []
    not_remote_ip_blocks: list[str] = []
    trust_domains: list[str] = []
    not_trust_domains: list[str] = []


class Operation(Message):
    hosts: list[str] = []
    not_hosts: list[str] = []
    ports: list[str] = []
    not_ports: list[str] = []
    methods: list[str] = []
    not_methods: list[str] = []
    paths: list[str] = []
    not_paths: list[str] = []


class From(Message):
    source: Source | None = None


class To(Message):
    operation: Operation | None = None


class Condition(Message):
    key: str
    values: list[str] = []
    not_values: list[str] = []


class Rule(Message):
    from_: list[From] = msgspec.field(default_factory=list, name="from")
    to: list[To] = []
    when: list[Condition] = []


class ExtensionProvider(Message):
    name: str = ""


class AuthorizationPolicy(Message):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = []
    rules: list[Rule | None] = []
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: ExtensionProvider | None = None


class PortMTLS(Message):
    mode: Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"] = "UNSET"


class PeerAuthentication(Message):
    selector: WorkloadSelector | None = None
    mtls: PortMTLS | None = None
    port_level_mtls: dict[int, PortMTLS] = {}


# EnvoyFilter: any mapping (edge applies none of it; see the module comment).
EnvoyFilter = dict[str, Any]
