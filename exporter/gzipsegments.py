"""Gzip in segments: parts of a body compressed once each, joined into one gzip member.

A part (a :class:`Piece`) is compressed into raw deflate data that ends on a byte boundary
without a final block, so that segments concatenate into one deflate stream; a
:class:`GzipStart` puts the gzip header before the segments of a body and each scrape finishes
the member with its own live part and the trailer. Nothing here knows what the bytes hold.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

LEVEL = 6  # gzip compression level
GZIP_HEADER = bytes((0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 255))
"""Magic, deflate, no flags, no modification time, no extra flags, unknown operating system."""


class Segment(NamedTuple):
    """A piece compressed: raw deflate data, and the CRC-32 and length of its plain bytes."""

    chunks: tuple[bytes, ...]
    crc: int
    length: int


class Piece:
    """A part of the body, made by ``render`` when first asked for: as text chunks, as a gzip
    segment, or both; each form is kept once made.

    A piece only ever asked for in gzip, as Prometheus scrapes, never keeps its text: it is
    rendered, compressed and dropped a chunk at a time, so the text of a large fleet is not
    held beside its gzip until someone asks for uncompressed text.
    """

    def __init__(self, render: Callable[[], Iterable[bytes]]) -> None:
        self._render = render
        self._chunks: tuple[bytes, ...] | None = None
        self._segment: Segment | None = None
        self._lock = threading.Lock()

    def chunks(self) -> tuple[bytes, ...]:
        chunks = self._chunks
        if chunks is None:
            with self._lock:
                chunks = self._chunks
                if chunks is None:
                    chunks = self._chunks = tuple(chunk for chunk in self._render() if chunk)
        return chunks

    def segment(self) -> Segment:
        """The piece as raw deflate data that ends on a byte boundary without a final block
        (a sync flush), so that segments concatenate into one deflate stream."""
        segment = self._segment
        if segment is None:
            with self._lock:
                segment = self._segment
                if segment is None:
                    segment = self._segment = compress(self._chunks or self._render())
        return segment


def compress(chunks: Iterable[bytes]) -> Segment:
    """``chunks`` as one segment: raw deflate, sync-flushed."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)  # -15: raw deflate
    out, crc, length = [], 0, 0
    for chunk in chunks:
        out.append(compressor.compress(chunk))
        crc = zlib.crc32(chunk, crc)
        length += len(chunk)
    out.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return Segment(tuple(piece for piece in out if piece), crc, length)


_POLYNOMIAL = 0xEDB88320
"""The CRC-32 polynomial in the CRC's bit-reversed order: bit 31 is x^0, bit 0 is x^31."""


def _multiply(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32 polynomial, both in the CRC's bit order."""
    product = 0
    for bit in range(31, -1, -1):  # a's terms from x^0 up
        if a >> bit & 1:
            product ^= b
        b = (b >> 1) ^ _POLYNOMIAL if b & 1 else b >> 1  # b times x
    return product


_X_SQUARINGS = [1 << 30]  # x^(2^k) for k = 0, 1, ...: x^1, x^2, x^4, ...
for _ in range(63):
    _X_SQUARINGS.append(_multiply(_X_SQUARINGS[-1], _X_SQUARINGS[-1]))


def _x_power(n: int) -> int:
    """x^n modulo the CRC-32 polynomial, by its binary digits: at most 64 multiplications."""
    power = 1 << 31  # x^0
    for square in _X_SQUARINGS:
        if not n:
            break
        if n & 1:
            power = _multiply(square, power)
        n >>= 1
    return power


def crc32_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-32 of A followed by B, from the CRC-32 of each and the length of B (zlib has
    this, Python's zlib module does not); well under a millisecond whatever the length.

    CRC-32 is affine: for messages of one length, crc(X ^ Y) = crc(X) ^ crc(Y) ^ crc(zeros).
    A+B is (A+zeros) ^ (zeros+B), and crc(zeros+B) ^ crc(zeros+zeros) = crc(B) ^ crc(zeros)
    (the leading zeros only move the register's start, the same for both). So
    crc(A+B) = crc(A+zeros) ^ crc(zeros) ^ crc(B), and the first two together are crc(A)
    carried through 8 * len(B) shifts of the register: crc(A) times x^(8 * len(B)) modulo
    the polynomial.
    """
    return _multiply(_x_power(8 * length_b), crc_a) ^ crc_b


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
            crc = crc32_combine(crc, segment.crc, segment.length)
            length += segment.length
        self._crc, self._length = crc, length

    def finish(self, tail: bytes) -> bytes:
        """The rest of the member: ``tail`` compressed into the final block, then the trailer."""
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
        trailer = struct.pack(
            "<II", zlib.crc32(tail, self._crc), (self._length + len(tail)) % 2**32
        )
        return compressor.compress(tail) + compressor.flush() + trailer
