"""``python -m shards``: build a shard set locally, verify one, or train a small tokenizer.

    python -m shards build --input general=data/sample/general ... --output DIR [--params YAML] [--tokenizer PATH] [--partitions N]
    python -m shards verify DIR [--deep]        exit 0: sound; 1: disagrees with its manifest (reasons printed); 2: no set
    python -m shards train-tokenizer --input DIR... --output DIR [--vocab-size N]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence
from etl.core.cli import ArgumentParser

EXIT_OK, EXIT_BAD, EXIT_MISSING = 0, 1, 2


class ShardsArgumentParser(ArgumentParser):
    """An existing shard set (manifest.json) or tokenizer directory (tokenizer.json) may be
    rebuilt in place; any other non-empty --output is refused."""

    output_markers = ("manifest.json", "tokenizer.json")


def _parser() -> argparse.ArgumentParser:
    parser = ShardsArgumentParser(prog="python -m shards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="tokenise, mix and write shards in this process (same flags as spark_jobs/build_shards.py)")
    add_build_args(build)
    verify = sub.add_parser("verify", help="check a shard set against its manifest and its weights")
    verify.add_argument("directory")
    verify.add_argument("--deep", action="store_true", help="also re-read every sample and recount tokens per group")
    train = sub.add_parser("train-tokenizer", help="train a byte-level BPE on input records (text field)")
    train.add_argument("--input", nargs="+", required=True)
    train.add_argument("--output", required=True)
    train.add_argument("--vocab-size", type=int, default=8000)
    return parser


def add_build_args(parser: argparse.ArgumentParser) -> None:
    """The build flags shared with the Spark job."""
    parser.add_argument("--input", nargs="+", required=True, metavar="[GROUP=]PATH",
                        help="input files/dirs/globs; GROUP=PATH puts every record of PATH in mix group GROUP "
                             "(otherwise the record's domain is mapped by params shards.groups)")
    parser.add_argument("--output", required=True, metavar="DIR", help="shard set directory (shards, manifest.json last)")
    parser.add_argument("--params", default=None, metavar="YAML", help="params file (default: the repository's params.yaml)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH_OR_HUB_ID", help="overrides params shards.tokenizer")
    parser.add_argument("--partitions", type=int, default=None, metavar="N",
                        help="partitions (shard-<partition>-<n>.tar); default 1 locally, Spark's default parallelism in Spark")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "build":
        from shards.build import build_local
        from etl.core.config import load_section
        from shards.config import load_shards_config

        cfg, section = load_shards_config(args.params)
        manifest = build_local(args.input, args.output, cfg, section, tokenizer_path=args.tokenizer, num_partitions=args.partitions or 1,
                               reader_config=load_section(args.params, "read"))
        print(summary_line(manifest))
        return EXIT_OK
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


def summary_line(manifest: dict) -> str:
    shares = {g: round(n / max(1, manifest["num_tokens"]), 4) for g, n in manifest["tokens_by_group"].items()}
    return (f"[shards] {len(manifest['shards'])} shards, {manifest['num_slots']} docs, {manifest['num_tokens']} tokens, "
            f"token shares {json.dumps(shares)}, repeats {json.dumps(manifest['repeats'])}, rejected {manifest['num_rejected']}")
