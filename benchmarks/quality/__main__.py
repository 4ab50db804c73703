"""Quality-model benchmark: speed and held-out quality of each kind, against DataTrove's fastText
filter and a plain scikit-learn pipeline, in the same run on the same documents.

    python -m benchmarks.quality [--corpora ../shared/corpora] [--max-docs 400] [--kinds ngram fasttext bert] [--scales 1 2 4]

Labelled set: the corpora's documents (English and Chinese general text, medical, expert) are
the positives; one deterministic corruption of each (``etl.quality_model.data.corrupt``:
shuffled words, mojibake, boilerplate, keyword spam, number tables) is its negative; 20% is
held out by id hash.  Reported per kind: training time, documents/s per core when scoring (one
process, one thread), precision/recall/AUC at 0.7 on the held-out part.  Baselines:

* ``datatrove_fasttext``: DataTrove's ``FastTextClassifierFilter`` loading the fastText kind's
  own ``model.bin`` (same file), on the same held-out documents, fed the same shared-tokenizer
  lines; its keep decisions are compared with jinglian's;
* ``sklearn_plain``: scikit-learn's stock ``HashingVectorizer`` (its word and ``char_wb`` analysers,
  no jieba) + ``LogisticRegression``: what the n-gram kind adds with the shared tokenizer.

Scaling: scoring time and peak Python memory (tracemalloc) at 1x..4x the documents.  BERT: a
small BERT (4 layers, 128 wide) with a WordPiece vocabulary trained on the training part, from
random weights (no hub access here), or ``--bert-base DIR`` for a real checkpoint.
Results go to benchmarks/results/quality.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from etl.core.document import Document
from etl.io.records import read_inputs
from etl.quality_model.bert import random_bert
from etl.quality_model.classifier import open_classifier
from etl.quality_model.config import QualityModelConfig, QualityTrainConfig
from etl.quality_model.data import LabelledSet, build_labelled, corrupt
from etl.quality_model.metrics import evaluate
from etl.quality_model.train import train_model

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ("general_en", "general_zh", "domain_medical", "expert")
THRESHOLD = 0.7


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"),
                   help="directory with general_en/general_zh/domain_medical/expert.jsonl (default: /work/shared/corpora)")
    p.add_argument("--max-docs", type=int, default=400, help="documents per corpus (default: 400, so 1600 positives)")
    p.add_argument("--kinds", nargs="+", default=["ngram", "fasttext", "bert"], choices=["ngram", "fasttext", "bert"],
                   help="kinds to train and measure")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="data multiples for the scaling run")
    p.add_argument("--max-chars", type=int, default=2000, help="characters of each document the models read")
    p.add_argument("--bert-base", default=None, help="a BERT checkpoint to fine-tune (default: a small random BERT built here)")
    p.add_argument("--bert-epochs", type=int, default=3, help="BERT fine-tuning epochs")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "quality.json"), help="where the results go")
    return p.parse_args(argv)


def labelled_set(corpora: Path, max_docs: int) -> LabelledSet:
    positive: list[Document] = []
    for name in CORPORA:
        positive.extend([d for d in read_inputs([corpora / f"{name}.jsonl"]) if not d.dropped and d.text.strip()][:max_docs])
    return build_labelled(positive, [corrupt(d, seed=0) for d in positive], 0.2, 0)


def small_bert(out: Path, texts: list[str]) -> str:
    """A random 4x128 BERT with a WordPiece vocabulary trained on ``texts`` (no hub download)."""
    return str(random_bert(out, texts, vocab_size=8000, hidden=128, layers=4, heads=4, ffn=512, max_positions=512))


def time_scoring(clf, texts: list[str]) -> dict:
    clf.score(texts[:8])  # warm up (jieba dictionary, first torch call)
    start = time.perf_counter()
    scores = clf.score(texts)
    elapsed = time.perf_counter() - start
    return {"docs": len(texts), "s": round(elapsed, 3), "docs_per_s_per_core": round(len(texts) / elapsed, 1),
            "mb_per_s_per_core": round(sum(len(t.encode()) for t in texts) / 1e6 / elapsed, 3)}, scores


def scaling(clf, texts: list[str], scales: list[int]) -> list[dict]:
    rows = []
    for k in scales:
        batch = texts * k
        tracemalloc.start()
        start = time.perf_counter()
        for i in range(0, len(batch), 64):  # the stage's batch size
            clf.score(batch[i:i + 64])
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append({"scale": k, "docs": len(batch), "s": round(elapsed, 3), "peak_python_mb": round(peak / 1e6, 2)})
    base = rows[0]
    for row in rows:
        row["time_ratio"] = round(row["s"] / base["s"], 2)
        row["memory_ratio"] = round(row["peak_python_mb"] / max(base["peak_python_mb"], 1e-9), 2)
    return rows


def run_kind(kind: str, data: LabelledSet, args, tmp: Path) -> tuple[dict, object]:
    train = QualityTrainConfig(kind=kind, max_chars=args.max_chars, bert_epochs=args.bert_epochs, bert_max_tokens=256,
                               bert_lr=5e-4 if not args.bert_base else 5e-5)
    if kind == "bert":
        train = dataclasses.replace(train, bert_base=args.bert_base or small_bert(tmp / "small-bert", data.part(False)[0]))
    started = time.perf_counter()
    manifest = train_model(data, QualityModelConfig(train=train, threshold=THRESHOLD), tmp / kind)
    train_s = round(time.perf_counter() - started, 2)
    clf = open_classifier(tmp / kind, device="cpu")
    texts, labels = data.part(True)
    speed, scores = time_scoring(clf, texts)
    return {"train_s": train_s, "scoring": speed,
            "holdout": {k: v for k, v in evaluate(labels, scores, THRESHOLD).items() if k != "calibration"},
            "scaling": scaling(clf, texts[:200], args.scales), "settings": manifest["settings"]}, clf


def datatrove_fasttext(model_dir: Path, data: LabelledSet, ours) -> dict:
    """DataTrove's filter on the fastText kind's model.bin, on the same (shared-tokenizer) lines."""
    from datatrove.data import Document as DTDocument
    from datatrove.pipeline.filters import FastTextClassifierFilter

    from etl.quality_model.fasttext import fasttext_line

    texts, labels = data.part(True)
    start = time.perf_counter()
    lines = [fasttext_line(t, ours.settings["max_chars"]) for t in texts]
    tokenize_s = time.perf_counter() - start
    filt = FastTextClassifierFilter(str(model_dir / "model.bin"), keep_labels=("hq", THRESHOLD), save_labels_in_metadata=True)
    filt.filter(DTDocument(text=lines[0], id="warm"))
    docs = [DTDocument(text=line, id=str(i)) for i, line in enumerate(lines)]
    start = time.perf_counter()
    keep = [bool(filt.filter(d)) for d in docs]
    dt_s = time.perf_counter() - start
    dt_scores = np.array([d.metadata.get("__label__hq", 0.0) for d in docs])
    our_scores = ours.score(texts)
    return {"docs": len(texts), "filter_s": round(dt_s, 3), "docs_per_s_per_core": round(len(texts) / dt_s, 1),
            "tokenize_s": round(tokenize_s, 3),
            "docs_per_s_per_core_with_tokenization": round(len(texts) / (dt_s + tokenize_s), 1),
            "decision_agreement_with_jinglian": round(float(np.mean(np.array(keep) == (our_scores >= THRESHOLD))), 4),
            "max_abs_score_difference": round(float(np.max(np.abs(dt_scores - our_scores))), 6),
            "holdout": {k: v for k, v in evaluate(labels, dt_scores, THRESHOLD).items() if k != "calibration"}}


def sklearn_plain(data: LabelledSet, max_chars: int) -> dict:
    """Stock scikit-learn: word 1-2-grams and char_wb 2-4-grams hashed, logistic regression."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression

    words = HashingVectorizer(ngram_range=(1, 2), n_features=2**20)
    chars = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), n_features=2**20)

    def features(texts):
        cut = [t[:max_chars] for t in texts]
        return hstack([words.transform(cut), chars.transform(cut)]).tocsr()

    texts, labels = data.part(False)
    start = time.perf_counter()
    model = LogisticRegression(C=4.0, solver="liblinear", class_weight="balanced").fit(features(texts), labels)
    train_s = time.perf_counter() - start
    texts, labels = data.part(True)
    start = time.perf_counter()
    scores = model.predict_proba(features(texts))[:, 1]
    elapsed = time.perf_counter() - start
    return {"train_s": round(train_s, 2), "docs_per_s_per_core": round(len(texts) / elapsed, 1),
            "holdout": {k: v for k, v in evaluate(labels, scores, THRESHOLD).items() if k != "calibration"}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # per-core figures
    data = labelled_set(Path(args.corpora), args.max_docs)
    results = {"env": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": 1,
                       "note": "shared 2-core machine; figures are per core, one process"},
               "labelled_set": data.counts(), "threshold": THRESHOLD, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        clfs = {}
        for kind in args.kinds:
            print(f"[benchmarks.quality] {kind} ...", flush=True)
            results["kinds"][kind], clfs[kind] = run_kind(kind, data, args, Path(tmp))
            print(json.dumps({kind: {k: v for k, v in results["kinds"][kind].items() if k != "scaling"}}), flush=True)
        if "fasttext" in clfs:
            results["datatrove_fasttext"] = datatrove_fasttext(Path(tmp) / "fasttext", data, clfs["fasttext"])
            print(json.dumps({"datatrove_fasttext": results["datatrove_fasttext"]}), flush=True)
    results["sklearn_plain"] = sklearn_plain(data, args.max_chars)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"[benchmarks.quality] wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
