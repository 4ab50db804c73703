"""Vectorised MinHash signatures and LSH band keys, bit-identical to datasketch 2.0.

datasketch's ``MinHash(num_perm, seed, hashfunc, scheme)`` hashes each element with
``hashfunc`` and, per permutation ``k``, keeps ``min_x perm_k(hashfunc(x))``.  This module
computes the same values for many documents at once: the shingle hashes of a batch of
documents are concatenated, permuted in one ``(num_shingles, num_perm)`` NumPy operation and
min-reduced per document with ``np.minimum.reduceat``.  The permutation parameters are drawn
exactly as datasketch draws them (``np.random.RandomState(seed)``), so for the same scheme,
seed, number of permutations, shingle set and shingle hash function the hash values are
equal (``tests/test_dedup.py`` compares them).

Two shingle hash functions (``hash_function`` in the ``dedup:`` params):

* ``fast`` (default): shingles are hashed from their *units* (a Han character's code point,
  or a Latin word's xxh32) with a vectorised combine of MurmurHash3's 32-bit finaliser; one
  NumPy pass per n-gram position.  :func:`fast_shingle_hash` is the same function for one
  shingle string, so it can be handed to datasketch as ``hashfunc``.
* ``sha1``: datasketch's own default, ``sha1_hash32(shingle.encode("utf-8"))``, one Python
  call per shingle (for compatibility with signatures made by datasketch itself).

Schemes: ``affine32`` (datasketch 2.0's default) and ``legacy`` (datasketch < 2.0).  The two
produce different hash values and must never be mixed in one index; the scheme is pinned in
params.yaml and stored in the incremental index's metadata.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

from etl.clean.tokenize import HAN

SCHEMES = ("affine32", "legacy")
HASH_FUNCTIONS = ("fast", "sha1")
_MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_MAX_HASH32 = np.uint64((1 << 32) - 1)
#: Shingles permuted at once: 4096 x 256 permutations x 4 B = 4 MiB, cache-sized (measured
#: fastest among 2k-16k).
_CHUNK_ROWS = 1 << 12
#: Seeds that separate the two shingle kinds in the fast hash.
CHAR_KIND_SEED = np.uint32(0x5BD1E995)
WORD_KIND_SEED = np.uint32(0x27D4EB2F)
_GOLDEN32 = np.uint32(0x9E3779B1)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (a bijection on uint32), element-wise; wraps mod 2**32."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def combine_ngrams(units: np.ndarray, n: int, kind_seed: np.uint32) -> np.ndarray:
    """32-bit hashes of every run of ``n`` consecutive ``units`` (uint32).

    A sequence shorter than ``n`` (but not empty) gives one hash over all its units, so a
    short document still has one shingle.  ``h <- fmix32(h * golden ^ unit_k)`` for each of
    the n positions: n vector passes, no Python loop over shingles.
    """
    num_units = len(units)
    if num_units == 0:
        return np.empty(0, dtype=np.uint32)
    n = min(n, num_units)
    count = num_units - n + 1
    with np.errstate(over="ignore"):
        h = np.full(count, kind_seed, dtype=np.uint32)
        for k in range(n):
            h = fmix32((h * _GOLDEN32) ^ units[k:k + count])
    return h


def char_units(han_text: str) -> np.ndarray:
    """Code points of a string as uint32."""
    return np.frombuffer(han_text.encode("utf-32-le"), dtype=np.uint32)


def word_units(words: Sequence[str]) -> np.ndarray:
    """xxh32 (seed 0) of each word's UTF-8 bytes, as uint32."""
    return np.fromiter((xxhash.xxh32_intdigest(w.encode("utf-8")) for w in words), dtype=np.uint32, count=len(words))


@functools.lru_cache(maxsize=1)
def _han_only():
    import re

    return re.compile(f"^[{HAN}]+$")


def fast_shingle_hash(shingle: str) -> int:
    """The ``fast`` hash of one shingle string (a datasketch-compatible ``hashfunc``).

    A shingle of Han characters is a character n-gram; anything else is a word n-gram whose
    words are separated by single spaces (see :func:`etl.dedup.cluster.shingle_strings`).
    """
    if _han_only().match(shingle):
        units, seed = char_units(shingle), CHAR_KIND_SEED
    else:
        units, seed = word_units(shingle.split(" ")), WORD_KIND_SEED
    return int(combine_ngrams(units, len(units), seed)[0])


def sha1_shingle_hash(shingle: str) -> int:
    """datasketch's default hash (``sha1_hash32``) of the shingle's UTF-8 bytes."""
    return struct.unpack("<I", hashlib.sha1(shingle.encode("utf-8")).digest()[:4])[0]


def sha1_hashes(shingles: Sequence[str]) -> np.ndarray:
    """:func:`sha1_shingle_hash` of each shingle, as uint32 (one Python call per shingle)."""
    return np.fromiter((sha1_shingle_hash(s) for s in shingles), dtype=np.uint32, count=len(shingles))


# ----------------------------------------------------------------------------- permutations


@dataclass(frozen=True)
class Permutations:
    """datasketch's permutation parameters ``(a, b)`` for a scheme, seed and size."""

    scheme: str
    seed: int
    a: np.ndarray
    b: np.ndarray

    @property
    def num_perm(self) -> int:
        return len(self.a)


