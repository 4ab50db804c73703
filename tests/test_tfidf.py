"""TF-IDF information filter: scikit-learn parity, exact drop decisions, Spark == local."""
from __future__ import annotations

import json

import numpy as np
import pytest
from dedup_fixtures import write_jsonl, write_params

from etl.clean.tokenize import TokenizerConfig
from etl.core.document import Document
from etl.io.records import read_parquet_dir
from etl.tfidf import TfidfConfig, document_tokens, idf, percentile_cut, score_documents
from etl.tfidf import main as local_main

TOKENIZER = TokenizerConfig()


def _real_docs(data_dir, n_per_file: int = 15) -> list[Document]:
    docs = []
    for name in ("general_zh.jsonl", "general_en.jsonl", "domain_medical.jsonl"):
        with open(data_dir / name, encoding="utf-8") as handle:
            docs += [Document(f"{name[:9]}-{i:02d}", json.loads(line)["text"][:1500]) for i, line in zip(range(n_per_file), handle)]
    return docs


def _low_info_docs() -> list[Document]:
    return [Document("boiler-1", "the of and to the of and to in the a"), Document("boiler-2", "的 了 是 的 在 和 了 是 的"),
            Document("empty", "!!! ..."), Document("boiler-3", "The And Of the to")]


def test_scores_equal_scikit_learn(data_dir):
    from sklearn.feature_extraction.text import TfidfVectorizer

    config = TfidfConfig(min_percentile=None)
    docs = _real_docs(data_dir) + _low_info_docs()
    out, _ = score_documents([Document(d.id, d.text) for d in docs], config, TOKENIZER)
    tokens = [document_tokens(d.text, config, TOKENIZER) for d in docs]
    vectorizer = TfidfVectorizer(analyzer=lambda toks: toks, norm=None, smooth_idf=True, sublinear_tf=False)
    matrix = vectorizer.fit_transform(tokens)
    lengths = np.array([max(len(t), 1) for t in tokens])
    expected = np.asarray(matrix.sum(axis=1)).ravel() / lengths
    ours = np.array([d.meta["tfidf_score"] for d in out])
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=0)
    assert ours[-2] == 0.0  # no word token


def test_low_information_documents_dropped_by_percentile(data_dir):
    docs = _real_docs(data_dir) + _low_info_docs()
    out, summary = score_documents(docs, TfidfConfig(min_percentile=8.0), TOKENIZER)
    # floor(0.08 * 49) = 3: the three lowest scores (no words, then two stop-word lists) are dropped
    dropped = {d.id for d in out if d.dropped}
    assert dropped == {"empty", "boiler-2", "boiler-3"}
    assert all(d.drop_reason == "low_tfidf" and d.meta["drop_step"] == "tfidf_filter" for d in out if d.dropped)
    assert all("tfidf_score" in d.meta for d in out)
    assert summary["num_scored"] == 49


def test_absolute_threshold_and_percentile_rule():
    assert percentile_cut([1.0, 2.0, 3.0, 4.0], 50.0) == 3.0
    assert percentile_cut([1.0, 2.0], 0.0) == 1.0  # 0th percentile drops nothing
    assert idf(0, 3) == pytest.approx(np.log(4) + 1)
    docs = [Document("a", "alpha beta gamma"), Document("b", "alpha beta"), Document("c", "alpha")]
    out, _ = score_documents(docs, TfidfConfig(min_score=1.1, min_percentile=None), TOKENIZER)
    # idf: alpha 1 (in every doc), beta ln(4/3)+1, gamma ln(2)+1: scores a 1.33, b 1.14, c 1.0
    assert [d.id for d in out if d.dropped] == ["c"]
    with pytest.raises(ValueError, match="tfidf.min_percentile"):
        TfidfConfig(min_percentile=100.0)


@pytest.mark.spark
@pytest.mark.parametrize("broadcast_max_rows", [None, 0])
def test_spark_equals_local(spark, tmp_path, data_dir, broadcast_max_rows):
    """Both scoring paths: document frequencies broadcast to the Python workers (a small
    vocabulary, the default) and joined per (document, token) row (0 broadcast rows)."""
    from spark_jobs import tfidf_filter

    docs = _real_docs(data_dir, 8) + _low_info_docs()
    src = write_jsonl(docs, tmp_path / "in" / "docs.jsonl")
    params = write_params(tmp_path / "params.yaml", tfidf={"min_percentile": 10.0})
    local = local_main(["--input", str(src.parent), "--output", str(tmp_path / "local"), "--params", str(params)])
    if broadcast_max_rows is not None:
        spark.conf.set("spark.jinglian.broadcastMaxRows", str(broadcast_max_rows))
    try:
        remote = tfidf_filter.main(["--input", str(src.parent), "--output", str(tmp_path / "spark"), "--params", str(params), "--partitions", "3"])
    finally:
        spark.conf.unset("spark.jinglian.broadcastMaxRows")
    for part in ("kept", "rejected"):
        local_scores = {d.id: d.meta["tfidf_score"] for d in read_parquet_dir(tmp_path / "local" / part)}
        spark_scores = {d.id: d.meta["tfidf_score"] for d in read_parquet_dir(tmp_path / "spark" / part)}
        assert spark_scores == local_scores  # bit-identical floats
    assert remote["drop_reasons"] == local["drop_reasons"] == {"low_tfidf": 2}
    assert remote["tfidf"]["percentile_cut"] == local["tfidf"]["percentile_cut"]
    assert remote["tfidf"]["vocab_size"] == local["tfidf"]["vocab_size"]


@pytest.mark.spark
def test_exact_order_statistic_is_the_sorted_value_at_each_rank(spark):
    """The percentile cut's distributed sort, all in the JVM: ties, negative values, empty and
    uneven partitions; ranks at both ends, inside ties and in the middle, against Python's sort."""
    from spark_jobs.corpus.tfidf import exact_order_statistic

    rng = np.random.default_rng(7)
    values = [float(v) for v in np.round(rng.normal(0, 3, 97), 1)] + [0.0, 0.0, -0.0, 2.5, 2.5]
    frame = spark.createDataFrame([(v,) for v in values], "score double").repartition(7)
    ordered = sorted(values)
    ranks = sorted({0, 1, 17, 50, 51, len(values) - 2, len(values) - 1})
    assert [exact_order_statistic(frame, r) for r in ranks] == [ordered[r] for r in ranks]
    with pytest.raises(IndexError, match="out of range"):
        exact_order_statistic(frame, len(values))
