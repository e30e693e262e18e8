"""Decisions: may this caller make this call? Pure functions over compiled rules.

Order of evaluation, for each call (each JSON-RPC message of a batch, or one
plain HTTP request):

1. Kill switches: a disabled server, user or key is refused outright.
2. Protocol housekeeping (``initialize``, ``ping``, ``notifications/*``,
   ``server/discover``, ``logging/setLevel``, ``tools/list``, responses to the
   server's own requests, and the session's GET stream and DELETE) is allowed
   for any authenticated caller of an enabled server: without it no client can
   even start. ``tools/list`` answers are filtered to the tools the caller may
   call.
3. Deny rules: the first that matches refuses the call. Deny wins.
4. Allow rules: the first that matches allows it.
5. Otherwise the server's default; the default default is deny.

A rule matches when every condition it states holds. Conditions on names are
globs (see :mod:`addon.policy.globs` for case handling: allow rules match case
exactly, deny rules ignore case and match a tool behind a namespace prefix);
argument conditions (deny ones ignoring case too) are in
:mod:`addon.policy.arguments`. Rate rules match the same way and are applied by
:mod:`addon.policy.ratelimit` to calls that were allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from limits import RateLimitItem, parse_many

from addon.policy import readings
from addon.policy.arguments import Check, compile_pattern, normalize_fs_path
from addon.policy.globs import name_pattern, path_pattern
from addon.policy.files import PolicySources, Rule

# Methods allowed before any rule: the MCP spec's exact names (2025-11-25 and 2026-07-28, the notifications a
# client sends), a set and not a pattern, so that ``notifications/../tools/call`` goes through the rules.
HOUSEKEEPING = frozenset({
    "initialize", "ping", "server/discover", "logging/setLevel", "tools/list",
    "notifications/initialized", "notifications/cancelled", "notifications/progress",
    "notifications/roots/list_changed", "notifications/tasks/status",
})


@dataclass(frozen=True, slots=True)
class Call:
    """What a decision is about. ``method`` is None for a plain HTTP request and for a JSON-RPC response."""

    user: str
    agent: str
    key_id: str
    server: str
    method: str | None = None
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    http_method: str | None = None
    http_path: str | None = None  # percent-decoded, normalized
    is_http_api: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # allowed | housekeeping | default | denied | disabled
    rule: str | None  # the rule (or switch, or default) that decided
    rewrites: tuple[tuple[str, str], ...] = ()  # argument -> normalized path to forward

    @property
    def label(self) -> str:
        return self.rule or self.reason


class _Matcher:
    """A rule's conditions, compiled.

    ``restrictive`` for deny and rate rules: names, paths and argument checks ignore case, and tool
    globs also match behind a namespace prefix (see :mod:`addon.policy.globs`). Allow rules match exactly.
    """

    def __init__(self, rule: Rule, restrictive: bool) -> None:
        def names(values: list[str] | None, namespaced: bool = False) -> re.Pattern[str] | None:
            return name_pattern(values, restrictive, namespaced) if values is not None else None

        self.rule = rule
        self.restrictive = restrictive
        self.users, self.agents, self.keys = names(rule.users), names(rule.agents), names(rule.keys)
        self.servers, self.methods = names(rule.servers), names(rule.methods)
        self.tools = names(rule.tools, namespaced=restrictive)
        self.http_methods = set(rule.http.methods) if rule.http and rule.http.methods else None
        self.http_paths = path_pattern(rule.http.paths, restrictive) if rule.http and rule.http.paths else None
        self.checks = {
            name: Check(
                under=a.under,
                regex=compile_pattern(a.regex, ignore_case=restrictive) if a.regex is not None else None,
                one_of=tuple(a.one_of) if a.one_of is not None else None, max_length=a.max_length,
                minimum=a.min, maximum=a.max, optional=a.optional, ignore_case=restrictive,
            )
            for name, a in (rule.arguments or {}).items()
        }

    def identity(self, call: Call) -> bool:
        return all(
            pattern is None or pattern.match(value) is not None
            for pattern, value in ((self.users, call.user), (self.agents, call.agent), (self.keys, call.key_id),
                                   (self.servers, call.server))
        )

    def target(self, call: Call) -> bool:
        if call.is_http_api:
            if self.rule.http is None:
                return self.rule.tools is None and self.rule.methods is None
            return (self.http_methods is None or call.http_method in self.http_methods) and (
                self.http_paths is None or self.http_paths.match(call.http_path or "") is not None
            )
        if self.rule.http is not None:
            return False
        if self.tools is not None:
            return call.method == "tools/call" and call.tool is not None and self.tools.match(call.tool) is not None
        return self.methods is None or (call.method is not None and self.methods.match(call.method) is not None)

    def arguments(self, call: Call, folded: dict[str, list[str]] | None = None) -> bool:
        """Whether the argument conditions hold (for a deny or rate rule: hold or cannot be ruled out).

        The arguments are already in the form that is forwarded (:meth:`PolicySet._normalized` ran before
        any rule), so a path check's normalized form is the value itself: nothing to rewrite here.
        ``folded`` is :func:`folded_names` of the arguments, made once per call by the caller that asks many
        rules (else made here).
        """
        if not self.checks:
            return True
        args = call.arguments or {}
        for name, check in self.checks.items():
            if self.restrictive:
                # Every argument whose name folds to the rule's: ``PATH`` is checked as ``path`` (an upstream that
                # ignores case reads it so). The condition holds when it holds for any of them.
                if folded is None:
                    folded = folded_names(args)
                named = folded.get(name.casefold(), [])
                verdicts = [check.evaluate(True, args[key])[0] for key in named] or [check.evaluate(False, None)[0]]
                holds = any(verdict is not False for verdict in verdicts)
            else:
                verdict, _ = check.evaluate(name in args, args.get(name))
                # undecidable (None): a deny rule fires, an allow rule does not. Written out, not
                # `verdict or deny`, so that no reading of None can ever count as "holds" for an allow rule.
                holds = verdict is True
            if not holds:
                return False
        return True


def folded_names(args: dict[str, Any]) -> dict[str, list[str]]:
    """Case-folded argument name -> the argument names that fold to it, in one pass over the arguments: each
    deny rule then finds its arguments with one lookup, not with a walk over every member (a call with
    100,000 members held the event loop ~9 ms per deny rule with argument checks)."""
    index: dict[str, list[str]] = {}
    for key in args:
        index.setdefault(key.casefold(), []).append(key)
    return index


MAX_CANDIDATE_SETS = 4096  # per policy snapshot
MAX_CANDIDATE_KEY_CHARS = 1024  # a call naming longer strings is judged without the cache


@dataclass(frozen=True, slots=True)
class _Candidates:
    denies: tuple[_Matcher, ...]
    allows: tuple[_Matcher, ...]
    rates: tuple[RateRule, ...]


@dataclass(frozen=True)
class RateRule:
    id: str
    limits: tuple[RateLimitItem, ...]
    per: tuple[str, ...]
    matcher: _Matcher = field(repr=False)

    def identifiers(self, call: Call) -> tuple[str, ...]:
        """The budget's key parts. An argument's value enters only as a fixed-size hash (see argument_key)."""
        values: dict[str, Any] = {"user": call.user, "agent": call.agent, "key": call.key_id,
                                  "server": call.server, "tool": call.tool or "", "method": call.method or ""}
        out = []
        for scope in self.per:
            if scope.startswith("argument:"):
                args = call.arguments or {}
                name = scope[9:]
                if name not in args:  # the rule reads names in any case: ``PATH`` shares ``path``'s budget
                    name = next((key for key in args if key.casefold() == name.casefold()), name)
                out.append(f"{scope}={argument_key(args[name]) if name in args else '-'}")
            else:
                out.append(f"{scope}={values[scope]}")
        return tuple(out)


def argument_key(value: Any) -> str:
    """A fixed-size key for an argument value: sha256 of its canonical reading's JSON, 128 bits in hex.

    The reading is :func:`addon.policy.readings.canonical`, the one the deny checks use: values a lax
    upstream reads as the same number share a budget (``7``, ``7.0``, ``"07"``, ``" +7"``, ``true`` for 1),
    texts are compared stripped, NFKC and case-folded, objects whatever their member order; so a budget
    cannot be multiplied by respelling the value. Hashed so that an agent's 1 MiB value costs the limiter
    32 bytes, not 1 MiB.
    """
    canonical = json.dumps(readings.canonical(value), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class PolicySet:
    """Compiled from the merged policy files; immutable, shared by every request until the next reload."""

    def __init__(self, sources: PolicySources) -> None:
        self.sources = sources
        self.denies = [_Matcher(r, restrictive=True) for r, _ in sources.rules if r.effect == "deny"]
        self.allows = [_Matcher(r, restrictive=False) for r, _ in sources.rules if r.effect == "allow"]
        # arguments some rule reads as a path: normalized once, before any rule, and forwarded so
        self.path_arguments = frozenset(
            name for r, _ in sources.rules for name, a in (r.arguments or {}).items() if a.under is not None
        )
        self.rates = [
            RateRule(r.id, tuple(parse_many(r.rate or "")) + _burst(r), tuple(r.per), _Matcher(r, restrictive=True))
            for r, _ in sources.rules if r.rate is not None
        ]
        self._candidates: dict[tuple[Any, ...], _Candidates] = {}

    def _for(self, call: Call) -> _Candidates:
        """The deny, allow and rate rules whose identity and target conditions hold for this call, in order.

        Those conditions read only who calls what (never the arguments), so they are checked once per
        (user, agent, key, server, method, tool / HTTP method and path) for the life of this policy
        snapshot; a call then visits only the rules that can match it, and only their argument checks
        run. Bounded: at most MAX_CANDIDATE_SETS keys, each short (longer ones are not cached).
        """
        key = (call.user, call.agent, call.key_id, call.server, call.method, call.tool, call.is_http_api,
               call.http_method, call.http_path)
        found = self._candidates.get(key)
        if found is not None:
            return found
        found = _Candidates(
            tuple(m for m in self.denies if m.identity(call) and m.target(call)),
            tuple(m for m in self.allows if m.identity(call) and m.target(call)),
            tuple(r for r in self.rates if r.matcher.identity(call) and r.matcher.target(call)),
        )
        if sum(len(v) for v in key if isinstance(v, str)) <= MAX_CANDIDATE_KEY_CHARS:
            if len(self._candidates) >= MAX_CANDIDATE_SETS:
                self._candidates.clear()
            self._candidates[key] = found
        return found

    @property
    def rule_count(self) -> int:
        return len(self.sources.rules)

    def decide(self, call: Call) -> Decision:
        switched = self._switched_off(call)
        if switched is not None:
            return Decision(False, "disabled", switched)
        if not call.is_http_api and (call.method is None or call.method in HOUSEKEEPING):
            return Decision(True, "housekeeping", None)
        call, rewrites = self._normalized(call)
        candidates = self._for(call)
        folded = folded_names(call.arguments) if call.arguments and candidates.denies else None
        for matcher in candidates.denies:
            if matcher.arguments(call, folded):
                return Decision(False, "denied", matcher.rule.id)
        for matcher in candidates.allows:
            if matcher.arguments(call):
                return Decision(True, "allowed", matcher.rule.id, rewrites)
        default = self.sources.defaults.get(call.server, "deny")
        return Decision(default == "allow", "default", f"default:{call.server}")

    def _normalized(self, call: Call) -> tuple[Call, tuple[tuple[str, str], ...]]:
        """Every rule, deny or allow, and every check, path or pattern, judges the form that is forwarded."""
        args = call.arguments
        if not args or not self.path_arguments:
            return call, ()
        rewrites = []
        for name in self.path_arguments & args.keys():
            normalized = normalize_fs_path(args[name])
            if normalized is not None and normalized != args[name]:
                rewrites.append((name, normalized))
        if not rewrites:
            return call, ()
        return replace(call, arguments={**args, **dict(rewrites)}), tuple(rewrites)

    def _switched_off(self, call: Call) -> str | None:
        if call.server in self.sources.disabled_servers:
            return f"servers.{call.server}.enabled"
        if call.user in self.sources.disabled_users:
            return f"users.{call.user}.enabled"
        if call.key_id in self.sources.disabled_keys:
            return f"keys.{call.key_id}.enabled"
        return None

    def tool_visible(self, call: Call) -> bool:
        """For tools/list: could some call of this tool be allowed? (Argument conditions are not known yet.)"""
        if self._switched_off(call) is not None:
            return False
        candidates = self._for(call)
        for matcher in candidates.denies:
            if not matcher.checks:
                return False  # denied whatever its arguments
        if candidates.allows:
            return True
        return self.sources.defaults.get(call.server, "deny") == "allow"

    def rate_rules(self, call: Call) -> list[RateRule]:
        rates = self._for(call).rates
        folded = folded_names(call.arguments) if call.arguments and rates else None
        return [rate for rate in rates if rate.matcher.arguments(call, folded)]


def _burst(rule: Rule) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(f"{rule.burst}/second")) if rule.burst else ()


def visible_tools(policy: PolicySet, base: Call) -> Callable[[str], bool]:
    def visible(tool: str) -> bool:
        return policy.tool_visible(Call(base.user, base.agent, base.key_id, base.server, "tools/call", tool))

    return visible
