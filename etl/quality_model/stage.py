"""The quality filter stage: score each document, annotate ``meta.quality_score``, reject those
below the threshold as ``low_quality_score``.

:data:`QUALITY_MODEL` declares the stage; both executors run it with the same flags::

    python -m etl.quality_model --input runs/tfidf --output runs/quality --model models/quality [--threshold 0.7]
    spark-submit spark_jobs/quality_filter.py --input runs/tfidf --output runs/quality --model models/quality

The model is loaded once per process (a local worker, a Spark executor's Python worker) by
:func:`etl.quality_model.classifier.load_classifier`; the driver checks it first, so a
missing or corrupt model directory stops the run in one line before any work (the driver loads
a local model once to check its files).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from etl.core.document import Document
from etl.core.errors import JinglianError
from etl.core.stage import Stage, StageRun
from etl.core.step import Pipeline, batch_step
from etl.quality_model.classifier import load_classifier, read_manifest
from etl.quality_model.config import QualityModelConfig

STAGE = "quality_model"
STEP = "quality_model"
REASON = "low_quality_score"
#: Digits of ``meta.quality_score``: enough to order documents, few enough that float noise
#: below 1e-6 (BERT under different padding) never shows in the output.
SCORE_DIGITS = 6


def score_documents(docs: list[Document], config: QualityModelConfig) -> list[Document]:
    """Annotate ``meta.quality_score`` (and ``quality_threshold`` where rejected) and reject
    documents scoring below their domain's threshold as ``low_quality_score``."""
    clf = load_classifier(config.model, config.device, config.dtype)
    scores = clf.score([doc.text for doc in docs])
    for doc, score in zip(docs, scores):
        doc.meta["quality_score"] = round(float(score), SCORE_DIGITS)
        threshold = config.threshold_for(doc.domain)
        if doc.meta["quality_score"] < threshold:
            doc.drop(REASON, STEP, quality_threshold=threshold)
    return docs


class QualityPipelineFactory:
    """A picklable factory: the pipeline (and, on first use, the model) is built once per process."""

    def __init__(self, config: QualityModelConfig):
        self.config = config

    def __call__(self) -> Pipeline:
        if not self.config.enabled:
            return Pipeline([], name=STAGE)
        config = self.config
        return Pipeline([batch_step(STEP, lambda batch: score_documents(batch, config), config.batch_size, config.on_error)],
                        name=STAGE)


def quality_factory(configs: Mapping[str, Any]) -> QualityPipelineFactory:
    return QualityPipelineFactory(configs[STAGE])


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="model directory written by `python -m etl.quality_model train` (default: quality_model.model)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="keep documents scoring at least this (default: quality_model.threshold, 0.7; "
                             "quality_model.domain_thresholds still apply to their domains)")


def apply_flags(args: argparse.Namespace, configs: dict[str, Any]) -> dict[str, Any]:
    """``--model``/``--threshold`` over the section."""
    config: QualityModelConfig = configs[STAGE]
    over: dict[str, Any] = {}
    if args.model:
        over["model"] = args.model
    if args.threshold is not None:
        over["threshold"] = args.threshold
    try:
        config = dataclasses.replace(config, **over)
    except ValueError as exc:
        raise JinglianError(f"command line: {exc}") from None
    return {**configs, STAGE: config}


def check(run: StageRun) -> None:
    """Before any work: the model path made absolute (executors do not share the driver's
    working directory; the params hash keeps the path as given) and its manifest checked."""
    config: QualityModelConfig = run.configs[STAGE]
    if config.enabled:
        model = config.model if "://" in config.model else os.path.abspath(config.model)
        read_manifest(model)
        if "://" not in model:
            # load it here once: a corrupt weights file is one error line now, not a rejection of
            # every record by the workers (the local executor's processes reuse this load)
            load_classifier(model, config.device, config.dtype)
        run.configs[STAGE] = dataclasses.replace(config, model=model)


QUALITY_MODEL = Stage(
    name=STAGE,
    description="Model-based quality filter: score every document with a trained classifier (n-gram, fastText or BERT), "
                "annotate meta.quality_score, reject those below the threshold as low_quality_score.",
    sections=("quality_model",),  # == STAGE (a literal: tests/test_dvc.py reads the sections from the code)
    pipeline=quality_factory,
    step_names=lambda configs: [STEP] if configs[STAGE].enabled else [],
    add_flags=add_flags,
    apply_flags=apply_flags,
    check=check,
    batch_docs=lambda configs: configs[STAGE].batch_size,
)
