"""One consistent view of the configuration and the policy files, swapped whole on reload.

A request takes the snapshot current when it arrives and uses it to the end,
so a reload never changes the rules under a request in flight. A reload that
fails (any error in any file) changes nothing: the last good snapshot stays in
force, and the error, naming file, line and problem, is logged once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from addon import filewatch
from addon.config import ConfigError, ValetConfig, load_config
from addon.policy.decisions import PolicySet
from addon.policy.files import load_policies, policy_paths
from addon.protocol.routing import RouteTable


@dataclass(frozen=True)
class Snapshot:
    config_path: Path
    config: ValetConfig
    routes: RouteTable
    policy: PolicySet
    signature: tuple[int, ...]


def watched(config_path: Path, config: ValetConfig) -> list[Path]:
    """The files and directories whose change means "reload": the config, policy files, their folders."""
    folders = {(config_path.parent / pattern).parent for pattern in config.policy_files}
    return [config_path, *sorted(folders), *policy_paths(config_path, config)]


def signature_of(paths: list[Path]) -> tuple[int, ...]:
    return tuple(v for p in paths for v in filewatch.signature(p, sqlite=False))


def load_snapshot(config_path: Path, extra_policy_files: list[Path] | None = None) -> Snapshot:
    """Blocking (reads files). Raises ConfigError naming file and line."""
    config = load_config(config_path).config
    paths = watched(config_path, config)
    signature = signature_of(paths)
    files = policy_paths(config_path, config) + list(extra_policy_files or [])
    policy = PolicySet(load_policies(files, config))
    if signature_of(paths) != signature:  # a file changed while it was read: it may be half written
        raise ConfigError("configuration files changed while they were read; trying again on the next request")
    return Snapshot(config_path, config, RouteTable(config), policy, signature)
