"""Compressed bodies, labelled or not: decoded (with a size cap), scrubbed, and encoded again.

An upstream may send a compressed body without ``Content-Encoding`` (or inside
a body it labels as something else); the agent's client may still decompress
it. So the scrubber does not trust labels: it recognizes gzip, zlib (deflate)
and zstd by their magic bytes, and tries brotli (which has none) on any body
that is not valid UTF-8. A body that decodes is scrubbed decoded; when that
changed something it is compressed again with the same codec, so the agent
gets what it expected minus the secrets. A body that decodes past the cap is
refused (:class:`TooLarge`): never passed unread.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import brotli

try:  # what mitmproxy itself uses on Python 3.13
    from backports import zstd
except ImportError:  # pragma: no cover - Python 3.14
    from compression import zstd  # type: ignore[no-redef]

MAX_DEPTH = 3


class TooLarge(ValueError):
    """A compressed body decodes to more than the cap."""


def _zlib(data: bytes, wbits: int, cap: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    out = decoder.decompress(data, cap + 1)
    if len(out) > cap:
        raise TooLarge("decoded body over the size limit")
    if not decoder.eof:
        raise ValueError("truncated")
    return out


def _zstd(data: bytes, cap: int) -> bytes:
    decoder = zstd.ZstdDecompressor()
    out = decoder.decompress(data, max_length=cap + 1)
    if len(out) > cap:
        raise TooLarge("decoded body over the size limit")
    if not decoder.eof:
        raise ValueError("truncated")
    return out


def _brotli(data: bytes, cap: int) -> bytes:
    decoder = brotli.Decompressor()
    out = decoder.process(data, output_buffer_limit=cap + 1)
    if len(out) > cap or not decoder.can_accept_more_data():
        raise TooLarge("decoded body over the size limit")
    if not decoder.is_finished():
        raise ValueError("truncated")
    return out


def sniff(data: bytes) -> str | None:
    """The codec the bytes look like, by magic bytes (brotli: by not being text)."""
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
        return "deflate"
    if data and not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "br"
    return None


def decode(codec: str, data: bytes, cap: int) -> bytes:
    if codec == "gzip":
        return _zlib(data, 16 + zlib.MAX_WBITS, cap)
    if codec == "deflate":
        return _zlib(data, zlib.MAX_WBITS, cap)
    if codec == "zstd":
        return _zstd(data, cap)
    if codec == "br":
        return _brotli(data, cap)
    raise ValueError(codec)


def encode(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        return gzip.compress(data)
    if codec == "deflate":
        return zlib.compress(data)
    if codec == "zstd":
        return zstd.compress(data)
    return brotli.compress(data)


def scrub(data: bytes, scrub_plain: Callable[[bytes], bytes], cap: int, depth: int = 0) -> bytes:
    """``data`` scrubbed as it is AND, if it is compressed, as it decodes (recursively, a few levels)."""
    codec = sniff(data) if depth < MAX_DEPTH else None
    if codec is not None:
        try:
            plain = decode(codec, data, cap)
        except TooLarge:
            raise
        except Exception:  # noqa: BLE001 - not that codec after all (brotli is a guess): scrub as is
            plain = None
        if plain is not None:
            scrubbed = scrub(plain, scrub_plain, cap, depth + 1)
            if scrubbed is not plain:
                data = encode(codec, scrubbed)
    return scrub_plain(data)
