"""The policy file format: rules, server defaults and kill switches, in one or many YAML files.

Files are merged: rules are concatenated in file-name order (ids must be unique
across files); a server's ``default`` may be set by one file only; a kill switch
(``enabled: false`` on a server, user or key) set by any file wins. Every
error names the file, the line and the field.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from limits import parse_many
from pydantic import Field, field_validator, model_validator

from addon.config import ConfigError, Strict, ValetConfig, line_of, parse_model

RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
SCOPES = ("user", "agent", "key", "server", "tool", "method")


class ArgumentRule(Strict):
    under: str | None = Field(None, description="an absolute path the argument must lie under")
    regex: str | None = Field(None, description="the whole (string) argument must match")
    one_of: list[str | int | float | bool] | None = None
    max_length: int | None = Field(None, ge=0)
    min: float | None = None
    max: float | None = None
    optional: bool = Field(False, description="an absent argument satisfies the rule (default: it does not)")

    @field_validator("under")
    @classmethod
    def _root(cls, value: str | None) -> str | None:
        from addon.policy.arguments import normalize_fs_path

        if value is not None and normalize_fs_path(value) != value.rstrip("/") and value != "/":
            raise ValueError("must be an absolute, normalized path (no '..', '//', '\\\\' or trailing '/')")
        return value

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            from addon.policy.arguments import PatternError, compile_pattern

            try:
                compile_pattern(value)
            except PatternError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _something(self) -> ArgumentRule:
        if all(getattr(self, k) is None for k in ("under", "regex", "one_of", "max_length", "min", "max")):
            raise ValueError("give at least one of under, regex, one_of, max_length, min, max")
        return self


class HttpMatch(Strict):
    methods: list[str] | None = Field(None, description="HTTP methods, e.g. [GET, HEAD]")
    paths: list[str] | None = Field(None, description="path globs (* one segment, ** any), percent-decoded")

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return [m.upper() for m in value] if value is not None else None


class Rule(Strict):
    id: str
    description: str | None = None
    effect: Literal["allow", "deny"] | None = None
    users: list[str] | None = None
    agents: list[str] | None = None
    keys: list[str] | None = None
    servers: list[str] | None = None
    methods: list[str] | None = Field(None, description="JSON-RPC method globs")
    tools: list[str] | None = Field(None, description="tool name globs (implies tools/call)")
    arguments: dict[str, ArgumentRule] | None = None
    http: HttpMatch | None = None
    rate: str | None = Field(None, description="e.g. 60/minute (the limits package's notation)")
    burst: int | None = Field(None, gt=0, description="at most this many in any one second, on top of rate")
    per: list[str] = Field(default_factory=lambda: ["user"], description="who shares one budget")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not RULE_ID.match(value):
            raise ValueError(f"rule ids must match {RULE_ID.pattern}")
        return value

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_many(value)
            except ValueError:
                raise ValueError("not a rate: write e.g. 60/minute, 1000/hour or 10/second") from None
        return value

    @field_validator("per")
    @classmethod
    def _per(cls, value: list[str]) -> list[str]:
        for scope in value:
            if scope not in SCOPES and not (scope.startswith("argument:") and len(scope) > 9):
                raise ValueError(f"{scope!r}: scopes are {', '.join(SCOPES)} or argument:NAME")
        return value

    @model_validator(mode="after")
    def _kind(self) -> Rule:
        if (self.effect is None) == (self.rate is None):
            raise ValueError("a rule has either an effect (allow/deny) or a rate, not both and not neither")
        if self.burst is not None and self.rate is None:
            raise ValueError("burst goes with rate")
        if self.http is not None and (self.tools or self.methods or self.arguments):
            raise ValueError("http rules match plain HTTP servers; tools, methods and arguments match MCP calls")
        if self.arguments and not self.tools:
            raise ValueError("argument constraints need tools: name the tools whose arguments they check")
        return self


class Switch(Strict):
    enabled: bool = True


class ServerPolicy(Strict):
    enabled: bool = True
    default: Literal["allow", "deny"] | None = None


class PolicyFile(Strict):
    servers: dict[str, ServerPolicy] = Field(default_factory=dict)
    users: dict[str, Switch] = Field(default_factory=dict)
    keys: dict[str, Switch] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)


@dataclass
class PolicySources:
    """Everything the policy files say, merged, with where each rule came from."""

    rules: list[tuple[Rule, str]] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)
    disabled_servers: set[str] = field(default_factory=set)
    disabled_users: set[str] = field(default_factory=set)
    disabled_keys: set[str] = field(default_factory=set)
    files: list[Path] = field(default_factory=list)


def policy_paths(config_path: Path, config: ValetConfig, strict: bool = True) -> list[Path]:
    """The policy files a config names, sorted by name (the order rules are read in).

    A glob may match nothing (a rules folder may be empty), but a file named literally must exist:
    a policy file that disappears (deleted, renamed, an editor's save gone wrong) must never be read as
    "no rules". ``strict=False`` lists literal paths whether or not they exist (to watch them).
    """
    base = config_path.parent
    found: set[Path] = set()
    for pattern in config.policy_files:
        if glob.has_magic(pattern):
            found.update(Path(p) for p in glob.glob(str(base / pattern)) if Path(p).is_file())
            continue
        path = base / pattern
        if strict and not path.is_file():
            raise ConfigError(f"{path}: this policy file is named in policy_files but "
                              f"{'is not a regular file' if path.exists() else 'does not exist'}")
        found.add(path)
    return sorted(found)


def load_policies(paths: list[Path], config: ValetConfig) -> PolicySources:
    merged = PolicySources(files=list(paths))
    seen_ids: dict[str, str] = {}
    default_from: dict[str, str] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc.__class__.__name__}") from None
        if not text.strip():  # most likely caught mid-write: never read it as "no rules"
            raise ConfigError(f"{path}: the file is empty (delete a policy file rather than empty it)")
        policy = parse_model(text, str(path), PolicyFile)
        for name, server in policy.servers.items():
            if name not in config.servers:
                raise ConfigError(f"{path}:{line_of(text, 'servers', name)}: servers.{name}: "
                                  f"no server of that name is configured")
            if not server.enabled:
                merged.disabled_servers.add(name)
            if server.default is not None:
                if name in default_from:
                    raise ConfigError(f"{path}:{line_of(text, 'servers', name, 'default')}: servers.{name}.default "
                                      f"is also set in {default_from[name]}")
                default_from[name] = str(path)
                merged.defaults[name] = server.default
        merged.disabled_users.update(u for u, s in policy.users.items() if not s.enabled)
        merged.disabled_keys.update(k for k, s in policy.keys.items() if not s.enabled)
        for index, rule in enumerate(policy.rules):
            if rule.id in seen_ids:
                raise ConfigError(f"{path}:{line_of(text, 'rules', index, 'id')}: rules[{index}]: "
                                  f"id {rule.id!r} is already used in {seen_ids[rule.id]}")
            seen_ids[rule.id] = str(path)
            for position, server in enumerate(rule.servers or []):
                if not any(ch in server for ch in "*?[") and server not in config.servers:
                    raise ConfigError(f"{path}:{line_of(text, 'rules', index, 'servers', position)}: "
                                      f"rules[{index}] ({rule.id}): no server named {server!r} is configured")
            merged.rules.append((rule, str(path)))
    return merged
