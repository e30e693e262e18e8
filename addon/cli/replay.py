"""``valet policy replay``: what would a candidate policy have done to the traffic Valet recorded?

Every audit row of an agent's request carries what the policy judged: user, agent,
key id, server, JSON-RPC method, tool, the arguments as forwarded (secrets
redacted), HTTP method and path. Replay rebuilds the same policy calls the gate
builds (:mod:`addon.hooks.gate`), decides them under the candidate policy, and
reports every exchange whose verdict would change (allow -> deny, deny -> allow).

Rate rules are replayed separately: they depend on counts over time, so replay
counts the calls each candidate rate rule would have counted and, in recorded
time order with each limit's moving window, how many it would have refused. No
budget of a running Valet is touched.

What cannot be replayed exactly is reported as ``inexact`` (see docs/operations.md):
arguments truncated in the row, arguments that hold a redacted secret (a rule
on that value saw the real one), rows refused before the policy ran (bad key,
bad body: the policy never judged them), rows older than the audit columns.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

# Recorded reasons that mean "the policy refused it" and those that mean "the policy let it through"
# (it was then refused or failed for another cause, after the policy). Other refusals were decided
# before the policy ran: replay cannot say what the policy would have done.
POLICY_DENIALS = frozenset({"denied", "disabled"})
AFTER_POLICY = frozenset({None, "rate_limited", "upstream_status", "upstream_error", "client_disconnected",
                          "interrupted", "missing_secret", "vault_error", "reauth_required", "oauth_unavailable",
                          "audit_unavailable", "param_headers_unverified", "shutting_down", "internal_error"})
REDACTED = "[REDACTED:"
TRUNCATED = "…(truncated"  # "…(truncated)" of older rows, "…(truncated: N chars, sha256 …)" (addon.audit.bounds)
SAMPLES = 10

SQL = """SELECT id, ts, ts_unix, key_id, user, agent, server, mode, http_method, http_path, rpc_method, tool,
                arguments, decision, rule, reason
         FROM exchanges
         WHERE ts_unix >= ? AND http_method != 'OAUTH'
               AND coalesce(state, 'done') != 'pending'
         ORDER BY ts_unix, id"""


@dataclass
class Change:
    row: dict[str, Any]
    before: str
    after: str
    rule: str

    def summary(self) -> dict[str, Any]:
        r = self.row
        return {"id": r["id"], "ts": r["ts"], "user": r["user"], "agent": r["agent"], "key_id": r["key_id"],
                "server": r["server"], "method": r["rpc_method"] or r["http_method"],
                "tool": r["tool"], "path": r["http_path"] if r["rpc_method"] is None else None,
                "before": self.before, "after": self.after, "recorded_rule": r["rule"], "rule": self.rule}


@dataclass
class Report:
    replayed: int = 0
    unchanged: int = 0
    not_judged: Counter[str] = field(default_factory=Counter)  # recorded reason -> rows refused before the policy
    inexact: Counter[str] = field(default_factory=Counter)  # why -> rows replayed on incomplete data
    not_replayed: Counter[str] = field(default_factory=Counter)  # why -> rows that could not be re-decided
    changes: list[Change] = field(default_factory=list)
    rate_counted: Counter[str] = field(default_factory=Counter)
    rate_budgets: dict[str, set[tuple[str, ...]]] = field(default_factory=lambda: defaultdict(set))
    rate_refused: Counter[str] = field(default_factory=Counter)
    rate_recorded: Counter[str] = field(default_factory=Counter)  # rule -> rows recorded rate_limited

    def direction(self, before: str, after: str) -> list[Change]:
        return [c for c in self.changes if c.before == before and c.after == after]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"replayed": self.replayed, "unchanged": self.unchanged,
                               "not_judged_by_policy": dict(self.not_judged), "inexact": dict(self.inexact),
                               "not_replayed": dict(self.not_replayed)}
        for name, (before, after) in (("allow_to_deny", ("allow", "deny")), ("deny_to_allow", ("deny", "allow"))):
            changes = self.direction(before, after)
            out[name] = {
                "count": len(changes),
                "users": len({c.row["user"] for c in changes}),
                "by_rule": dict(Counter(c.rule for c in changes)),
                "by_user": dict(Counter(c.row["user"] for c in changes)),
                "by_server": dict(Counter(c.row["server"] for c in changes)),
                "by_tool": dict(Counter(c.row["tool"] or "-" for c in changes)),
                "samples": [c.summary() for c in changes[:SAMPLES]],
            }
        out["rate_rules"] = {rule: {"counted": self.rate_counted[rule], "budgets": len(self.rate_budgets[rule]),
                                    "would_refuse": self.rate_refused[rule],
                                    "recorded_refusals": self.rate_recorded.get(rule, 0)}
                             for rule in sorted(set(self.rate_counted) | set(self.rate_recorded))}
        return out


def recorded_verdict(row: dict[str, Any]) -> str | None:
    """allow / deny as the policy decided when the row was recorded; None if the policy never judged it."""
    reason = row["reason"]
    if reason in POLICY_DENIALS:
        return "deny"
    if row["decision"] == "allow" or reason in AFTER_POLICY:
        return "allow"
    return None


class Unreplayable(Exception):
    """The row cannot be re-decided at all (its reason is counted)."""


def calls_of(row: dict[str, Any], snapshot: Any, inexact: Counter[str]) -> list[Any]:
    """The policy calls the gate built for this row. Raises Unreplayable."""
    from urllib.parse import urlsplit

    from addon.hooks.gate import _mcp_request, matching_path
    from addon.policy.decisions import Call
    from addon.protocol.errors import Refusal

    server = snapshot.config.servers.get(row["server"])
    if server is None:
        raise Unreplayable("server not in the candidate config")
    base = Call(row["user"], row["agent"] or "", row["key_id"] or "", row["server"])
    path = row["http_path"] or "/"
    if row["mode"] == "reverse":
        try:
            path = snapshot.routes.reverse(path).path
        except Refusal:
            inexact["path not routable under the candidate config"] += 1
    path = urlsplit(path).path or "/"
    arguments_text = row["arguments"]
    if arguments_text and TRUNCATED in arguments_text:
        inexact["arguments truncated in the audit row"] += 1
        arguments_text = None
    elif arguments_text and REDACTED in arguments_text:
        inexact["arguments hold a redacted secret"] += 1
    try:
        arguments = json.loads(arguments_text) if arguments_text else None
    except ValueError:
        arguments = None
    method = row["rpc_method"]
    http_method = (row["http_method"] or "").upper()
    calls: list[Any] = []
    has_body = method is not None
    if server.kind == "http" or not _mcp_request(http_method, path, server.url, has_body):
        calls.append(Call(base.user, base.agent, base.key_id, base.server, http_method=http_method,
                          http_path=matching_path(path), is_http_api=True))
    if server.kind != "http" and method is not None:
        if method == "batch":
            if not isinstance(arguments, list):
                raise Unreplayable("batch whose messages were not recorded whole")
            for item in arguments:
                if isinstance(item, dict):
                    args = item.get("arguments")
                    calls.append(Call(base.user, base.agent, base.key_id, base.server, method=item.get("method"),
                                      tool=item.get("tool"), arguments=args if isinstance(args, dict) else None))
        else:
            calls.append(Call(base.user, base.agent, base.key_id, base.server, method=method, tool=row["tool"],
                              arguments=arguments if isinstance(arguments, dict) else None))
    if not calls:  # the session's GET stream or DELETE (or a batch whose summary was truncated)
        calls.append(base)
    return calls


def replay(rows: list[dict[str, Any]], snapshot: Any) -> Report:
    report = Report()
    policy = snapshot.policy
    windows: dict[tuple[str, tuple[str, ...], int], deque[float]] = {}
    for row in rows:
        before = recorded_verdict(row) if row["user"] is not None and row["server"] is not None else None
        if row["reason"] == "rate_limited" and row["rule"]:
            report.rate_recorded[row["rule"]] += 1
        if before is None:  # refused before the policy (bad key, bad body), or not routed to a server
            report.not_judged[row["reason"] or "not routed"] += 1
            continue
        try:
            calls = calls_of(row, snapshot, report.inexact)
        except Unreplayable as exc:
            report.not_replayed[str(exc)] += 1
            continue
        report.replayed += 1
        decisions = [policy.decide(call) for call in calls]
        denied = next((d for d in decisions if not d.allowed), None)
        after = "deny" if denied is not None else "allow"
        rule = (denied or decisions[-1]).label
        if after != before:
            report.changes.append(Change(row, before, after, rule))
        else:
            report.unchanged += 1
        if after == "allow":
            for call in calls:
                for rate in policy.rate_rules(call):
                    ids = rate.identifiers(call)
                    report.rate_counted[rate.id] += 1
                    report.rate_budgets[rate.id].add(ids)
                    for n, item in enumerate(rate.limits):
                        window = windows.setdefault((rate.id, ids, n), deque())
                        now = float(row["ts_unix"] or 0.0)
                        while window and window[0] <= now - item.get_expiry():
                            window.popleft()
                        if len(window) >= item.amount:
                            report.rate_refused[rate.id] += 1
                            break
                        window.append(now)
    return report


def _lines(report: Report) -> list[str]:
    d = report.as_dict()
    out = [f"replayed {report.replayed} exchanges: {report.unchanged} unchanged, {len(report.changes)} would change"]
    for name, verb in (("allow_to_deny", "blocked"), ("deny_to_allow", "allowed")):
        part = d[name]
        if not part["count"]:
            continue
        out.append(f"would have {verb} {part['count']} calls by {part['users']} users "
                   f"({'allowed' if verb == 'blocked' else 'denied'} when recorded)")
        for key in ("by_rule", "by_user", "by_server", "by_tool"):
            counts = ", ".join(f"{k} {v}" for k, v in sorted(part[key].items(), key=lambda kv: (-kv[1], kv[0])))
            out.append(f"  {key.replace('_', ' ')}: {counts}")
        for s in part["samples"]:
            what = s["tool"] or s["path"] or s["method"]
            out.append(f"  #{s['id']} {s['ts']} {s['user']}/{s['agent']} {s['server']} {s['method']} {what}: "
                       f"{s['before']} -> {s['after']} by {s['rule']}")
    for rule, rate in d["rate_rules"].items():
        out.append(f"rate rule {rule}: would count {rate['counted']} calls in {rate['budgets']} budgets, "
                   f"would refuse {rate['would_refuse']} (replayed in recorded order); "
                   f"{rate['recorded_refusals']} refused when recorded")
    if report.not_judged:
        out.append("not judged by the policy when recorded (refused before it): "
                   + ", ".join(f"{k} {v}" for k, v in sorted(report.not_judged.items())))
    if report.not_replayed:
        out.append("could not be replayed: " + ", ".join(f"{k} {v}" for k, v in sorted(report.not_replayed.items())))
    if report.inexact:
        out.append("replayed on incomplete data: " + ", ".join(f"{k} {v}" for k, v in sorted(report.inexact.items())))
    return out


def register(policy_group: click.Group, data_dir_option: Any, default_config: Path) -> None:
    """Add ``policy replay`` to the ``valet policy`` group."""

    @policy_group.command("replay")
    @click.option("--since", default="7d", show_default=True, help="From then on: 15m, 2h, 7d or an ISO date/time.")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=default_config,
                  show_default=True, help="The candidate configuration (its policy files are the candidate).")
    @click.argument("extra", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
    @data_dir_option
    @click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
    @click.option("--fail-on-change", is_flag=True, help="Exit 3 if any decision would change (for CI).")
    def policy_replay(since: str, config_path: Path, extra: tuple[Path, ...], data_dir: Path, as_json: bool,
                      fail_on_change: bool) -> None:
        """Re-decide recorded exchanges under a candidate policy (the config's files plus EXTRA files) and
        report every decision that would change. Nothing is sent anywhere; the audit log is read-only."""
        from addon.audit import log as audit
        from addon.cli.audit import parse_since
        from addon.config import ConfigError
        from addon.snapshot import load_snapshot

        try:
            snapshot = load_snapshot(config_path, list(extra))
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            conn = audit.open_readonly(data_dir / "audit.db")
            rows = [dict(r) for r in conn.execute(SQL, (parse_since(since),))]
        except (sqlite3.Error, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
        report = replay(rows, snapshot)
        if as_json:
            click.echo(json.dumps(report.as_dict(), ensure_ascii=False))
        else:
            for line in _lines(report):
                click.echo(line)
        if fail_on_change and report.changes:
            sys.exit(3)


__all__ = ["Report", "recorded_verdict", "register", "replay"]
