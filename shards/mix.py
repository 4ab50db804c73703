"""The mix planner: which group fills each slot of the shard stream.

:func:`plan_mix` is a pure function. Each slot goes to the group *furthest below its target*
(Megatron-core ``BlendedDataset``'s rule): with shares ``w_g`` (weights normalised to 1),
units consumed so far ``C_g`` and in total ``T``, slot ``i`` goes to the group with the largest
``w_g * (T + u_g) - C_g`` where ``u_g`` is the size of that group's next item (1 in document
units, its token count in token units); ties go to the earlier group. In document units every
prefix of the plan holds each group within one document of its target (the tests check it
exhaustively); in token units within one item's tokens.

When a group runs out (``on_exhausted``):

* ``repeat`` -- start that group over (its items again, in the same order) and go on until every
  group has been used completely at least once; ``repeats[g]`` says how many passes each made
  (e.g. 2.4 = the group was read 2.4 times).
* ``stop`` -- end the plan at the first slot whose group has no items left, so the ratio holds
  exactly and the other groups' remaining items are left out (``repeats < 1``).

:func:`assign_group` maps a record's fine-grained ``domain`` to its mix group.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ON_EXHAUSTED = ("repeat", "stop")


@dataclass(frozen=True)
class MixPlan:
    """The slot sequence: ``group[i]`` (index into ``names``) and ``item[i]`` (index of the item
    within its group, before wrapping: ``item % num_items[g]`` is the item, ``item // num_items[g]``
    its pass)."""

    names: tuple[str, ...]
    group: np.ndarray
    item: np.ndarray
    num_items: tuple[int, ...]
    units: tuple[int, ...]

    @property
    def repeats(self) -> dict[str, float]:
        """Passes over each group's items (consumed items / available items)."""
        counts = np.bincount(self.group, minlength=len(self.names))
        return {n: round(float(c) / max(1, k), 4) for n, c, k in zip(self.names, counts, self.num_items)}

    def __len__(self) -> int:
        return len(self.group)


def normalise_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights as shares summing to 1; zero-weight groups are left out."""
    bad = {k: v for k, v in weights.items() if not (v >= 0)}
    if bad or not any(v > 0 for v in weights.values()):
        raise ValueError(f"shards.weights: need non-negative weights with a positive sum, got {dict(weights)}")
    total = float(sum(weights.values()))
    return {k: float(v) / total for k, v in weights.items() if v > 0}


def plan_mix(weights: Mapping[str, float], item_units: Mapping[str, Sequence[int] | np.ndarray], on_exhausted: str = "repeat") -> MixPlan:
    """Plan the slot order for groups with ``weights`` and per-item sizes ``item_units``.

    ``item_units[g]`` lists the size of each of group ``g``'s items in plan order (all ones to
    count documents, token counts to count tokens). Pure and deterministic.
    """
    if on_exhausted not in ON_EXHAUSTED:
        raise ValueError(f"shards.on_exhausted: must be one of {list(ON_EXHAUSTED)}, got {on_exhausted!r}")
    shares = normalise_weights(weights)
    names = tuple(shares)
    missing = [g for g in names if len(item_units.get(g, ())) == 0]
    if missing:
        raise ValueError(f"shards.weights: group(s) {missing} have a positive weight but no records")
    sizes = [np.asarray(item_units[g], dtype=np.int64) for g in names]
    if any((s <= 0).any() for s in sizes):
        raise ValueError("plan_mix: every item needs a positive size")
    return _greedy(names, np.array([shares[g] for g in names]), sizes, on_exhausted)


def _greedy(names, share: np.ndarray, sizes: list[np.ndarray], on_exhausted: str) -> MixPlan:
    num_groups = len(names)
    lengths = [len(s) for s in sizes]
    sizes_py = [s.tolist() for s in sizes]
    taken = [0] * num_groups          # items taken per group (not wrapped)
    consumed = [0] * num_groups       # units taken per group
    share_py = share.tolist()
    total = 0
    groups: list[int] = []
    items: list[int] = []
    passes_done = 0                   # groups that finished at least one full pass
    while True:
        best = most_behind(share_py, [sizes_py[g][taken[g] % lengths[g]] for g in range(num_groups)], consumed, total)
        if taken[best] >= lengths[best] and on_exhausted == "stop":
            break
        size = sizes_py[best][taken[best] % lengths[best]]
        groups.append(best)
        items.append(taken[best])
        taken[best] += 1
        consumed[best] += size
        total += size
        if taken[best] == lengths[best]:
            passes_done += 1
            if passes_done == num_groups and on_exhausted == "repeat":
                break
    return MixPlan(names=names, group=np.asarray(groups, dtype=np.int16), item=np.asarray(items, dtype=np.int64),
                   num_items=tuple(lengths), units=tuple(int(c) for c in consumed))


def most_behind(share: Sequence[float], next_sizes: Sequence[float | None], consumed: Sequence[float], total: float) -> int:
    """The mix rule: the group furthest below its share once its next item is taken, the
    largest ``share[g] * (total + next_sizes[g]) - consumed[g]`` (ties: the lowest index).
    A group whose ``next_sizes`` is None has nothing left and is skipped; -1 when none has.
    The planner (:func:`plan_mix`) and the reader's window shuffle
    (``shards.reader.interleave_by_deficit``) both use it."""
    best, best_err = -1, 0.0
    for g, nxt in enumerate(next_sizes):
        if nxt is None:
            continue
        err = share[g] * (total + nxt) - consumed[g]
        if best < 0 or err > best_err + 1e-12:
            best, best_err = g, err
    return best


def slot_positions(plan: MixPlan) -> list[np.ndarray]:
    """Per group, the slot of each planned item (``positions[g][k]`` = slot of its k-th item,
    counting repeats). Used to place records without materialising the slot order twice."""
    out = []
    for g in range(len(plan.names)):
        slots = np.flatnonzero(plan.group == g)
        out.append(slots)  # ordered by item index, since items of a group are taken in order
    return out


def assign_group(domain: str, rules: Mapping[str, Sequence[str]], default_group: str = "") -> str | None:
    """The mix group of a record ``domain``: exact names first, then glob patterns, in the order
    of ``rules`` (``{group: [name or pattern, ...]}``); ``default_group`` (or None) otherwise."""
    for group, patterns in rules.items():
        if domain in patterns or domain == group:
            return group
    for group, patterns in rules.items():
        if any(fnmatch.fnmatchcase(domain, p) for p in patterns):
            return group
    return default_group or None
