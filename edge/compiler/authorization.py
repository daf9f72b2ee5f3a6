# Compiler stage: AuthorizationPolicy → the table's Authorization (Envoy RBAC filters, as Istio builds them for a
# gateway), and the warnings for the security kinds this gateway does not enforce (PeerAuthentication, EnvoyFilter).
#
# Rules (istio/istio pilot/pkg/model/policyattachment.go, authorization.go; pilot/pkg/security/authz/model and
# builder; pkg/config/validation ValidateAuthorizationPolicy):
# - Which policies apply: those in the root namespace or the gateway's namespace (--root-namespace,
#   --gateway-namespace; both istio-system by default) whose `selector.matchLabels` is a subset of --gateway-labels
#   (no selector: all of that namespace's workloads, i.e. mesh-wide in the root namespace). `targetRef(s)` attach only
#   to a Kubernetes Gateway API gateway (labels carry gateway.networking.k8s.io/gateway-name): a Gateway of that name
#   in the gateway's namespace, policy in that namespace too; an Istio gateway ignores targetRef policies. A policy
#   that does not apply is a warning (a gateway must never look protected when it is not).
# - Validation as Istio's webhook: one of selector / targetRef / targetRefs; DENY and CUSTOM need `rules`; no empty
#   `from`/`to`/source/operation, no empty values, valid IPs, CIDRs, ports, path templates and `when` keys.
# - CUSTOM (ext_authz) cannot be enforced here: an error. `experimental.envoy.filters.*` keys likewise (Envoy metadata
#   edge does not have). Trust domain aliases do not exist here (one trust domain, as written).
# - Each rule is one RBAC policy "ns[<ns>]-policy[<name>]-rule[<i>]": OR over `from` of AND(source fields + the
#   principal-side `when` conditions), AND OR over `to` of AND(operation fields + destination-side `when` conditions).
#   Values of a field OR; a not-field is NOT(OR of its values). A rule with no from/to/when matches everything; a
#   policy with no rules (ALLOW, AUDIT) contributes a filter that matches nothing, so an ALLOW `spec: {}` denies all.
# - TCP filter chains get the rules without HTTP attributes (hosts, methods, paths, request.headers, request
#   principals, request.auth.*): Istio's generators fail for TCP; for ALLOW the whole rule is skipped, for DENY and
#   AUDIT the failing fields are left out (so the rule denies more, never less).
# - Everything is precomputed: CIDRs merged to integer ranges, string forms split into exact/prefix/suffix, path
#   templates and principal forms translated to regular expressions. Pure: no I/O.
from __future__ import annotations

import ipaddress
import re

from edge import authorization as spec_types
from edge import istio, table
from edge.compiler.report import Report, Where

DEFAULT_ROOT_NAMESPACE = "istio-system"  # meshConfig.rootNamespace's default
DEFAULT_GATEWAY_NAMESPACE = "istio-system"  # where Istio's ingress gateway runs by default
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
SPIFFE_PREFIX = "spiffe://"
ACTION_ORDER = ("AUDIT", "DENY", "ALLOW")  # the RBAC filters' order in Istio's chain (CUSTOM first: refused here)

# Path templates (Istio's CheckValidPathTemplate, Envoy's uri_template): a literal segment is RFC 3986 pchars
# (Envoy's kLiteral, "=" included since Envoy allows it; istio's validLiteral); `*` is `[pchar]+`, `**` `[pchar/]*`.
_PCHAR = "a-zA-Z0-9\\-._~%!$&'()+,;:@="
_LITERAL = re.compile(f"[{_PCHAR}]+")
_SEGMENT_ONE = f"[{_PCHAR}]+"
_SEGMENT_ANY = f"[{_PCHAR}/]*"
_TEMPLATE_ONE = "{*}"
_TEMPLATE_ANY = "{**}"
PATH_TEMPLATE_MAX_CHARS = 256  # Envoy's UriTemplateMatchConfig.path_template max_len

