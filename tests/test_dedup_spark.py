"""The Spark dedup job: same kept set as the local runner, for any partitioning, and with an index."""
from __future__ import annotations

import json
import random

import pytest
from dedup_fixtures import DEDUP_PARAMS, EXPECTED_KEPT, EXPECTED_REJECTED, crafted_documents, write_jsonl, write_params

from etl.core.document import Document
from etl.dedup.cluster import DedupConfig, UnionFind
from etl.dedup.cluster import main as local_main
from etl.io.records import read_parquet_dir

pytestmark = pytest.mark.spark


def _corpus(data_dir) -> list[Document]:
    """Crafted fixtures plus real documents and edited copies of some of them."""
    rng = random.Random(1)
    docs = crafted_documents(data_dir)
    for name in ("general_zh.jsonl", "general_en.jsonl"):
        with open(data_dir / name, encoding="utf-8") as handle:
            real = [json.loads(line) for i, line in zip(range(80), handle) if i >= 60]
        for i, rec in enumerate(real):
            docs.append(Document(f"{name[:10]}-{i:02d}", rec["text"]))
            if i % 4 == 0 and len(rec["text"]) > 200:
                chars = list(rec["text"])
                for p in rng.sample(range(len(chars)), 3):
                    chars[p] = "某"
                docs.append(Document(f"{name[:10]}-{i:02d}-copy", "".join(chars)))
    return docs


