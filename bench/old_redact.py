"""The redactor Valet used before the one egress scrubber (kept only for `make bench`: the "before" figure).

Replace every known secret with ``[REDACTED:NAME]`` in what flows back to agents.

For each secret we precompute the forms it may take when an upstream echoes it:
raw; JSON-escaped (ASCII and not, with and without ``\\/``); percent-encoded
(``quote``/``quote_plus``, upper- and lower-case hex); hex; and base64 (standard
and URL-safe) at each of the three byte alignments, so the secret is caught even
inside a larger base64 blob. All forms go into one compiled alternation,
longest first, applied to bytes (bodies, SSE events) or text (headers, audit).

JSON is handled structurally when it could hide a form behind an escape
(``\\u0073ecret``): the document is parsed, every string (keys included) is
redacted, and it is re-serialized, so redaction never breaks JSON and an
escape cannot smuggle a secret past a byte match. Limits: a transformation we
do not know (encryption, reversal, splitting across fields) is not caught;
secrets shorter than 8 characters are refused by the vault for this reason.
"""

from __future__ import annotations

import base64
import html
import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

MIN_FORM_CHARS = 6
_HTML_SAFE = re.compile(r"[<>&'=]")
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def _base64_cores(raw: bytes) -> set[bytes]:
    """The base64 characters that depend only on ``raw``, at each offset within a larger blob."""
    cores: set[bytes] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        start = -(-8 * offset // 6)  # ceil
        end = 8 * (offset + len(raw)) // 6
        core = encoded[start:end]
        cores.add(core)
        cores.add(core.translate(bytes.maketrans(b"+/", b"-_")))
    cores.add(base64.b64encode(raw))
    cores.add(base64.urlsafe_b64encode(raw))
    return cores


def forms_of(value: str) -> set[str]:
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


class Redactor:
    """Built once per set of secrets; cheap to apply."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.names_by_form: dict[str, str] = {}
        for name, value in sorted(secrets.items()):
            for form in forms_of(value):
                self.names_by_form.setdefault(form, name)
        ordered = sorted(self.names_by_form, key=len, reverse=True)
        self._text = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._bytes = re.compile(b"|".join(re.escape(f.encode("utf-8")) for f in ordered)) if ordered else None

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, value: str) -> str:
        if self._text is None:
            return value
        return self._text.sub(lambda m: f"[REDACTED:{self.names_by_form[m.group()]}]", value)

    def raw(self, data: bytes) -> bytes:
        if self._bytes is None:
            return data
        return self._bytes.sub(
            lambda m: f"[REDACTED:{self.names_by_form[m.group().decode('utf-8')]}]".encode(), data
        )

    def value(self, obj: Any) -> Any:
        """Redact every string (keys too) of a parsed JSON value, and any number that is a secret."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.text(k): self.value(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, (int, float)) and not isinstance(obj, bool) and self._text is not None:
            name = self.names_by_form.get(str(obj))
            if name is not None:
                return f"[REDACTED:{name}]"  # a string where the number was: the JSON stays valid
        return obj

    def json_or_raw(self, data: bytes) -> bytes:
        """A body of unknown shape: structurally where it is JSON, else bytewise.

        A whole JSON document is redacted structurally (so an escape cannot hide
        a secret and a replacement cannot break the syntax); so is each line of a
        body whose lines are JSON (NDJSON, JSON logs); anything else bytewise.
        """
        if self._bytes is None or (b"\\" not in data and self._bytes.search(data) is None):
            return data
        try:
            return self._structural(json.loads(data))
        except ValueError:
            pass
        lines = data.split(b"\n")
        if len(lines) > 1:
            out = []
            for line in lines:
                try:
                    out.append(self._structural(json.loads(line)) if line.strip() else line)
                except ValueError:
                    out.append(self.raw(line))
            return b"\n".join(out)
        return self.raw(data)

    def _structural(self, doc: Any) -> bytes:
        return json.dumps(self.value(doc), ensure_ascii=False, separators=(",", ":")).encode()
