"""The pipeline's summary and run report (the last DVC stage).

Reads what the stages left under ``--pipeline-dir`` (each stage's ``stats.json``,
``timing.json``, kept and rejected records, the shards and their manifest, the trainer's
metrics JSON Lines) and writes ``--out``, a Markdown report with PNG plots beside it: the
git revision and params of the run, documents kept and dropped per domain, tokens per
domain, mix group and language, example rejected texts per reason, near-duplicate cluster
snippets, per-method augmentation counts, the mix along the shards, the loss (total and per
group) and the stages' wall times; plus a short summary on stdout.  Missing stages are
skipped, so it works on a partial pipeline too.

Beside the report it writes what DVC tracks: ``figures/``, ``plots/*.csv`` (``dvc plots``),
``summary.txt`` and ``pipeline.json`` (headline metrics of the shards and training).  Those
are byte-identical for the same pipeline outputs; the report itself holds the wall times and
revision, so DVC does not track it.

    python -m spark_jobs.report --pipeline-dir data/pipeline --out reports/report.md
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from etl.core.cli import ArgumentParser
from etl.core.config import default_params, params_hash
from etl.core.errors import run_main
from etl.core.metrics import read_metrics

logger = logging.getLogger(__name__)

STAGES = ("clean", "dedup", "tfidf", "quality", "augment")


def load_json(path: Path) -> Any | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def stage_stats(pipeline: Path) -> dict[str, dict]:
    """``{stage: stats.json}`` for the stages that ran."""
    found = {}
    for stage in STAGES:
        stats = load_json(pipeline / stage / "stats.json")
        if stats is not None:
            found[stage] = stats
    return found


def kept_lengths(pipeline: Path, stage: str, limit: int = 200_000) -> dict[str, list[int]]:
    """Character lengths of a stage's kept records, by language (at most ``limit`` records)."""
    import pyarrow.parquet as pq

    lengths: dict[str, list[int]] = collections.defaultdict(list)
    count = 0
    for part in sorted((pipeline / stage / "kept").glob("*.parquet")):
        table = pq.read_table(part, columns=["text", "lang"])
        for text, lang in zip(table.column("text").to_pylist(), table.column("lang").to_pylist()):
            lengths[lang or "und"].append(len(text or ""))
            count += 1
            if count >= limit:
                return lengths
    return lengths


def find_metrics(pipeline: Path) -> Path:
    candidates = sorted(pipeline.glob("train/**/metrics*.jsonl"))
    return candidates[0] if candidates else pipeline / "train" / "metrics.jsonl"


def domain_share_series(manifest: dict) -> tuple[list[str], np.ndarray]:
    """Cumulative share of each mix group's tokens along the shard stream (shard order)."""
    shards = manifest.get("shards", [])
    groups = sorted({g for s in shards for g in (s.get("tokens_by_group") or {})})
    if not shards or not groups:
        return groups, np.zeros((0, 0))
    per = np.array([[s.get("tokens_by_group", {}).get(g, 0) for g in groups] for s in shards], dtype=float)
    cum = per.cumsum(axis=0)
    return groups, cum / np.maximum(cum.sum(axis=1, keepdims=True), 1)


def git_revision(root: Path) -> str:
    """``git describe``-style revision of ``root``'s checkout (``+dirty`` with uncommitted changes), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def shard_tokens(shards_dir: Path) -> dict[str, dict[str, int]]:
    """Tokens in the shards per record ``domain``, mix ``group`` and ``lang`` (repeats of an
    up-sampled group counted each time: what the trainer reads)."""
    from shards.tario import iter_shard, load_npy

    totals: dict[str, collections.Counter] = {"domain": collections.Counter(), "group": collections.Counter(), "lang": collections.Counter()}
    for path in sorted(shards_dir.glob("*.tar")):
        for key, members in iter_shard(path):
            meta = json.loads(members.get("json") or b"{}")
            num_tokens = int(load_npy(members["npy"], f"{path}:{key}").size) if "npy" in members else 0
            for field in totals:
                totals[field][meta.get(field) or "und"] += num_tokens
    return {field: dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) for field, counts in totals.items()}


def snippet(text: str | None, width: int = 140) -> str:
    """``text`` on one line, at most ``width`` characters (an ellipsis marks a cut), safe in Markdown."""
    flat = " ".join((text or "").split())
    flat = flat if len(flat) <= width else flat[: width - 1] + "…"
    return flat.replace("|", "\\|").replace("<", "&lt;").replace("`", "'")


def rejected_examples(pipeline: Path, stage: str, per_reason: int = 2, width: int = 140) -> dict[str, list[tuple[str, str]]]:
    """Up to ``per_reason`` ``(id, snippet)`` of a stage's rejected records per drop reason, in file order."""
    import pyarrow.parquet as pq

    found: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for part in sorted((pipeline / stage / "rejected").glob("*.parquet")):
        for batch in pq.ParquetFile(part).iter_batches(columns=["id", "text", "drop_reason"], batch_size=4096):
            for doc_id, text, reason in zip(*(batch.column(c).to_pylist() for c in ("id", "text", "drop_reason"))):
                if len(found[reason]) < per_reason:
                    found[reason].append((doc_id, snippet(text, width)))
    return dict(sorted(found.items()))


