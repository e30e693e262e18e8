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


PIECE_BYTES = 1 << 20  # decoded per step: a bomb is never inflated in one go


class StreamDecoder:
    """Incremental decoding of a compressed stream (an SSE response), in bounded pieces.

    ``feed`` returns the decoded bytes of a chunk; past ``cap`` decoded bytes for
    one chunk it raises :class:`TooLarge` (the stream is then refused). A stream
    that ends mid-frame raises ``ValueError`` at ``end``.
    """

    def __init__(self, codec: str, cap: int) -> None:
        self.codec, self.cap = codec, cap
        if codec == "gzip":
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif codec == "deflate":
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS)
        elif codec == "zstd":
            self._zstd = zstd.ZstdDecompressor()
        elif codec == "br":
            self._br = brotli.Decompressor()
        else:
            raise ValueError(codec)

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        size = 0

        def add(piece: bytes) -> None:
            nonlocal size
            size += len(piece)
            if size > self.cap:
                raise TooLarge("a compressed stream decoded past the size limit in one chunk")
            out.append(piece)

        if self.codec in ("gzip", "deflate"):
            data = chunk
            while data and not self._zlib.eof:
                add(self._zlib.decompress(data, PIECE_BYTES))
                data = self._zlib.unconsumed_tail
        elif self.codec == "zstd":
            data = chunk
            while not self._zstd.eof:
                add(self._zstd.decompress(data, max_length=PIECE_BYTES))
                data = b""
                if self._zstd.needs_input:
                    break
        else:
            if chunk:
                add(self._br.process(chunk, output_buffer_limit=PIECE_BYTES))
            while not self._br.can_accept_more_data():
                add(self._br.process(b"", output_buffer_limit=PIECE_BYTES))
        return b"".join(out)

    def end(self) -> None:
        finished = {"gzip": lambda: self._zlib.eof, "deflate": lambda: self._zlib.eof,
                    "zstd": lambda: self._zstd.eof, "br": lambda: self._br.is_finished()}[self.codec]()
        if not finished:
            raise ValueError("the compressed stream ended mid-frame")