HTTP_ONLY = frozenset({table.AUTHZ_HOST, table.AUTHZ_METHOD, table.AUTHZ_PATH, table.AUTHZ_HEADER, table.AUTHZ_REQUEST_PRINCIPAL, table.AUTHZ_CLAIM})
# Attributes evaluated on the destination side in Istio's model (permissions); the rest are principals.
_PERMISSION_SIDE = frozenset({table.AUTHZ_DESTINATION_IP, table.AUTHZ_DESTINATION_PORT, table.AUTHZ_SNI})
# `when` keys Istio's validation refuses, with its reason.
_REFUSED_KEYS = {
    "destination.namespace": "replaced by the policy's metadata.namespace",
    "destination.name": "deprecated: only supported in v1alpha1",
    "destination.user": "deprecated: only supported in v1alpha1",
}


class PolicyScope:
    """Where this gateway sits, as the policies' applicability needs it."""

    def __init__(self, labels: dict[str, str], gateway_namespace: str, root_namespace: str):
        self.labels = labels
        self.gateway_namespace = gateway_namespace
        self.root_namespace = root_namespace
        self.gateway_name = labels.get(GATEWAY_NAME_LABEL)

    def applies(self, where: Where, res: istio.Resource, spec: spec_types.AuthorizationPolicy) -> bool:
        """Istio's ShouldAttachPolicy for this gateway; a policy that does not apply is warned about."""
        ns = res.namespace
        if ns not in (self.root_namespace, self.gateway_namespace):
            where.warn(f"{res.kind} {res.key} does not apply to this gateway: its namespace is neither the gateway's namespace ({self.gateway_namespace}, --gateway-namespace) nor the root namespace ({self.root_namespace}, --root-namespace)", "")
            return False
        refs = spec.target_refs or ([spec.target_ref] if spec.target_ref is not None else [])
        if refs and self.gateway_name is None:
            where.warn(f"{res.kind} {res.key} does not apply to this gateway: targetRefs attach only to Kubernetes Gateway API gateways (--gateway-labels without {GATEWAY_NAME_LABEL}), as in Istio", ".targetRefs" if spec.target_refs else ".targetRef")
            return False
        if refs:
            for ref in refs:
                group = ref.group or ""
                if ns == self.gateway_namespace and ref.namespace in ("", self.gateway_namespace) and group == GATEWAY_API_GROUP and ref.kind == "Gateway" and ref.name == self.gateway_name:
                    return True
            where.warn(f"{res.kind} {res.key} does not apply to this gateway: no targetRef names Gateway {self.gateway_namespace}/{self.gateway_name}", ".targetRefs" if spec.target_refs else ".targetRef")
            return False
        selector = spec.selector
        if selector is not None and any(self.labels.get(k) != v for k, v in selector.match_labels.items()):
            wanted = ",".join(f"{k}={v}" for k, v in sorted(selector.match_labels.items()))
            have = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
            where.warn(f"{res.kind} {res.key} does not apply to this gateway: selector {wanted} is not among --gateway-labels {have}", ".selector.matchLabels")
            return False
        return True


def compile_authorization(report: Report, by_kind: dict[str, list[istio.Resource]], scope: PolicyScope, has_tcp: bool) -> table.Authorization | None:
    """The table's Authorization from the AuthorizationPolicies that apply (None when none does), with warnings
    for PeerAuthentication and EnvoyFilter."""
    warn_unenforced(report, by_kind)
    built: dict[str, list[tuple[str, table.AuthzRule | None, bool]]] = {a: [] for a in ACTION_ORDER}
    for res in by_kind.get("AuthorizationPolicy", ()):
        where = Where(report, res)
        spec: spec_types.AuthorizationPolicy = res.spec
        if not validate_policy(where, spec):
            continue
        rules = compile_rules(where, res, spec)
        if not scope.applies(where, res, spec):
            continue
        if res.annotations.get("istio.io/dry-run", "").lower() == "true":
            where.warn(f"AuthorizationPolicy {res.key} has istio.io/dry-run: edge has no shadow rules and enforces it", "")
        if spec.action == "CUSTOM":
            provider = spec.provider.name if spec.provider is not None else ""
            where.error(f"action CUSTOM (external authorization by provider {provider!r}) cannot be enforced by edge: there is no ext_authz here; express the policy as ALLOW/DENY rules or put the external authorizer behind edge", ".action")
            continue
        if rules is None:
            continue
        bucket = built[spec.action]
        if not rules:
            bucket.append((res.key, None, False))  # a policy that matches nothing
        for rule, http_only in rules:
            bucket.append((res.key, rule, http_only))
        if has_tcp:
            _warn_tcp(where, res, spec, rules)
    if not any(built.values()):
        return None
    return table.Authorization(http=_filters(built, tcp=False), tcp=_filters(built, tcp=True))


