"""Gzip in segments: parts of a body compressed once each, joined into one gzip member.

A part (a :class:`Piece`) is compressed into raw deflate data that ends on a byte boundary
without a final block, so that segments concatenate into one deflate stream; a
:class:`GzipStart` puts the gzip header before the segments of a body and each scrape finishes
the member with its own live part and the trailer. The segments are the only form kept: a
plain scrape inflates them as it sends them. Nothing here knows what the bytes hold.

Compression, inflation, CRC-32 and the combination of two CRC-32s go through ISA-L (the
``isal`` package), several times faster than zlib at a like ratio
(``bench/publish_cost.py --levels``).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from isal import isal_zlib

LEVEL = 1
"""ISA-L's level (0 to 3); bench/publish_cost.py --levels measures each."""
INFLATED = 1 << 20
"""The most bytes one step of inflating a segment makes: what a plain scrape holds at once."""
GZIP_HEADER = bytes((0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 255))
"""Magic, deflate, no flags, no modification time, no extra flags, unknown operating system."""


class Segment(NamedTuple):
    """A piece compressed: raw deflate data, and the CRC-32 and length of its plain bytes."""

    chunks: tuple[bytes, ...]
    crc: int
    length: int


class Piece:
    """A part of the body, made by ``render`` when first asked for and kept as a gzip segment
    only: rendered, compressed and dropped a chunk at a time, so that the text of a large fleet
    is never held, and inflated again for each plain scrape."""

    def __init__(self, render: Callable[[], Iterable[bytes]]) -> None:
        self._render = render
        self._segment: Segment | None = None
        self._lock = threading.Lock()

    def text(self) -> Iterator[bytes]:
        """The piece's plain bytes, inflated from its segment as they are asked for."""
        return inflate(self.segment())

    def segment(self) -> Segment:
        """The piece as raw deflate data that ends on a byte boundary without a final block
        (a sync flush), so that segments concatenate into one deflate stream."""
        segment = self._segment
        if segment is None:
            with self._lock:
                segment = self._segment
                if segment is None:
                    segment = self._segment = compress(self._render())
        return segment


def compress(chunks: Iterable[bytes]) -> Segment:
    """``chunks`` as one segment: raw deflate, sync-flushed."""
    compressor = isal_zlib.compressobj(LEVEL, isal_zlib.DEFLATED, -15)  # -15: raw deflate
    out, crc, length = [], 0, 0
    for chunk in chunks:
        out.append(compressor.compress(chunk))
        crc = isal_zlib.crc32(chunk, crc)
        length += len(chunk)
    out.append(compressor.flush(isal_zlib.Z_SYNC_FLUSH))
    return Segment(tuple(piece for piece in out if piece), crc, length)


def inflate(segment: Segment) -> Iterator[bytes]:
    """The plain bytes of ``segment``, at most ``INFLATED`` at a time (whatever the ratio of
    its data), so that a plain scrape holds one such step and not a piece's text."""
    inflater = isal_zlib.decompressobj(-15)
    for chunk in segment.chunks:
        out = b""
        while chunk or len(out) == INFLATED:  # a full step may leave more output behind
            out = inflater.decompress(chunk, INFLATED)
            chunk = inflater.unconsumed_tail
            if out:
                yield out


class GzipStart:
    """The cached start of one gzip member, which each scrape finishes with its live part.

    The member is the 10-byte header, then each piece's deflate segment in order (sync-flushed,
    not final, so they concatenate), then per scrape the live part compressed by a fresh
    compressor with the final block, then the trailer: the CRC-32 of all the plain bytes and
    their length modulo 2**32, little-endian. So a changed piece costs compressing itself
    only. One member, because clients such as ``curl --compressed`` stop after the first and
    silently drop the rest.
    """

    def __init__(self, pieces: Sequence[Piece]) -> None:
        segments = [piece.segment() for piece in pieces]
        self.chunks = (GZIP_HEADER, *(chunk for segment in segments for chunk in segment.chunks))
        crc, length = 0, 0
        for segment in segments:
            crc = isal_zlib.crc32_combine(crc, segment.crc, segment.length)
            length += segment.length
        self._crc, self._length = crc, length

    def finish(self, tail: bytes) -> bytes:
        """The rest of the member: ``tail`` compressed into the final block, then the trailer."""
        compressor = isal_zlib.compressobj(LEVEL, isal_zlib.DEFLATED, -15)
        trailer = struct.pack(
            "<II", isal_zlib.crc32(tail, self._crc), (self._length + len(tail)) % 2**32
        )
        return compressor.compress(tail) + compressor.flush() + trailer
