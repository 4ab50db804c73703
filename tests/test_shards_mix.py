"""The mix planner: exact counts, the prefix property, exhaustion policies, group mapping."""
from __future__ import annotations

import numpy as np
import pytest

from shards.mix import assign_group, plan_mix

WEIGHTS = {"general": 7, "domain": 2, "expert": 1}


def _prefix_deviation(plan, sizes, shares):
    consumed = np.zeros(len(plan.names))
    worst = 0.0
    for slot, g in enumerate(plan.group):
        consumed[g] += sizes[g][plan.item[slot] % len(sizes[g])]
        total = consumed.sum()
        worst = max(worst, float(np.max(np.abs(consumed - shares * total))))
    return worst


def test_exact_counts_and_prefix_property_in_documents():
    units = {"general": np.ones(700), "domain": np.ones(200), "expert": np.ones(100)}
    plan = plan_mix(WEIGHTS, units, "stop")
    assert len(plan) == 1000
    assert np.bincount(plan.group).tolist() == [700, 200, 100]
    # ties (equal deficits, within 1e-12) go to the earlier group
    assert plan.group[:10].tolist() == [0, 0, 1, 0, 0, 2, 0, 0, 1, 0]
    counts = np.zeros(3)
    for n, g in enumerate(plan.group, start=1):
        counts[g] += 1
        assert np.all(np.abs(counts - np.array([0.7, 0.2, 0.1]) * n) < 1.0), (n, counts)


@pytest.mark.parametrize("weights", [[1, 1, 1], [5, 3, 2, 1, 1], [0.61, 0.3, 0.09], [13, 1]])
def test_prefix_within_one_document_for_other_weights(weights):
    names = [f"g{i}" for i in range(len(weights))]
    units = {n: np.ones(400) for n in names}
    plan = plan_mix(dict(zip(names, weights)), units, "stop")
    shares = np.array(weights) / sum(weights)
    assert _prefix_deviation(plan, [units[n] for n in names], shares) < 1.0


def test_prefix_within_one_item_in_tokens():
    rng = np.random.default_rng(3)
    sizes = {g: rng.integers(1, 500, size=300) for g in WEIGHTS}
    plan = plan_mix(WEIGHTS, sizes, "stop")
    shares = np.array([0.7, 0.2, 0.1])
    assert _prefix_deviation(plan, [sizes[g] for g in WEIGHTS], shares) <= 500


def test_stop_ends_at_first_exhausted_group_and_repeat_reports_passes():
    units = {"general": np.ones(70), "domain": np.ones(50), "expert": np.ones(5)}
    stopped = plan_mix(WEIGHTS, units, "stop")
    assert np.bincount(stopped.group).tolist() == [39, 11, 5]  # slots until expert, chosen a 6th time, has none left
    assert stopped.repeats == {"general": 0.5571, "domain": 0.22, "expert": 1.0}
    repeated = plan_mix(WEIGHTS, units, "repeat")
    assert np.bincount(repeated.group).tolist() == [174, 50, 25]  # domain finishes its one pass last
    assert repeated.repeats == {"general": 2.4857, "domain": 1.0, "expert": 5.0}
    expert_items = repeated.item[repeated.group == 2]
    assert (expert_items % 5).tolist() == [i % 5 for i in range(25)]


def test_bad_weights_and_empty_groups_are_loud():
    with pytest.raises(ValueError, match="no records"):
        plan_mix(WEIGHTS, {"general": np.ones(3), "domain": np.ones(3)})
    with pytest.raises(ValueError, match="on_exhausted"):
        plan_mix(WEIGHTS, {g: np.ones(3) for g in WEIGHTS}, "loop")


def test_assign_group_exact_before_glob():
    rules = {"general": ["general", "chitchat-*"], "domain": ["medical*"], "expert": ["medical-genetics", "legal"]}
    assert assign_group("chitchat-film", rules) == "general"
    assert assign_group("medical-consultation", rules) == "domain"
    assert assign_group("medical-genetics", rules) == "expert"
    assert assign_group("poetry", rules) is None
    assert assign_group("poetry", rules, "general") == "general"


def test_reader_shuffle_keeps_every_prefix_within_one_item_of_the_shares():
    from shards.reader import interleave_by_deficit

    rng = np.random.default_rng(5)
    groups = rng.choice(3, size=600, p=[0.7, 0.2, 0.1])
    sizes = rng.integers(1, 300, size=600)
    order = interleave_by_deficit(groups, sizes, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(600))
    assert order.tolist() != interleave_by_deficit(groups, sizes, np.random.default_rng(1)).tolist()  # shuffles
    shares = np.array([sizes[groups == g].sum() for g in range(3)]) / sizes.sum()
    consumed = np.zeros(3)
    for i in order:
        consumed[groups[i]] += sizes[i]
        assert np.all(np.abs(consumed - shares * consumed.sum()) <= sizes.max() + 1e-9)
