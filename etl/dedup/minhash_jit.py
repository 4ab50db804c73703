"""Compiled (numba) kernels for the dedup hot path: shingle hashes, signatures, band keys.

These compute exactly what the NumPy reference code in :mod:`etl.dedup.minhash` and
:mod:`etl.dedup.cluster` computes (``tests/test_dedup.py`` checks every kernel against it on real
Chinese and English text), one pass per batch of documents instead of several NumPy passes
and Python loops per document:

* :func:`shingle_hashes` - from the code points of normalised texts to the ``fast`` shingle
  hashes: Han characters (``etl.clean.tokenize.HAN``) in order, then their ``char_ngram``-grams;
  Latin words = runs of regex ``\\w`` characters outside Han runs that hold at least one
  letter or digit (NLTK WordPunctTokenizer's word tokens filtered by ``is_word``), each
  hashed with xxh32 of its UTF-8 bytes, then their ``word_ngram``-grams.  The character
  classes come from Python's own ``re`` over every code point, so ``\\w`` means here what it
  means in the reference.
* :func:`signatures_affine32` - datasketch 2.0's ``affine32`` permutations
  (``fmix32(h) * a + b mod 2**32``) min-reduced per document, fused into one loop over
  shingles with the permutations innermost (vectorised by LLVM).
* :func:`band_keys` - the 64-bit FNV-style band hash of :func:`etl.dedup.minhash.band_keys`.
* :func:`normalize_code_points` - the dedup normalisation (NFKC, casefold, whitespace
  folding) as one table lookup per code point, tables built from ``unicodedata`` and
  ``str.casefold``; texts it cannot settle exactly are flagged for the Python path
  (:func:`etl.dedup.cluster.normalize_batch`).

Measured on the benchmark corpus (10k documents, 490 shingles each, 256 permutations, one
core): shingle hashing 139 -> 13 us/document, signatures 57 -> 20 us, band keys 60 -> 1 us,
normalisation 34 -> 15 us
(``python -m benchmarks.dedup`` reports the whole job).  Kernels are compiled on first use
and cached on disk (``cache=True``), so a Spark worker pays the compile once per machine.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numba
import numpy as np

from etl.clean.tokenize import HAN

_M32 = np.uint64(0xFFFFFFFF)
_S16, _S13, _S15 = np.uint64(16), np.uint64(13), np.uint64(15)
_C1, _C2 = np.uint64(0x85EBCA6B), np.uint64(0xC2B2AE35)
_GOLDEN = np.uint64(0x9E3779B1)
# xxh32 primes
_P1, _P2, _P3 = np.uint64(2654435761), np.uint64(2246822519), np.uint64(3266489917)
_P4, _P5 = np.uint64(668265263), np.uint64(374761393)
# band hash constants (etl.dedup.minhash.band_keys)
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_MIX, _S29, _S32 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(29), np.uint64(32)

#: Character classes by code point: other, Han, ``\w`` but not alphanumeric ('_'), alphanumeric.
OTHER, HAN_CHAR, WORD_CHAR, ALNUM_CHAR = 0, 1, 2, 3


@functools.lru_cache(maxsize=1)
def _every_code_point() -> str:
    """All code points U+0000..U+10FFFF (lone surrogates included) as one string, for ``re`` scans."""
    return "".join(map(chr, range(0x110000)))


@functools.lru_cache(maxsize=1)
def char_classes() -> np.ndarray:
    """uint8 class of every code point, from Python's ``re`` (so ``\\w`` matches the reference)."""
    everything = _every_code_point()
    classes = np.zeros(0x110000, dtype=np.uint8)
    for pattern, value in ((r"\w+", WORD_CHAR), (r"[^\W_]+", ALNUM_CHAR), (f"[{HAN}]+", HAN_CHAR)):
        for m in re.finditer(pattern, everything):
            classes[m.start():m.end()] = value
    return classes


