"""Text identity: the one rule that decides when two texts are "the same", and hashes of it.

Every stage that compares texts calls :func:`normalize_text` (or :func:`text_hash`, its hash):
decontamination (index and scan, and so ``nvdata audit``), the dense miner's query groups and
positive filter, the BM25 pool and its gold partners, row de-duplication (:mod:`nvdata.dedup`)
and the trainer's in-batch masks. Changing the rule changes which texts every one of them
treats as equal, so it lives here once and :data:`NORMALIZATION_VERSION` names it (caches and
the decontamination index are keyed by it).

The rule, in order:

1. Invisible characters are removed (not replaced by a space): Unicode format characters
   (category Cf: soft hyphen, zero-width space / joiners, word joiner, BOM, bidi marks, ...),
   the other default-ignorable code points (variation selectors, combining grapheme joiner,
   Hangul fillers, Mongolian free variation selectors) and control characters (Cc) that are not
   whitespace. They render as nothing, so ``can\\u00adcel`` must read as ``cancel``, not as
   ``can cel``: a copy of a test text with one inside a word is still that test text.
2. NFKC, then casefold (full-width, ligatures, ``ß`` -> ``ss``, case).
3. Punctuation and symbols (anything neither a word character nor whitespace; ``_`` too)
   become a space, so "a,b" and "a, b" are equal.
4. Whitespace runs collapse to one space; leading and trailing space is stripped.

Example::

    >>> normalize_text("Please  CAN\\u00adCEL my sub\\u200bscription!")
    'please cancel my subscription'
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import unicodedata

# Bump when the rule above changes: everything keyed by text identity must be rebuilt.
NORMALIZATION_VERSION = 2

_WS = re.compile(r"\s+")
# Anything that is neither a word character nor whitespace (punctuation, symbols) becomes a
# space, so "a,b" and "a, b" normalize alike; "_" counts as punctuation here.
_PUNCT = re.compile(r"[^\w\s]|_")
# The same rule for ASCII at C speed: NFKC leaves ASCII alone, casefold is lower(), \w is
# alnum or "_", and str.split() splits on exactly what \s matches (\x1c-\x1f included).
# ASCII control characters that are not whitespace are invisible: deleted (rule 1).
_ASCII_CONTROL = "".join(chr(b) for b in range(128) if unicodedata.category(chr(b)) == "Cc" and not chr(b).isspace())
_ASCII_PUNCT = str.maketrans(
    {chr(b): (None if chr(b) in _ASCII_CONTROL else " ")
     for b in range(128) if not (chr(b).isalnum() or chr(b).isspace())}
)
_ASCII_DELETE = str.maketrans(dict.fromkeys(_ASCII_CONTROL))
_ASCII_CONTROL_RE = re.compile("[" + re.escape(_ASCII_CONTROL) + "]")
# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties) outside category Cf; Python's
# unicodedata has no accessor for the property, so the few assigned ones are listed.
_OTHER_IGNORABLE = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong / jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xE0100, 0xE01EF),  # variation selectors supplement
)


@functools.cache
def _invisible() -> re.Pattern:
    """A character class of rule 1, from this Python's Unicode database (built on first use:
    scanning every code point takes ~0.2 s)."""
    points = [
        c for c in range(sys.maxunicode + 1)
        if (cat := unicodedata.category(chr(c))) == "Cf" or (cat == "Cc" and not chr(c).isspace())
    ]
    points += [c for lo, hi in _OTHER_IGNORABLE for c in range(lo, hi + 1)]
    ranges: list[list[int]] = []
    for c in sorted(set(points)):
        if ranges and c == ranges[-1][1] + 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return re.compile("[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges) + "]+")


def remove_invisible(text: str) -> str:
    """``text`` without the characters that render as nothing (rule 1 of the module doc)."""
    if text.isascii():
        return text.translate(_ASCII_DELETE) if _ASCII_CONTROL_RE.search(text) else text
    return _invisible().sub("", text)


def normalize_text(text: str) -> str:
    """The identity of a text: the rule of the module doc (invisible characters removed, NFKC,
    casefold, punctuation and symbols to spaces, whitespace collapsed).

    Texts are hashed by the million (miners, decontamination, de-duplication), so ASCII takes
    a fast path that gives the same result as the general one.
    """
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_PUNCT).split())
    return _normalize_unicode(text)


def _normalize_unicode(text: str) -> str:
    """The general rule, step by step (normalize_text's fast path must equal it on ASCII)."""
    t = unicodedata.normalize("NFKC", _invisible().sub("", text)).casefold()
    t = _PUNCT.sub(" ", t)
    return _WS.sub(" ", t).strip()


def text_hash(text: str) -> str:
    """Hash of the normalized text: equal exactly when :func:`normalize_text` is (32 hex digits)."""
    return hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=16).hexdigest()


def content_id(*parts: str) -> str:
    """Stable id of a row from its content (exact strings, joined unambiguously)."""
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()