def warn_unenforced(report: Report, by_kind: dict[str, list[istio.Resource]]) -> None:
    for res in by_kind.get("PeerAuthentication", ()):
        Where(report, res).warn(f"PeerAuthentication {res.key} is not enforced by edge: Istio applies it to the inbound mTLS of sidecars, and a gateway's client TLS comes from its Gateway servers (tls.mode MUTUAL with a CA verifies client certificates)", "")
    for res in by_kind.get("EnvoyFilter", ()):
        Where(report, res).warn(f"EnvoyFilter {res.key} is not applied: edge is not Envoy and applies no Envoy configuration patches; whatever it configures (filters, limits, headers, access control) is not in effect", "")


def _filters(built: dict[str, list], *, tcp: bool) -> tuple[table.AuthzFilter, ...]:
    out = []
    for action in ACTION_ORDER:
        entries = built[action]
        if not entries:
            continue
        rules = []
        for _, rule, _ in entries:
            if rule is None:
                continue
            if tcp:
                rule = _for_tcp(rule, action)
                if rule is None:
                    continue
            rules.append(rule)
        rules.sort(key=lambda r: r.name)  # Envoy's policies map is ordered by name: the first match is reported
        policies = tuple(sorted({key for key, _, _ in entries}))
        out.append(table.AuthzFilter(action=action, rules=tuple(rules), policies=policies))
    return tuple(out)


def _for_tcp(rule: table.AuthzRule, action: str) -> table.AuthzRule | None:
    """The rule as Istio builds it for a TCP filter chain (see the module comment)."""
    groups = (*rule.principals, *rule.permissions)
    if not any(c.attribute in HTTP_ONLY for group in groups for c in group):
        return rule
    if action == "ALLOW":
        return None
    principals = tuple(tuple(c for c in g if c.attribute not in HTTP_ONLY) for g in rule.principals)
    permissions = tuple(tuple(c for c in g if c.attribute not in HTTP_ONLY) for g in rule.permissions)
    return table.AuthzRule(name=rule.name, principals=principals, permissions=permissions)


def _warn_tcp(where: Where, res: istio.Resource, spec: spec_types.AuthorizationPolicy, rules: list) -> None:
    for index, (rule, http_only) in enumerate(rules):
        if not http_only:
            continue
        if spec.action == "ALLOW":
            where.warn(f"rule {index} uses HTTP attributes: on TCP and TLS passthrough listeners it is skipped (as in Istio), so it allows no connection there", f".rules[{index}]")
        elif spec.action == "DENY":
            where.warn(f"rule {index} uses HTTP attributes: on TCP and TLS passthrough listeners they are left out (as in Istio), so it denies more connections there; name the ports it is meant for", f".rules[{index}]")


# --------------------------------------------------------------------------------------------------- validation


