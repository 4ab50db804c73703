"""``python -m etl.quality_model train``: fit a quality classifier, evaluate it on a held-out
split, write the model directory atomically (manifest, the kind's files, metrics.json,
calibration.png).

    python -m etl.quality_model train --positive <paths> --negative <paths> --kind ngram|fasttext|bert --out models/quality
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etl.core.atomic import atomic_dir, write_json
from etl.core.cli import ArgumentParser
from etl.core.config import load_params, load_section
from etl.core.errors import JinglianError
from etl.quality_model.classifier import FORMAT, LABELS, MANIFEST, VERSION, classifier_class
from etl.quality_model.config import KINDS, QualityModelConfig
from etl.quality_model.data import LabelledSet, build_labelled, corrupt, read_negative, read_positive
from etl.quality_model.metrics import evaluate, plot_calibration

logger = logging.getLogger(__name__)
OUTPUT_KIND = "quality_model"


def train_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m etl.quality_model train",
                            description="Train a quality classifier on positive (high-quality) and negative documents; "
                                        "evaluate it on a held-out split; write the model directory.")
    parser.add_argument("--positive", nargs="+", required=True, metavar="PATH",
                        help="high-quality documents: files, directories or globs (a stage output: its kept/)")
    parser.add_argument("--negative", nargs="+", required=True, metavar="PATH",
                        help="low-quality documents (e.g. a stage's rejected/ directory, given explicitly)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="model directory to write (atomically; an existing one is replaced only if jinglian wrote it)")
    parser.add_argument("--kind", choices=KINDS, default=None, help="classifier kind (default: quality_model.train.kind)")
    parser.add_argument("--base", default=None, metavar="DIR_OR_HUB_ID",
                        help="bert: the model to fine-tune (default: quality_model.train.bert_base)")
    parser.add_argument("--params", default=None, metavar="YAML", help="params file (default: the repository's params.yaml, or the copy installed with jinglian)")
    parser.add_argument("--positive-domains", default="", metavar="A,B",
                        help="keep only positives of these domains (e.g. domain,expert: the curated sources)")
    parser.add_argument("--negative-reasons", default="", metavar="PREFIX,...",
                        help="keep only negatives rejected with a drop_reason starting with one of these (e.g. gopher_,c4_,dup_)")
    parser.add_argument("--synthesize-negatives", action="store_true",
                        help="add one corrupted copy of each positive as a negative (shuffled words, mojibake, boilerplate, "
                             "spam, number tables): for corpora with too few rule rejects, such as the offline demo")
    parser.add_argument("--threshold", type=float, default=None,
                        help="threshold the held-out precision/recall are computed at (default: quality_model.threshold)")
    parser.add_argument("--device", default=None, help="bert: auto, cpu or cuda (default: quality_model.device)")
    return parser


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def resolve_config(args: argparse.Namespace) -> QualityModelConfig:
    """The ``quality_model`` section with the command's overrides."""
    config = load_section(load_params(args.params), "quality_model")
    train = config.train
    if args.kind:
        train = dataclasses.replace(train, kind=args.kind)
    if args.base:
        train = dataclasses.replace(train, bert_base=args.base)
    over: dict[str, Any] = {"train": train}
    if args.threshold is not None:
        over["threshold"] = args.threshold
    if args.device:
        over["device"] = args.device
    try:
        return dataclasses.replace(config, **over)
    except ValueError as exc:
        raise JinglianError(f"command line: {exc}") from None


def load_training_set(args: argparse.Namespace, config: QualityModelConfig) -> LabelledSet:
    """The labelled set the flags describe (see :mod:`etl.quality_model.data`)."""
    reader = load_section(load_params(args.params), "read")
    positive = read_positive(args.positive, reader, _csv(args.positive_domains))
    negative = read_negative(args.negative, reader, _csv(args.negative_reasons))
    if args.synthesize_negatives:
        negative += [corrupt(doc, config.train.seed) for doc in positive]
    logger.info("labelled set: %d positive, %d negative documents", len(positive), len(negative))
    return build_labelled(positive, negative, config.train.holdout_frac, config.train.seed)


def fit(kind: str, texts: list[str], labels: list[int], config: QualityModelConfig):
    """Fit a classifier of ``kind``."""
    cls = classifier_class(kind)
    if kind == "bert":
        return cls.fit(texts, labels, config.train, device=config.device, dtype=config.dtype)
    return cls.fit(texts, labels, config.train)


def train_model(data: LabelledSet, config: QualityModelConfig, out: str | Path) -> dict[str, Any]:
    """Fit on the training part, evaluate on the held-out part, write the model directory; returns the manifest."""
    kind = config.train.kind
    started = time.time()
    clf = fit(kind, *data.part(False), config)
    train_s = time.time() - started
    texts, labels = data.part(True)
    started = time.time()
    scores = clf.score(texts)
    score_s = time.time() - started
    figures = evaluate(labels, scores, config.threshold)
    manifest = {
        "format": FORMAT, "version": VERSION, "kind": kind, "labels": list(LABELS), "threshold": config.threshold,
        "settings": clf.settings, "train": dataclasses.asdict(config.train), "counts": data.counts(),
        "metrics": {k: v for k, v in figures.items() if k != "calibration"},
        "python": platform.python_version(),
    }
    # Timings are logged, not written: the model directory is a DVC output and must have the
    # same bytes for the same data and settings.
    logger.info("trained in %.2f s; scored the held-out split at %.1f docs/s", train_s, len(texts) / max(score_s, 1e-9))
    with atomic_dir(out, kind=OUTPUT_KIND) as tmp:
        clf.save(tmp)
        write_json(tmp / "metrics.json", {"holdout": figures, "counts": data.counts()})
        plot_calibration(figures, tmp / "calibration.png", f"{kind} quality model, held-out split")
        write_json(tmp / MANIFEST, manifest)  # last: a directory with a manifest is complete
    return manifest


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m etl.quality_model train``; returns the manifest."""
    args = train_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = resolve_config(args)
    manifest = train_model(load_training_set(args, config), config, args.out)
    m = manifest["metrics"]
    print(f"[quality_model train] kind={manifest['kind']} {manifest['counts']} held-out: AUC={m['auc']} "
          f"precision={m['precision']} recall={m['recall']} at threshold {m['threshold']} -> {args.out}", flush=True)
    return manifest
