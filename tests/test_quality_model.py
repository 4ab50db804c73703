"""The model-based quality filter (etl/quality_model): both kinds separate a labelled slice, the
stage annotates and rejects by threshold, scores do not depend on batching or partitioning,
Spark equals local, a missing or corrupt model directory is a one-line error.

The labelled slice: positives are the bundled corpora's documents (tests/data: English and
Chinese general text, medical domain text, expert text); negatives are one deterministic
corruption of each (shuffled words, mojibake, navigation boilerplate, keyword spam, number
tables; :func:`etl.quality_model.data.corrupt`).  The held-out part is chosen by id hash.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from etl.core.document import Document
from etl.quality_model.bert import random_bert
from etl.quality_model.classifier import ModelDirError, clear_cache, load_classifier, open_classifier
from etl.quality_model.config import QualityModelConfig, QualityTrainConfig
from etl.quality_model.data import LabelledSet, build_labelled, corrupt
from etl.quality_model.train import train_model

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ("general_en", "general_zh", "domain_medical", "expert")
#: Held-out AUC each kind must reach on the slice.
MIN_AUC = {"ngram": 0.9, "fasttext": 0.85, "bert": 0.75}
#: Small, fast settings: documents cut to 600 characters, a 2^18 hashed space, a tiny BERT.
TRAIN = QualityTrainConfig(max_chars=600, ngram_features=2**18, fasttext_epochs=25, bert_epochs=6, bert_lr=1e-3,
                           bert_batch_size=16, bert_max_tokens=96, holdout_frac=0.25)


def _docs(data_dir: Path, per_corpus: int) -> list[Document]:
    docs = []
    for name in CORPORA:
        lines = (data_dir / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:per_corpus]
        for line in lines:
            rec = json.loads(line)
            docs.append(Document(id=rec["id"], text=rec["text"], domain=rec.get("domain") or "general"))
    return docs


def labelled_slice(data_dir: Path, per_corpus: int = 60) -> LabelledSet:
    positive = _docs(data_dir, per_corpus)
    negative = [corrupt(doc, seed=0) for doc in positive]
    return build_labelled(positive, negative, TRAIN.holdout_frac, TRAIN.seed)


def _tiny_bert(out: Path, texts: list[str]) -> Path:
    return random_bert(out, texts, vocab_size=800, hidden=32, layers=2, heads=2, ffn=64, max_positions=128, min_frequency=1)


@pytest.fixture(scope="module")
def labelled(data_dir) -> LabelledSet:
    return labelled_slice(data_dir)


@pytest.fixture(scope="module")
def models(tmp_path_factory, labelled) -> dict[str, tuple[Path, dict]]:
    """kind -> (model directory, manifest), trained once for the module."""
    root = tmp_path_factory.mktemp("quality_models")
    kinds = ["ngram", "bert"]
    try:
        import fasttext  # noqa: F401

        kinds.append("fasttext")
    except ImportError:
        pass
    out = {}
    for kind in kinds:
        train = dataclasses.replace(TRAIN, kind=kind)
        if kind == "bert":
            train = dataclasses.replace(train, bert_base=str(_tiny_bert(root / "tiny-bert", labelled.texts)))
        config = QualityModelConfig(train=train, device="cpu")
        out[kind] = (root / kind, train_model(labelled, config, root / kind))
    return out


@pytest.mark.parametrize("kind", ["ngram", "fasttext", "bert"])
def test_each_kind_separates_held_out_slice(models, labelled, kind):
    if kind not in models:
        pytest.skip("fasttext is not installed (pip install fasttext-numpy2-wheel)")
    path, manifest = models[kind]
    counts = manifest["counts"]
    assert counts["holdout_pos"] >= 40 and counts["holdout_neg"] >= 40
    assert manifest["metrics"]["auc"] > MIN_AUC[kind], manifest["metrics"]
    # the figures are recomputable from the saved model: load it and score the held-out part again
    texts, labels = labelled.part(True)
    from sklearn.metrics import roc_auc_score

    scores = open_classifier(path, device="cpu").score(texts)
    assert round(roc_auc_score(labels, scores), 4) == pytest.approx(manifest["metrics"]["auc"], abs=1e-4)
    assert (path / "calibration.png").stat().st_size > 1000
    figures = json.loads((path / "metrics.json").read_text())["holdout"]
    assert sum(row["num_docs"] for row in figures["calibration"]) == counts["holdout_pos"] + counts["holdout_neg"]


@pytest.mark.parametrize("kind", ["ngram", "fasttext", "bert"])
def test_scores_do_not_depend_on_batching(models, labelled, kind):
    if kind not in models:
        pytest.skip("fasttext is not installed")
    clf = open_classifier(models[kind][0], device="cpu")
    texts = labelled.texts[:48]
    together = clf.score(texts)
    one_by_one = np.concatenate([clf.score([t]) for t in texts])
    order = np.random.default_rng(0).permutation(len(texts))
    shuffled = np.empty(len(texts))
    shuffled[order] = clf.score([texts[i] for i in order])
    tol = 1e-5 if kind == "bert" else 0.0  # BERT: padding changes float rounding only
    np.testing.assert_allclose(one_by_one, together, atol=tol, rtol=0)
    np.testing.assert_allclose(shuffled, together, atol=tol, rtol=0)
    assert together.min() >= 0.0 and together.max() <= 1.0


def _write_corpus(path: Path, labelled: LabelledSet) -> Path:
    rows = [{"id": i, "text": t, "domain": "science" if i.startswith("csl-") else "general"}
            for i, t, h in zip(labelled.ids, labelled.texts, labelled.holdout) if h]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(out: Path) -> dict[str, dict]:
    rows = {}
    for part in ("kept", "rejected"):
        for file in sorted((out / part).glob("*.parquet")):
            for row in pq.read_table(file).to_pylist():
                rows[row["id"]] = {"part": part, "meta": json.loads(row["meta"]), "text": row["text"]}
    return rows


def test_stage_annotates_and_rejects_below_threshold(models, labelled, tmp_path):
    from etl.quality_model.cli import main

    corpus = _write_corpus(tmp_path / "in.jsonl", labelled)
    model = str(models["ngram"][0])
    report = main(["--input", str(corpus), "--output", str(tmp_path / "out"), "--model", model, "--no-progress"])
    rows = _read(tmp_path / "out")
    assert len(rows) == report["num_in"] == sum(labelled.holdout)
    for doc_id, row in rows.items():
        score = row["meta"]["quality_score"]
        assert (row["part"] == "kept") == (score >= 0.7), (doc_id, score)
        if row["part"] == "rejected":
            assert row["meta"]["drop_reason"] == "low_quality_score" and row["meta"]["quality_threshold"] == 0.7
    assert report["drop_reasons"] == {"low_quality_score": report["num_rejected"]}
    # at 0.7, most corruptions go and most originals stay
    neg = [r for i, r in rows.items() if "#lq-" in i]
    pos = [r for i, r in rows.items() if "#lq-" not in i]
    assert sum(r["part"] == "rejected" for r in neg) / len(neg) > 0.75
    assert sum(r["part"] == "kept" for r in pos) / len(pos) > 0.6
    # two workers and a different threshold with a per-domain override
    params = tmp_path / "params.yaml"
    params.write_text("quality_model:\n  threshold: 0.5\n  domain_thresholds: {science: 0.95}\n  batch_size: 7\n")
    main(["--input", str(corpus), "--output", str(tmp_path / "out2"), "--model", model, "--params", str(params),
          "--workers", "2", "--no-progress"])
    rows2 = _read(tmp_path / "out2")
    assert {i: r["meta"]["quality_score"] for i, r in rows2.items()} == {i: r["meta"]["quality_score"] for i, r in rows.items()}
    science = [i for i in rows2 if i.startswith("csl-")]
    assert science, "the slice has science documents"
    for doc_id, row in rows2.items():
        threshold = 0.95 if doc_id in science else 0.5
        assert (row["part"] == "kept") == (row["meta"]["quality_score"] >= threshold), doc_id


def test_params_hash_keeps_the_model_path_as_given_while_workers_get_it_absolute(models, tmp_path, monkeypatch):
    import shutil

    from etl.core.stage import base_stats, resolve_run, stage_parser
    from etl.quality_model.stage import QUALITY_MODEL

    runs = []
    for checkout in ("a", "b"):  # the same relative --model in two checkouts (as DVC runs it)
        root = tmp_path / checkout
        shutil.copytree(models["ngram"][0], root / "models" / "quality")
        (root / "in").write_text('{"id": "a", "text": "x"}\n', encoding="utf-8")
        monkeypatch.chdir(root)
        args = stage_parser(QUALITY_MODEL, "q").parse_args(["--input", "in", "--output", "out", "--model", "models/quality"])
        runs.append(resolve_run(QUALITY_MODEL, args, "local"))
        assert runs[-1].config.model == str(root / "models" / "quality")
    assert base_stats(runs[0])["params_hash"] == base_stats(runs[1])["params_hash"]
    args = stage_parser(QUALITY_MODEL, "q").parse_args(["--input", "in", "--output", "out", "--model", "models/quality", "--threshold", "0.6"])
    assert base_stats(resolve_run(QUALITY_MODEL, args, "local"))["params_hash"] != base_stats(runs[1])["params_hash"]


def test_disabled_stage_passes_everything(labelled, tmp_path):
    from etl.quality_model.cli import main

    corpus = _write_corpus(tmp_path / "in.jsonl", labelled)
    params = tmp_path / "params.yaml"
    params.write_text("quality_model:\n  enabled: false\n  model: does/not/exist\n")
    report = main(["--input", str(corpus), "--output", str(tmp_path / "out"), "--params", str(params), "--no-progress"])
    assert report["num_rejected"] == 0 and report["num_kept"] == sum(labelled.holdout)
    assert all("quality_score" not in r["meta"] for r in _read(tmp_path / "out").values())


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl.quality_model", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_missing_or_corrupt_model_dir_is_one_line_error(models, labelled, tmp_path):
    import shutil

    corpus = _write_corpus(tmp_path / "in.jsonl", labelled)
    missing = tmp_path / "no-model"
    broken = {}
    for name, damage in [("manifest", lambda p: (p / "manifest.json").write_text("{not json")),
                         ("no_manifest", lambda p: (p / "manifest.json").unlink()),
                         ("weights", lambda p: (p / "weights.npz").write_bytes(b"PK\x03\x04 truncated")),
                         ("kind", lambda p: (p / "manifest.json").write_text(json.dumps(
                             {**json.loads((p / "manifest.json").read_text()), "kind": "svm"})))]:
        path = tmp_path / f"broken-{name}"
        shutil.copytree(models["ngram"][0], path)
        damage(path)
        broken[name] = path
    expected = {"missing": "does not exist", "manifest": "corrupt manifest", "no_manifest": "has no manifest.json",
                "weights": "cannot load its files", "kind": "field 'kind' is 'svm'"}
    for name, path in [("missing", missing), *broken.items()]:
        with pytest.raises(ModelDirError, match=expected[name]):
            clear_cache()
            load_classifier(path)
        proc = _run(["--input", str(corpus), "--output", str(tmp_path / f"out-{name}"), "--model", str(path)], ROOT)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("jinglian: "), (name, proc.stderr)
        assert expected[name] in lines[0] and str(path) in lines[0]
        assert not (tmp_path / f"out-{name}").exists()


def test_train_command_writes_model_dir(data_dir, tmp_path):
    """The train command end to end: sets from files, --synthesize-negatives, --positive-domains."""
    from etl.quality_model.train import main

    params = tmp_path / "params.yaml"
    params.write_text("quality_model:\n  train:\n    max_chars: 400\n    ngram_features: 65536\n")
    manifest = main(["--positive", str(data_dir / "domain_medical.jsonl"), str(data_dir / "general_en.jsonl"),
                     "--negative", str(data_dir / "html_pages.jsonl"), "--synthesize-negatives",
                     "--positive-domains", "medical,general", "--params", str(params), "--out", str(tmp_path / "m")])
    assert manifest["kind"] == "ngram" and manifest["threshold"] == 0.7 and manifest["labels"] == ["lq", "hq"]
    assert manifest["settings"]["max_chars"] == 400 and manifest["settings"]["features"] == 65536
    on_disk = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert on_disk["metrics"]["auc"] == manifest["metrics"]["auc"] > 0.8
    assert {"weights.npz", "metrics.json", "calibration.png", "manifest.json"} <= {p.name for p in (tmp_path / "m").iterdir()}


def test_config_validation_names_field():
    with pytest.raises(ValueError, match=r"quality_model.threshold must be in \[0, 1\], got 1.5"):
        QualityModelConfig(threshold=1.5)
    with pytest.raises(ValueError, match="quality_model.domain_thresholds.expert"):
        QualityModelConfig(domain_thresholds={"expert": -0.1})
    with pytest.raises(ValueError, match="quality_model.train.kind must be one of"):
        QualityTrainConfig(kind="svm")
    assert QualityModelConfig(domain_thresholds={"expert": 0.5}).threshold_for("expert") == 0.5
    assert QualityModelConfig().threshold_for("general") == 0.7


def test_held_out_split_follows_the_id_not_the_order(data_dir):
    positive = _docs(data_dir, 20)
    negative = [corrupt(doc) for doc in positive]
    a = build_labelled(positive, negative, 0.3, 0)
    b = build_labelled(positive[::-1], negative[::-1], 0.3, 0)
    assert dict(zip(a.ids, a.holdout)) == dict(zip(b.ids, b.holdout))
    # a corruption sits on the same side as its parent
    side = dict(zip(a.ids, a.holdout))
    assert all(side[d.id] == side[d.meta["parent_id"]] for d in negative)
    assert corrupt(positive[0]).text == corrupt(positive[0]).text


@pytest.mark.spark
def test_spark_equals_local_any_partitioning(models, labelled, tmp_path, spark):
    from etl.quality_model.cli import main as local_main
    from spark_jobs.quality_filter import main as spark_main

    corpus = _write_corpus(tmp_path / "in.jsonl", labelled)
    for kind in ("ngram", "bert"):
        model = str(models["ngram"][0])
        local_main(["--input", str(corpus), "--output", str(tmp_path / f"local-{kind}"), "--model", model, "--no-progress"])
        local = _read(tmp_path / f"local-{kind}")
        for partitions in (1, 3):
            out = tmp_path / f"spark-{kind}-{partitions}"
            report = spark_main(["--input", str(corpus), "--output", str(out), "--model", model, "--partitions", str(partitions)])
            got = _read(out)
            assert report["num_in"] == len(local) and set(got) == set(local)
            assert {i: r["part"] for i, r in got.items()} == {i: r["part"] for i, r in local.items()}, (kind, partitions)
            tol = 2e-6 if kind == "bert" else 0.0  # BERT: other batches, other float rounding (below the 6 digits kept)
            for doc_id, row in got.items():
                assert abs(row["meta"]["quality_score"] - local[doc_id]["meta"]["quality_score"]) <= tol, (kind, doc_id)


def test_ngram_blocks_are_normalised_apart_and_older_one_block_models_still_score(labelled):
    from scipy.sparse.linalg import norm as sparse_norm
    from sklearn.feature_extraction.text import HashingVectorizer

    from etl.quality_model.ngram import NgramClassifier, feature_blocks, ngram_settings, vectorizer

    settings = ngram_settings(dataclasses.replace(TRAIN, ngram_features=2**16))
    text = next(t for t in labelled.texts if len(t) > 200)
    words, chars = feature_blocks(text, settings)
    assert words and len(chars) > 3 * len(words)  # why the blocks are normalised apart
    only_words = vectorizer({**settings, "char_weight": 0.0}).transform([text])
    both = vectorizer(settings).transform([text])
    assert abs(sparse_norm(only_words) - 1.0) < 1e-9  # the word block alone has unit norm, whatever the chars
    assert abs(sparse_norm(both - only_words) - settings["char_weight"]) < 1e-9
    legacy = {k: v for k, v in settings.items() if k not in ("block_norm", "char_weight")}
    assert isinstance(vectorizer(legacy), HashingVectorizer)  # a manifest from before: scored as trained
    weights = np.random.default_rng(0).normal(size=settings["features"])
    clf = NgramClassifier(legacy, weights, 0.1)
    one_block = HashingVectorizer(analyzer=lambda t: words + chars, n_features=settings["features"], alternate_sign=True, norm="l2")
    assert np.allclose(clf.decision([text]), one_block.transform([text]) @ weights + 0.1)