def validate_policy(where: Where, spec: spec_types.AuthorizationPolicy) -> bool:
    """Istio's ValidateAuthorizationPolicy (the parts that are not per value; values are checked as they compile)."""
    given = [name for name, v in (("selector", spec.selector), ("targetRef", spec.target_ref), ("targetRefs", spec.target_refs or None)) if v is not None]
    if len(given) > 1:
        where.error(f"only one of selector, targetRef, targetRefs may be set (got {', '.join(given)})", "")
    if spec.action == "CUSTOM" and not spec.rules:
        where.error("CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request", ".action")
    if spec.provider is not None and spec.action != "CUSTOM":
        where.error(f"`provider` must not be with non CUSTOM action, found {spec.action}", ".provider")
    if spec.action == "DENY" and not spec.rules:
        where.error("DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request", ".action")
    for i, rule in enumerate(spec.rules):
        at = where.at(f".rules[{i}]")
        if rule is None:
            at.error(f"`rule` must not be nil, found at rule {i}")
            continue
        for j, f in enumerate(rule.from_):
            if f.source is None:
                at.error(f"`from.source` must not be nil, found at rule {i}", f".from[{j}]")
            elif not any(getattr(f.source, name) for name in f.source.__struct_fields__):
                at.error(f"`from.source` must not be empty, found at rule {i}", f".from[{j}].source")
            elif (f.source.principals or f.source.not_principals or f.source.namespaces or f.source.not_namespaces) and (f.source.service_accounts or f.source.not_service_accounts):
                at.error(f"cannot set serviceAccounts with namespaces or principals, found at rule {i}", f".from[{j}].source")
        for j, t in enumerate(rule.to):
            if t.operation is None:
                at.error(f"`to.operation` must not be nil, found at rule {i}", f".to[{j}]")
            elif not any(getattr(t.operation, name) for name in t.operation.__struct_fields__):
                at.error(f"`to.operation` must not be empty, found at rule {i}", f".to[{j}].operation")
        for j, cond in enumerate(rule.when):
            if not cond.key:
                at.error("`key` must not be empty", f".when[{j}].key")
            elif not cond.values and not cond.not_values:
                at.error(f"at least one of `values` or `notValues` must be set for key {cond.key}", f".when[{j}]")
    return not where.failed


# --------------------------------------------------------------------------------------------------- rules


def policy_rule_name(namespace: str, name: str, index: int) -> str:
    """Istio's builder policyName: the RBAC policy id logged in response code details."""
    return f"ns[{namespace}]-policy[{name}]-rule[{index}]"


def compile_rules(where: Where, res: istio.Resource, spec: spec_types.AuthorizationPolicy) -> list[tuple[table.AuthzRule, bool]] | None:
    """Each rule as (AuthzRule, uses HTTP attributes); None when one has an error."""
    out = []
    for i, rule in enumerate(spec.rules):
        at = where.at(f".rules[{i}]")
        principal_when: list[table.AuthzCondition] = []
        permission_when: list[table.AuthzCondition] = []
        for j, cond in enumerate(rule.when):
            for c in _when(at.at(f".when[{j}]"), res, cond, f"when[{j}]"):
                (permission_when if c.attribute in _PERMISSION_SIDE else principal_when).append(c)
        principals = [tuple(_source(at.at(f".from[{j}].source"), res, f.source, f"from[{j}].source")) + tuple(principal_when) for j, f in enumerate(rule.from_) if f.source is not None]
        permissions = [tuple(_operation(at.at(f".to[{j}].operation"), t.operation, f"to[{j}].operation")) + tuple(permission_when) for j, t in enumerate(rule.to) if t.operation is not None]
        if not rule.from_:
            principals = [tuple(principal_when)]
        if not rule.to:
            permissions = [tuple(permission_when)]
        built = table.AuthzRule(name=policy_rule_name(res.namespace, res.name, i), principals=tuple(principals), permissions=tuple(permissions))
        http_only = any(c.attribute in HTTP_ONLY for g in (*principals, *permissions) for c in g)
        out.append((built, http_only))
    return None if where.failed else out


def _pair(values: list[str], not_values: list[str], make) -> list[table.AuthzCondition]:
    """A field and its not-field: `make(values, negate)` for each that is set."""
    out = []
    if values:
        out.append(make(values, False))
    if not_values:
        out.append(make(not_values, True))
    return out


