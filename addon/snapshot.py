"""One consistent view of the configuration and the policy files, swapped whole on reload.

A request takes the snapshot current when it arrives and uses it to the end,
so a reload never changes the rules under a request in flight. A reload that
fails (any error in any file, a policy file named literally that is gone)
changes nothing: the last good snapshot stays in force, and the error, naming
file, line and problem, is logged once.

A policy file is read only once it has *settled*: unchanged for
``SETTLE_SECONDS`` (its mtime at least that old, or the same signature seen
for that long), so an editor or a copy caught mid-write is not loaded as a
shorter, looser policy. Writers that want the change applied at once write a
temporary file in the same folder and ``mv`` it into place (an atomic rename);
the settle time still applies, so a change takes effect within about a second.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from pathlib import Path

from addon import filewatch
from addon.config import ConfigError, ValetConfig, load_config
from addon.policy.decisions import PolicySet
from addon.policy.files import load_policies, policy_paths
from addon.protocol.routing import RouteTable

SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class Snapshot:
    config_path: Path
    config: ValetConfig
    routes: RouteTable
    policy: PolicySet
    signature: tuple[int, ...]


def watched(config_path: Path, config: ValetConfig) -> list[Path]:
    """The files and directories whose change means "reload": the config, policy files, their folders.

    Literal policy files are watched whether or not they exist, so that deleting one is a change (which
    the reload then rejects).
    """
    folders = {(config_path.parent / pattern).parent for pattern in config.policy_files}
    return [config_path, *sorted(folders), *policy_paths(config_path, config, strict=False)]


def signature_of(paths: list[Path]) -> tuple[int, ...]:
    return filewatch.signatures(paths, sqlite=False)


def unsettled_for(config_path: Path, config: ValetConfig, settle: float = SETTLE_SECONDS,
                  now: float | None = None) -> float:
    """Seconds until the most recently modified policy file (or policy folder) is ``settle`` seconds old.

    0 when everything has settled. The folders of glob patterns count because creating, renaming or
    deleting a file changes its folder's mtime; the files are listed afresh (a new file matching a glob
    counts too). A literal file that is gone has no mtime: loading it fails, which is what we want.
    """
    now = time.time() if now is None else now
    folders = {(config_path.parent / pattern).parent for pattern in config.policy_files if glob.has_magic(pattern)}
    newest = 0.0
    for path in [*folders, *policy_paths(config_path, config, strict=False)]:
        try:
            newest = max(newest, os.stat(path).st_mtime)
        except OSError:
            continue
    if newest > now + settle:  # a clock or a touch in the future: the caller's own observation decides
        return settle
    return max(0.0, newest + settle - now)


def load_snapshot(config_path: Path, extra_policy_files: list[Path] | None = None,
                  settle: float = 0.0) -> Snapshot:
    """Blocking (reads files). Raises ConfigError naming file and line.

    ``settle`` > 0 (at start): first wait, at most twice that long, for recently written policy files
    to settle.
    """
    config = load_config(config_path).config
    if settle > 0:
        deadline = time.monotonic() + 2 * settle
        while (wait := unsettled_for(config_path, config, settle)) > 0 and time.monotonic() < deadline:
            time.sleep(min(wait, 0.1 + deadline - time.monotonic()))
        config = load_config(config_path).config
    paths = watched(config_path, config)
    signature = signature_of(paths)
    files = policy_paths(config_path, config) + list(extra_policy_files or [])
    policy = PolicySet(load_policies(files, config))
    if signature_of(paths) != signature:  # a file changed while it was read: it may be half written
        raise ConfigError("configuration files changed while they were read; trying again on the next request")
    return Snapshot(config_path, config, RouteTable(config), policy, signature)


def describe_change(old: Snapshot, new: Snapshot) -> str:
    """What a reload changed in the policy: rules by id and files, added, removed, changed.

    Logged at WARNING on every reload so that an unintended loosening (a rule gone, a file gone) is
    visible in the log the moment it takes effect.
    """
    def rules(snapshot: Snapshot) -> dict[str, tuple[str, str]]:
        return {rule.id: (source, rule.model_dump_json()) for rule, source in snapshot.policy.sources.rules}

    before, after = rules(old), rules(new)
    old_files = {str(f) for f in old.policy.sources.files}
    new_files = {str(f) for f in new.policy.sources.files}
    parts = {
        "rules added": sorted(after.keys() - before.keys()),
        "rules removed": sorted(before.keys() - after.keys()),
        "rules changed": sorted(i for i in before.keys() & after.keys() if before[i] != after[i]),
        "files added": sorted(new_files - old_files),
        "files removed": sorted(old_files - new_files),
    }
    switches = _switches(new) != _switches(old) or old.policy.sources.defaults != new.policy.sources.defaults
    text = "; ".join(f"{label}: {', '.join(items) or '-'}" for label, items in parts.items())
    return text + ("; kill switches or server defaults changed" if switches else "")


def _switches(snapshot: Snapshot) -> tuple[frozenset[str], ...]:
    s = snapshot.policy.sources
    return frozenset(s.disabled_servers), frozenset(s.disabled_users), frozenset(s.disabled_keys)
