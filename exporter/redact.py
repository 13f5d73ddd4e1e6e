"""Remove every form of a secret from text that came from a server, and bound its size.

Text from the token endpoint or the API is untrusted: a server may echo the client secret
(plain, URL-encoded, in the base64 of an HTTP Basic header, JSON-escaped), an access token,
control characters that forge log lines, or a megabyte. :func:`redact` is the one place that
makes such text safe to log and to publish. It imports nothing of ours and nothing heavy.
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MAX_LENGTH = 300
"""Characters kept of a redacted text; the rest becomes ``CUT``."""

CUT = "…(cut)"
MASK = "***"

SCAN_LENGTH = 4096
"""Characters of a text looked at at all: bounds the work of a megabyte of error text. Text
past it is cut anyway, so a secret split at this point never reaches the output."""

SHORT = 8
"""Forms shorter than this are masked only where they stand alone (not inside a longer run of
letters and digits): a one-character secret must not turn every text into ***."""

FRAGMENT = 16
"""Any run of this many characters of a long secret's plain or URL-encoded form is masked,
so a secret the server truncated, or split with a line break, does not leak by halves."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_INVISIBLE = frozenset({"Cf", "Co", "Cs", "Cn"})


def _b64_forms(raw: bytes) -> set[str]:
    """The standard and URL-safe base64 of ``raw``, with and without padding."""
    forms = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw).decode("ascii")
        forms |= {text, text.rstrip("=")}
    return forms


def _b64_cores(raw: bytes) -> set[str]:
    """The base64 characters that depend on ``raw`` alone, at each of the three alignments
    ``raw`` can have inside a longer base64 text (such as ``id:secret`` in a Basic header)."""
    cores = set()
    for shift in range(3):
        start = -(-8 * shift // 6)  # the first character with no bit of the prefix
        end = 8 * (shift + len(raw)) // 6  # past the last character with no bit of padding
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(bytes(shift) + raw).decode("ascii")
            cores.add(text[start:end])
    return cores


def _percent_forms(value: str) -> set[str]:
    forms = {quote(value, safe=""), quote(value), quote_plus(value)}
    return forms | {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), f) for f in forms}


def secret_forms(secret: str, client_id: str | None = None) -> set[str]:
    """Every form in which ``secret`` travels or is echoed: plain, URL-encoded (quote and
    quote_plus), JSON-escaped, and the base64 of ``client_id:secret`` both plain (what
    requests sends) and form-encoded first (RFC 6749 2.3.1), plus the base64 of the secret
    alone at any alignment."""
    if not secret:
        return set()
    forms = {secret, *_percent_forms(secret)}
    forms |= {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    if client_id is not None:
        for pair in (f"{client_id}:{secret}", f"{quote_plus(client_id)}:{quote_plus(secret)}"):
            forms |= _b64_forms(pair.encode("utf-8"))
    if len(secret) >= SHORT:
        for value in {secret, quote_plus(secret)}:
            forms |= {core for core in _b64_cores(value.encode("utf-8")) if len(core) >= SHORT}
    return {form for form in forms if form}


def _pattern(forms: Iterable[str]) -> re.Pattern[str] | None:
    parts = []
    for form in sorted(set(forms), key=len, reverse=True):
        escaped = re.escape(form)
        if len(form) < SHORT:
            escaped = rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])"
        parts.append(escaped)
    return re.compile("|".join(parts)) if parts else None


def _fragments(secrets: Iterable[str]) -> set[str]:
    fragments: set[str] = set()
    for secret in secrets:
        if len(secret) > FRAGMENT:
            for form in {secret, *_percent_forms(secret)}:
                fragments |= {form[i : i + FRAGMENT] for i in range(len(form) - FRAGMENT + 1)}
    return fragments


def _mask_fragments(text: str, fragments: set[str]) -> str:
    """Mask every run of ``text`` made of overlapping fragments of a secret."""
    if not fragments or len(text) < FRAGMENT:
        return text
    hit = bytearray(len(text))
    for start in range(len(text) - FRAGMENT + 1):
        if text[start : start + FRAGMENT] in fragments:
            hit[start : start + FRAGMENT] = b"\1" * FRAGMENT
    if not any(hit):
        return text
    out, index = [], 0
    while index < len(text):
        if hit[index]:
            while index < len(text) and hit[index]:
                index += 1
            out.append(MASK)
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def _printable(text: str) -> str:
    """Control characters (line breaks that would forge log lines, escapes) become one space;
    invisible format characters (zero-width, bidi overrides) are dropped."""
    text = _CONTROL.sub(" ", text)
    return "".join(c for c in text if unicodedata.category(c) not in _INVISIBLE)


def redact(
    text: str,
    secrets: Iterable[str] = (),
    *,
    client_id: str | None = None,
    limit: int = MAX_LENGTH,
) -> str:
    """``text`` with every form of each of ``secrets`` (client secrets and access tokens)
    masked as ``***``, control characters removed, and cut to ``limit`` characters."""
    text = _printable(text[:SCAN_LENGTH])
    secrets = [secret for secret in secrets if secret]
    forms: set[str] = set()
    for secret in secrets:
        forms |= secret_forms(secret, client_id)
    pattern = _pattern(forms)
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _mask_fragments(text, _fragments(secrets))
    if len(text) > limit:
        text = text[: max(0, limit - len(CUT))] + CUT
    return text