def _source(at: Where, res: istio.Resource, src: spec_types.Source, path: str) -> list[table.AuthzCondition]:
    out: list[table.AuthzCondition] = []
    fields = (
        ("ipBlocks", src.ip_blocks, src.not_ip_blocks, lambda v, n, s, f: _cidr_condition(at, table.AUTHZ_SOURCE_IP, v, n, s, f)),
        ("remoteIpBlocks", src.remote_ip_blocks, src.not_remote_ip_blocks, lambda v, n, s, f: _cidr_condition(at, table.AUTHZ_REMOTE_IP, v, n, s, f)),
        ("namespaces", src.namespaces, src.not_namespaces, lambda v, n, s, f: _principal_condition(namespace_forms(v), n, s)),
        ("trustDomains", src.trust_domains, src.not_trust_domains, lambda v, n, s, f: _principal_condition(trust_domain_forms(at, v, f), n, s)),
        ("serviceAccounts", src.service_accounts, src.not_service_accounts, lambda v, n, s, f: _principal_condition(service_account_forms(at, res.namespace, v, f), n, s)),
        ("requestPrincipals", src.request_principals, src.not_request_principals, lambda v, n, s, f: request_principal_condition(v, n, s)),
        ("principals", src.principals, src.not_principals, lambda v, n, s, f: _principal_condition(string_forms(v, prefix=SPIFFE_PREFIX), n, s)),
    )
    for (_, _, _, make), negate, field, vals in _set_fields(at, fields):
        out.append(make(vals, negate, f"{path}.{field}", f".{field}"))
    return out


def _operation(at: Where, op: spec_types.Operation, path: str) -> list[table.AuthzCondition]:
    out: list[table.AuthzCondition] = []
    fields = (
        ("hosts", op.hosts, op.not_hosts, lambda v: dict(strings=string_forms(v, header=True, ignore_case=True)), table.AUTHZ_HOST),
        ("methods", op.methods, op.not_methods, lambda v: dict(strings=string_forms(v, header=True)), table.AUTHZ_METHOD),
        ("paths", op.paths, op.not_paths, None, table.AUTHZ_PATH),
        ("ports", op.ports, op.not_ports, None, table.AUTHZ_DESTINATION_PORT),
    )
    for (_, _, _, make, attribute), negate, field, vals in _set_fields(at, fields):
        if attribute == table.AUTHZ_PATH:
            forms = path_forms(at, vals, f".{field}")
            if forms is None:
                continue
            kwargs = dict(strings=forms)
        elif attribute == table.AUTHZ_DESTINATION_PORT:
            kwargs = dict(ports=parse_ports(at, vals, f".{field}"))
        else:
            kwargs = make(vals)
        out.append(table.AuthzCondition(attribute=attribute, negate=negate, source=f"{path}.{field}", **kwargs))
    return out


def _set_fields(at: Where, fields):
    """(the field's row, negate, its wire name, its values) for each field of `fields` (rows of name, values,
    notValues, …) and its not-form that is set; a set field with an empty value is an error (Istio's validation)
    and is left out."""
    for row in fields:
        name, values, not_values = row[0], row[1], row[2]
        for negate, vals in ((False, values), (True, not_values)):
            if not vals:
                continue
            field = ("not" + name[0].upper() + name[1:]) if negate else name
            if "" in vals:
                at.error(f"empty value not allowed, found in {field[0].upper() + field[1:]}", f".{field}")
                continue
            yield row, negate, field, vals


