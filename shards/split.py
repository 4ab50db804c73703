"""The validation split: which records are held out, and the plan of the held-out set.

A record goes to the validation set when a stable hash of its *lineage root* falls below
``shards.valid_fraction``: sha256 of ``"valid"`` and the root, read as a number in [0, 1). The
choice depends on nothing but the root, so a rebuild (any input order, any partitioning, the
local or the Spark path) keeps the split, and raising the fraction only adds records to it.

The lineage root is what must never straddle the split (:func:`lineage_root`):

* ``meta.cluster_id``: the near-duplicate cluster the dedup stage kept this record for (the
  smallest id of the cluster; augmented variants inherit it from their parent);
* else ``meta.augment.parent_id``: an augmented variant goes with its original;
* else ``meta.parent_id`` or ``meta.conversation_id``: a user's own lineage (a dialogue
  branch names the conversation it branched from);
* else the record's own id.

So no validation record shares a dedup cluster, an original or a conversation with a training
record. The held-out set is written to ``<output>/valid/`` as a shard set of its own (same
writer, same manifest format): every held-out record exactly once, groups interleaved by
their share of the set (:func:`holdout_plan`), weights = the groups' actual sizes.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shards.mix import MixPlan

VALID_DIR = "valid"
#: meta keys naming a user's own lineage (after the dedup cluster and the augment parent)
LINEAGE_KEYS = ("parent_id", "conversation_id")


def lineage_root(doc_id: str, meta: Mapping[str, Any] | None) -> str:
    """The key the split is chosen by (see the module docstring)."""
    meta = meta or {}
    if meta.get("cluster_id"):
        return f"cluster:{meta['cluster_id']}"
    augment = meta.get("augment")
    if isinstance(augment, Mapping) and augment.get("parent_id"):
        return f"id:{augment['parent_id']}"
    for key in LINEAGE_KEYS:
        if meta.get(key):
            return f"id:{meta[key]}"
    return f"id:{doc_id}"


def holdout_score(root: str) -> float:
    """A uniform number in [0, 1) from sha256("valid", root): the same on every run."""
    digest = hashlib.sha256(f"valid\x00{root}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_holdout(doc_id: str, meta: Mapping[str, Any] | None, fraction: float) -> bool:
    """True when the record belongs to the validation set."""
    return fraction > 0 and holdout_score(lineage_root(doc_id, meta)) < fraction


def holdout_plan(item_units: Mapping[str, np.ndarray], order: Sequence[str] | None = None) -> MixPlan:
    """Every item of every non-empty group exactly once, each slot going to the group furthest
    below its share of the whole set (shares = the groups' unit totals; ties to the earlier group
    of ``order``, default ``item_units``' own): the mix planner's rule without repeats, a pure
    function of the sizes (the local and Spark paths agree)."""
    names = tuple(g for g in (order or item_units) if len(item_units.get(g, ())))
    sizes = [np.asarray(item_units[g], dtype=np.int64).tolist() for g in names]
    totals = [sum(s) for s in sizes]
    grand = float(sum(totals)) or 1.0
    share = [t / grand for t in totals]
    taken, consumed, total = [0] * len(names), [0] * len(names), 0
    groups: list[int] = []
    items: list[int] = []
    for _ in range(sum(len(s) for s in sizes)):
        best, best_err = -1, None
        for g in range(len(names)):
            if taken[g] < len(sizes[g]):
                err = share[g] * (total + sizes[g][taken[g]]) - consumed[g]
                if best_err is None or err > best_err + 1e-12:
                    best, best_err = g, err
        size = sizes[best][taken[best]]
        groups.append(best)
        items.append(taken[best])
        taken[best] += 1
        consumed[best] += size
        total += size
    return MixPlan(names=names, group=np.asarray(groups, dtype=np.int16), item=np.asarray(items, dtype=np.int64),
                   num_items=tuple(len(s) for s in sizes), units=tuple(consumed))


def holdout_config(cfg, plan: MixPlan):
    """The shards config the validation set is written and checked with: weights = each group's
    units in the set (so its manifest's ratio check holds exactly), no default group, no split of its own."""
    weights = {g: float(u) for g, u in zip(plan.names, plan.units)}
    return dataclasses.replace(cfg, weights=weights, default_group="", on_exhausted="stop", valid_fraction=0.0)