@functools.lru_cache(maxsize=1)
def nfkc_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(start, length, pool, slow)`` for :func:`normalize_code_points`, from Python's ``unicodedata``.

    Code point ``c``'s NFKC image (``unicodedata.normalize("NFKC", chr(c))``) is
    ``pool[start[c]:start[c] + length[c]]``; ``slow[c]`` marks what the map alone cannot
    settle: combining marks (reordering, composition), starters that compose with a
    preceding character (the second code point of a primary composite, Hangul vowel and
    trailing jamo), and code points whose image holds either.  Replacing every code point by
    its image keeps the text's NFKD, hence its NFKC; a text without a ``slow`` code point is
    then NFKC already (every code point is its own image, no two can compose or reorder).
    """
    import unicodedata

    start = np.arange(0x110000, dtype=np.int64)
    length = np.ones(0x110000, dtype=np.int64)
    slow = np.zeros(0x110000, dtype=np.bool_)
    pool = list(range(0x110000))
    images = {}
    for cp in range(0x110000):
        ch = chr(cp)
        if unicodedata.combining(ch):
            slow[cp] = True
        decomposition = unicodedata.decomposition(ch)
        if not decomposition:
            continue
        image = unicodedata.normalize("NFKC", ch)
        if image != ch:
            images[cp] = image
        if not decomposition.startswith("<"):
            parts = [int(x, 16) for x in decomposition.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == ch:
                slow[parts[1]] = True
    slow[0x1161:0x1176] = True  # Hangul V and T jamo compose algorithmically with L / LV syllables
    slow[0x11A8:0x11C3] = True
    for cp, image in images.items():
        start[cp], length[cp] = len(pool), len(image)
        pool.extend(map(ord, image))
    for cp, image in images.items():
        slow[cp] = slow[cp] or any(slow[ord(x)] for x in image)
    return start, length, np.array(pool, dtype=np.uint32), slow


@functools.lru_cache(maxsize=1)
def whitespace_table() -> np.ndarray:
    """bool per code point: regex ``\\s`` (the same set as ``str.isspace`` and ``str.split``)."""
    table = np.zeros(0x110000, dtype=np.bool_)
    for m in re.finditer(r"\s", _every_code_point()):
        table[m.start()] = True
    return table


@functools.lru_cache(maxsize=1)
def casefold_table() -> tuple[np.ndarray, np.ndarray]:
    """``(fold, multi)``: ``str.casefold`` of each code point when it is one code point, and
    ``multi[c]`` where it is more (ß -> ss): those texts take the Python path."""
    fold = np.arange(0x110000, dtype=np.uint32)
    multi = np.zeros(0x110000, dtype=np.bool_)
    for cp in range(0x110000):
        folded = chr(cp).casefold()
        if len(folded) == 1:
            fold[cp] = ord(folded)
        else:
            multi[cp] = True
    return fold, multi


#: Flags in :func:`direct_table`'s entries (code points need 21 bits).
_COMPLEX, _SPACE, _VALUE = np.uint32(1 << 31), np.uint32(1 << 30), np.uint32((1 << 30) - 1)


@functools.lru_cache(maxsize=1)
def direct_table() -> np.ndarray:
    """One uint32 per code point for the common case: casefold(NFKC(c)) when that is a single
    code point that is neither ``slow`` nor multi-folding (bit 30 set if it is whitespace), or
    bit 31 for "take the general path".  One lookup per code point instead of seven."""
    start, length, pool, slow = nfkc_tables()
    fold, multi = casefold_table()
    ws = whitespace_table()
    single = length == 1
    image = pool[start]  # the image's code point where single
    simple = single & ~slow[image] & ~multi[image]
    value = fold[image]
    return np.where(simple, value | np.where(ws[value], _SPACE, np.uint32(0)), _COMPLEX).astype(np.uint32)


@numba.njit(cache=True)
def _image_length(cps, length):
    total = 0
    for c in cps:
        total += length[c]
    return total


@numba.njit(cache=True, inline="always")
def _emit(y, ws, out, pos, started, pending):
    """Append casefolded code point ``y`` under whitespace folding; returns (pos, started, pending)."""
    if ws:
        return pos, started, started
    if pending:
        out[pos] = 32
        pos += 1
    out[pos] = y
    return pos + 1, True, False


@numba.njit(cache=True)
def _normalize(cps, offsets, direct, start, length, pool, slow, fold, multi, ws, out, out_offsets, flagged):
    """Returns False if ``out`` is too small (images longer than their code points)."""
    pos, cap = 0, len(out)
    for d in range(len(offsets) - 1):
        out_offsets[d] = pos
        flag, started, pending = False, False, False
        for i in range(offsets[d], offsets[d + 1]):
            c = cps[i]
            v = direct[c]
            if not v & _COMPLEX:
                if pos + 2 > cap:
                    return False
                pos, started, pending = _emit(v & _VALUE, v & _SPACE, out, pos, started, pending)
                continue
            if pos + 2 * length[c] > cap:
                return False
            s = start[c]
            for j in range(length[c]):  # a multi-code-point image (U+2026 -> "..."), or a code point for Python
                x = pool[s + j]
                if slow[x] or multi[x]:
                    flag = True
                y = fold[x]
                pos, started, pending = _emit(y, ws[y], out, pos, started, pending)
        flagged[d] = flag
    out_offsets[len(offsets) - 1] = pos
    return True


def normalize_code_points(cps: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(out, out_offsets, flagged)``: per document, NFKC by each code point's image
    (:func:`nfkc_tables`), then ``casefold`` by :func:`casefold_table`, then whitespace runs
    to one space and stripped (``" ".join(t.split())``; regex ``\\s`` = ``str.split``'s set).
    Exact where ``flagged`` is false; a flagged document (a ``slow`` NFKC code point or a
    multi-code-point casefold) must be normalised by Python instead."""
    start, length, pool, slow = nfkc_tables()
    fold, multi = casefold_table()
    out_offsets = np.empty(len(offsets), dtype=np.int64)
    flagged = np.empty(len(offsets) - 1, dtype=np.bool_)
    tables = (direct_table(), start, length, pool, slow, fold, multi, whitespace_table())
    out = np.empty(len(cps) + len(cps) // 8 + 64, dtype=np.uint32)  # room for a few expanding images
    if not _normalize(cps, offsets, *tables, out, out_offsets, flagged):
        out = np.empty(2 * _image_length(cps, length) + 2, dtype=np.uint32)  # the checks' bound: always enough
        if not _normalize(cps, offsets, *tables, out, out_offsets, flagged):
            raise RuntimeError("normalize_code_points: output bound too small")  # unreachable: 2 slots per image code point
    return out[:out_offsets[-1]], out_offsets, flagged


@numba.njit(cache=True, inline="always")
def _fmix32(h):
    h ^= h >> _S16
    h = (h * _C1) & _M32
    h ^= h >> _S13
    h = (h * _C2) & _M32
    return h ^ (h >> _S16)


@numba.njit(cache=True, inline="always")
def _rotl32(x, r):
    return ((x << np.uint64(r)) | (x >> np.uint64(32 - r))) & _M32


@numba.njit(cache=True, inline="always")
def _read_u32(buf, i):
    """Little-endian uint32 at ``buf[i:i + 4]``."""
    return np.uint64(buf[i]) | (np.uint64(buf[i + 1]) << np.uint64(8)) | (np.uint64(buf[i + 2]) << np.uint64(16)) | (np.uint64(buf[i + 3]) << np.uint64(24))


@numba.njit(cache=True, inline="always")
def _xxh32_round(acc, lane):
    return (_rotl32((acc + lane * _P2) & _M32, 13) * _P1) & _M32


@numba.njit(cache=True)
def _xxh32(buf, n):
    """xxh32 (seed 0) of ``buf[:n]``."""
    i = 0
    if n >= 16:
        acc = np.empty(4, dtype=np.uint64)
        acc[0], acc[1], acc[2], acc[3] = (_P1 + _P2) & _M32, _P2, np.uint64(0), (np.uint64(0x100000000) - _P1) & _M32
        while i + 16 <= n:
            for lane in range(4):
                acc[lane] = _xxh32_round(acc[lane], _read_u32(buf, i + 4 * lane))
            i += 16
        h = (_rotl32(acc[0], 1) + _rotl32(acc[1], 7) + _rotl32(acc[2], 12) + _rotl32(acc[3], 18)) & _M32
    else:
        h = _P5
    h = (h + np.uint64(n)) & _M32
    while i + 4 <= n:
        h = (_rotl32((h + _read_u32(buf, i) * _P3) & _M32, 17) * _P4) & _M32
        i += 4
    while i < n:
        h = (_rotl32((h + np.uint64(buf[i]) * _P5) & _M32, 11) * _P1) & _M32
        i += 1
    h ^= h >> _S15
    h = (h * _P2) & _M32
    h ^= h >> _S13
    h = (h * _P3) & _M32
    return h ^ (h >> _S16)


@numba.njit(cache=True)
def _utf8(cps, lo, hi, buf):
    """UTF-8 bytes of code points ``cps[lo:hi]`` into ``buf``; returns the length."""
    n = 0
    for i in range(lo, hi):
        c = np.uint32(cps[i])
        if c < 0x80:
            buf[n] = c
            n += 1
        elif c < 0x800:
            buf[n] = 0xC0 | (c >> 6)
            buf[n + 1] = 0x80 | (c & 0x3F)
            n += 2
        elif c < 0x10000:
            buf[n] = 0xE0 | (c >> 12)
            buf[n + 1] = 0x80 | ((c >> 6) & 0x3F)
            buf[n + 2] = 0x80 | (c & 0x3F)
            n += 3
        else:
            buf[n] = 0xF0 | (c >> 18)
            buf[n + 1] = 0x80 | ((c >> 12) & 0x3F)
            buf[n + 2] = 0x80 | ((c >> 6) & 0x3F)
            buf[n + 3] = 0x80 | (c & 0x3F)
            n += 4
    return n


@numba.njit(cache=True)
def _ngrams(units, m, n, seed, out, pos):
    """:func:`etl.dedup.minhash.combine_ngrams` of ``units[:m]`` written at ``out[pos:]``."""
    if m == 0:
        return pos
    if n > m:
        n = m
    for i in range(m - n + 1):
        h = np.uint64(seed)
        for k in range(n):
            h = _fmix32(((h * _GOLDEN) & _M32) ^ np.uint64(units[i + k]))
        out[pos] = h
        pos += 1
    return pos


@numba.njit(cache=True)
def _shingle_hashes(cps, offsets, classes, char_n, word_n, char_seed, word_seed):
    num_docs = len(offsets) - 1
    out = np.empty(len(cps) + 2 * num_docs, dtype=np.uint32)
    out_offsets = np.empty(num_docs + 1, dtype=np.int64)
    longest = 0
    for d in range(num_docs):
        longest = max(longest, offsets[d + 1] - offsets[d])
    units = np.empty(longest + 1, dtype=np.uint32)
    buf = np.empty(4 * longest + 4, dtype=np.uint8)
    pos = 0
    for d in range(num_docs):
        out_offsets[d] = pos
        lo, hi = offsets[d], offsets[d + 1]
        m = 0
        for i in range(lo, hi):
            if classes[cps[i]] == HAN_CHAR:
                units[m] = cps[i]
                m += 1
        pos = _ngrams(units, m, char_n, char_seed, out, pos)
        m = 0
        i = lo
        while i < hi:
            if classes[cps[i]] >= WORD_CHAR:
                j = i
                alnum = False
                while j < hi and classes[cps[j]] >= WORD_CHAR:
                    alnum = alnum or classes[cps[j]] == ALNUM_CHAR
                    j += 1
                if alnum:
                    units[m] = _xxh32(buf, _utf8(cps, i, j, buf))
                    m += 1
                i = j
            else:
                i += 1
        pos = _ngrams(units, m, word_n, word_seed, out, pos)
    out_offsets[num_docs] = pos
    return out[:pos].copy(), out_offsets


def shingle_hashes(normalized: list[str], char_ngram: int, word_ngram: int, char_seed: int, word_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(hashes, offsets)``: the ``fast`` shingle hashes of each normalised text, concatenated
    (document ``i`` owns ``hashes[offsets[i]:offsets[i + 1]]``)."""
    return shingle_hashes_of_code_points(*code_points(normalized), char_ngram, word_ngram, char_seed, word_seed)


def shingle_hashes_of_code_points(cps: np.ndarray, offsets: np.ndarray, char_ngram: int, word_ngram: int, char_seed: int,
                                  word_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`shingle_hashes` of texts given as concatenated code points and offsets."""
    return _shingle_hashes(cps, offsets, char_classes(), char_ngram, word_ngram, char_seed, word_seed)


def code_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(cps, offsets)``: the texts' code points (uint32, lone surrogates kept) concatenated;
    text ``i`` is ``cps[offsets[i]:offsets[i + 1]]``."""
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), out=offsets[1:])
    return np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32), offsets


def text_of(cps: np.ndarray) -> str:
    """Inverse of the encoding in :func:`code_points`."""
    return cps.tobytes().decode("utf-32-le", "surrogatepass")


@numba.njit(cache=True)
def _signatures_affine32(hashes, offsets, a, b, out):
    num_perm = len(a)
    for d in range(len(offsets) - 1):
        row = out[d]
        for i in range(offsets[d], offsets[d + 1]):
            h = _fmix32(np.uint64(hashes[i]))
            for k in range(num_perm):
                v = np.uint32((h * np.uint64(a[k]) + np.uint64(b[k])) & _M32)
                if v < row[k]:
                    row[k] = v


def signatures_affine32(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(num_docs, num_perm)`` uint32 MinHash signatures (datasketch ``affine32``); a document
    without shingles keeps the empty value ``2**32 - 1``."""
    out = np.full((len(offsets) - 1, len(a)), 0xFFFFFFFF, dtype=np.uint32)
    _signatures_affine32(hashes, offsets, a, b, out)
    return out


@numba.njit(cache=True)
def _band_keys(sigs, num_bands, rows, out):
    for d in range(sigs.shape[0]):
        for band in range(num_bands):
            h = _FNV_OFFSET
            for j in range(rows):
                h = (h ^ np.uint64(sigs[d, band * rows + j])) * _FNV_PRIME
                h = h ^ (h >> _S29)
            h = h * _MIX
            out[d, band] = h ^ (h >> _S32)


def band_keys(sigs: np.ndarray, num_bands: int, rows_per_band: int) -> np.ndarray:
    """:func:`etl.dedup.minhash.band_keys`, compiled: ``(num_docs, num_bands)`` int64."""
    out = np.empty((sigs.shape[0], num_bands), dtype=np.uint64)
    _band_keys(np.ascontiguousarray(sigs), num_bands, rows_per_band, out)
    return out.view(np.int64)
