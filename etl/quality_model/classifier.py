"""The classifier interface, the model directory's manifest and the per-process model cache.

A model directory (written atomically by ``python -m etl.quality_model train``)::

    manifest.json      {"format": "jinglian-quality-model", "version": 1, "kind": ..., "labels": [...],
                        "threshold": 0.7, "settings": {...}, "metrics": {...}, ...}
    <kind's files>     ngram: weights.npz; fasttext: model.bin; bert: bert/ (save_pretrained)
    metrics.json       held-out precision, recall, AUC, calibration table
    calibration.png    the calibration plot (reliability diagram)

Every kind answers :meth:`QualityClassifier.score`: per text the probability that it is of
high quality (label ``hq`` against ``lq``), a float in [0, 1] that does not depend on which
other texts share the call.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from etl.core.errors import JinglianError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "jinglian-quality-model"
VERSION = 1
#: Class names: index 1 is the high-quality class whose probability is the score.
LABELS = ("lq", "hq")

_CACHE: dict[tuple[str, float, str, str], QualityClassifier] = {}
_LOCK = threading.Lock()


class ModelDirError(JinglianError):
    """A quality model directory that is missing, incomplete or unreadable."""


class QualityClassifier(Protocol):
    """What every kind implements."""

    kind: str
    settings: dict[str, Any]
    """What scoring needs besides the weights (tokenizer, n-gram sizes, max_chars...), saved in the manifest."""

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Probability of high quality per text (float64, in [0, 1])."""
        ...

    def save(self, directory: Path) -> None:
        """Write the kind's files into ``directory`` (the manifest is written by the caller)."""
        ...


def classifier_class(kind: str):
    """The class implementing ``kind`` (imported lazily: torch and fastText only when needed)."""
    if kind == "ngram":
        from etl.quality_model.ngram import NgramClassifier
        return NgramClassifier
    if kind == "fasttext":
        from etl.quality_model.fasttext import FastTextClassifier
        return FastTextClassifier
    if kind == "bert":
        from etl.quality_model.bert import BertClassifier
        return BertClassifier
    raise ValueError(f"unknown quality model kind {kind!r}; known kinds: ['ngram', 'fasttext', 'bert']")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of model directory ``path``; a missing or corrupt one is a :class:`ModelDirError`."""
    root = Path(path)
    if not root.is_dir():
        raise ModelDirError(f"quality model directory {str(root)!r} does not exist "
                            f"(train one with `python -m etl.quality_model train ... --out {root}`)")
    file = root / MANIFEST
    if not file.is_file():
        raise ModelDirError(f"quality model directory {str(root)!r} has no {MANIFEST} (not a model written by "
                            "`python -m etl.quality_model train`, or an interrupted copy)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{file}: corrupt manifest, not JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelDirError(f"{file}: not a jinglian quality model manifest (field 'format' should be {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ModelDirError(f"{file}: field 'version' is {manifest.get('version')!r}; this jinglian reads version {VERSION}")
    kind = manifest.get("kind")
    if kind not in ("ngram", "fasttext", "bert"):
        raise ModelDirError(f"{file}: field 'kind' is {kind!r}; expected 'ngram', 'fasttext' or 'bert'")
    if not isinstance(manifest.get("settings"), dict):
        raise ModelDirError(f"{file}: field 'settings' is missing or not an object")
    return manifest


def open_classifier(path: str | os.PathLike, device: str = "auto", dtype: str = "auto") -> QualityClassifier:
    """Load the classifier in model directory ``path`` (no cache); any failure is one :class:`ModelDirError` line."""
    manifest = read_manifest(path)
    cls = classifier_class(manifest["kind"])
    try:
        return cls.load(Path(path), manifest["settings"], device=device, dtype=dtype)
    except ModelDirError:
        raise
    except ImportError as exc:
        raise ModelDirError(f"quality model {str(path)!r} is of kind {manifest['kind']!r}, which needs a package that "
                            f"is not installed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a truncated weights file fails in many ways; all mean "corrupt"
        detail = " ".join(str(exc).split())[:300]
        raise ModelDirError(f"quality model {str(path)!r} ({manifest['kind']}): cannot load its files: "
                            f"{type(exc).__name__}: {detail}") from None


def load_classifier(path: str | os.PathLike, device: str = "auto", dtype: str = "auto") -> QualityClassifier:
    """:func:`open_classifier`, cached per process by (path, manifest time, device, dtype): each
    worker process or Spark executor loads a model once, however many partitions it runs."""
    resolved = str(Path(path).resolve())
    try:
        stamp = os.stat(Path(resolved, MANIFEST)).st_mtime
    except OSError:
        stamp = -1.0
    key = (resolved, stamp, device, dtype)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = open_classifier(resolved, device, dtype)
            logger.info("loaded quality model %s (%s)", resolved, _CACHE[key].kind)
        return _CACHE[key]


def clear_cache() -> None:
    """Forget loaded models (tests)."""
    with _LOCK:
        _CACHE.clear()
