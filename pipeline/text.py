"""Text normalization and hashing shared by every stage that compares texts."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WS = re.compile(r"\s+")
# Anything that is neither a word character nor whitespace (punctuation, symbols) becomes a
# space, so "a,b" and "a, b" normalize alike; "_" counts as punctuation here.
_PUNCT = re.compile(r"[^\w\s]|_")


def normalize_text(text: str) -> str:
    """NFKC, casefold, punctuation and symbols removed, whitespace collapsed.

    Two texts that differ only in case, spacing, punctuation or Unicode form normalize equal.
    """
    t = unicodedata.normalize("NFKC", text).casefold()
    t = _PUNCT.sub(" ", t)
    return _WS.sub(" ", t).strip()


def text_hash(text: str) -> str:
    """Hash of the normalized text: equal for texts that differ only trivially."""
    return hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=16).hexdigest()


def content_id(*parts: str) -> str:
    """Stable id of a row from its content (exact strings, joined unambiguously)."""
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()