def cluster_snippets(pipeline: Path, max_clusters: int = 3, per_cluster: int = 2, width: int = 110) -> list[dict[str, Any]]:
    """The largest near-duplicate clusters: the kept document and a few dropped members, as snippets."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    members: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    keeper_of: dict[str, str] = {}
    for part in sorted((pipeline / "dedup" / "rejected").glob("*.parquet")):
        table = pq.read_table(part, columns=["id", "text", "meta", "drop_reason"])
        table = table.filter(pc.equal(table.column("drop_reason"), "near_duplicate"))
        for doc_id, text, meta in zip(*(table.column(c).to_pylist() for c in ("id", "text", "meta"))):
            meta = json.loads(meta or "{}")
            cluster = str(meta.get("cluster_id"))
            members[cluster].append((doc_id, snippet(text, width)))
            keeper_of[cluster] = meta.get("duplicate_of")
    chosen = sorted(members, key=lambda c: (-len(members[c]), c))[:max_clusters]
    wanted = {keeper_of[c] for c in chosen}
    kept_text: dict[str, str] = {}
    for part in sorted((pipeline / "dedup" / "kept").glob("*.parquet")) if wanted else []:
        table = pq.read_table(part, columns=["id", "text"])
        table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(sorted(wanted))))
        kept_text.update(zip(table.column("id").to_pylist(), (snippet(t, width) for t in table.column("text").to_pylist())))
    return [{"cluster_id": c, "size": len(members[c]) + 1, "kept": (keeper_of[c], kept_text.get(keeper_of[c], "")),
             "dropped": sorted(members[c])[:per_cluster]} for c in chosen]


def wall_times(pipeline: Path, metrics: list[dict]) -> dict[str, float]:
    """Seconds per stage: each stage's ``timing.json`` (``wall_s``), and training's summed step times."""
    times = {}
    for stage in STAGES:
        timing = load_json(pipeline / stage / "timing.json")
        if timing and "wall_s" in timing:
            times[stage] = float(timing["wall_s"])
    steps = [m["step_time_s"] for m in metrics if m.get("step_time_s") is not None]
    if steps:
        times["train (steps)"] = round(sum(steps), 3)
    return times


# ------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    """Lay out, write (110 dpi PNG) and free a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lengths(lengths: dict[str, list[int]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for lang, values in sorted(lengths.items(), key=lambda kv: -len(kv[1]))[:6]:
        ax.hist(np.log10(np.maximum(values, 1)), bins=40, alpha=0.55, label=f"{lang} ({len(values)})")
    ax.set_xlabel("document length, log10(characters)")
    ax.set_ylabel("documents")
    ax.set_title("Kept document lengths by language")
    ax.legend()
    _save(plt, fig, path)


def plot_languages(stats: dict, path: Path) -> None:
    plt = _plt()
    langs = stats.get("kept_by_lang", {})
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(langs)
    ax.bar(names, [langs[n]["docs"] for n in names], color="#4C72B0")
    ax.set_ylabel("kept documents")
    ax.set_title("Languages after cleaning")
    _save(plt, fig, path)


def plot_drop_reasons(all_stats: dict[str, dict], path: Path) -> None:
    plt = _plt()
    rows = [(f"{stage}: {reason}", n) for stage, st in all_stats.items() for reason, n in st.get("drop_reasons", {}).items()]
    rows.sort(key=lambda r: r[1])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(rows) + 1)))
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color="#C44E52")
    ax.set_xlabel("documents dropped")
    ax.set_title("Drop reasons per stage")
    _save(plt, fig, path)


