"""Vectorized tokens, n-gram hashes and MinHash signatures for decontamination.

Both sides of decontamination go through this module: the test-set indexer hashes the MTEB
test texts once, the scanner hashes millions of training texts against them. Equal
normalized token windows must hash equal on both sides, so there is one tokenizer and one
window hash.

Tokens are the words of ``text.normalize_text`` (the one identity rule: invisible characters
removed, NFKC, casefold, punctuation removed, whitespace collapsed). For ASCII texts without
control characters that is exactly "runs of ``[a-z0-9]`` after lowercasing", which Arrow
computes in C++ for a whole batch; other texts go through ``normalize_text`` itself, one by one.

Window hashes are polynomial over 64-bit token hashes, mod 2**64. With prefix sums of
``token * P**-k`` every window of any length costs three vector operations:
``hash(p, L) = P**(p+L-1) * (S[p+L] - S[p])`` (``P`` is odd, so it has an inverse mod 2**64).
Hash equality is only a candidate: every hit is confirmed on the strings before it is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nvdata.text import normalize_text

# ASCII characters that normalize_text deletes (controls that are not whitespace), as RE2.
_ASCII_CONTROL_RE2 = r"[\x00-\x08\x0e-\x1b\x7f]"

U64 = np.uint64
P = U64(0x9E3779B97F4A7C15)  # odd: invertible mod 2**64
P_INV = U64(pow(int(P), -1, 1 << 64))
_FMIX1 = U64(0xFF51AFD7ED558CCD)
_FMIX2 = U64(0xC4CEB9FE1A85EC53)
_SALT = U64(0x2545F4914F6CDD1D)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection that spreads the bits); wraps mod 2**64."""
    h = h ^ (h >> U64(33))
    h = h * _FMIX1
    h = h ^ (h >> U64(33))
    h = h * _FMIX2
    return h ^ (h >> U64(33))


