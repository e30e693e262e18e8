"""The ``valet`` command, one module per command group."""

from addon.cli.main import main

__all__ = ["main"]
