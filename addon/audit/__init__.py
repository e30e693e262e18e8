"""The audit log: the exchange record and its SQLite store."""
