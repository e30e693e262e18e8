"""Compressed bodies, labelled or not: decoded (with a size cap), scrubbed, and encoded again.

An upstream may send a compressed body without ``Content-Encoding`` (or inside
a body it labels as something else); the agent's client may still decompress
it. So the scrubber does not trust labels: it recognizes gzip, zlib (deflate)
and zstd by their magic bytes, and tries brotli (which has none) on any body
that is not valid UTF-8. A body that decodes is scrubbed decoded; when that
changed something it is compressed again with the same codec, so the agent
gets what it expected minus the secrets. Every gzip member, zstd frame and zlib
stream is decoded (clients decode them all). A body that decodes past the cap
is refused (:class:`TooLarge`), and so is one Valet cannot read although it is
certainly compressed (:class:`Unreadable`: bzip2, zip, xz..., or gzip/zstd
that does not decode): never passed unread. See docs/security.md for the list.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any

import brotli

try:  # what mitmproxy itself uses on Python 3.13
    from backports import zstd
except ImportError:  # pragma: no cover - Python 3.14
    from compression import zstd  # type: ignore[no-redef]

MAX_DEPTH = 3

# HTTP content-coding names (RFC 9110 §8.4.1) -> the codec that undoes them: the one table for answers
# (hooks/relay.py) and request bodies (protocol/method_override.py, the canary search).
CONTENT_CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate", "br": "br", "zstd": "zstd"}


class TooLarge(ValueError):
    """A compressed body decodes to more than the cap."""


class Unreadable(TooLarge):
    """A body that is compressed (by its magic bytes) but that Valet does not or cannot decode: bzip2, zip,
    xz, 7z, lzma, or a gzip/zstd/zlib body that ends mid-stream or is corrupt. Refused, never passed: the
    agent's client may decode what Valet could not read. (A TooLarge, so that every caller that refuses an
    over-sized body refuses this one too.)"""


# Compression formats Valet recognizes but does not decode: a body (or a decoded layer) starting so is refused.
REFUSED_MAGIC = {
    b"BZh": "bzip2", b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"PK\x07\x08": "zip",
    b"\xfd7zXZ\x00": "xz", b"7z\xbc\xaf\x27\x1c": "7z", b"\x5d\x00\x00": "lzma", b"\x04\x22\x4d\x18": "lz4",
}


def _members(data: bytes, cap: int, new: Callable[[], Any], magic: bytes) -> bytes:
    """Every member (gzip) or frame (zstd) or stream (zlib) of ``data``, concatenated as decoders do; NUL
    padding after the last is ignored (as gzip does), anything else after it is Unreadable."""
    out: list[bytes] = []
    size = 0
    rest = data
    while True:
        decoder = new()
        if hasattr(decoder, "unconsumed_tail"):  # zlib
            piece = decoder.decompress(rest, cap + 1 - size)
        else:
            piece = decoder.decompress(rest, max_length=cap + 1 - size)
        size += len(piece)
        out.append(piece)
        if size > cap:
            raise TooLarge("decoded body over the size limit")
        if not decoder.eof:
            raise Unreadable("the compressed body ends mid-stream")
        rest = decoder.unused_data
        if not rest.strip(b"\0"):
            return b"".join(out)
        if not rest.startswith(magic):
            raise Unreadable("the compressed body has trailing bytes that are not another member")


def _gzip_decoder() -> Any:
    return zlib.decompressobj(16 + zlib.MAX_WBITS)


def _zlib_decoder() -> Any:
    return zlib.decompressobj(zlib.MAX_WBITS)


def _raw_deflate(data: bytes, cap: int) -> bytes:
    decoder = zlib.decompressobj(-zlib.MAX_WBITS)
    out = decoder.decompress(data, cap + 1)
    if len(out) > cap:
        raise TooLarge("decoded body over the size limit")
    if not decoder.eof or decoder.unused_data:
        raise ValueError("not raw deflate")
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


def refused_format(data: bytes) -> str | None:
    """The name of a compression format Valet recognizes and refuses, if ``data`` starts like one."""
    for magic, name in REFUSED_MAGIC.items():
        if data.startswith(magic):
            if name == "bzip2" and not (len(data) >= 10 and data[3:4].isdigit() and data[4:10] in (
                    b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")):
                continue  # "BZh" is also English text: only a real bzip2 header counts
            if name == "lzma" and (len(data) < 13 or data.isascii()):
                continue
            return name
    return None


def decode(codec: str, data: bytes, cap: int) -> bytes:
    """Every member/frame of a gzip, zstd or zlib body; a brotli or raw deflate body."""
    if codec == "gzip":
        return _members(data, cap, _gzip_decoder, b"\x1f\x8b")
    if codec == "deflate":
        return _members(data, cap, _zlib_decoder, data[:1])
    if codec == "zstd":
        return _members(data, cap, zstd.ZstdDecompressor, b"\x28\xb5\x2f\xfd")
    if codec == "br":
        return _brotli(data, cap)
    if codec == "raw-deflate":
        return _raw_deflate(data, cap)
    raise ValueError(codec)


def encode(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        return gzip.compress(data)
    if codec == "deflate":
        return zlib.compress(data)
    if codec == "raw-deflate":
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return compressor.compress(data) + compressor.flush()
    if codec == "zstd":
        return zstd.compress(data)
    return brotli.compress(data)


def scrub(data: bytes, scrub_plain: Callable[[bytes], bytes], cap: int, depth: int = 0) -> bytes:
    """``data`` scrubbed as it is AND, if it is compressed, as it decodes (recursively, a few levels).

    gzip and zstd (unmistakable magic bytes) must decode, all members, or the body is Unreadable; so must
    a body in a format Valet recognizes and does not decode (:data:`REFUSED_MAGIC`). zlib (a two-byte
    header that text can start with), brotli and raw deflate (no header: tried on a body that is not UTF-8)
    are guesses: a body they do not decode is scrubbed as it is.
    """
    refused = refused_format(data)
    if refused is not None:
        raise Unreadable(f"a {refused} body: Valet does not decode it")
    codec = sniff(data)
    if depth >= MAX_DEPTH:
        # Deeper than Valet decodes: a layer that is certainly compressed is refused, not passed as if it were
        # text (review 4, H2: a 4th gzip layer carried a secret through). Guesses (brotli, raw deflate) stay
        # guesses; a zlib header counts when the layer really decodes.
        if codec in ("gzip", "zstd") or (codec == "deflate" and _decodes("deflate", data, cap)):
            raise Unreadable(f"a body compressed more than {MAX_DEPTH} levels deep")
        return scrub_plain(data)
    plain: bytes | None = None
    if codec is not None:
        guesses = ["br", "raw-deflate"] if codec == "br" else [codec]
        for guess in guesses:
            try:
                plain = decode(guess, data, cap)
            except Unreadable:
                if guess in ("gzip", "zstd"):
                    raise
                plain = None  # a zlib guess that ends mid-stream: text that starts like a zlib header
            except TooLarge:
                raise
            except Exception:  # noqa: BLE001 - corrupt, or (a guess) not that codec after all: scrub as is
                if guess in ("gzip", "zstd"):
                    raise Unreadable(f"a {guess} body that does not decode") from None
                plain = None
            if plain is not None:
                codec = guess
                break
    if plain is not None and codec is not None:
        scrubbed = scrub(plain, scrub_plain, cap, depth + 1)
        if scrubbed is not plain:
            data = encode(codec, scrubbed)
    return scrub_plain(data)


def _decodes(codec: str, data: bytes, cap: int) -> bool:
    try:
        decode(codec, data, cap)
    except Unreadable:
        return False  # ends mid-stream: text that starts like a zlib header
    except TooLarge:
        return True  # it decodes, to more than the cap: compressed all the same
    except Exception:  # noqa: BLE001 - not that codec after all
        return False
    return True


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

        try:
            if self.codec in ("gzip", "deflate"):
                data = chunk
                while data:
                    if self._zlib.eof:  # the next member (gzip) or stream (zlib): decoded too, as clients do
                        if not data.strip(b"\0"):
                            break  # padding, as gzip allows
                        self._zlib = zlib.decompressobj((16 if self.codec == "gzip" else 0) + zlib.MAX_WBITS)
                    add(self._zlib.decompress(data, PIECE_BYTES))
                    data = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail
            elif self.codec == "zstd":
                data = chunk
                while True:
                    if self._zstd.eof:  # the next frame
                        data = self._zstd.unused_data + data
                        if not data:
                            break
                        self._zstd = zstd.ZstdDecompressor()
                    add(self._zstd.decompress(data, max_length=PIECE_BYTES))
                    data = b""
                    if not self._zstd.eof and self._zstd.needs_input:
                        break
            else:
                if chunk:
                    add(self._br.process(chunk, output_buffer_limit=PIECE_BYTES))
                while not self._br.can_accept_more_data():
                    add(self._br.process(b"", output_buffer_limit=PIECE_BYTES))
        except (zlib.error, zstd.ZstdError, brotli.error) as error:
            raise ValueError("the compressed stream does not decode") from error
        return b"".join(out)

    def end(self) -> None:
        finished = {"gzip": lambda: self._zlib.eof, "deflate": lambda: self._zlib.eof,
                    "zstd": lambda: self._zstd.eof, "br": lambda: self._br.is_finished()}[self.codec]()
        if not finished:
            raise ValueError("the compressed stream ended mid-frame")
