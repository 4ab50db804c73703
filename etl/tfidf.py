"""TF-IDF information filter: the pure core and the local runner.

Every live document is tokenised with the shared tokenizer (``etl.clean.tokenize.words``: jieba
words for Chinese, NLTK for Latin; word tokens only, Latin lower-cased when
``tfidf.lowercase``).  Over the corpus of ``N`` live documents, with ``df(t)`` the number of
documents containing token ``t`` and ``tf(t, d)`` its count in ``d``:

    idf(t)   = ln((1 + N) / (1 + df(t))) + 1              (scikit-learn's smooth_idf)
    score(d) = sum_t tf(t, d) * idf(t) / sum_t tf(t, d)   (mean TF-IDF weight per token)

``score(d)`` is the mean idf of the document's running tokens: a document made of words that
most documents use (boilerplate, navigation text, stop-word soup, repeated template lines)
scores near 1, one with specific vocabulary scores higher.  It equals the row sum of
scikit-learn's ``TfidfVectorizer(norm=None, smooth_idf=True, sublinear_tf=False)`` divided
by the token count (tested).  Documents without a word token score 0.

Drop rule (``drop_reason=low_tfidf``): score below ``min_score`` (absolute), or below the
``min_percentile`` cut: the score at 0-based rank ``floor(p / 100 * N)`` of the ascending
scores (so at most that many documents are dropped; ties at the cut are kept).  The score is
kept in ``meta.tfidf_score`` for every scored document, kept or dropped.

:data:`TFIDF` declares the stage.  Run locally (``python -m etl.tfidf``) the corpus is held in
memory; the scalable path is ``spark-submit spark_jobs/tfidf_filter.py`` (document
frequencies with a Spark ``groupBy``, ``spark_jobs/corpus/tfidf.py``).
"""
from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from etl.clean.tokenize import TokenizerConfig, words
from etl.core.config import config_to_dict, load_sections
from etl.core.document import Document
from etl.core.errors import run_main
from etl.core.stage import Stage, StageRun
from etl.runner import run_stage

logger = logging.getLogger(__name__)

STEP = "tfidf_filter"
REASON = "low_tfidf"


@dataclass(frozen=True, kw_only=True)
class TfidfConfig:
    """The TF-IDF information filter (the ``tfidf:`` section of params.yaml)."""

    lowercase: bool = True
    """Lower-case (casefold) tokens before counting, so ``The`` and ``the`` share a df."""
    min_score: float | None = None
    """Absolute cut: drop documents scoring below this (mean idf per token; >= 1 for any
    document with a word). None: no absolute cut."""
    min_percentile: float | None = 1.0
    """Percentile cut in [0, 100): drop documents below the score at this percentile. No
    published threshold exists for this filter; 1.0 (the lowest 1 %) is a conservative
    default to be tuned on a corpus' score histogram. None: no percentile cut."""

    def __post_init__(self) -> None:
        if self.min_percentile is not None and not 0.0 <= self.min_percentile < 100.0:
            raise ValueError(f"tfidf.min_percentile must be in [0, 100), got {self.min_percentile!r}")
        if self.min_score is not None and self.min_score < 0:
            raise ValueError(f"tfidf.min_score must be >= 0, got {self.min_score!r}")


def load_tfidf_config(params_path: str | os.PathLike | None = None) -> tuple[TfidfConfig, TokenizerConfig]:
    """The ``tfidf:`` and shared ``tokenizer:`` sections of a params file."""
    return load_sections(params_path, "tfidf", "tokenizer")


def document_tokens(text: str, config: TfidfConfig, tokenizer: TokenizerConfig) -> list[str]:
    """Word tokens of ``text`` from the shared tokenizer (casefolded when configured)."""
    tokens = words(text, tokenizer)
    return [t.casefold() for t in tokens] if config.lowercase else tokens


def term_counts(text: str, config: TfidfConfig, tokenizer: TokenizerConfig) -> collections.Counter:
    """``tf(t, d)`` for every token of the document."""
    return collections.Counter(document_tokens(text, config, tokenizer))


