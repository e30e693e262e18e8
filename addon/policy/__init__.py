"""Decisions: rules and their files, argument checks, globs, rate limits."""