def _when(at: Where, res: istio.Resource, cond: spec_types.Condition, path: str) -> list[table.AuthzCondition]:
    """One `when` condition (its values and notValues) as AuthzConditions (Istio's model.New switch)."""
    key = cond.key
    for bad in (v for v in (*cond.values, *cond.not_values) if v == ""):
        at.error(f"invalid value for key {key}: empty value not allowed", ".values" if bad in cond.values else ".notValues")
        return []
    src = f"{path}[{key}]"
    if key in (table.AUTHZ_SOURCE_IP, table.AUTHZ_REMOTE_IP, table.AUTHZ_DESTINATION_IP):
        return _pair(cond.values, cond.not_values, lambda v, n: _cidr_condition(at, key, v, n, src, ".notValues" if n else ".values"))
    if key == table.AUTHZ_DESTINATION_PORT:
        return _pair(cond.values, cond.not_values, lambda v, n: table.AuthzCondition(attribute=key, negate=n, ports=parse_ports(at, v, ".notValues" if n else ".values"), source=src))
    if key == table.AUTHZ_SNI:
        return _pair(cond.values, cond.not_values, lambda v, n: table.AuthzCondition(attribute=key, negate=n, strings=string_forms(v), source=src))
    if key == "source.principal":
        return _pair(cond.values, cond.not_values, lambda v, n: _principal_condition(string_forms(v, prefix=SPIFFE_PREFIX), n, src))
    if key == "source.namespace":
        return _pair(cond.values, cond.not_values, lambda v, n: _principal_condition(namespace_forms(v), n, src))
    if key == "source.serviceAccount":
        return _pair(cond.values, cond.not_values, lambda v, n: _principal_condition(service_account_forms(at, res.namespace, v, ".notValues" if n else ".values"), n, src))
    if key == "source.trustDomain":
        return _pair(cond.values, cond.not_values, lambda v, n: _principal_condition(trust_domain_forms(at, v, ".notValues" if n else ".values"), n, src))
    if key == table.AUTHZ_REQUEST_PRINCIPAL:
        return _pair(cond.values, cond.not_values, lambda v, n: request_principal_condition(v, n, src))
    if key == "request.auth.audiences":
        return _pair(cond.values, cond.not_values, lambda v, n: _claim_condition(("aud",), v, n, src))
    if key == "request.auth.presenter":
        return _pair(cond.values, cond.not_values, lambda v, n: _claim_condition(("azp",), v, n, src))
    if key.startswith(table.AUTHZ_CLAIM):
        claims = nested_claims(key[len(table.AUTHZ_CLAIM) :])
        if not claims:
            at.error(f"bad key ({key}): should have format request.auth.claims[name] or [a][b]", ".key")
            return []
        return _pair(cond.values, cond.not_values, lambda v, n: _claim_condition(claims, v, n, src))
    if key.startswith(table.AUTHZ_HEADER):
        name = key[len(table.AUTHZ_HEADER) :]
        if not (name.startswith("[") and name.endswith("]") and len(name) > 2):
            at.error(f"bad key ({key}): should have format request.headers[name]", ".key")
            return []
        return _pair(cond.values, cond.not_values, lambda v, n: table.AuthzCondition(attribute=table.AUTHZ_HEADER, negate=n, name=name[1:-1].lower(), strings=string_forms(v, header=True), source=src))
    if key.startswith("experimental.envoy.filters."):
        at.error(f"key {key} cannot be enforced by edge: it reads Envoy filter metadata, which edge does not have", ".key")
    elif key in _REFUSED_KEYS or key.startswith("destination.labels"):
        at.error(f"attribute {key} is not supported: {_REFUSED_KEYS.get(key, 'replaced by the workload selector')}", ".key")
    else:
        at.error(f"unknown attribute: {key}", ".key")
    return []


# --------------------------------------------------------------------------------------------------- values


def string_forms(values: list[str], *, header: bool = False, ignore_case: bool = False, prefix: str = "") -> table.AuthzStrings:
    """Istio's string forms (matcher.StringMatcherWithPrefix / HeaderMatcher / HostMatcher): `*` = any non-empty
    value (a header's: present), `*x` = suffix, `x*` = prefix, else exact; `prefix` is prepended (spiffe://)."""
    exact, prefixes, suffixes, regexes = [], [], [], []
    non_empty = present = False
    for v in values:
        if ignore_case:
            v = v.lower()
        if v == "*":
            present = present or header
            non_empty = non_empty or not header
        elif v.startswith("*"):
            if prefix:
                regexes.append(re.escape(prefix) + ".*" + re.escape(v[1:]))
            else:
                suffixes.append(v[1:])
        elif v.endswith("*"):
            prefixes.append(prefix + v[:-1])
        else:
            exact.append(prefix + v)
    return table.AuthzStrings(exact=tuple(exact), prefix=tuple(prefixes), suffix=tuple(suffixes), regex=tuple(regexes), non_empty=non_empty, present=present, ignore_case=ignore_case)


def path_forms(at: Where, values: list[str], field: str) -> table.AuthzStrings | None:
    """Paths: the string forms, and `{*}` / `{**}` templates as regular expressions (Envoy's uri_template)."""
    plain = [v for v in values if _TEMPLATE_ONE not in v and _TEMPLATE_ANY not in v]
    forms = string_forms(plain)
    templates = []
    for v in values:
        if v in plain:
            continue
        pattern, why = path_template_regex(v)
        if pattern is None:
            at.error(f"invalid or unsupported path template {v}: {why}", field)
            return None
        templates.append(pattern)
    if templates:
        forms = table.AuthzStrings(exact=forms.exact, prefix=forms.prefix, suffix=forms.suffix, regex=forms.regex + tuple(templates), non_empty=forms.non_empty)
    return forms


