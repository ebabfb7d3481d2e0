"""Text normalization and hashing shared by every stage that compares texts."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WS = re.compile(r"\s+")
# Anything that is neither a word character nor whitespace (punctuation, symbols) becomes a
# space, so "a,b" and "a, b" normalize alike; "_" counts as punctuation here.
_PUNCT = re.compile(r"[^\w\s]|_")
# The same rule for ASCII at C speed: NFKC leaves ASCII alone, casefold is lower(), \w is
# alnum or "_", and str.split() splits on exactly what \s matches (\x1c-\x1f included).
_ASCII_PUNCT = str.maketrans(
    {chr(b): " " for b in range(128) if not (chr(b).isalnum() or chr(b).isspace())}
)


def normalize_text(text: str) -> str:
    """NFKC, casefold, punctuation and symbols removed, whitespace collapsed.

    Two texts that differ only in case, spacing, punctuation or Unicode form normalize equal.
    Texts are hashed by the million (miners, decontamination), so ASCII takes a fast path
    that gives the same result as the general one.
    """
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_PUNCT).split())
    return _normalize_unicode(text)


def _normalize_unicode(text: str) -> str:
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
