"""``manifest.json``: what a shard set holds, written last; and verifying a set against it.

Manifest fields (``format: jinglian-shards/1``):

* ``shards``: in stream order, per shard ``name``, ``partition``, ``first_slot``, ``num_slots``,
  ``num_samples`` (tar samples: documents, or packed rows), ``num_docs``, ``num_tokens``,
  ``tokens_by_group``, ``docs_by_group``, ``max_doc_tokens`` (its largest sample), ``bytes``,
  ``sha256``, and its sidecar index ``index`` (``<name>.idx``), ``index_bytes``, ``index_sha256``
  (sets written before the index existed lack these; the reader then decodes whole shards).
* the set: ``groups`` (mix group names, the reader's ``domains``), ``weights`` (as given) and
  ``shares`` (normalised), ``unit`` (tokens | documents), ``on_exhausted``, ``repeats`` per group,
  ``num_slots``, ``tokens_by_group``, ``docs_by_group``, ``max_item_units`` (the plan's largest
  item: the tolerance of the ratio check), ``pack_seq_len`` (0 = not packed), ``tokenizer``
  (``path`` relative to the set when copied, ``fingerprint``, ``vocab_size``, ``eos_id``,
  ``pad_id``, ``dtype``), ``params_hash``, ``params`` (the shards section), ``num_rejected`` and
  ``rejected_reasons``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etl.core.atomic import TMP_MARK, write_json, write_output_marker
from etl.core.config import config_to_dict, params_hash

logger = logging.getLogger(__name__)
FORMAT = "jinglian-shards/1"
MANIFEST = "manifest.json"


def prepare_output(output: str | os.PathLike, keep_valid: bool = False) -> Path:
    """Make ``output`` ready for a (re)build: the old manifest goes first (the set is incomplete
    from then on), then old shards and stale temporaries, and an old validation set (``valid/``,
    a shard set itself) unless ``keep_valid`` (it is rebuilt in place then)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    if not keep_valid and (out / "valid" / MANIFEST).is_file():
        prepare_output(out / "valid")
        shutil.rmtree(out / "valid")
    write_output_marker(out, "shards")
    for stale in list(out.glob("shard-*.tar")) + list(out.glob("shard-*.tar.idx")) + list(out.glob(f"*{TMP_MARK}*")):
        stale.unlink(missing_ok=True)
    return out


def finish_output(out: Path, output: str, entries: list[dict[str, Any]], plan, cfg, params_section: dict, info,
                  rejected: Sequence[Any], reasons: dict[str, int] | None = None) -> dict[str, Any]:
    """Write rejected records and the manifest (last); returns the manifest.

    ``reasons``: the rejected records are written already (by Spark's executors, under
    ``rejected/``) and these are their counts per reason; ``rejected`` is then ignored."""
    from etl.io.records import write_parquet

    if reasons is None:
        reasons = Counter(d.drop_reason for d in rejected)
        if rejected:
            write_parquet(rejected, out / "rejected" / "part-0.parquet", rejected=True)
    reasons = dict(sorted(reasons.items()))  # the same order however the records were counted
    tokenizer = info.to_dict()
    tokenizer["path"] = copy_tokenizer(info.path, out)
    manifest = make_manifest(entries, plan, cfg, params_section, tokenizer, dict(reasons))
    write_json(out / MANIFEST, manifest)
    logger.info("wrote %d shards, %d slots -> %s", len(entries), manifest["num_slots"], output)
    return manifest


def make_manifest(entries: list[dict[str, Any]], plan, cfg, params_section: dict, tokenizer: dict, reasons: dict) -> dict[str, Any]:
    entries = sorted(entries, key=lambda e: e["first_slot"])
    groups = list(plan.names)
    total_w = sum(cfg.weights[g] for g in groups)
    tokens = {g: sum(e["tokens_by_group"][g] for e in entries) for g in groups}
    docs = {g: sum(e["docs_by_group"][g] for e in entries) for g in groups}
    max_doc = max((e["max_doc_tokens"] for e in entries), default=0)
    return {
        "format": FORMAT, "groups": groups, "weights": {g: cfg.weights[g] for g in groups},
        "shares": {g: cfg.weights[g] / total_w for g in groups}, "unit": cfg.unit, "on_exhausted": cfg.on_exhausted,
        "repeats": plan.repeats, "num_slots": len(plan), "num_samples": sum(e["num_samples"] for e in entries),
        "num_tokens": sum(tokens.values()), "tokens_by_group": tokens, "docs_by_group": docs,
        "max_item_units": max_doc if cfg.unit == "tokens" else 1, "pack_seq_len": cfg.pack_seq_len,
        "tokenizer": tokenizer, "params_hash": params_hash(params_section), "params": config_to_dict(cfg),
        "num_rejected": sum(reasons.values()), "rejected_reasons": reasons, "shards": entries,
    }