def path_template_regex(path: str) -> tuple[str | None, str]:
    """A path template as the full-match regex Envoy's uri_template matcher builds from Istio's translation
    (`{*}` → `*`, `{**}` → `**`), or (None, why) when Istio's validation (CheckValidPathTemplate) or Envoy's parser
    (parseURLPatternSyntax) refuses it. Segments are split at "/": `{*}` is one non-empty segment of pchars,
    `{**}` any run of pchars and "/" (zero or more segments), a literal is itself; a trailing "/" stays a required
    "/" (so `/foo/{**}/` is valid and needs a path ending in "/" below `/foo/`, i.e. at least `/foo//`), and
    nothing but literals may follow `{**}`."""
    if len(path) > PATH_TEMPLATE_MAX_CHARS:
        return None, f"a path template is at most {PATH_TEMPLATE_MAX_CHARS} characters (Envoy's path_template)"
    if not path.startswith("/"):
        return None, "a path template starts with '/' (Envoy refuses the pattern otherwise)"
    globs = path[1:].split("/")
    if globs[-1] == "":
        globs.pop()  # the trailing "/": an empty last literal in Envoy's parse
        trailing = True
    else:
        trailing = False
    parts = []
    seen_any = False
    for glob in globs:
        if glob in (_TEMPLATE_ONE, _TEMPLATE_ANY):
            if seen_any:
                return None, "{**} is not the last operator"
            seen_any = glob == _TEMPLATE_ANY
            parts.append(_SEGMENT_ANY if seen_any else _SEGMENT_ONE)
        elif "{" in glob or "}" in glob:
            return None, "contains '{' or '}' beyond a supported path template ({*} and {**} as whole segments)"
        elif _LITERAL.fullmatch(glob) is None:
            return None, f"contains segment {glob!r} with invalid string literal (RFC 3986 pchars, no '*')"
        else:
            parts.append(re.escape(glob))
    return "/" + "/".join(parts) + ("/" if trailing else ""), ""


def namespace_forms(values: list[str]) -> table.AuthzStrings:
    """source.namespace / namespaces: `.*/ns/<ns>/.*` against the principal, `*` in a value matching anything."""
    return table.AuthzStrings(regex=tuple(".*/ns/" + ".*".join(re.escape(p) for p in v.split("*")) + "/.*" for v in values))


def service_account_forms(at: Where, namespace: str, values: list[str], field: str) -> table.AuthzStrings:
    """serviceAccounts `ns/sa` or `sa` (the policy's namespace): Istio's serviceAccountRegex."""
    out = []
    for v in values:
        if "*" in v or v.count("/") > 1 or v.startswith("/") or v.endswith("/"):
            at.error(f"expected format 'serviceAccount' or 'namespace/serviceAccount' without wildcards, found {v!r}", field)
            continue
        ns, _, sa = v.rpartition("/")
        out.append(f"spiffe://.+/ns/{re.escape(ns or namespace)}/(.+/|)sa/{re.escape(sa)}(/.+)?")
    return table.AuthzStrings(regex=tuple(out))


def trust_domain_forms(at: Where, values: list[str], field: str) -> table.AuthzStrings:
    """trustDomains: Istio's srcTrustDomainGenerator (prefix spiffe://<td>/, `*` forms)."""
    prefixes, regexes = [], []
    for v in values:
        if "/" in v or v.count("*") > 1 or ("*" in v and v != "*" and not v.startswith("*") and not v.endswith("*")):
            at.error(f"invalid trust domain {v!r}: at most one wildcard, at the start or end, and no '/'", field)
        elif v == "*":
            prefixes.append(SPIFFE_PREFIX)
        elif "*" not in v:
            prefixes.append(SPIFFE_PREFIX + v + "/")
        else:
            head, _, tail = v.partition("*")
            regexes.append(f"spiffe://{re.escape(head)}[^/]*{re.escape(tail)}/.*")
    return table.AuthzStrings(prefix=tuple(prefixes), regex=tuple(regexes))


