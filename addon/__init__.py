"""Valet: a mitmproxy addon that holds the keys so that AI agents don't."""

__version__ = "0.1.0"
