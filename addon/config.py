"""Load and validate Valet's YAML configuration.

Errors must be actionable by an ops engineer editing the file at 3 a.m., so each
one names the file, the line and the field. We validate with pydantic (strict
models, unknown keys forbidden) and map each error's location back to the YAML
node it came from. YAML itself is read strictly too: a key given twice in one
mapping is an error, not "last one wins".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from addon.secrets import templates

M = TypeVar("M", bound=BaseModel)
SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BUFFERED_BYTES = 32 * 1024 * 1024


class ConfigError(Exception):
    """A configuration that cannot be used; the message is meant for humans."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# Headers Valet owns or that carry MCP routing: injecting them would break framing or routing.
_RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
    "proxy-authorization", "content-type", "content-encoding", "accept-encoding",
})
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _check_template(value: str) -> str:
    templates.check(value)
    if any(c in value for c in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL")
    return value


def _check_templates(mapping: dict[str, str]) -> dict[str, str]:
    for template in mapping.values():
        _check_template(template)
    return mapping


class BasicAuth(Strict):
    username: str
    password: str

    @field_validator("username", "password")
    @classmethod
    def _templates(cls, value: str) -> str:
        return _check_template(value)


class InjectRule(Strict):
    tools: list[str] = Field(default_factory=lambda: ["*"], min_length=1,
                             description="globs on tool names (fnmatch, case-sensitive)")
    arguments: dict[str, str] = Field(min_length=1, description="argument name -> template")

    @field_validator("arguments")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_templates(value)


class OAuthConfig(Strict):
    """Optional settings for ``auth: oauth``; anything not given is discovered."""

    client_id: str | None = None
    client_secret: str | None = Field(None, description="a ${secret:NAME} placeholder, never a literal")
    scopes: list[str] | None = None
    resource: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    registration_endpoint: str | None = None
    revocation_endpoint: str | None = None

    @field_validator("client_secret")
    @classmethod
    def _secret_is_a_placeholder(cls, value: str | None) -> str | None:
        if value is not None and not templates.PLACEHOLDER.fullmatch(value):
            raise ValueError("must be a ${secret:NAME} placeholder: secrets never go in the config file")
        return value

    @field_validator("authorization_endpoint", "token_endpoint", "registration_endpoint", "revocation_endpoint",
                     "resource")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value


class TimeoutsConfig(Strict):
    """How long Valet waits on an upstream; on expiry the agent gets ``upstream_timeout`` (504, or an
    error event on an open stream) and the upstream connection is closed. Per server: only the fields given
    override the global ones."""

    connect_seconds: float | None = Field(None, gt=0, le=3600, description="TCP/TLS connect to the upstream")
    first_byte_seconds: float | None = Field(
        None, gt=0, le=86400, description="from forwarding the request to the upstream's response headers")
    idle_seconds: float | None = Field(
        None, gt=0, le=86400, description="between two pieces of a streamed response (SSE events, chunks)")
    total_seconds: float | None = Field(
        None, gt=0, le=7 * 86400, description="a whole response, from forwarding to its last byte; "
        "standing GET streams (the agent's own listening stream) are exempt")
    header_read_seconds: float | None = Field(
        None, gt=0, le=3600, description="global only: a request head must be complete this long after its "
        "first byte (408 otherwise)")
    client_idle_seconds: float | None = Field(
        None, gt=0, le=3600, description="global only: how long a kept-alive agent connection (or a new CONNECT "
        "tunnel) may wait for its next request; then it is closed (a new connection has header_read_seconds)")
    body_read_seconds: float | None = Field(
        None, gt=0, le=3600, description="global only: longest wait between two reads of a request body "
        "(408 otherwise)")
    body_total_seconds: float | None = Field(
        None, gt=0, le=86400, description="global only: a whole request body must arrive within this long "
        "after its head (408 otherwise): a half-sent request cannot be parked to complete later")


DEFAULT_TIMEOUTS = {"connect_seconds": 10.0, "first_byte_seconds": 120.0, "idle_seconds": 300.0,
                    "total_seconds": 3600.0, "header_read_seconds": 30.0, "client_idle_seconds": 60.0,
                    "body_read_seconds": 60.0, "body_total_seconds": 120.0}


class ServerConfig(Strict):
    url: str = Field(description="The upstream MCP endpoint, http:// or https://")
    kind: Literal["mcp", "http"] = Field("mcp", description="mcp: JSON-RPC over HTTP; http: a plain HTTP API")
    headers: dict[str, str] = Field(default_factory=dict, description="upstream headers, with ${secret:NAME}")
    basic_auth: BasicAuth | None = None
    query: dict[str, str] = Field(default_factory=dict, description="upstream query parameters to set")
    inject: list[InjectRule] = Field(default_factory=list, description="tools/call arguments to inject")
    auth: Literal["none", "oauth"] = Field("none", description="oauth: Valet holds each user's OAuth grant")
    oauth: OAuthConfig | None = None
    timeouts: TimeoutsConfig | None = Field(None, description="overrides of the global timeouts for this server")

    @field_validator("timeouts")
    @classmethod
    def _server_timeouts(cls, value: TimeoutsConfig | None) -> TimeoutsConfig | None:
        if value is not None and value.header_read_seconds is not None:
            raise ValueError("header_read_seconds is global only (the server is not known before the head)")
        if value is not None and (value.client_idle_seconds is not None or value.body_read_seconds is not None
                                  or value.body_total_seconds is not None):
            raise ValueError("client_idle_seconds, body_read_seconds and body_total_seconds are global only "
                             "(connection timers)")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            lowered = name.lower()
            if lowered in _RESERVED_HEADERS or lowered.startswith("mcp-"):
                raise ValueError(f"header {name!r} cannot be injected")
            _check_template(template)
        if len({n.lower() for n in value}) != len(value):
            raise ValueError("a header is given twice (names are case-insensitive)")
        return value

    @field_validator("query")
    @classmethod
    def _check_query(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_templates(value)

    @model_validator(mode="after")
    def _one_authorization(self) -> ServerConfig:
        if self.basic_auth is not None and any(n.lower() == "authorization" for n in self.headers):
            raise ValueError("basic_auth and an Authorization header cannot both be set")
        if self.auth == "oauth" and (self.basic_auth is not None
                                     or any(n.lower() == "authorization" for n in self.headers)):
            raise ValueError("auth: oauth sets the Authorization header itself")
        if self.oauth is not None and self.auth != "oauth":
            raise ValueError("an oauth section needs auth: oauth")
        for name in self.secret_names:
            if name.startswith("OAUTH_"):
                raise ValueError(f"${{secret:{name}}}: the OAUTH_ prefix is reserved for grants Valet manages")
        return self

    @cached_property
    def secret_names(self) -> frozenset[str]:
        """Every secret this server's injections reference (computed once per config load)."""
        found: set[str] = set()
        values = [*self.headers.values(), *self.query.values()]
        if self.basic_auth:
            values += [self.basic_auth.username, self.basic_auth.password]
        for rule in self.inject:
            values += rule.arguments.values()
        if self.oauth is not None and self.oauth.client_secret:
            values.append(self.oauth.client_secret)
        for value in values:
            found.update(templates.names(value))
        return frozenset(found)

    @cached_property
    def _arguments_by_tool(self) -> dict[str, dict[str, str]]:
        return {}

    def arguments_for(self, tool: str) -> dict[str, str]:
        """Argument name -> template injected into calls of ``tool``; later rules win. Cached per tool name."""
        cache = self._arguments_by_tool
        found = cache.get(tool)
        if found is None:
            if len(cache) >= 10_000:  # tool names come from agents: keep the cache bounded
                cache.clear()
            found = {}
            for rule in self.inject:
                if any(fnmatchcase(tool, pattern) for pattern in rule.tools):
                    found.update(rule.arguments)
            cache[tool] = found
        return found

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; declare them as secrets instead")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        parts.port  # raises ValueError on a bad port
        return value


class LimitsConfig(Strict):
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0, description="largest JSON-RPC request body")
    max_buffered_bytes: int = Field(
        DEFAULT_MAX_BUFFERED_BYTES, gt=0,
        description="largest body held in memory, request or response (SSE streams are not held)",
    )
    max_batch_messages: int = Field(
        100, gt=0, description="most JSON-RPC messages in one batch (each costs a decision and an audit row)",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=4096, le=1024 * 1024,
        description="largest request head (request line and headers); more is answered 431 and closed",
    )
    max_buffered_total_bytes: int = Field(
        256 * 1024 * 1024, gt=0,
        description="request bytes buffered across all connections at once; a body that would take more gets "
        "503 busy",
    )
    max_header_count: int = Field(
        100, ge=8, le=10000, description="most request header lines; more is answered 431 and closed",
    )
    max_pending_connections: int = Field(
        1024, ge=1, le=1_000_000,
        description="agent connections open with no request in progress (never more than half the fd limit); "
        "one more closes the oldest of them",
    )
    max_response_header_bytes: int = Field(
        64 * 1024, ge=4096, le=16 * 1024 * 1024,
        description="largest upstream response head; more closes the upstream and answers 502 upstream_error",
    )
    max_response_header_count: int = Field(
        256, ge=8, le=100_000, description="most upstream response header lines; more is answered 502",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LimitsConfig:
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError("max_buffered_bytes must be at least max_body_bytes")
        if self.max_buffered_total_bytes < self.max_buffered_bytes:
            raise ValueError("max_buffered_total_bytes must be at least max_buffered_bytes")
        return self


class AuditConfig(Strict):
    commit_timeout_seconds: float = Field(
        1.0, gt=0, le=60,
        description="an audit commit not done within this refuses new requests (503 audit_unavailable)",
    )
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, le=600,
        description="on SIGTERM, how long in-flight exchanges may finish before they are recorded interrupted",
    )
    min_free_bytes: int = Field(
        64 * 1024 * 1024, ge=0,
        description="free space the audit log's filesystem must keep; below it new requests get 503 "
        "audit_unavailable and /readyz is not ready (0: no check)",
    )


class RateLimitsConfig(Strict):
    storage: str = Field("memory://", description="memory:// (one process) or redis://HOST:PORT[/DB] (shared)")
    max_keys_per_rule: int = Field(10_000, gt=0, description="distinct budgets (e.g. argument values) one rate "
                                   "rule may hold within its window for one caller (the user/key/agent parts of "
                                   "its per; the whole rule when per names none); one more is refused")
    max_identities_per_rule: int = Field(10_000, gt=0, description="callers (distinct user/key/agent parts of per) "
                                         "one rate rule tracks within its window; a new one past it is refused")

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if scheme not in ("memory", "redis", "rediss") or "://" not in value:
            raise ValueError("must be memory:// or redis://HOST:PORT[/DB] (rediss:// for TLS)")
        return value


class CanariesConfig(Strict):
    revoke_key: bool = Field(False, description="revoke the valet key that sent a canary secret, at once")


class ValetConfig(Strict):
    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    policy_files: list[str] = Field(
        default_factory=lambda: ["rules/*.yaml"],
        description="globs of policy files, relative to this file's directory; all are loaded and merged",
    )
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    passthrough: list[str] = Field(
        default_factory=list,
        description="forward mode only: host or host:port that agents may reach without a server entry",
    )
    upstream_ca_file: str | None = None
    allowed_origins: list[str] | None = Field(
        None, description="globs of Origin values agents may send (absent Origin is always fine); "
        "default: http(s)://localhost, 127.0.0.1 and [::1] on any port",
    )
    allowed_hosts: list[str] | None = Field(
        None, description="reverse mode: Host values naming Valet itself (name, name:port, globs); "
        "default: the listen address, localhost, 127.0.0.1 and [::1] with the listen port",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    canaries: CanariesConfig = Field(default_factory=CanariesConfig)
    http2: bool = Field(
        False, description="accept HTTP/2 from agents inside TLS tunnels; off: every request Valet judges is "
        "HTTP/1.1, which every MCP client speaks (read at start)",
    )

    @field_validator("allowed_origins", "allowed_hosts")
    @classmethod
    def _check_patterns(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or []:
            if not pattern or not pattern.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in pattern):
                raise ValueError(f"{pattern!r}: patterns are non-empty printable ASCII without spaces")
        return value

    @field_validator("servers")
    @classmethod
    def _check_names(cls, value: dict[str, ServerConfig]) -> dict[str, ServerConfig]:
        for name in value:
            if not SERVER_NAME.match(name):
                raise ValueError(f"server name {name!r} must match {SERVER_NAME.pattern}")
        return value


@dataclass(frozen=True)
class LoadedConfig:
    path: Path
    config: ValetConfig


def load_config(path: Path) -> LoadedConfig:
    """Read, parse and validate one config file, or raise ConfigError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc.__class__.__name__}: {exc}") from None
    return LoadedConfig(path=path, config=parse_config(text, str(path)))


def parse_config(text: str, source: str = "<config>") -> ValetConfig:
    return parse_model(text, source, ValetConfig)


def parse_model(text: str, source: str, model: type[M]) -> M:
    """Strict YAML into a strict pydantic model; every error names source, line and field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {_yaml_problem(exc)}") from None
    if root is None:
        data: Any = {}
    else:
        _reject_duplicate_keys(root, source)
        data = yaml.SafeLoader(text).get_single_data()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:{_line(root)}: the top level must be a mapping")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(err, root, source) for err in exc.errors())) from None


def line_of(text: str, *loc: Any) -> int:
    """The line of the YAML node at a path such as ``("rules", 2, "servers", 0)``.

    For errors found after validation (a rule naming a server the config lacks), so
    that they name a line like every other config and policy error.
    """
    try:
        return _line(_node_at(yaml.compose(text, Loader=yaml.SafeLoader), loc))
    except yaml.YAMLError:
        return 1


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    return f"{where}invalid YAML: {getattr(exc, 'problem', None) or exc}"


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _reject_duplicate_keys(node: yaml.Node, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise ConfigError(f"{source}:{_line(key)}: key {key.value!r} appears twice")
                seen.add(key.value)
            _reject_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, source)


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The deepest YAML node along a pydantic error location (unknown keys point at the key)."""
    node = root
    for index, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    node = key if index == len(loc) - 1 else value
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _describe(err: dict[str, Any], root: yaml.Node | None, source: str) -> str:
    loc = tuple(err.get("loc", ()))
    field = ".".join(str(p) for p in loc) or "(top level)"
    message = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        message = "unknown key (check its spelling and indentation)"
    return f"{source}:{_line(_node_at(root, loc))}: {field}: {message}"


def timeouts_for(config: ValetConfig, server: str | None) -> dict[str, float]:
    """The timeouts in force for a server: its own, else the global ones, else the defaults."""
    merged = dict(DEFAULT_TIMEOUTS)
    for layer in (config.timeouts, config.servers[server].timeouts if server in config.servers else None):
        if layer is not None:
            merged.update({k: v for k, v in layer.model_dump().items() if v is not None})
    return merged
