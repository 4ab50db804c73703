"""Compiled n-gram counting for the Gopher repetition rules (:func:`etl.clean.quality.repetition`).

Each unit (a word, or a Han character on CJK text) gets a dense integer id; the n-gram ids are
built from the (n-1)-gram ids one n at a time (a linear pass over the pairs ``(id, next unit)``), so a
document's 2..10-gram checks share the work, and the counting and the greedy duplicate scan run
in numba.  The answers are exactly those of the reference functions
:func:`etl.clean.quality.top_ngram_chars` and :func:`etl.clean.quality.dup_ngram_chars` (ties
for the most frequent n-gram go to the one that occurs first, as ``Counter.most_common``
does), which tests/test_tokenize.py checks on random and real units.  On the benchmark corpus
the n-gram rules run 2x (Chinese, ~270 units a document) to 3x (English, ~510 tokens) faster.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np


def _next_gram_ids(prev, num_prev, units, num_units, n):
    """Dense ids of the n-grams from the (n-1)-gram ids ``prev`` (``num_prev`` distinct) and the
    unit ids; ``(ids, count of distinct)``.  Linear: positions are bucketed by their
    (n-1)-gram (a counting sort), and inside a bucket each new last unit takes the next id
    (``stamp`` marks the units seen in the current bucket).  The numbering differs from sorted
    order, which no rule depends on: they compare ids for equality and count them."""
    num_grams = len(prev) - 1
    start = np.zeros(num_prev + 1, np.int64)
    for i in range(num_grams):
        start[prev[i] + 1] += 1
    for g in range(num_prev):
        start[g + 1] += start[g]
    fill = start[:-1].copy()
    order = np.empty(num_grams, np.int64)
    for i in range(num_grams):
        order[fill[prev[i]]] = i
        fill[prev[i]] += 1
    stamp = np.full(num_units, -1, np.int64)
    new_id = np.empty(num_units, np.int64)
    ids = np.empty(num_grams, np.int64)
    num = 0
    for g in range(num_prev):
        for j in range(start[g], start[g + 1]):
            i = order[j]
            unit = units[i + n - 1]
            if stamp[unit] != g:
                stamp[unit] = g
                new_id[unit] = num
                num += 1
            ids[i] = new_id[unit]
    return ids, num


def _first_top_gram(ids, num):
    """``(position of the first n-gram with the highest count, that count)``."""
    counts = np.zeros(num, np.int64)
    for g in ids:
        counts[g] += 1
    top = counts.max()
    for i in range(len(ids)):
        if counts[ids[i]] == top:
            return i, top
    return 0, 0


def _greedy_repeat_chars(ids, num, cum_chars, n):
    """Characters in n-grams repeating an earlier one, skipping past each repeat (Gopher)."""
    seen = np.zeros(num, np.bool_)
    repeated = 0
    idx = 0
    while idx < len(ids):
        if seen[ids[idx]]:
            repeated += cum_chars[idx + n] - cum_chars[idx]
            idx += n
        else:
            seen[ids[idx]] = True
            idx += 1
    return repeated


@functools.lru_cache(maxsize=1)
def _kernels():
    """The three kernels compiled on first use (numba loads only in processes that count n-grams)."""
    import numba

    return tuple(numba.njit(cache=True)(f) for f in (_next_gram_ids, _first_top_gram, _greedy_repeat_chars))


class NGramCounter:
    """The n-grams of one document's units, cheapest for increasing n (``len(units) >= n`` is the caller's check)."""

    def __init__(self, units: Sequence[str]):
        index = {u: i for i, u in enumerate(dict.fromkeys(units))}
        self.unit_ids = np.fromiter(map(index.__getitem__, units), np.int64, len(units))
        self.num_units = len(index)
        self.cum_chars = np.zeros(len(units) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, units), np.int64, len(units)), out=self.cum_chars[1:])
        self._n, self._ids, self._num = 1, self.unit_ids, self.num_units

    def gram_ids(self, n: int) -> tuple[np.ndarray, int]:
        """Dense ids of the n-grams and their number of distinct values (built from the last n
        asked for when n grows, from the units again when it shrinks)."""
        if n < self._n:
            self._n, self._ids, self._num = 1, self.unit_ids, self.num_units
        while self._n < n:
            self._n += 1
            self._ids, self._num = _kernels()[0](self._ids, self._num, self.unit_ids, self.num_units, self._n)
        return self._ids, self._num

    def top_chars(self, n: int, sep_len: int) -> int:
        """:func:`etl.clean.quality.top_ngram_chars` with a separator of ``sep_len`` characters."""
        pos, count = _kernels()[1](*self.gram_ids(n))
        return (int(self.cum_chars[pos + n] - self.cum_chars[pos]) + sep_len * (n - 1)) * int(count)

    def dup_chars(self, n: int) -> int | None:
        """:func:`etl.clean.quality.dup_ngram_chars`, or None when no n-gram repeats (nor will a longer one)."""
        ids, num = self.gram_ids(n)
        if num == len(ids):
            return None
        return int(_kernels()[2](ids, num, self.cum_chars, n))