def request_principal_condition(values: list[str], negate: bool, source: str) -> table.AuthzCondition:
    """requestPrincipals `iss/sub`: split at the last "/", issuer and subject matched separately (Istio's
    requestPrincipalGenerator), each with its `*` forms."""
    any_value = table.AuthzStrings(non_empty=True)
    pairs = []
    for v in values:
        iss, found, sub = v.rpartition("/")
        if not found:
            iss, sub = v, ""
        if v == "*":
            pairs.append((any_value, any_value))
        elif v.startswith("*"):
            if found:
                pairs.append((any_value if iss == "*" else table.AuthzStrings(suffix=(iss[1:],)), table.AuthzStrings(exact=(sub,))))
            else:
                pairs.append((any_value, table.AuthzStrings(suffix=(v[1:],))))
        elif v.endswith("*"):
            if found:
                pairs.append((table.AuthzStrings(exact=(iss,)), any_value if sub == "*" else table.AuthzStrings(prefix=(sub[:-1],))))
            else:
                pairs.append((table.AuthzStrings(prefix=(v[:-1],)), any_value))
        else:
            pairs.append((table.AuthzStrings(exact=(iss,)), table.AuthzStrings(exact=(sub,))))
    return table.AuthzCondition(attribute=table.AUTHZ_REQUEST_PRINCIPAL, negate=negate, pairs=tuple(pairs), source=source)


def nested_claims(text: str) -> tuple[str, ...]:
    """"[a][b]" → ("a", "b"); "[a.b]" → ("a.b",) (Istio's extractNameInNestedBrackets); () when malformed."""
    if not (text.startswith("[") and text.endswith("]") and len(text) > 2):
        return ()
    inner = text[1:-1]
    if "[" not in inner and "]" not in inner:
        return (inner,)
    parts = inner.split("][")
    if any(not p or "[" in p or "]" in p for p in parts):
        return (inner,)  # Istio falls back to the whole bracketed name
    return tuple(parts)


def _claim_condition(claim: tuple[str, ...], values: list[str], negate: bool, source: str) -> table.AuthzCondition:
    return table.AuthzCondition(attribute=table.AUTHZ_CLAIM, negate=negate, claim=claim, strings=string_forms(values), source=source)


def _principal_condition(forms: table.AuthzStrings, negate: bool, source: str) -> table.AuthzCondition:
    return table.AuthzCondition(attribute=table.AUTHZ_PRINCIPAL, negate=negate, strings=forms, source=source)


def _cidr_condition(at: Where, attribute: str, values: list[str], negate: bool, source: str, field: str) -> table.AuthzCondition:
    return table.AuthzCondition(attribute=attribute, negate=negate, cidrs=parse_cidrs(at, values, field), source=source)


def parse_cidrs(at: Where, values: list[str], field: str) -> table.AuthzCidrs:
    """IPs and CIDRs (Istio's ValidateIPs / AddrStrToCidrRange: an address is a /32 or /128; host bits are masked,
    as Envoy's CidrRange does) as merged integer ranges."""
    ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for v in values:
        try:
            net = ipaddress.ip_network(v.strip(), strict=False) if "/" in v else ipaddress.ip_network(ipaddress.ip_address(v.strip()))
        except ValueError:
            at.error(f"bad {'CIDR range' if '/' in v else 'IP address'} ({v})", field)
            continue
        ranges[net.version].append((int(net.network_address), int(net.broadcast_address)))
    return table.AuthzCidrs(v4=_merge(ranges[4]), v6=_merge(ranges[6]))


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return tuple((a, b) for a, b in out)


def parse_ports(at: Where, values: list[str], field: str) -> tuple[int, ...]:
    ports = []
    for v in values:
        if not v.isdigit() or int(v) > 65535:
            at.error(f"bad port ({v})", field)
            continue
        ports.append(int(v))
    return tuple(sorted(set(ports)))