def idf(doc_freq: int, num_docs: int) -> float:
    """Smoothed inverse document frequency, ``ln((1 + N) / (1 + df)) + 1``."""
    return math.log((1.0 + num_docs) / (1.0 + doc_freq)) + 1.0


def tfidf_score(tf_df_pairs: Iterable[tuple[int, int]], num_docs: int) -> float:
    """Mean TF-IDF weight per token from ``(tf, df)`` pairs of a document's distinct tokens.

    ``math.fsum`` makes the sum exact and independent of order, so Spark (pairs in shuffle
    order) and the local runner give bit-identical scores.
    """
    pairs = list(tf_df_pairs)
    total = sum(tf for tf, _ in pairs)
    if total == 0:
        return 0.0
    return math.fsum(tf * idf(df, num_docs) for tf, df in pairs) / total


def percentile_cut(sorted_scores: Sequence[float], percentile: float) -> float | None:
    """Score at 0-based rank ``floor(p / 100 * N)`` of the ascending scores (None if empty)."""
    if not sorted_scores:
        return None
    return sorted_scores[cut_rank(len(sorted_scores), percentile)]


def cut_rank(num_docs: int, percentile: float) -> int:
    """0-based rank of the percentile cut among ``num_docs`` ascending scores."""
    return min(num_docs - 1, int(math.floor(percentile / 100.0 * num_docs)))


def threshold(config: TfidfConfig, cut: float | None) -> float:
    """Scores strictly below this are dropped (-inf: nothing is)."""
    bounds = [-math.inf]
    if config.min_score is not None:
        bounds.append(config.min_score)
    if config.min_percentile is not None and cut is not None:
        bounds.append(cut)
    return max(bounds)


def score_documents(docs: Iterable[Document], config: TfidfConfig, tokenizer: TokenizerConfig) -> tuple[list[Document], dict[str, Any]]:
    """Score live documents over the in-memory corpus and drop the low-information ones."""
    docs = list(docs)
    live = [d for d in docs if not d.dropped]
    counts = [term_counts(d.text, config, tokenizer) for d in live]
    doc_freq: collections.Counter = collections.Counter()
    for c in counts:
        doc_freq.update(c.keys())
    num_docs = len(live)
    scores = [tfidf_score(((tf, doc_freq[t]) for t, tf in c.items()), num_docs) for c in counts]
    cut = percentile_cut(sorted(scores), config.min_percentile) if config.min_percentile is not None else None
    limit = threshold(config, cut)
    for doc, score in zip(live, scores):
        mark(doc, score, limit)
    return docs, {"num_scored": num_docs, "vocab_size": len(doc_freq), "percentile_cut": cut, "threshold": limit if limit > -math.inf else None}


def mark(doc: Document, score: float, limit: float) -> Document:
    """Store the score in meta and drop the document when it is below ``limit``."""
    doc.meta["tfidf_score"] = score
    if score < limit:
        doc.drop(REASON, STEP, tfidf_threshold=limit)
    return doc


def tfidf_corpus(docs: Iterable[Document], run: StageRun) -> tuple[list[Document], dict[str, Any]]:
    """The local whole-corpus operation: score over the in-memory corpus, drop the low ones."""
    docs, summary = score_documents(docs, run.config, run.configs["tokenizer"])
    summary["config"] = config_to_dict(run.config)
    return docs, {"tfidf": summary}


TFIDF = Stage(
    name="tfidf",
    description="TF-IDF low-information filter.",
    sections=("tfidf", "tokenizer"),
    corpus=tfidf_corpus,
    spark_corpus="spark_jobs.corpus.tfidf:run_tfidf",
    step_names=lambda configs: [STEP],
    on_error_flag=False,
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m etl.tfidf``: the TF-IDF stage, run locally (in memory)."""
    return run_stage(TFIDF, argv)


if __name__ == "__main__":
    run_main(main)
