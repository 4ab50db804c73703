"""Held-out figures of a quality classifier: precision, recall, AUC, calibration (table and plot)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Equal-width probability bins of the calibration table (the reliability diagram's usual 10).
CALIBRATION_BINS = 10


def evaluate(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """Figures of ``scores`` against ``labels`` (1 = high quality).  "Positive" is the kept class:
    precision is the share of high-quality documents among those scoring >= ``threshold``,
    recall the share of high-quality documents that do; ``lq_*`` are the same for the rejected
    (low-quality) side."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    kept = s >= threshold
    tp = int(np.sum(kept & (y == 1)))
    fp = int(np.sum(kept & (y == 0)))
    fn = int(np.sum(~kept & (y == 1)))
    tn = int(np.sum(~kept & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "num_docs": int(y.size), "num_hq": int(y.sum()), "num_lq": int(y.size - y.sum()), "threshold": threshold,
        "auc": round(float(roc_auc_score(y, s)), 4) if 0 < y.sum() < y.size else None,
        "precision": round(precision, 4), "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "accuracy": round((tp + tn) / max(1, y.size), 4),
        "lq_precision": round(tn / (tn + fn), 4) if tn + fn else 0.0, "lq_recall": round(tn / (tn + fp), 4) if tn + fp else 0.0,
        "brier": round(float(np.mean((s - y) ** 2)), 4),
        "calibration": calibration_table(y, s),
    }


def calibration_table(labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Per non-empty equal-width score bin: its range, document count, mean score and share of high quality."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            rows.append({"lo": round(float(edges[b]), 2), "hi": round(float(edges[b + 1]), 2), "num_docs": int(sel.sum()),
                         "mean_score": round(float(scores[sel].mean()), 4), "frac_hq": round(float(labels[sel].mean()), 4)})
    return rows


def plot_calibration(figures: dict[str, Any], path: Path, title: str) -> bool:
    """The reliability diagram (mean score against share of high quality per bin) as a PNG;
    False (and a warning) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (pip install matplotlib)", path.name)
        return False
    table = figures["calibration"]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot([r["mean_score"] for r in table], [r["frac_hq"] for r in table], marker="o", label="model")
    ax.axvline(figures["threshold"], color="red", linewidth=0.8, label=f"threshold {figures['threshold']}")
    ax.set_ylabel("share of high-quality documents")
    ax.set_title(f"{title}\nAUC {figures['auc']}  P {figures['precision']}  R {figures['recall']}  (n={figures['num_docs']})")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar([(r["lo"] + r["hi"]) / 2 for r in table], [r["num_docs"] for r in table], width=0.09)
    hist.set_xlabel("quality score")
    hist.set_ylabel("documents")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
