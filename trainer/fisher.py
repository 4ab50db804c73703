"""Diagonal Fisher of an earlier task for EWC:
``torchrun --nproc_per_node N -m trainer.fisher --load <checkpoint> --shards <earlier data> --out <dir>``.

Loads the checkpoint's model (any TP/PP layout; the layout is chosen with --tp/--pp), reads
``--batches`` global batches of the earlier task's shards and saves the mean squared gradient of
the mean token log-likelihood, with the weights as theta_old, sharded like the parameters
(trainer/ewc.py). Continue on a new task with ``trainer.train --ewc <dir> --set ewc.lambda=...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings

from etl.core.cli import ArgumentParser
from etl.core.errors import run_main

logger = logging.getLogger("trainer.fisher")


def build_arg_parser() -> argparse.ArgumentParser:
    """The CLI (every flag documented)."""
    p = ArgumentParser(prog="python -m trainer.fisher",
                       description="Diagonal Fisher information of a checkpoint on a task's shards, for EWC "
                                   "(run under torchrun).")
    p.add_argument("--load", required=True, help="checkpoint trained on the earlier task (run dir or iter_* dir)")
    p.add_argument("--shards", required=True, help="shards directory of the earlier task ('synthetic' for tests)")
    p.add_argument("--out", required=True, help="output directory (dist_checkpointing; replaced atomically)")
    p.add_argument("--batches", type=int, default=100,
                   help="global batches averaged (default 100; the estimate's noise falls as 1/sqrt(batches))")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size (default: the checkpoint's)")
    p.add_argument("--pp", type=int, default=None, help="pipeline-parallel size (default: the checkpoint's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of the checkpoint's run, e.g. --set data.micro_batch_size=2")
    return p


def fisher_config(load: str, tp: int | None, pp: int | None, overrides: list[str]):
    """The checkpoint's training config as a plain forward/backward job that loads its weights."""
    from etl.core.config import build_config
    from trainer.config import DistillConfig, EwcConfig, FgmConfig, TrainConfig, apply_overrides, parse_override
    from trainer.pretrained import read_common

    saved = read_common(load).get("config")
    if not saved:
        raise ValueError(f"--load {load}: the checkpoint records no training config")
    config = build_config(TrainConfig, saved, "train")
    mode = "sft" if config.mode in ("sft", "lora") else "pretrain"
    config = dataclasses.replace(config, mode=mode, pretrained=str(load), distill=DistillConfig(),
                                 ewc=EwcConfig(), fgm=FgmConfig())
    values = {"parallel.distributed_optimizer": False}
    values.update({k: v for k, v in (("parallel.tp", tp), ("parallel.pp", pp)) if v is not None})
    values.update(parse_override(text) for text in overrides)
    return apply_overrides(config, values)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, compute the Fisher, save it."""
    args = build_arg_parser().parse_args(argv)
    if args.batches < 1:
        raise ValueError(f"--batches={args.batches}: must be >= 1")
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("megatron").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
    config = fisher_config(args.load, args.tp, args.pp, args.overrides)
    from trainer import ewc, loop  # noqa: PLC0415 (imports megatron-core)

    state = loop.setup(config, args.shards)
    fisher = ewc.compute_fisher(state, args.batches)
    out = ewc.save_fisher(state.models, fisher, args.out,
                          {"checkpoint": str(args.load), "shards": str(args.shards), "batches": args.batches,
                           "layout": {"tp": config.parallel.tp, "pp": config.parallel.pp}})
    logger.info("saved the Fisher of %d batches to %s", args.batches, out)
    loop.teardown()
    return 0


if __name__ == "__main__":
    run_main(main)
