"""Train entry point: ``torchrun --nproc_per_node N -m trainer.train --recipe tiny --shards DIR --save DIR``.

Config precedence (later wins): the recipe, the ``train.overrides`` mapping in params.yaml,
the ``--tp/--pp/--steps`` shortcuts, then ``--set key=value`` flags.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from etl.core.cli import ArgumentParser
from etl.core.config import load_params
from etl.core.errors import run_main

logger = logging.getLogger("trainer.train")


def build_arg_parser() -> argparse.ArgumentParser:
    """The CLI (every flag documented)."""
    p = ArgumentParser(
        prog="python -m trainer.train",
        description="Megatron-core pretraining / SFT / LoRA / distillation on jinglian shards (run under torchrun).")
    p.add_argument("--recipe", default=None,
                   help="recipe name (trainer/recipes.py: tiny, tiny_sft, tiny_lora, tiny_cpt, gpt_125m, llama_1b3, "
                        "llama_7b, sft_1b3, lora_1b3, cpt); default: train.recipe in params.yaml "
                        "(cpt with --pretrained)")
    p.add_argument("--shards", required=True,
                   help="shards directory (or manifest.json) written by the shards stage; 'synthetic' = "
                        "built-in seeded token stream for smoke tests")
    p.add_argument("--valid", default=None,
                   help="validation shard set read every train.eval_interval steps (default: <shards>/valid "
                        "when it exists, as the shards stage writes it with shards.valid_fraction > 0)")
    p.add_argument("--save", default=None, help="checkpoint directory (iter_*/ + latest) and metrics.jsonl")
    p.add_argument("--load", default=None,
                   help="resume from this checkpoint directory (its 'latest') or an iter_* directory; "
                        "'auto' = resume from --save if it holds a checkpoint")
    p.add_argument("--pretrained", default=None,
                   help="initialise model weights from this checkpoint (any TP/PP layout), e.g. one written "
                        "by 'python -m trainer.hf import'; the model shape comes from it, the recipe "
                        "(default: cpt, continued pretraining) sets optimisation and data")
    p.add_argument("--mode", default=None, choices=["pretrain", "sft", "lora", "distill"],
                   help="training mode (overrides the recipe's train.mode); distill needs --teacher")
    p.add_argument("--teacher", default=None,
                   help="teacher checkpoint for --mode distill (a jinglian checkpoint, e.g. from "
                        "'python -m trainer.hf import'; same tokenizer, run under the same TP; docs/distill.md)")
    p.add_argument("--ewc", default=None,
                   help="Fisher directory from 'python -m trainer.fisher' of an earlier task: adds the EWC "
                        "penalty 0.5*lambda*sum F*(theta-theta_old)^2 (set lambda with --set ewc.lambda=...)")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size (overrides parallel.tp)")
    p.add_argument("--pp", type=int, default=None, help="pipeline-parallel size (overrides parallel.pp)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides train.steps)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field by dotted name, e.g. --set optim.lr=1e-4 "
                        "--set data.accumulation_steps=8 (values parsed as YAML); repeatable")
    p.add_argument("--exit-at-step", type=int, default=None,
                   help="stop (and checkpoint) after this step although the schedule runs to --steps; "
                        "resume later with --load (for time-limited allocations)")
    p.add_argument("--params", default=None, help="params.yaml to read the train: section from "
                                                   "(default: the repository's)")
    p.add_argument("--metrics", default=None,
                   help="metrics JSON Lines file (default: <save>/metrics.jsonl)")
    p.add_argument("--report", action="store_true",
                   help="after training, write <save>/report.html + report.png from the metrics")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def resolve_config(args: argparse.Namespace, params: dict[str, Any]):
    """Recipe + params.yaml overrides + CLI flags -> validated TrainConfig."""
    from trainer.config import apply_overrides, parse_override  # noqa: PLC0415
    from trainer.pretrained import use_pretrained_model  # noqa: PLC0415
    from trainer.recipes import PRETRAINED_DEFAULT_RECIPE, get_recipe  # noqa: PLC0415

    section = params.get("train") or {}
    unknown = sorted(set(section) - {"recipe", "overrides"})
    if unknown:
        raise ValueError(f"train: unknown key(s) {unknown}; known: ['overrides', 'recipe']")
    overrides: dict[str, Any] = dict(section.get("overrides") or {})
    for key, value in (("parallel.tp", args.tp), ("parallel.pp", args.pp), ("steps", args.steps),
                       ("pretrained", args.pretrained), ("mode", args.mode),
                       ("distill.teacher", args.teacher), ("ewc.fisher", args.ewc)):
        if value is not None:
            overrides[key] = value
    overrides.update(parse_override(text) for text in args.overrides)
    pretrained = overrides.get("pretrained")
    # --pretrained without --recipe: continued pretraining, not the params file's from-scratch recipe
    default = PRETRAINED_DEFAULT_RECIPE if pretrained and not args.recipe else section.get("recipe") or "tiny"
    config = get_recipe(args.recipe or default)
    if pretrained:  # the model shape comes from the checkpoint; the recipe sets training only
        config = use_pretrained_model(config, pretrained, overrides)
    return apply_overrides(config, overrides) if overrides else config


def default_valid(shards: str) -> str | None:
    """``<shards>/valid`` when the shards stage wrote a validation set there."""
    path = Path(shards).parent if shards.endswith(".json") else Path(shards)
    return str(path / "valid") if (path / "valid" / "manifest.json").is_file() else None


def main(argv: list[str] | None = None) -> int:
    """Parse flags, resolve the config, train, save, report."""
    args = build_arg_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("megatron").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
    config = resolve_config(args, load_params(args.params))
    if args.print_config:
        from trainer.config import to_dict  # noqa: PLC0415

        print(json.dumps(to_dict(config), indent=2))
        return 0
    from trainer import loop  # noqa: PLC0415 (imports megatron-core)

    load = args.save if args.load == "auto" else args.load
    metrics = args.metrics or (str(Path(args.save) / "metrics.jsonl") if args.save else None)
    valid = args.valid or default_valid(args.shards)
    state = loop.setup(config, args.shards, load=load, valid=valid if config.eval_interval else None)
    loop.train(state, save=args.save, metrics_path=metrics, exit_at_step=args.exit_at_step)
    if args.report and rank == 0 and metrics:
        from trainer.report import write_report  # noqa: PLC0415

        write_report(metrics, Path(args.save))
    loop.teardown()
    return 0


if __name__ == "__main__":
    run_main(main)