def load_manifest(path_or_manifest: str | os.PathLike | dict) -> tuple[dict[str, Any], Path | None]:
    """(manifest, its directory) from a set directory, a manifest path or an already-loaded dict
    (which then needs ``root``: the directory of its shards)."""
    if isinstance(path_or_manifest, dict):
        root = path_or_manifest.get("root")
        return path_or_manifest, Path(root) if root else None
    path = Path(path_or_manifest)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no shard manifest at {path} (an unfinished or missing shard set)")
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a jinglian shard manifest (format {manifest.get('format')!r}, expected {FORMAT!r})")
    return manifest, path.parent


def check_ratios(manifest: dict[str, Any]) -> list[str]:
    """Problems with the achieved mix: each group's units must be within ``max_item_units``
    of its share of the total (the plan's guarantee)."""
    unit_key = "tokens_by_group" if manifest["unit"] == "tokens" else "docs_by_group"
    achieved = manifest[unit_key]
    total = sum(achieved.values())
    tolerance = manifest["max_item_units"] * 1.0 + 1e-9
    problems = []
    for group, share in manifest["shares"].items():
        target = share * total
        if abs(achieved.get(group, 0) - target) > tolerance:
            problems.append(f"group {group!r}: {achieved.get(group, 0)} {manifest['unit']} but target {target:.1f} "
                            f"(share {share:.4f}, tolerance {tolerance:.0f})")
    sums = {g: sum(s[unit_key][g] for s in manifest["shards"]) for g in manifest["groups"]}
    if sums != achieved:
        problems.append(f"per-shard {unit_key} {sums} disagree with the set's {achieved}")
    return problems


def verify(directory: str | os.PathLike, *, deep: bool = False) -> list[str]:
    """Every problem found with a shard set (empty: it is sound). Checks each shard's presence,
    size and sha256, unexpected shard files, and the achieved ratios; ``deep`` also re-reads every
    sample and recounts tokens per group. The validation set ``valid/`` is checked the same way
    (its problems prefixed ``valid/``)."""
    from shards.tario import file_sha256

    manifest, root = load_manifest(directory)
    problems = []
    listed = {s["name"] for s in manifest["shards"]}
    for extra in sorted(p.name for p in root.glob("shard-*.tar") if p.name not in listed):
        problems.append(f"{extra}: shard file not in the manifest")
    for shard in manifest["shards"]:
        path = root / shard["name"]
        if not path.is_file():
            problems.append(f"{shard['name']}: missing")
            continue
        size = path.stat().st_size
        if size != shard["bytes"]:
            problems.append(f"{shard['name']}: {size} bytes, manifest says {shard['bytes']}")
        elif file_sha256(path) != shard["sha256"]:
            problems.append(f"{shard['name']}: sha256 differs from the manifest (corrupt)")
        elif "index" in shard and (not (root / shard["index"]).is_file() or file_sha256(root / shard["index"]) != shard["index_sha256"]):
            problems.append(f"{shard['index']}: index missing or its sha256 differs from the manifest")
        elif deep:
            problems += _deep_check(path, shard, manifest)
    problems += check_ratios(manifest)
    return problems + _verify_valid(root, manifest, deep)


def _verify_valid(root: Path, manifest: dict[str, Any], deep: bool) -> list[str]:
    """The validation set ``valid/`` (shards/split.py), checked like the set itself."""
    valid = root / "valid"
    if (valid / MANIFEST).is_file():
        return [f"valid/{p}" for p in verify(valid, deep=deep)]
    if (manifest.get("params") or {}).get("valid_fraction", 0) > 0 and manifest.get("num_slots", 0) > 0:
        return ["valid/: missing (the set was built with shards.valid_fraction > 0)"]
    return []


def _deep_check(path: Path, shard: dict, manifest: dict) -> list[str]:
    from shards.tario import ShardError, iter_shard, load_npy

    counts = {g: 0 for g in manifest["groups"]}
    num = 0
    try:
        for key, members in iter_shard(path):
            num += 1
            meta = json.loads(members["json"])
            tokens = load_npy(members["npy"], f"{path.name}:{key}")
            if "pieces" in meta:
                for _, group, n in meta["pieces"]:
                    counts[group] += n
            else:
                counts[meta["group"]] += len(tokens)
    except (ShardError, KeyError, ValueError) as exc:
        return [f"{shard['name']}: {exc}"]
    problems = []
    if num != shard["num_samples"]:
        problems.append(f"{shard['name']}: {num} samples, manifest says {shard['num_samples']}")
    if not manifest["pack_seq_len"] and counts != shard["tokens_by_group"]:
        problems.append(f"{shard['name']}: tokens per group {counts}, manifest says {shard['tokens_by_group']}")
    return problems


def copy_tokenizer(path: str, out_dir: Path) -> str:
    """Copy a local tokenizer directory into the shard set; returns the recorded path."""
    if os.path.isdir(path):
        dest = out_dir / "tokenizer"
        shutil.copytree(path, dest, dirs_exist_ok=True)
        return "tokenizer"
    return path
