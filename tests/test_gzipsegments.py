"""Gzip segments: compressed once, concatenated into one gzip member, inflated in bounded steps."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import gzipsegments
from exporter.gzipsegments import GzipStart, Piece, compress, inflate

CHUNKS = st.lists(st.binary(max_size=3000) | st.just(b"x" * 5000), max_size=6)


@given(CHUNKS, st.integers(min_value=1, max_value=700))
def test_a_segment_inflates_to_its_chunks_in_steps_of_at_most_inflated(chunks, step):
    plain = b"".join(chunks)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gzipsegments, "INFLATED", step)
        segment = compress(chunks)
        steps = list(inflate(segment))
    assert b"".join(steps) == plain
    assert all(0 < len(part) <= step for part in steps)
    assert (segment.crc, segment.length) == (zlib.crc32(plain), len(plain))


@given(st.lists(CHUNKS, max_size=4), st.binary(max_size=500))
def test_segments_and_a_tail_make_one_gzip_member(pieces, tail):
    start = GzipStart([Piece(lambda chunks=chunks: chunks) for chunks in pieces])
    body = b"".join(start.chunks) + start.finish(tail)
    decompressor = zlib.decompressobj(31)
    plain = decompressor.decompress(body)
    assert decompressor.eof and decompressor.unused_data == b""  # one member, trailer checked
    assert plain == gzip.decompress(body) == b"".join(c for p in pieces for c in p) + tail