def plot_cluster_sizes(histogram: dict[str, int], path: Path) -> None:
    plt = _plt()
    sizes = sorted(histogram, key=lambda s: int(s))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([str(s) for s in sizes], [histogram[s] for s in sizes], color="#55A868")
    ax.set_yscale("log")
    ax.set_xlabel("near-duplicate cluster size (documents)")
    ax.set_ylabel("clusters")
    ax.set_title("Dedup cluster sizes")
    _save(plt, fig, path)


def plot_domain_shares(groups: list[str], shares: np.ndarray, weights: dict[str, float], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    total = sum(weights.values()) or 1
    for i, group in enumerate(groups):
        line, = ax.plot(np.arange(1, len(shares) + 1), shares[:, i], label=group)
        if group in weights:
            ax.axhline(weights[group] / total, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("shard (stream order)")
    ax.set_ylabel("cumulative token share")
    ax.set_title("Domain shares along the shard stream (dotted: target)")
    ax.legend()
    _save(plt, fig, path)


def plot_loss(metrics: list[dict], path: Path) -> None:
    plt = _plt()
    steps = [m["step"] for m in metrics if "loss" in m]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [m["loss"] for m in metrics if "loss" in m], label="loss")
    for domain in sorted({d for m in metrics for d in m.get("loss_by_domain") or {}}):
        pts = [(m["step"], m["loss_by_domain"][domain]) for m in metrics if domain in (m.get("loss_by_domain") or {})]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none", marker=".", alpha=0.7, label=f"loss: {domain}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.legend()
    _save(plt, fig, path)


# ------------------------------------------------------------------------------- report


def summary_lines(all_stats: dict[str, dict], dedup_clusters: dict | None, manifest: dict | None, metrics: list[dict]) -> list[str]:
    """The human summary printed at the end of the demo (also the report's first section)."""
    lines = []
    for stage, st in all_stats.items():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(st.get("drop_reasons", {}).items(), key=lambda kv: -kv[1])) or "none"
        aug = st.get("augment") or {}
        if "num_originals" in aug:  # the stage adds records: report originals in, variants made
            made = sum(m.get("made", 0) for m in aug.get("by_method", {}).values())
            lines.append(f"{stage:>8}: {aug['num_originals']:>6} in -> {st['num_kept']:>6} kept ({made} variants made), "
                         f"{st['num_rejected']:>5} variants rejected ({reasons})")
            lines += augment_lines(aug)
            continue
        lines.append(f"{stage:>8}: {st['num_in']:>6} in -> {st['num_kept']:>6} kept, {st['num_rejected']:>5} rejected ({reasons})")
    if dedup_clusters:
        sizes = [int(k) for k in dedup_clusters.get("size_histogram", {})]
        lines.append(f"  dedup clusters: {dedup_clusters.get('num_clusters', 0)} clusters holding "
                     f"{dedup_clusters.get('num_docs_in_clusters', 0)} documents, largest {max(sizes, default=0)}")
    if manifest:
        mix = ", ".join(f"{g} {share:.3f} (target {manifest['shares'][g]:.3f})" for g, share in achieved_shares(manifest).items())
        repeats = ", ".join(f"{g} x{r:.2f}" for g, r in (manifest.get("repeats") or {}).items())
        lines.append(f"  shards: {len(manifest.get('shards', []))} shards, {manifest.get('num_tokens', 0)} tokens "
                     f"({manifest.get('unit')}); mix {mix}; epochs per group {repeats or 'n/a'}")
    if metrics:
        losses = [m["loss"] for m in metrics if "loss" in m]
        if losses:
            # one step's loss depends on which mix group its batch came from (a 7:2:1 mix of tiny
            # batches alternates); the mean of the first and last fifth and the validation loss
            # (a fixed held-out set) show the trend
            k = max(1, len(losses) // 5)
            line = (f"  train: {len(metrics)} log steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
                    f"(mean of first/last {k}: {sum(losses[:k]) / k:.3f} -> {sum(losses[-k:]) / k:.3f})")
            val = [m["val_loss"] for m in metrics if m.get("val_loss") is not None]
            if val:
                line += f"; validation loss {val[0]:.3f} -> {val[-1]:.3f}"
            lines.append(line)
    return lines


def augment_lines(aug: dict) -> list[str]:
    """Per augmentation method: variants made, kept, rejected per guard reason, the fact kinds
    that changed, and for entity swap the swap kinds (alias / counterfactual / non_graph) kept."""
    lines = []
    for method, m in sorted((aug.get("by_method") or {}).items()):
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(m.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1])) or "none"
        line = f"  {method}: {m.get('made', 0)} made, {m.get('kept', 0)} kept, {m.get('rejected', 0)} rejected ({reasons})"
        if m.get("changed_fact_by_kind"):
            line += "; facts changed: " + ", ".join(f"{k} {n}" for k, n in m["changed_fact_by_kind"].items())
        swaps = m.get("swap_kinds") or {}
        if swaps:
            line += "; swaps kept: " + (", ".join(f"{k} {n}" for k, n in swaps.get("kept", {}).items()) or "none")
            line += " (rejected: " + (", ".join(f"{k} {n}" for k, n in swaps.get("rejected", {}).items()) or "none") + ")"
        lines.append(line)
    return lines


