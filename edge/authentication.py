# security.istio.io RequestAuthentication as msgspec Structs: the boundary where its YAML becomes trusted data (the
# compiler's stage is edge/compiler/authentication.py, the verifier workers/jwt.py).
#
# Rules:
# - istio/api security/v1beta1/request_authentication.proto field for field (RequestAuthentication, JWTRule,
#   JWTHeader, ClaimToHeader; v1 is the same message), with type/v1beta1/selector.proto's WorkloadSelector and
#   PolicyTargetReference shared with AuthorizationPolicy (edge/authorization.py); camelCase on the wire, unknown
#   fields rejected, `timeout` a Duration as edge/istio.py reads them.
# - Only syntax here. Whether a JWKS parses, a header name is valid or a rule applies to this gateway is the
#   compiler's, so that those errors carry the resource's file:line:$.path.
from __future__ import annotations

from edge.authorization import PolicyTargetReference, WorkloadSelector
from edge.istio import Duration, Message


class JWTHeader(Message):
    name: str
    prefix: str = ""


class ClaimToHeader(Message):
    header: str
    claim: str


class JWTRule(Message):
    issuer: str = ""
    audiences: list[str] = []
    jwks_uri: str = ""
    jwks: str = ""
    from_headers: list[JWTHeader] = []
    from_params: list[str] = []
    output_payload_to_header: str = ""
    from_cookies: list[str] = []
    forward_original_token: bool = False
    output_claim_to_headers: list[ClaimToHeader] = []
    timeout: Duration | None = None
    space_delimited_claims: list[str] = []


class RequestAuthentication(Message):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = []
    jwt_rules: list[JWTRule] = []
