"""Evaluate a checkpoint: per-domain perplexity, knowledge probes, generation speed, robustness.

    python -m trainer.evaluate --load RUN --shards SHARDS/valid --out DIR [--probes kg.csv] [--baseline CKPT]
    python -m trainer.evaluate lm-eval-task --probes kg.csv --out DIR [--name NAME]

The checkpoint (any TP/PP layout, LoRA merged) is exported to a Hugging Face model in a
temporary directory (``trainer.hf export``; a directory with config.json is used as is) and
evaluated in this process with transformers, on one GPU when there is one, else the CPU:

* perplexity per domain (the validation manifest's group names): every validation row is cut
  into its documents (the reader's segments; attention never crosses them in training either)
  and each document's loss-masked tokens are scored; ``exp`` of the per-token mean per group;
* knowledge probes (trainer/probes.py): accuracy, entity recall, MRR;
* generation speed (trainer/generate.py): tokens/s of greedy decoding with a KV cache, batch 1
  and batched, and batch 1 without the cache for reference;
* robustness: the attack success rate of the probes under perturbations.

``<out>/eval.json`` holds the figures (and the baseline's, with ``--baseline``);
``<out>/eval.md`` a table beside the project guide's thresholds (:data:`THRESHOLDS`) with plots
``<out>/*.png``. :func:`eval_table_markdown` and :func:`validation_curves` are what a report
embeds. docs/evaluation.md explains every figure.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from etl.core.atomic import check_output, write_json, write_output_marker
from etl.core.cli import ArgumentParser
from etl.core.errors import run_main

logger = logging.getLogger("trainer.evaluate")

#: The project guide's evaluation table: (figure key, comparison, threshold, label).
THRESHOLDS = (
    ("probe_accuracy", ">=", 0.85, "task accuracy (knowledge probes)"),
    ("entity_recall", ">=", 0.92, "knowledge coverage (entity recall)"),
    ("tokens_per_s", ">=", 15.0, "generation speed, batch 1, KV cache (tokens/s)"),
    ("attack_success", "<=", 0.15, "adversarial attack success rate"),
)


# ----------------------------------------------------------------------------- model


def export_for_eval(load: str, workdir: Path, tokenizer: str | None) -> Path:
    """A Hugging Face directory for ``load``: itself when it has config.json, else an export."""
    if (Path(load) / "config.json").is_file():
        return Path(load)
    from trainer.hf import export_hf  # noqa: PLC0415

    out = workdir / "hf"
    export_hf(load, out, dtype="float32", tokenizer=tokenizer)
    if not (out / "tokenizer.json").is_file() and not (out / "tokenizer_config.json").is_file():
        raise ValueError(f"--load {load}: the checkpoint carries no tokenizer; pass --tokenizer DIR")
    return out


def load_model(hf_dir: Path, device: str):
    """(model in eval mode, tokenizer) from a Hugging Face directory."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(hf_dir)


def shards_tokenizer_dir(shards: str) -> str | None:
    """The tokenizer directory a shard set carries (copied there by the shards stage)."""
    from shards.manifest import load_manifest  # noqa: PLC0415

    manifest, root = load_manifest(shards)
    path = (manifest.get("tokenizer") or {}).get("path")
    if path and (root / path).is_dir():
        return str(root / path)
    return path if path and Path(path).is_dir() else None


# ----------------------------------------------------------------------------- perplexity