@dataclass
class TokenBatch:
    """The normalized tokens of a batch of texts: byte spans into one buffer, per-text offsets."""

    data: np.ndarray  # uint8: the texts' bytes, ASCII lowercased (non-ASCII texts pre-normalized)
    starts: np.ndarray  # int64 byte offset of each token in ``data``
    ends: np.ndarray  # int64 byte end of each token
    hashes: np.ndarray  # uint64, one per token
    offsets: np.ndarray  # int64 token offsets per text, len(texts) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @cached_property
    def parent(self) -> np.ndarray:
        """For every flat token, the index of its text."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    @cached_property
    def text_end(self) -> np.ndarray:
        """For every flat token, the flat end of its text."""
        return np.repeat(self.offsets[1:], self.lengths)

    def flat_tokens(self, lo: int, hi: int) -> list[str]:
        """Flat tokens ``lo:hi`` as strings."""
        raw = self.data
        return [raw[a:b].tobytes().decode("utf-8") for a, b in zip(self.starts[lo:hi].tolist(), self.ends[lo:hi].tolist(), strict=True)]

    def tokens(self, i: int, start: int = 0, length: int | None = None) -> list[str]:
        lo = int(self.offsets[i]) + start
        hi = int(self.offsets[i + 1]) if length is None else lo + length
        return self.flat_tokens(lo, hi)

    def normalized(self, i: int) -> str:
        """``normalize_text`` of text ``i``: its tokens joined by single spaces."""
        return " ".join(self.tokens(i))


def _string_array(texts) -> pa.StringArray:
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    return pc.fill_null(arr, "")


def tokenize(texts: pa.Array | pa.ChunkedArray | list[str | None]) -> TokenBatch:
    """Tokenize a batch of texts (nulls count as empty texts), bytes-at-a-time in NumPy.

    A token is a maximal run of bytes that are ASCII letters/digits or non-ASCII. On ASCII text
    without control characters (lowercased) that is exactly ``normalize_text``'s words; other
    texts (any non-ASCII character, or an ASCII control that normalize_text deletes) are first
    put through ``normalize_text`` itself, whose output has only words and single spaces, so
    the same rule splits it.
    """
    arr = _string_array(texts)
    n = len(arr)
    # The byte rule below is normalize_text's only on ASCII without control characters
    # (which normalize_text deletes); every other text is put through normalize_text itself.
    simple = pc.and_(pc.string_is_ascii(arr), pc.invert(pc.match_substring_regex(arr, _ASCII_CONTROL_RE2)))
    is_ascii = np.asarray(simple.to_numpy(zero_copy_only=False), dtype=bool)
    if not is_ascii.all():
        other = arr.filter(pa.array(~is_ascii)).to_pylist()
        arr = pc.replace_with_mask(arr, pa.array(~is_ascii), pa.array([normalize_text(t) for t in other], pa.string()))
        arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    buffers = arr.buffers()
    offs = np.frombuffer(buffers[1], dtype=np.int32)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8)[offs[0] : offs[-1]].copy() if n and buffers[2] is not None else np.zeros(0, np.uint8)
    offs -= offs[0] if n else 0
    upper = (data >= 65) & (data <= 90)
    data[upper] += 32
    word = (data >= 0x80) | ((data >= 48) & (data <= 57)) | ((data >= 97) & (data <= 122))
    first = np.zeros(len(data) + 1, bool)
    first[offs[:-1]] = True  # a token never runs across two texts
    begin = word & ~np.r_[False, word[:-1]] | (word & first[:-1])
    stop = word & ~np.r_[word[1:], False] | (word & first[1:])
    starts = np.flatnonzero(begin)
    ends = np.flatnonzero(stop) + 1
    parent = np.searchsorted(offs, starts, side="right") - 1
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(parent, minlength=n), out=offsets[1:])
    return TokenBatch(data=data, starts=starts, ends=ends, hashes=_token_hashes(data, starts, ends), offsets=offsets)


_SHIFT_LO = np.arange(8, dtype=U64) * U64(8)  # by byte offset within the aligned word
_SHIFT_HI = (U64(64) - _SHIFT_LO) & U64(63)
_HI_KEEP = np.array([0] + [(1 << 64) - 1] * 7, dtype=U64)  # offset 0: the next word adds nothing
_LEN_MASK = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=U64)


def _token_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 64-bit hash per token, from its bytes read eight at a time as little-endian words.

    The word at any byte offset is two aligned uint64 reads and shifts; a token of L bytes
    takes ceil(L / 8) rounds, each masked to the token's own bytes.
    """
    lengths = ends - starts
    h = fmix64(lengths.astype(U64) * _FMIX1 ^ _SALT)
    if len(starts) == 0:
        return h
    pad = np.zeros(len(data) + 16, np.uint8)
    pad[: len(data)] = data
    aligned = pad[: 8 * (len(pad) // 8)].view("<u8")
    idx, off, left = None, starts, lengths
    while True:
        q, r = off >> 3, off & 7
        w = (aligned[q] >> _SHIFT_LO[r]) | ((aligned[q + 1] << _SHIFT_HI[r]) & _HI_KEEP[r])
        w &= _LEN_MASK[np.minimum(left, 8)]
        if idx is None:
            h = fmix64(h * P + w)
        else:
            h[idx] = fmix64(h[idx] * P + w)
        more = left > 8
        if not more.any():
            return h
        idx = np.flatnonzero(more) if idx is None else idx[more]
        off, left = off[more] + 8, left[more] - 8


class WindowHasher:
    """Hashes of token windows of any length, from one prefix-sum pass per batch."""

    def __init__(self) -> None:
        self._pow = np.ones(1, dtype=U64)
        self._inv = np.ones(1, dtype=U64)

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._pow) < n:
            size = max(n, 2 * len(self._pow))
            self._pow = np.cumprod(np.concatenate([[U64(1)], np.full(size - 1, P, dtype=U64)]), dtype=U64)
            self._inv = np.cumprod(np.concatenate([[U64(1)], np.full(size - 1, P_INV, dtype=U64)]), dtype=U64)
        return self._pow, self._inv

    def prefix(self, tb: TokenBatch) -> np.ndarray:
        t = len(tb.hashes)
        _, inv = self._powers(t + 1)
        s = np.zeros(t + 1, dtype=U64)
        np.cumsum(tb.hashes * inv[:t], dtype=U64, out=s[1:])
        return s

    def windows(self, tb: TokenBatch, s: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Every window of ``length`` tokens inside one text: (flat start positions, hashes)."""
        t = len(tb.hashes)
        if length < 1 or t < length:
            return np.zeros(0, np.int64), np.zeros(0, U64)
        starts = np.flatnonzero(np.arange(length, t + 1) <= tb.text_end[: t - length + 1])
        return starts, self._hash(s, starts, np.full(len(starts), length, np.int64))

    def at(self, s: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """Hashes of the windows of ``length`` tokens at flat positions ``starts``."""
        return self._hash(s, starts, np.full(len(starts), length, np.int64)) if len(starts) else np.zeros(0, U64)

    def whole(self, tb: TokenBatch, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The hash of each non-empty text's full token sequence: (text indices, hashes)."""
        lengths = tb.lengths
        idx = np.flatnonzero(lengths > 0)
        return idx, self._hash(s, tb.offsets[idx], lengths[idx])

    def _hash(self, s: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        pw, _ = self._powers(int(starts.max() + lengths.max()) if len(starts) else 1)
        return pw[starts + lengths - 1] * (s[starts + lengths] - s[starts])


# -- sorted-array lookups ------------------------------------------------------------------
def lookup(keys: np.ndarray, sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key, whether it is in ``sorted_keys`` and its first position there."""
    if len(sorted_keys) == 0 or len(keys) == 0:
        return np.zeros(len(keys), bool), np.zeros(len(keys), np.int64)
    if len(sorted_keys) > 1 << 20 and len(keys) > 1 << 12:
        # sorted queries walk a big array in order: far fewer cache misses than the sort costs
        order = np.argsort(keys)
        pos = np.empty(len(keys), np.int64)
        pos[order] = np.searchsorted(sorted_keys, keys[order])
    else:
        pos = np.searchsorted(sorted_keys, keys)
    found = sorted_keys[np.minimum(pos, len(sorted_keys) - 1)] == keys
    return found, pos


def key_range(sorted_keys: np.ndarray, key: np.uint64) -> range:
    lo = int(np.searchsorted(sorted_keys, key, side="left"))
    hi = int(np.searchsorted(sorted_keys, key, side="right"))
    return range(lo, hi)


# -- Bloom filter (two probes), a cheap first pass before the exact sorted-array lookup --------
def bloom_size(n_keys: int, bits_per_key: int = 16) -> int:
    """Bytes of a filter for ``n_keys`` keys: a power of two, 8 KiB to 1 GiB."""
    bits = max(1 << 16, int(n_keys) * bits_per_key)
    return min(1 << 30, 1 << (int(bits - 1).bit_length() - 3))


def _probes(keys: np.ndarray, n_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    mask = U64(n_bytes * 8 - 1)
    g = fmix64(keys)
    return g & mask, fmix64(g ^ _SALT) & mask


def bloom_add(bits: np.ndarray, keys: np.ndarray) -> None:
    for probe in _probes(keys, len(bits)):
        np.bitwise_or.at(bits, probe >> U64(3), (U64(1) << (probe & U64(7))).astype(np.uint8))


def bloom_test(bits: np.ndarray, keys: np.ndarray) -> np.ndarray:
    a, b = _probes(keys, len(bits))
    hit_a = (bits[a >> U64(3)] >> (a & U64(7)).astype(np.uint8)) & np.uint8(1)
    hit_b = (bits[b >> U64(3)] >> (b & U64(7)).astype(np.uint8)) & np.uint8(1)
    return (hit_a & hit_b).astype(bool)


# -- MinHash ------------------------------------------------------------------------------
def minhash_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own ``affine64`` permutations, so our signatures equal ``datasketch.MinHash``'s."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine64").permutations
    return np.asarray(a, dtype=U64), np.asarray(b, dtype=U64)


def minhash_signatures(
    shingles: np.ndarray, starts: np.ndarray, perm: tuple[np.ndarray, np.ndarray], chunk_rows: int = 1 << 15
) -> np.ndarray:
    """Signatures of consecutive shingle groups ``shingles[starts[i]:starts[i+1]]`` (each non-empty).

    Equal to ``datasketch.MinHash(scheme="affine64", hashfunc=identity).update_batch(group)``:
    ``min(a * fmix64(h) + b)`` over the group, mod 2**64.
    """
    a, b = perm
    n = len(starts)
    out = np.empty((n, len(a)), dtype=U64)
    bounds = np.append(starts, len(shingles))
    g = 0
    while g < n:  # whole groups per chunk, about chunk_rows shingles each
        g_end = max(g + 1, int(np.searchsorted(bounds, bounds[g] + chunk_rows, side="right")) - 1)
        g_end = min(g_end, n)
        lo, hi = bounds[g], bounds[g_end]
        hv = fmix64(shingles[lo:hi])[:, None] * a[None, :] + b[None, :]
        out[g:g_end] = np.minimum.reduceat(hv, bounds[g:g_end] - lo, axis=0)
        g = g_end
    return out


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (band, signature): shape (bands, n)."""
    keys = np.empty((bands, len(signatures)), dtype=U64)
    for i in range(bands):
        k = np.full(len(signatures), U64(i + 1), dtype=U64)
        for j in range(i * rows, (i + 1) * rows):
            k = fmix64(k * P + signatures[:, j])
        keys[i] = k
    return keys


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) from datasketch's optimiser, weighting misses 9:1 over false candidates
    (every candidate is confirmed by its true Jaccard, so false candidates only cost time)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.1, 0.9)


def shingle_set(tokens: list[str], k: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
