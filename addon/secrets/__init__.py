"""Real credentials: the vault, ${secret:...} templates, injection, and the egress scrubber."""