def documents_of_rows(rows: Sequence[dict[str, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Each row's documents: (tokens, labels, loss mask, domain index) per segment."""
    out = []
    for row in rows:
        seg = row["segment_ids"][0]
        for s in np.unique(seg[seg >= 0]):
            where = np.flatnonzero(seg == s)
            out.append((row["tokens"][0, where], row["labels"][0, where], row["loss_mask"][0, where],
                        int(row["domain_ids"][0, where[0]])))
    return out


def domain_losses(model: Any, docs: Sequence[tuple], domains: Sequence[str], batch_size: int = 8) -> dict[str, Any]:
    """Per-domain token loss sums and counts, then loss and perplexity (right-padded batches)."""
    import torch  # noqa: PLC0415

    device = next(model.parameters()).device
    sums, counts = np.zeros(len(domains)), np.zeros(len(domains), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(docs), batch_size):
            chunk = docs[start:start + batch_size]
            width = max(len(d[0]) for d in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.zeros_like(ids)
            mask = torch.zeros((len(chunk), width), dtype=torch.float32)
            attn = torch.zeros_like(ids)
            for i, (tok, lab, lm, _) in enumerate(chunk):
                n = len(tok)
                ids[i, :n], labels[i, :n] = torch.as_tensor(tok), torch.as_tensor(lab)
                mask[i, :n], attn[i, :n] = torch.as_tensor(lm), 1
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float().cpu()
            nll = -torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0] * mask
            for i, doc in enumerate(chunk):
                sums[doc[3]] += float(nll[i].sum())
                counts[doc[3]] += int(mask[i].sum())
    loss = {d: sums[i] / counts[i] for i, d in enumerate(domains) if counts[i]}
    return {"loss": loss, "perplexity": {d: _ppl(v) for d, v in loss.items()},
            "tokens": {d: int(counts[i]) for i, d in enumerate(domains) if counts[i]}}


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


# ----------------------------------------------------------------------------- one model


def evaluate_model(hf_dir: Path, shards: str, *, probes_csv: str | None, device: str, seq_len: int, max_rows: int,
                   gen_tokens: int, gen_batch: int, seed: int = 0) -> dict[str, Any]:
    """Every figure of one model (see the module docstring)."""
    from trainer import generate  # noqa: PLC0415
    from trainer import probes as probes_lib
    from trainer.validation import read_rows  # noqa: PLC0415

    model, tokenizer = load_model(hf_dir, device)
    rows, domains = read_rows(shards, max_rows, seq_len=seq_len, seed=seed, shuffle_buffer=1024)
    docs = documents_of_rows(rows)
    result: dict[str, Any] = {"domains": domains, "num_documents": len(docs), **domain_losses(model, docs, domains)}
    prompts = [list(map(int, d[0][:16])) for d in docs if len(d[0]) >= 4][:2 * gen_batch] or [[1, 2, 3, 4]]
    speed = [generate.measure_speed(model, prompts[:4], gen_tokens, 1),
             generate.measure_speed(model, prompts[:4], gen_tokens, 1, use_cache=False),
             generate.measure_speed(model, prompts, gen_tokens, gen_batch)]
    result["generation"] = {"batch1": speed[0].to_json(), "batch1_no_cache": speed[1].to_json(),
                            f"batch{gen_batch}": speed[2].to_json()}
    result["tokens_per_s"] = speed[0].tokens_per_s
    if probes_csv:
        probes, surfaces = probes_lib.load_probes(probes_csv)
        scored = probes_lib.score_probes(model, tokenizer, probes)
        figures = probes_lib.probe_figures(scored)
        robust = probes_lib.attack_success(model, tokenizer, probes, scored, surfaces, seed=seed)
        result.update(probes=figures, probe_results=scored, robustness=robust,
                      probe_accuracy=figures["accuracy"], entity_recall=figures["entity_recall"],
                      attack_success=robust["all"]["attack_success"])
    return result


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each guide threshold with the model's figure and whether it passes (None: not measured)."""
    out = []
    for key, op, threshold, label in THRESHOLDS:
        value = result.get(key)
        ok = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out.append({"figure": key, "label": label, "value": value, "op": op, "threshold": threshold, "pass": ok})
    return out


# ----------------------------------------------------------------------------- outputs


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if pct:
        return f"{100 * value:.1f}%"
    return f"{value:,.2f}" if abs(value) >= 10 else f"{value:.3f}"


def eval_table_markdown(report: dict[str, Any]) -> str:
    """The evaluation table (markdown): guide figures with thresholds, baseline and pass/fail,
    then perplexity per domain with the change from the baseline."""
    base = report.get("baseline") or {}
    pct = {"probe_accuracy", "entity_recall", "attack_success"}
    lines = ["| figure | value | threshold | baseline | pass |", "|---|---|---|---|---|"]
    for c in report["checks"]:
        p = c["figure"] in pct
        verdict = {True: "yes", False: "**no**", None: "n/a"}[c["pass"]]
        lines.append(f"| {c['label']} | {_fmt(c['value'], p)} | {c['op']} {_fmt(c['threshold'], p)} | "
                     f"{_fmt(base.get(c['figure']), p) if base else '-'} | {verdict} |")
    lines += ["", "| domain | perplexity | baseline | change | tokens |", "|---|---|---|---|---|"]
    for d, ppl in report["model"]["perplexity"].items():
        b = (base.get("perplexity") or {}).get(d)
        change = f"{100 * (ppl / b - 1):+.1f}%" if b else "-"
        lines.append(f"| {d} | {_fmt(ppl)} | {_fmt(b) if b else '-'} | {change} | {report['model']['tokens'][d]:,} |")
    return "\n".join(lines) + "\n"


def validation_curves(metrics_path: str | Path) -> dict[str, Any]:
    """Validation curves from a training run's metrics.jsonl: ``steps`` and, per domain, the
    validation perplexity at each of them (``overall`` too); empty lists without validation."""
    from etl.core.metrics import read_metrics  # noqa: PLC0415

    rows = [r for r in read_metrics(metrics_path) if "val_loss" in r]
    domains = sorted({d for r in rows for d in r.get("val_ppl_by_domain", {})})
    return {"steps": [r["step"] for r in rows], "overall": [r["val_ppl"] for r in rows],
            "by_domain": {d: [r["val_ppl_by_domain"].get(d) for r in rows] for d in domains}}


def plot_validation_curves(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Validation perplexity per domain over training steps as a PNG (None without validation)."""
    curves = validation_curves(metrics_path)
    if not curves["steps"]:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curves["steps"], curves["overall"], "k-", label="overall")
    for d, values in curves["by_domain"].items():
        ax.plot(curves["steps"], values, marker="o", label=d)
    ax.set_xlabel("step")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _bars(ax, labels: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(labels)) + k * width, [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks(np.arange(len(labels)) + width * (len(series) - 1) / 2, labels)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()


def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """perplexity.png, probes.png (with thresholds) and speed.png next to eval.md."""
    plt = _pyplot()
    model, base = report["model"], report.get("baseline")
    names = []
    domains = list(model["perplexity"])
    fig, ax = plt.subplots(figsize=(5, 3))
    series = {"model": [model["perplexity"][d] for d in domains]}
    if base:
        series = {"baseline": [base["perplexity"].get(d) for d in domains], **series}
    _bars(ax, domains, series, "validation perplexity")
    fig.tight_layout()
    fig.savefig(out / "perplexity.png", dpi=100)
    plt.close(fig)
    names.append("perplexity.png")
    if model.get("probes"):
        keys = ["probe_accuracy", "entity_recall", "attack_success"]
        fig, ax = plt.subplots(figsize=(5, 3))
        series = {"model": [model.get(k) for k in keys]}
        if base:
            series = {"baseline": [base.get(k) for k in keys], **series}
        _bars(ax, ["accuracy", "entity recall", "attack success"], series, "share")
        for x, (_, _, t, _) in zip(range(3), [c for c in THRESHOLDS if c[0] in keys]):
            ax.hlines(t, x - 0.4, x + 0.8, colors="red", linestyles="dashed")
        ax.set_ylim(0, 1.05)
        fig.tight_layout()
        fig.savefig(out / "probes.png", dpi=100)
        plt.close(fig)
        names.append("probes.png")
    gen = model["generation"]
    fig, ax = plt.subplots(figsize=(5, 3))
    _bars(ax, list(gen), {"tokens/s": [g["tokens_per_s"] for g in gen.values()]}, "tokens/s")
    ax.axhline(15.0, color="red", linestyle="dashed")
    fig.tight_layout()
    fig.savefig(out / "speed.png", dpi=100)
    plt.close(fig)
    names.append("speed.png")
    return names


def write_report(report: dict[str, Any], out: Path) -> None:
    """eval.json, the plots, then eval.md (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    write_output_marker(out, "eval")
    write_json(out / "eval.json", report)
    plots = write_plots(report, out)
    text = [f"# Evaluation of `{report['checkpoint']}`", "",
            f"Validation set `{report['shards']}`; baseline `{report.get('baseline_checkpoint') or '-'}`.", "",
            eval_table_markdown(report), *[f"![{p}]({p})" for p in plots], ""]
    tmp = out / "eval.md.tmp"
    tmp.write_text("\n".join(text), encoding="utf-8")
    tmp.replace(out / "eval.md")


def evaluate(load: str, shards: str, out: str, *, probes: str | None = None, baseline: str | None = None,
             tokenizer: str | None = None, device: str = "auto", seq_len: int = 256, max_rows: int = 64,
             gen_tokens: int = 32, gen_batch: int = 8) -> dict[str, Any]:
    """Evaluate ``load`` (and ``baseline``) and write ``out``/eval.json and eval.md."""
    import torch  # noqa: PLC0415

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    tokenizer = tokenizer or shards_tokenizer_dir(shards)
    kwargs = dict(probes_csv=probes, device=device, seq_len=seq_len, max_rows=max_rows, gen_tokens=gen_tokens,
                  gen_batch=gen_batch)
    report: dict[str, Any] = {"checkpoint": load, "shards": shards, "device": device, "baseline_checkpoint": baseline}
    with tempfile.TemporaryDirectory(prefix="jl-eval-") as tmp:
        report["model"] = evaluate_model(export_for_eval(load, Path(tmp) / "model", tokenizer), shards, **kwargs)
        if baseline:
            report["baseline"] = evaluate_model(export_for_eval(baseline, Path(tmp) / "base", tokenizer), shards, **kwargs)
    report["checks"] = checks(report["model"])
    write_report(report, Path(out))
    return report


# ----------------------------------------------------------------------------- lm-eval task


def write_lm_eval_task(probes_csv: str, out: str, name: str = "jinglian_kg_probes") -> Path:
    """A local lm-evaluation-harness task: ``<out>/<name>.yaml`` and ``<out>/<name>.jsonl`` (one
    multiple-choice document per probe; the delimiter is part of each choice). Run with
    ``lm_eval --model hf --model_args pretrained=<hf dir> --tasks <name> --include_path <out>``."""
    from trainer.probes import load_probes  # noqa: PLC0415

    probes, _ = load_probes(probes_csv)
    if not probes:
        raise ValueError(f"--probes {probes_csv}: no probe could be built (see docs/evaluation.md)")
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    tmp = data.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for p in probes:
            choices = [p.delimiter + c for c in p.candidates]
            handle.write(json.dumps({"id": p.id, "prompt": p.prompt, "choices": choices,
                                     "gold": p.candidates.index(p.answer)}, ensure_ascii=False) + "\n")
    tmp.replace(data)
    yaml_text = "\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data.resolve()))}",
        "test_split: test",
        "output_type: multiple_choice",
        "doc_to_text: \"{{prompt}}\"",
        "doc_to_choice: \"{{choices}}\"",
        "doc_to_target: gold",
        "target_delimiter: \"\"",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
        ""])
    (directory / f"{name}.yaml.tmp").write_text(yaml_text, encoding="utf-8")
    (directory / f"{name}.yaml.tmp").replace(directory / f"{name}.yaml")
    write_output_marker(directory, "lm-eval-task")
    return directory / f"{name}.yaml"


# ----------------------------------------------------------------------------- CLI


def build_arg_parser() -> argparse.ArgumentParser:
    """``python -m trainer.evaluate`` (every flag documented)."""
    p = ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, help="checkpoint to evaluate: a run directory (its 'latest'), an iter_* "
                                                 "directory, or a Hugging Face directory")
    p.add_argument("--shards", required=True, help="validation shard set (the shards stage's <output>/valid)")
    p.add_argument("--out", required=True, help="directory for eval.json, eval.md and the plots")
    p.add_argument("--probes", default=None, help="knowledge-graph CSV for the probes (entity,type,aliases as "
                                                  "the augment stage's, or head,relation,tail)")
    p.add_argument("--baseline", default=None, help="checkpoint before continued pretraining, evaluated alike")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the one the shard set carries)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (a GPU when there is one)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per validation row read from the shards")
    p.add_argument("--max-rows", type=int, default=64, help="validation rows scored (the first of the stream)")
    p.add_argument("--gen-tokens", type=int, default=32, help="new tokens per prompt in the speed measurement")
    p.add_argument("--gen-batch", type=int, default=8, help="batch size of the batched speed measurement")
    return p


def build_task_parser() -> argparse.ArgumentParser:
    """``python -m trainer.evaluate lm-eval-task`` flags."""
    p = ArgumentParser(prog="python -m trainer.evaluate lm-eval-task",
                       description="write a local lm-evaluation-harness task from a knowledge-graph CSV")
    p.add_argument("--probes", required=True, help="knowledge-graph CSV (as for --probes of the evaluation)")
    p.add_argument("--out", required=True, help="directory for <name>.yaml and <name>.jsonl (lm_eval --include_path)")
    p.add_argument("--name", default="jinglian_kg_probes", help="task name (lm_eval --tasks)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint, or write the lm-eval task."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    if argv[:1] == ["lm-eval-task"]:
        args = build_task_parser().parse_args(argv[1:])
        check_output(args.out, [args.probes], flag="--out")
        print(f"[evaluate] lm-eval task -> {write_lm_eval_task(args.probes, args.out, args.name)}")
        return 0
    args = build_arg_parser().parse_args(argv)
    check_output(args.out, [p for p in (args.load, args.shards, args.baseline, args.probes) if p], flag="--out")
    report = evaluate(args.load, args.shards, args.out, probes=args.probes, baseline=args.baseline,
                      tokenizer=args.tokenizer, device=args.device, seq_len=args.seq_len, max_rows=args.max_rows,
                      gen_tokens=args.gen_tokens, gen_batch=args.gen_batch)
    print(eval_table_markdown(report))
    return 0


if __name__ == "__main__":
    run_main(main, prog="trainer.evaluate")