def achieved_shares(manifest: dict) -> dict[str, float]:
    """Each group's share of the set, in the manifest's unit (tokens or documents)."""
    counts = manifest.get("tokens_by_group" if manifest.get("unit") == "tokens" else "docs_by_group") or {}
    total = sum(counts.values()) or 1
    return {g: counts.get(g, 0) / total for g in sorted(manifest.get("shares", counts))}


def write_plot_data(out_dir: Path, manifest: dict | None, metrics: list[dict], tokens: dict | None = None) -> None:
    """CSV files for ``dvc plots``: loss per step (total and per mix group, a column for every
    group of the manifest), cumulative group shares per shard, tokens per record domain."""
    out_dir.mkdir(parents=True, exist_ok=True)
    domains = sorted({d for m in metrics for d in m.get("loss_by_domain") or {}} | set((manifest or {}).get("shares") or {}))
    rows = ["step,loss," + ",".join(f"loss_{d}" for d in domains)]
    rows += [f"{m['step']},{m['loss']}," + ",".join(str((m.get("loss_by_domain") or {}).get(d, "")) for d in domains)
             for m in metrics if "loss" in m]
    (out_dir / "loss.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    groups, shares = domain_share_series(manifest or {})
    rows = ["shard," + ",".join(groups)]
    rows += [f"{i + 1}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(shares)]
    (out_dir / "domain_shares.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    rows = ["domain,tokens"] + [f"{d},{n}" for d, n in (tokens or {}).get("domain", {}).items()]
    (out_dir / "domain_tokens.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def pipeline_metrics(manifest: dict | None, metrics: list[dict]) -> dict[str, Any]:
    """Headline numbers of the shards and training (``dvc metrics show``; the ETL stages write
    their own ``metrics.json``): shards, tokens, achieved share per group; steps, final loss."""
    out: dict[str, Any] = {}
    if manifest:
        out["shards"] = {"shards": len(manifest.get("shards", [])), "tokens": manifest.get("num_tokens"),
                         **{f"share_{g}": round(v, 4) for g, v in achieved_shares(manifest).items()}}
    losses = [m["loss"] for m in metrics if "loss" in m]
    if losses:
        out["train"] = {"steps": metrics[-1].get("step"), "final_loss": round(losses[-1], 4)}
    return out


def write_report(pipeline: Path, out: Path, metrics_path: Path | None = None, params_path: Path | None = None,
                 train_run: Path | None = None, eval_dir: Path | None = None) -> list[str]:
    """Write the Markdown report, its PNGs, plot CSVs, summary and metrics; return the summary.
    ``train_run`` is the trainer's full metrics file (step times) when ``metrics_path`` has none."""
    out.parent.mkdir(parents=True, exist_ok=True)
    figs = out.parent / "figures"
    figs.mkdir(exist_ok=True)
    all_stats = stage_stats(pipeline)
    clusters = (all_stats.get("dedup") or {}).get("dedup", {}).get("clusters")
    manifest = load_json(pipeline / "shards" / "manifest.json")
    tokens = shard_tokens(pipeline / "shards") if manifest else None
    metrics = read_metrics(metrics_path or find_metrics(pipeline), missing_ok=True)
    summary = summary_lines(all_stats, clusters, manifest, metrics)
    write_plot_data(out.parent / "plots", manifest, metrics, tokens)
    (out.parent / "summary.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
    (out.parent / "pipeline.json").write_text(json.dumps(pipeline_metrics(manifest, metrics), indent=2) + "\n", encoding="utf-8")
    params_path = params_path or default_params()
    md = ["# jinglian run report", "", f"Revision `{git_revision(params_path.resolve().parent)}`, params `{params_path.name}` "
          f"(hash `{params_hash(params_path.read_text(encoding='utf-8')) if params_path.is_file() else 'missing'}`).", "",
          "```", *summary, "```", ""]
    if all_stats:
        md += ["## Documents per domain", "", "In, kept and dropped per stage (augment adds variants, so it can keep more than it reads).", ""]
        md += domain_table(all_stats)
    if tokens:
        md += ["## Tokens in the shards", "", "What the trainer reads: per record domain, mix group and language "
               "(an up-sampled group's repeats counted each time).", ""]
        for field in ("group", "domain", "lang"):
            md += count_table(field, tokens[field])
    if "clean" in all_stats:
        plot_lengths(kept_lengths(pipeline, "clean"), figs / "lengths.png")
        plot_languages(all_stats["clean"], figs / "languages.png")
        md += ["## Cleaning", "", "![lengths](figures/lengths.png)", "", "![languages](figures/languages.png)", ""]
        md += _steps_table(all_stats["clean"])
    if all_stats:
        plot_drop_reasons(all_stats, figs / "drop_reasons.png")
        md += ["## Drop reasons", "", "![drop reasons](figures/drop_reasons.png)", ""]
        md += rejected_section(pipeline, all_stats)
    if (all_stats.get("augment") or {}).get("augment"):
        about = ("Per method: variants made, kept, rejected per guard reason (`changed_fact`: a number, date, unit, "
                 "knowledge-graph entity or negation of the original did not survive), and entity-swap kinds.")
        md += ["## Augmentation", "", about, ""] + augment_table(all_stats["augment"]["augment"])
        md += ["```", *augment_lines(all_stats["augment"]["augment"]), "```", ""]
    if clusters and clusters.get("size_histogram"):
        plot_cluster_sizes(clusters["size_histogram"], figs / "cluster_sizes.png")
        md += ["## Near-duplicate clusters", "", "![clusters](figures/cluster_sizes.png)", ""]
        md += cluster_section(cluster_snippets(pipeline))
    if manifest:
        groups, shares = domain_share_series(manifest)
        if len(shares):
            plot_domain_shares(groups, shares, manifest.get("shares", {}), figs / "domain_shares.png")
            md += ["## Mix along the shard stream", "", "![domain shares](figures/domain_shares.png)", ""]
    if metrics:
        plot_loss(metrics, figs / "loss.png")
        md += ["## Training", "", "![loss](figures/loss.png)", "", f"Last metrics line: `{json.dumps(metrics[-1])}`", ""]
    md += evaluation_section(out.parent, train_run, eval_dir)
    times = wall_times(pipeline, read_metrics(train_run, missing_ok=True) if train_run else metrics)
    if times:
        md += ["## Stage wall times", "", "| stage | seconds |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in times.items()] + [""]
    md += params_section(params_path)
    out.write_text("\n".join(md), encoding="utf-8")
    return summary


def evaluation_section(report_dir: Path, train_run: Path | None, eval_dir: Path | None) -> list[str]:
    """Validation curves (from the trainer's full metrics, untracked like this page) and the
    evaluation table of ``python -m trainer.evaluate`` (``eval_dir/eval.json``), when present."""
    from trainer.evaluate import eval_table_markdown, plot_validation_curves  # noqa: PLC0415 (torch: only when used)

    md: list[str] = []
    curves = report_dir / "eval" / "validation.png"
    if train_run and Path(train_run).is_file() and plot_validation_curves(train_run, curves):
        md += ["## Validation", "", "Validation perplexity per domain during training (the shards' `valid/` set).", "",
               f"![validation]({os.path.relpath(curves, report_dir)})", ""]
    result = load_json(Path(eval_dir) / "eval.json") if eval_dir else None
    if result:
        md += ["## Evaluation", "", f"`python -m trainer.evaluate` on the validation shards and the knowledge graph "
               f"(details: [{os.path.relpath(Path(eval_dir) / 'eval.md', report_dir)}]"
               f"({os.path.relpath(Path(eval_dir) / 'eval.md', report_dir)})).", "", eval_table_markdown(result), ""]
    return md


def domain_table(all_stats: dict[str, dict]) -> list[str]:
    """Markdown table: per domain, in -> kept (dropped) for each stage."""
    stages = list(all_stats)
    domains = sorted({d for st in all_stats.values() for d in st.get("by_domain", {})})
    rows = ["| domain | " + " | ".join(f"{s} in | kept | dropped" for s in stages) + " |",
            "|---|" + "---:|---:|---:|" * len(stages)]
    for domain in domains:
        cells = []
        for stage in stages:
            row = all_stats[stage].get("by_domain", {}).get(domain)
            cells += [str(row["in"]), str(row["kept"]), str(max(row["in"] - row["kept"], 0))] if row else ["", "", ""]
        rows.append(f"| {domain} | " + " | ".join(cells) + " |")
    return rows + [""]


def count_table(field: str, counts: dict[str, int]) -> list[str]:
    total = sum(counts.values()) or 1
    return [f"| {field} | tokens | share |", "|---|---:|---:|"] + [f"| {k} | {v} | {v / total:.3f} |" for k, v in counts.items()] + [""]


def rejected_section(pipeline: Path, all_stats: dict[str, dict]) -> list[str]:
    """A few rejected texts per stage and drop reason (truncated)."""
    md = ["### Rejected examples", "", "Up to two per stage and reason, first in the stage's rejected/ files, cut at 140 characters.", ""]
    for stage in all_stats:
        examples = rejected_examples(pipeline, stage)
        if not examples:
            continue
        md += [f"**{stage}**", ""]
        for reason, items in examples.items():
            md += [f"- `{reason}` ({all_stats[stage].get('drop_reasons', {}).get(reason, len(items))}):"]
            md += [f"  - `{doc_id}`: {text}" for doc_id, text in items]
        md.append("")
    return md


def cluster_section(clusters: list[dict[str, Any]]) -> list[str]:
    md = []
    for c in clusters:
        md += [f"- cluster `{c['cluster_id']}` ({c['size']} documents): kept `{c['kept'][0]}`: {c['kept'][1]}"]
        md += [f"  - dropped `{doc_id}`: {text}" for doc_id, text in c["dropped"]]
    return md + [""] if md else []


def augment_table(aug: dict) -> list[str]:
    """Markdown table of per-method augmentation counts."""
    rows = ["| method | made | kept | rejected |", "|---|---:|---:|---:|"]
    rows += [f"| {m} | {c.get('made', 0)} | {c.get('kept', 0)} | {c.get('rejected', 0)} |" for m, c in sorted((aug.get("by_method") or {}).items())]
    return rows + [""]


def params_section(params_path: Path) -> list[str]:
    """Each params section's hash, then the whole file."""
    import yaml

    if not params_path.is_file():
        return []
    text = params_path.read_text(encoding="utf-8")
    params = yaml.safe_load(text) or {}
    rows = ["## Params of the run", "", "| section | hash |", "|---|---|"] + [f"| {k} | `{params_hash(v)}` |" for k, v in params.items()]
    return rows + ["", "<details><summary>params.yaml</summary>", "", "```yaml", text.rstrip(), "```", "", "</details>", ""]


def _steps_table(stats: dict) -> list[str]:
    rows = ["| step | in | dropped | out |", "|---|---:|---:|---:|"]
    rows += [f"| {s['step']} | {s['in']} | {s['dropped']} | {s['out']} |" for s in stats.get("steps", [])]
    return rows + [""]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m spark_jobs.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-dir", default="data/pipeline", help="folder holding the stages' outputs (clean/, dedup/, tfidf/, augment/, shards/, train/)")
    parser.add_argument("--metrics", default=None, help="trainer metrics JSON Lines (default: the first train/**/metrics*.jsonl under --pipeline-dir)")
    parser.add_argument("--train-run", default=None, metavar="JSONL",
                        help="the trainer's full metrics (with step times), for the report's wall-time table (default: --metrics)")
    parser.add_argument("--params", default=None, help="params file the run used, shown in the report (default: the repository's params.yaml)")
    parser.add_argument("--out", default="reports/report.md",
                        help="Markdown report; beside it: figures/*.png, plots/*.csv (dvc plots), summary.txt, pipeline.json (dvc metrics)")
    parser.add_argument("--eval", default=None, metavar="DIR",
                        help="output directory of python -m trainer.evaluate (eval.json): its table goes into the report")
    args = parser.parse_args(argv)
    summary = write_report(Path(args.pipeline_dir), Path(args.out), Path(args.metrics) if args.metrics else None,
                           Path(args.params) if args.params else None, Path(args.train_run) if args.train_run else None,
                           Path(args.eval) if args.eval else None)
    print("\n".join(["", "jinglian pipeline summary", *summary, f"report: {args.out}"]), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
