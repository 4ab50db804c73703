"""Fold a LoRA run's adapters into its base weights and save a plain model checkpoint.

``torchrun --nproc_per_node N -m trainer.merge_lora --recipe tiny_lora --shards DIR --load RUN --out DIR``
loads the LoRA run (base + adapters, any layout), merges ``W += (alpha/r) B A`` on every rank,
and writes a model-only dist_checkpointing directory usable as ``--pretrained`` (any TP/PP).
"""
from __future__ import annotations

import logging
import sys

from etl.core.cli import ArgumentParser
from etl.core.config import load_params
from etl.core.errors import run_main

logger = logging.getLogger("trainer.merge_lora")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the LoRA checkpoint, merge, save."""
    parser = ArgumentParser(prog="python -m trainer.merge_lora", description=__doc__)
    parser.add_argument("--recipe", required=True, help="the LoRA run's recipe (mode must be lora)")
    parser.add_argument("--shards", required=True, help="the shards the run used (for vocab and domains)")
    parser.add_argument("--load", required=True, help="the LoRA run's --save directory or an iter_* directory")
    parser.add_argument("--out", required=True, help="where to write the merged model checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides the run used (as trainer.train --set)")
    parser.add_argument("--params", default=None, help="params.yaml (train: section)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("megatron").setLevel(logging.WARNING)
    from trainer import checkpoint as ckpt  # noqa: PLC0415
    from trainer import loop  # noqa: PLC0415
    from trainer.config import to_dict  # noqa: PLC0415
    from trainer.lora import merge_lora  # noqa: PLC0415
    from trainer.pretrained import read_common  # noqa: PLC0415
    from trainer.train import build_arg_parser, resolve_config  # noqa: PLC0415

    train_args = build_arg_parser().parse_args(["--recipe", args.recipe, "--shards", args.shards]
                                               + [f"--set={o}" for o in args.overrides])
    config = resolve_config(train_args, load_params(args.params))
    if config.mode != "lora":
        raise ValueError(f"recipe {args.recipe!r} has mode={config.mode!r}; merge needs a lora run")
    state = loop.setup(config, args.shards, load=args.load)
    count = merge_lora(state.models)
    common = {"merged_lora_layers": count, "vocab_size": state.vocab_size, "config": to_dict(config)}
    if config.pretrained:  # an imported model: keep its dtype/tokenizer and hf/ for trainer.hf export
        common["hf"] = read_common(config.pretrained).get("hf")
        loop.copy_hf_meta(config.pretrained, args.out)
    ckpt.save_checkpoint(args.out, state.step, state.models, None, None, None, common)
    logger.info("merged %d adapted layers into %s", count, args.out)
    loop.teardown()
    return 0


if __name__ == "__main__":
    run_main(main)
