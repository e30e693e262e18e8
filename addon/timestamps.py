"""One timestamp format everywhere a person reads one: ISO 8601, UTC, milliseconds, ``Z``.

The audit log writes ``2026-11-21T09:00:00.000Z``; key, vault and OAuth records
were written by older code as ``2026-11-21T09:00:00+00:00``. Output goes
through :func:`display`, so ``key list``, ``secret list``, ``oauth status`` and
``audit`` show the same shape and sort the same way, whatever is stored.
"""

from __future__ import annotations

from datetime import UTC, datetime


def _format(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    """Now, as the audit log writes it."""
    return _format(datetime.now(UTC))


def from_epoch(epoch: float | None) -> str:
    """A Unix time as the audit log writes it; '' for none."""
    return _format(datetime.fromtimestamp(epoch, UTC)) if epoch else ""


def display(value: str | None) -> str | None:
    """A stored ISO 8601 timestamp in the one display format; anything unparseable unchanged."""
    if not value:
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _format(moment)