def _result(out_dir):
    kept = {d.id for d in read_parquet_dir(out_dir / "kept")}
    rejected = {d.id: (d.drop_reason, d.meta.get("duplicate_of"), d.meta.get("cluster_id")) for d in read_parquet_dir(out_dir / "rejected")}
    return kept, rejected


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("dedup_spark")
    write_jsonl(_corpus(data_dir), root / "in" / "docs.jsonl")
    # a second file: a repeated id (the later copy goes as duplicate_id), a broken line, a blank text
    with open(root / "in" / "more.jsonl", "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "zz-rep", "text": "第一份记录的正文，与其他文档无关。"}, ensure_ascii=False) + "\n")
        handle.write("{not json\n")
        handle.write(json.dumps({"id": "zz-rep", "text": "a later record re-using the id"}) + "\n")
        handle.write(json.dumps({"id": "zz-blank", "text": "  "}) + "\n")
    write_params(root / "params.yaml", dedup=DEDUP_PARAMS)
    local_main(["--input", str(root / "in"), "--output", str(root / "local"), "--params", str(root / "params.yaml")])
    return root


def test_spark_equals_local_and_fixture_ids(spark, corpus_dir):
    from spark_jobs import dedup

    report = dedup.main(["--input", str(corpus_dir / "in"), "--output", str(corpus_dir / "spark3"), "--params", str(corpus_dir / "params.yaml"),
                         "--partitions", "3"])
    local_kept, local_rejected = _result(corpus_dir / "local")
    spark_kept, spark_rejected = _result(corpus_dir / "spark3")
    assert spark_kept == local_kept and spark_rejected == local_rejected
    assert EXPECTED_KEPT <= spark_kept
    assert {k: v for k, v in spark_rejected.items() if k in EXPECTED_REJECTED} == EXPECTED_REJECTED
    assert any(k.endswith("-copy") for k in spark_rejected)  # edited real documents were found
    assert spark_rejected["zz-rep"] == ("duplicate_id", "zz-rep", None) and "zz-rep" in spark_kept
    assert {v[0] for v in spark_rejected.values()} >= {"no_text", "invalid_json"}
    local_report = json.loads((corpus_dir / "local" / "stats.json").read_text())
    assert report["dedup"]["clusters"] == local_report["dedup"]["clusters"]
    assert report["dedup"]["num_verified_edges"] == local_report["dedup"]["num_verified_edges"]
    assert report["drop_reasons"] == local_report["drop_reasons"]


@pytest.mark.parametrize("partitions, broadcast_max_rows", [(1, None), (8, None), (3, 0)])
def test_partitioning_does_not_change_kept_set(spark, corpus_dir, partitions, broadcast_max_rows):
    """1, 3 or 8 partitions; 0 broadcast rows: every join that is broadcast by default shuffles,
    and the components come from large-star/small-star rounds, not one task's union-find."""
    from spark_jobs import dedup

    out = corpus_dir / f"spark{partitions}-{broadcast_max_rows}"
    if broadcast_max_rows is not None:
        spark.conf.set("spark.jinglian.broadcastMaxRows", str(broadcast_max_rows))
        spark.conf.set("spark.jinglian.localGraphMaxEdges", str(broadcast_max_rows))
    try:
        report = dedup.main(["--input", str(corpus_dir / "in"), "--output", str(out), "--params", str(corpus_dir / "params.yaml"),
                             "--partitions", str(partitions)])
    finally:
        spark.conf.unset("spark.jinglian.broadcastMaxRows")
        spark.conf.unset("spark.jinglian.localGraphMaxEdges")
    assert _result(out) == _result(corpus_dir / "local")
    local_report = json.loads((corpus_dir / "local" / "stats.json").read_text())
    assert report["dedup"]["clusters"] == local_report["dedup"]["clusters"]


def test_cluster_rows_match_union_find_and_keeper_rules():
    """One task's clustering: the smallest id names the component; an index member is kept,
    else the batch member of smallest (rank, id), NaN ranking last as in Spark."""
    from spark_jobs.corpus.dedup import cluster_rows

    edges = [("b", "c"), ("c", "d"), ("x", "y"), ("p", "q"), ("q", "r")]
    attrs = {"b": (2.0, False), "c": (1.0, False), "d": (1.0, False), "x": (float("nan"), False), "y": (5.0, False),
             "p": (0.0, False), "q": (None, True), "r": (None, True)}
    rows = cluster_rows(iter(edges), attrs).to_pylist()
    got = {r["id"]: (r["cluster_id"], r["keeper"], r["is_index"]) for r in rows}
    assert got == {"b": ("b", "c", False), "c": ("b", "c", False), "d": ("b", "c", False),
                   "x": ("x", "y", False), "y": ("x", "y", False),
                   "p": ("p", "q", False), "q": ("p", "q", True), "r": ("p", "q", True)}


def test_spark_against_index_equals_local(spark, tmp_path, data_dir):
    from spark_jobs import dedup

    docs = crafted_documents(data_dir)
    history = [d for d in docs if d.id in ("en-a", "zh-3", "en-d")]
    batch = [d for d in docs if d.id in ("en-b", "en-f", "zh-1", "p-1")] + [Document("new-copy", history[0].text.upper())]
    write_jsonl(history, tmp_path / "history" / "h.jsonl")
    write_jsonl(batch, tmp_path / "batch" / "b.jsonl")
    params = str(write_params(tmp_path / "params.yaml", dedup=DEDUP_PARAMS))
    for runner, tag in ((dedup.main, "spark"), (local_main, "local")):
        index = str(tmp_path / f"index-{tag}")
        runner(["--input", str(tmp_path / "history"), "--output", str(tmp_path / f"h-{tag}"), "--params", params, "--against", index, "--update-index"]
               + (["--partitions", "2"] if tag == "spark" else []))
        runner(["--input", str(tmp_path / "batch"), "--output", str(tmp_path / f"b-{tag}"), "--params", params, "--against", index, "--update-index"]
               + (["--partitions", "2"] if tag == "spark" else []))
    kept, rejected = _result(tmp_path / "b-spark")
    assert (kept, rejected) == _result(tmp_path / "b-local")
    assert kept == {"en-f", "zh-1", "p-1"}
    assert rejected == {"en-b": ("near_duplicate", "en-a", "en-a"), "new-copy": ("exact_duplicate", "en-a", None)}
    from etl.dedup.cluster import load_index

    assert sorted(load_index(tmp_path / "index-spark", DedupConfig(**DEDUP_PARAMS)).ids) == ["en-a", "en-d", "en-f", "p-1", "zh-1", "zh-3"]


def test_connected_components_match_union_find(spark):
    from spark_jobs.corpus.dedup import connected_components

    rng = random.Random(3)
    ids = [f"n{rng.randrange(10**6):06d}" for _ in range(300)]
    edges = {tuple(sorted(rng.sample(ids, 2))) for _ in range(220)}
    edges |= {(ids[i], ids[i + 1]) for i in range(100, 160)}  # a long chain
    uf = UnionFind()
    for a, b in edges:
        uf.union(a, b)
    expected = {m: root for root, members in uf.groups().items() for m in members}
    df = spark.createDataFrame(sorted(edges), "a string, b string")
    got = {r["id"]: r["cluster_id"] for r in connected_components(df, 60).collect()}
    assert got == expected


def test_stage_output_input_is_read_natively_and_already_deduplicated(spark, corpus_dir):
    """A previous stage's output (Parquet, read without the Python reader; the features are
    then derived in their own pass): deduplicating the local runner's output keeps all of it."""
    from etl.io.records import list_input_files
    from spark_jobs import dedup
    from spark_jobs.common import read_stage_parquet

    assert read_stage_parquet(spark, list_input_files([corpus_dir / "local"])) is not None
    out = corpus_dir / "again"
    report = dedup.main(["--input", str(corpus_dir / "local"), "--output", str(out), "--params", str(corpus_dir / "params.yaml"), "--partitions", "2"])
    kept, rejected = _result(out)
    assert kept == _result(corpus_dir / "local")[0] and rejected == {}
    assert report["num_rejected"] == 0 and report["dedup"]["num_live"] == len(kept)


@pytest.mark.parametrize("yours", [None, "true"])
def test_dedup_runs_without_adaptive_execution_unless_you_set_it(spark, corpus_dir, monkeypatch, yours):
    """``DEDUP.spark_conf``: adaptive query execution is off from the read to the write (same
    decisions as the local runner), a setting of yours wins, and the session is restored."""
    from etl.dedup.cluster import DEDUP
    from spark_jobs import common, dedup

    assert DEDUP.spark_conf == {"spark.sql.adaptive.enabled": "false"}
    seen = []
    write_records = common.write_records

    def spy(*args, **kwargs):  # the write, the stage's last Spark work
        seen.append(spark.conf.get("spark.sql.adaptive.enabled"))
        return write_records(*args, **kwargs)

    monkeypatch.setattr(common, "write_records", spy)
    if yours is not None:
        spark.conf.set("spark.sql.adaptive.enabled", yours)
    out = corpus_dir / f"adaptive-{yours}"
    try:
        report = dedup.main(["--input", str(corpus_dir / "in"), "--output", str(out), "--params", str(corpus_dir / "params.yaml"), "--partitions", "2"])
        assert seen == ["false" if yours is None else yours]
        assert spark.conf.get("spark.sql.adaptive.enabled") == (yours or "true")
        assert ("spark.sql.adaptive.enabled" in spark.conf.getAll) == (yours is not None)
    finally:
        spark.conf.unset("spark.sql.adaptive.enabled")
    assert _result(out) == _result(corpus_dir / "local")
    local_report = json.loads((corpus_dir / "local" / "stats.json").read_text())
    assert report["dedup"]["clusters"] == local_report["dedup"]["clusters"]
