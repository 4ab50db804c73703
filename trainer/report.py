"""Run report: plot a metrics.jsonl (loss, per-domain loss, throughput, MFU, data wait) to PNG + HTML.

Usage: ``python -m trainer.report <save>/metrics.jsonl [--out DIR] [--tracked PATH]``.

``--tracked`` also writes the rows without their wall-clock fields (:data:`WALL_CLOCK_FIELDS`):
the same steps and losses give the same bytes, so DVC can track that file while the full one,
which differs on every run, stays untracked.
"""
from __future__ import annotations

import html
import json
import logging
from pathlib import Path

from etl.core.atomic import atomic_file
from etl.core.cli import ArgumentParser
from etl.core.errors import run_main
from etl.core.metrics import read_metrics

logger = logging.getLogger(__name__)


def plot_metrics(rows: list[dict], png_path: Path) -> None:
    """Four panels: loss (total and per domain), tokens/s, MFU or TFLOP/s, data-wait %."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    ax.plot(steps, [r["loss"] for r in rows], label="all", color="black")
    for domain in sorted({d for r in rows for d in r.get("loss_by_domain", {})}):
        pts = [(r["step"], r["loss_by_domain"][domain]) for r in rows if domain in r.get("loss_by_domain", {})]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=domain, alpha=0.7)
    ax.set_title("loss"), ax.set_xlabel("step"), ax.legend()
    axes[0][1].plot(steps, [r["tokens_per_s"] for r in rows])
    axes[0][1].set_title("tokens/s")
    has_mfu = any(r.get("mfu") is not None for r in rows)
    axes[1][0].plot(steps, [100 * (r["mfu"] or 0) if has_mfu else r["tflops_per_gpu"] for r in rows])
    axes[1][0].set_title("MFU %" if has_mfu else "TFLOP/s per device")
    axes[1][1].plot(steps, [r["data_wait_pct"] for r in rows])
    axes[1][1].set_title("data wait %")
    for a in axes.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def summary(rows: list[dict]) -> dict:
    """First/last loss and the median throughput figures over the logged steps."""
    def median(key):
        values = sorted(r[key] for r in rows if r.get(key) is not None)
        return values[len(values) // 2] if values else None

    return {"steps": rows[-1]["step"], "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "median_tokens_per_s": median("tokens_per_s"), "median_tflops_per_gpu": median("tflops_per_gpu"),
            "median_mfu": median("mfu"), "median_data_wait_pct": median("data_wait_pct"),
            "peak_memory_gib": max(r["memory_gib"] for r in rows),
            "last_loss_by_domain": rows[-1].get("loss_by_domain", {})}


#: Metrics fields measured with a clock or the allocator: they differ on every run.
WALL_CLOCK_FIELDS = ("step_time_s", "tokens_per_s", "tflops_per_gpu", "mfu", "data_wait_pct", "memory_gib")


def write_tracked(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` less :data:`WALL_CLOCK_FIELDS` as JSON Lines (sorted keys), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({k: v for k, v in row.items() if k not in WALL_CLOCK_FIELDS}, sort_keys=True) + "\n")
    return path


def write_report(metrics_path: str | Path, out_dir: str | Path) -> Path:
    """Write ``report.png`` and ``report.html`` (summary table + plot) into ``out_dir``."""
    rows = read_metrics(metrics_path)
    if not rows:
        raise ValueError(f"{metrics_path}: no metrics rows")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "report.png"
    plot_metrics(rows, png)
    facts = summary(rows)
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                    for k, v in facts.items())
    page = (f"<html><head><meta charset='utf-8'><title>jinglian training report</title></head><body>"
            f"<h1>Training report</h1><p>{html.escape(str(metrics_path))}</p><table>{table}</table>"
            f"<img src='{png.name}'></body></html>")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    logger.info("report: %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: plot a metrics.jsonl."""
    parser = ArgumentParser(prog="python -m trainer.report", description=__doc__)
    parser.add_argument("metrics", help="metrics.jsonl written by trainer.train")
    parser.add_argument("--out", default=None, help="output directory (default: the metrics file's)")
    parser.add_argument("--tracked", default=None, metavar="PATH",
                        help="also write the rows without wall-clock fields (step time, throughput, MFU, data wait, memory) to PATH, for DVC")
    args = parser.parse_args(argv)
    write_report(args.metrics, args.out or Path(args.metrics).parent)
    if args.tracked:
        write_tracked(read_metrics(args.metrics), args.tracked)
    return 0


if __name__ == "__main__":
    run_main(main)
