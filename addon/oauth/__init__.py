"""Upstream OAuth on the user's behalf: protocol client, grants in the vault, refresher."""
