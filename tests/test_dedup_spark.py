"""The Spark dedup job: same kept set as the local runner, for any partitioning, and with an index."""
from __future__ import annotations

import contextlib
import json
import random

import numpy as np
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


@contextlib.contextmanager
def _spark_conf(spark, **settings):
    """``spark.jinglian.<key>`` settings for one block (None: left at its default)."""
    chosen = {f"spark.jinglian.{k}": str(v) for k, v in settings.items() if v is not None}
    for key, value in chosen.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key in chosen:
            spark.conf.unset(key)


@pytest.mark.parametrize("one_task", [True, False])
def test_spark_equals_local_and_fixture_ids(spark, corpus_dir, monkeypatch, one_task):
    """Both of the Spark job's paths: one task running the local rules on the features (the
    default for a corpus this small) and the distributed graph (``localDedupMaxDocs`` 0)."""
    from spark_jobs import dedup
    from spark_jobs.corpus import dedup as corpus_dedup

    calls = []
    one_task_marks = corpus_dedup.one_task_marks
    monkeypatch.setattr(corpus_dedup, "one_task_marks", lambda *a, **k: calls.append(1) or one_task_marks(*a, **k))
    out = corpus_dir / f"spark3-{one_task}"
    with _spark_conf(spark, localDedupMaxDocs=None if one_task else 0):
        report = dedup.main(["--input", str(corpus_dir / "in"), "--output", str(out), "--params", str(corpus_dir / "params.yaml"),
                             "--partitions", "3"])
    assert bool(calls) == one_task
    local_kept, local_rejected = _result(corpus_dir / "local")
    spark_kept, spark_rejected = _result(out)
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


@pytest.mark.parametrize("partitions, broadcast_max_rows, one_task_max", [(1, None, None), (8, None, 0), (3, 0, 0)])
def test_partitioning_does_not_change_kept_set(spark, corpus_dir, partitions, broadcast_max_rows, one_task_max):
    """1, 3 or 8 partitions, the one-task path and the distributed one; 0 broadcast rows:
    every join that is broadcast by default shuffles, the components come from
    large-star/small-star rounds, not one task's union-find, and each band's keys are cut
    into slices of 5 keys, bucketed by separate tasks."""
    from spark_jobs import dedup

    out = corpus_dir / f"spark{partitions}-{broadcast_max_rows}-{one_task_max}"
    shuffled = {} if broadcast_max_rows is None else {"broadcastMaxRows": broadcast_max_rows, "localGraphMaxEdges": broadcast_max_rows,
                                                      "bucketSliceKeys": 5}
    with _spark_conf(spark, localDedupMaxDocs=one_task_max, **shuffled):
        report = dedup.main(["--input", str(corpus_dir / "in"), "--output", str(out), "--params", str(corpus_dir / "params.yaml"),
                             "--partitions", str(partitions)])
    assert _result(out) == _result(corpus_dir / "local")
    local_report = json.loads((corpus_dir / "local" / "stats.json").read_text())
    assert report["dedup"]["clusters"] == local_report["dedup"]["clusters"]


def test_both_spark_paths_write_the_same_bytes(spark, corpus_dir):
    """The one-task path and the distributed one give byte-identical part files and the same
    stats.json: same marks, applied and written by the same code."""
    from spark_jobs import dedup

    for name, max_docs in (("paths-one", None), ("paths-dist", 0)):
        with _spark_conf(spark, localDedupMaxDocs=max_docs):
            dedup.main(["--input", str(corpus_dir / "in"), "--output", str(corpus_dir / name), "--params", str(corpus_dir / "params.yaml"),
                        "--partitions", "2"])
    one, dist = corpus_dir / "paths-one", corpus_dir / "paths-dist"
    files = sorted(p.relative_to(one) for p in one.rglob("*.parquet"))
    assert files and files == sorted(p.relative_to(dist) for p in dist.rglob("*.parquet"))
    assert all((one / f).read_bytes() == (dist / f).read_bytes() for f in files)
    stats = [json.loads((d / "stats.json").read_text()) for d in (one, dist)]  # wall times live in timing.json
    assert stats[0] == stats[1] and stats[0]["dedup"]["num_verified_edges"] > 0


def test_band_blobs_round_trip_the_ids_and_keys():
    """A batch's band blobs hold, per band and key slice, exactly its documents' band keys and ids."""
    import pyarrow as pa

    from etl.dedup import minhash_jit
    from etl.dedup.cluster import matrix_rows_as_binary
    from spark_jobs.corpus.dedup import _strings_from_buffers, band_blobs_fn

    rng = np.random.default_rng(1)
    sigs = rng.integers(0, 2**32, (30, 16), dtype=np.uint32)
    ids = pa.array([f"doc-{i}-{'数' * (i % 3)}" for i in range(30)])
    batch = pa.RecordBatch.from_arrays([ids, matrix_rows_as_binary(sigs), pa.array([i % 4 == 0 for i in range(30)])],
                                       names=["id", "signature", "is_index"])
    keys = minhash_jit.band_keys(sigs, 4, 4)
    for slices, blob_docs in ((1, 100), (3, 100), (2, 7)):
        out = list(band_blobs_fn(4, 4, 16, slices, blob_docs)(iter([batch.slice(0, 10), batch.slice(10, 10), batch.slice(20)])))
        assert len(out) == (1 if blob_docs > 30 else 3)  # batches gathered up to blob_docs documents
        seen = set()
        for row in (r for b in out for r in b.to_pylist()):
            got_ids = _strings_from_buffers(row["id_offsets"], row["id_bytes"]).to_pylist()
            got_keys = np.frombuffer(row["keys"], dtype=np.int64)
            flags = np.frombuffer(row["is_index"], dtype=np.uint8)
            assert all(k % slices == row["slice"] for k in got_keys)
            for doc_id, key, flag in zip(got_ids, got_keys, flags):
                i = int(doc_id.split("-")[1])
                assert keys[i, row["band"]] == key and bool(flag) == (i % 4 == 0)
                seen.add((row["band"], i))
        assert seen == {(b, i) for b in range(4) for i in range(30)}


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


@pytest.mark.parametrize("one_task_max", [None, 0])
def test_spark_against_index_equals_local(spark, tmp_path, data_dir, one_task_max):
    from spark_jobs import dedup

    docs = crafted_documents(data_dir)
    history = [d for d in docs if d.id in ("en-a", "zh-3", "en-d")]
    batch = [d for d in docs if d.id in ("en-b", "en-f", "zh-1", "p-1")] + [Document("new-copy", history[0].text.upper())]
    write_jsonl(history, tmp_path / "history" / "h.jsonl")
    write_jsonl(batch, tmp_path / "batch" / "b.jsonl")
    params = str(write_params(tmp_path / "params.yaml", dedup=DEDUP_PARAMS))
    def spark_main(argv):
        with _spark_conf(spark, localDedupMaxDocs=one_task_max):
            return dedup.main(argv)

    for runner, tag in ((spark_main, "spark"), (local_main, "local")):
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
