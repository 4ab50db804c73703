"""``python -m shards``: build a shard set locally, verify one, or train a small tokenizer.

    python -m shards build --input general=data/sample/general ... --output DIR [--params YAML] [--tokenizer PATH] [--partitions N]
    python -m shards verify DIR [--deep]        exit 0: sound; 1: disagrees with its manifest (reasons printed); 2: no set
    python -m shards train-tokenizer --input DIR... --output DIR [--vocab-size N]
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from etl.runner import run_stage
from shards.stage import SHARDS, ShardsArgumentParser

EXIT_OK, EXIT_BAD, EXIT_MISSING = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = ShardsArgumentParser(prog="python -m shards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", add_help=False,
                   help="tokenise, mix and write shards in this process (same flags as spark_jobs/build_shards.py; see build --help)")
    verify = sub.add_parser("verify", help="check a shard set against its manifest and its weights")
    verify.add_argument("directory")
    verify.add_argument("--deep", action="store_true", help="also re-read every sample and recount tokens per group")
    train = sub.add_parser("train-tokenizer", help="train a byte-level BPE on input records (text field)")
    train.add_argument("--input", nargs="+", required=True)
    train.add_argument("--output", required=True)
    train.add_argument("--vocab-size", type=int, default=8000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        run_stage(SHARDS, argv[1:], prog="python -m shards build")
        return EXIT_OK
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "verify":
        return verify_command(args.directory, args.deep)
    from etl.io.records import read_inputs
    from shards.samples import sample_inputs
    from shards.tokenizer import train_bpe_tokenizer

    texts = (sample_inputs(d)[0] for d in read_inputs(args.input) if not d.dropped)
    train_bpe_tokenizer(texts, args.vocab_size, args.output)
    print(f"tokenizer -> {args.output}")
    return EXIT_OK


def verify_command(directory: str, deep: bool) -> int:
    from shards.manifest import verify

    try:
        problems = verify(directory, deep=deep)
    except (FileNotFoundError, ValueError) as exc:
        print(f"shards verify: {exc}", file=sys.stderr)
        return EXIT_MISSING
    for problem in problems:
        print(f"shards verify: {problem}", file=sys.stderr)
    if problems:
        return EXIT_BAD
    print(f"shards verify: {directory} OK")
    return EXIT_OK
