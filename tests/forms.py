"""Test helpers over the one egress scrubber (:mod:`addon.secrets.scrubber`); formerly addon/secrets/redact.py.

Nothing in addon/ used that module any more, so it lives with the tests that do:
``forms_of`` lists representative encodings of a value (what end-to-end tests look
for in what agents receive), and ``Redactor(secrets)`` is a
:class:`~addon.secrets.scrubber.Scrubber` built from a ``{name: value}`` mapping
under the old method names.
"""

from __future__ import annotations

import base64
import html
import json
import re
from urllib.parse import quote, quote_plus

from addon.secrets.scrubber import Scrubber, base64_cores_any_length

MIN_FORM_CHARS = 6
_HTML_SAFE = re.compile(r"[<>&'=]")
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def _base64_cores(raw: bytes) -> set[bytes]:
    """Every offset's core (see the scrubber) and the whole padded encodings."""
    return base64_cores_any_length(raw) | {base64.b64encode(raw), base64.urlsafe_b64encode(raw)}


def forms_of(value: str) -> set[str]:
    """Representative encodings of ``value`` (what tests look for in what agents receive); the scrubber
    itself matches far more (any subset percent-encoded, mixed forms...)."""
    raw = value.encode("utf-8")
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], raw.hex(), raw.hex().upper()}
    forms |= {f.replace("/", "\\/") for f in list(forms)}
    forms.add("".join(f"\\u{ord(c):04x}" for c in value))  # literal \u escapes, as in JSON-in-a-string
    forms.add("".join(f"\\u{ord(c):04X}" for c in value))
    # only the punctuation escaped: Go's and JavaScript's HTML-safe JSON encoders (\u0026 for &...)
    forms.add("".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in value))
    forms.add(_HTML_SAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value)[1:-1]))
    forms.add(html.escape(value))  # an HTML page or XML body
    forms.add(html.escape(value, quote=False))
    for encoded in (quote(value, safe=""), quote_plus(value, safe=""), quote(value)):
        forms.add(encoded)
        forms.add(_PERCENT.sub(lambda m: m.group().lower(), encoded))
    forms |= {c.decode("ascii") for c in _base64_cores(raw)}
    return {f for f in forms if len(f) >= MIN_FORM_CHARS}


class Redactor(Scrubber):
    def __init__(self, secrets: dict[str, str], key_shape: bool = True) -> None:
        super().__init__(secrets.items(), key_shape=key_shape)

    def raw(self, data: bytes) -> bytes:
        return self.bytes(data)

    def json_or_raw(self, data: bytes) -> bytes:
        return self.bytes(data)
