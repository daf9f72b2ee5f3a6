# Kubernetes Ingress (networking.k8s.io/v1) as msgspec Structs: the boundary where an Ingress or IngressClass
# becomes trusted data. edge/compiler/ingress.py translates them the way Istio's ingress controller does.
#
# Rules:
# - One Struct per Go type of k8s.io/api networking/v1 (types.go: IngressSpec, IngressBackend,
#   IngressServiceBackend, ServiceBackendPort, IngressTLS, IngressRule, HTTPIngressRuleValue, HTTPIngressPath,
#   IngressClassSpec, IngressClassParametersReference; core/v1 TypedLocalObjectReference), field for field,
#   camelCase on the wire, unknown fields rejected, as the Istio kinds (edge/istio.py).
# - Only the single-object rules of the API server's validation (pkg/apis/networking/validation) that decide
#   what a field means live here: a backend is a service or a resource, never both; a service port is a number
#   or a name, never both. Everything Istio decides (class, path types, named ports) is the compiler's.
# - `pathType` is optional here although networking/v1 requires it: Istio's conversion handles an unset one
#   (as ImplementationSpecific) and its own tests rely on that.
# - Pure: no I/O.
from __future__ import annotations

from typing import Literal

from edge.istio import Message

API_GROUP = "networking.k8s.io"
API_VERSIONS = ("v1",)

PathType = Literal["Exact", "Prefix", "ImplementationSpecific"]


class ServiceBackendPort(Message):
    name: str = ""
    number: int = 0

    def __post_init__(self) -> None:
        if self.name and self.number:
            raise ValueError("port: name and number are mutually exclusive")
        if not self.name and not self.number:
            raise ValueError("port: one of name or number must be set")
        if not 0 <= self.number <= 65535:
            raise ValueError(f"port number {self.number} is out of range 1..65535")


class IngressServiceBackend(Message):
    name: str
    port: ServiceBackendPort


class TypedLocalObjectReference(Message):
    kind: str
    name: str
    api_group: str | None = None


class IngressBackend(Message):
    service: IngressServiceBackend | None = None
    resource: TypedLocalObjectReference | None = None

    def __post_init__(self) -> None:
        if (self.service is None) == (self.resource is None):
            raise ValueError("a backend needs exactly one of service or resource")


class HTTPIngressPath(Message):
    backend: IngressBackend
    path: str = ""
    path_type: PathType | None = None


class HTTPIngressRuleValue(Message):
    paths: list[HTTPIngressPath]


class IngressRule(Message):
    host: str = ""
    http: HTTPIngressRuleValue | None = None


class IngressTLS(Message):
    hosts: list[str] = []
    secret_name: str = ""


class IngressSpec(Message):
    ingress_class_name: str | None = None
    default_backend: IngressBackend | None = None
    tls: list[IngressTLS] = []
    rules: list[IngressRule] = []


class IngressClassParametersReference(Message):
    kind: str
    name: str
    api_group: str | None = None
    scope: Literal["Cluster", "Namespace"] | None = None
    namespace: str | None = None


class IngressClassSpec(Message):
    controller: str = ""
    parameters: IngressClassParametersReference | None = None