@functools.lru_cache(maxsize=16)
def make_permutations(num_perm: int, seed: int, scheme: str) -> Permutations:
    """Draw ``a`` and ``b`` exactly as ``datasketch.MinHash._init_permutations`` does."""
    if scheme not in SCHEMES:
        raise ValueError(f"dedup.scheme must be one of {SCHEMES}, got {scheme!r}")
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        pairs = [(gen.randint(1, _MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, _MERSENNE_PRIME, dtype=np.uint64))
                 for _ in range(num_perm)]
        ab = np.array(pairs, dtype=np.uint64).T
        return Permutations(scheme, seed, ab[0].copy(), ab[1].copy())
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return Permutations(scheme, seed, a, b)


def empty_value(scheme: str) -> int:
    """The initial ("no element seen") hash value of a scheme."""
    return (1 << 32) - 1


def _permute(hashes: np.ndarray, perms: Permutations) -> np.ndarray:
    """``(num_perm, len(hashes))`` permuted values, with datasketch's arithmetic.

    Permutations along rows and shingles along columns: the per-document min is then a
    contiguous ``reduceat`` along axis 1, about 5x faster than the transposed layout.
    """
    with np.errstate(over="ignore"):
        if perms.scheme == "legacy":
            hv = hashes.astype(np.uint64)[None, :]
            return np.bitwise_and((hv * perms.a[:, None] + perms.b[:, None]) % _MERSENNE_PRIME, _MAX_HASH32).astype(np.uint32)
        permuted = fmix32(hashes.astype(np.uint32))[None, :] * perms.a[:, None]
        permuted += perms.b[:, None]
        return permuted


def signatures(hash_arrays: Sequence[np.ndarray], perms: Permutations) -> np.ndarray:
    """MinHash signatures ``(num_docs, num_perm)`` uint32 of many documents at once.

    ``hash_arrays[i]`` holds the shingle hashes of document ``i``; an empty one gives the
    all-``2**32-1`` signature (datasketch's empty MinHash).  Documents are grouped into
    chunks of about ``_CHUNK_ROWS`` shingles so the permuted block stays in cache.
    """
    num_docs = len(hash_arrays)
    out = np.full((num_docs, perms.num_perm), empty_value(perms.scheme), dtype=np.uint32)
    start = 0
    while start < num_docs:
        stop, rows = start, 0
        while stop < num_docs and (rows == 0 or rows + len(hash_arrays[stop]) <= _CHUNK_ROWS):
            rows += len(hash_arrays[stop])
            stop += 1
        _fill_chunk(hash_arrays, start, stop, perms, out)
        start = stop
    return out


def _fill_chunk(hash_arrays: Sequence[np.ndarray], start: int, stop: int, perms: Permutations, out: np.ndarray) -> None:
    nonempty = [i for i in range(start, stop) if len(hash_arrays[i])]
    if not nonempty:
        return
    if len(nonempty) == 1 and len(hash_arrays[nonempty[0]]) > _CHUNK_ROWS:  # one huge document
        hashes = hash_arrays[nonempty[0]]
        sig = out[nonempty[0]]
        for lo in range(0, len(hashes), _CHUNK_ROWS):
            np.minimum(sig, _permute(hashes[lo:lo + _CHUNK_ROWS], perms).min(axis=1), out=sig)
        return
    lengths = np.array([len(hash_arrays[i]) for i in nonempty])
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    permuted = _permute(np.concatenate([hash_arrays[i] for i in nonempty]), perms)
    out[nonempty] = np.minimum.reduceat(permuted, offsets, axis=1).T


# ----------------------------------------------------------------------------- LSH


def _probability_collide(s: float, b: int, r: int) -> float:
    return 1.0 - (1.0 - s ** float(r)) ** float(b)


@functools.lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` minimising the weighted false positive and negative areas.

    The same grid search as datasketch's ``MinHashLSH`` (every ``b`` in 1..num_perm, every
    ``r`` with ``b * r <= num_perm``; the first minimum wins): the false-positive area is the
    integral of the collision probability ``1 - (1 - s^r)^b`` over ``s`` in ``[0, threshold]``,
    the false-negative area the integral of its complement over ``[threshold, 1]``.
    """
    from scipy.integrate import quad

    best, best_error = (0, 0), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp, _ = quad(lambda s, b=b, r=r: _probability_collide(s, b, r), 0.0, threshold)
            fn, _ = quad(lambda s, b=b, r=r: 1.0 - _probability_collide(s, b, r), threshold, 1.0)
            error = fp * false_positive_weight + fn * false_negative_weight
            if error < best_error:
                best, best_error = (b, r), error
    return best


def band_keys(sigs: np.ndarray, num_bands: int, rows_per_band: int) -> np.ndarray:
    """``(num_docs, num_bands)`` int64 keys: a 64-bit hash of each band's ``rows_per_band`` values.

    Two documents share a key in band ``j`` when their signature values in that band are
    equal (up to a 2**-64 hash collision); the band index is kept separately by callers.
    """
    if num_bands * rows_per_band > sigs.shape[1]:
        raise ValueError(f"dedup: num_bands * rows_per_band = {num_bands * rows_per_band} exceeds num_perm {sigs.shape[1]}")
    bands = sigs[:, : num_bands * rows_per_band].reshape(len(sigs), num_bands, rows_per_band).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(bands.shape[:2], np.uint64(0xCBF29CE484222325), dtype=np.uint64)
        for j in range(rows_per_band):
            h = (h ^ bands[:, :, j]) * np.uint64(0x100000001B3)
            h = h ^ (h >> np.uint64(29))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(32))
    return h.view(np.int64)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Share of equal hash values (datasketch's ``MinHash.jaccard``); rows compared pairwise."""
    equal = np.asarray(sig_a) == np.asarray(sig_b)
    return equal.mean(axis=-1)
