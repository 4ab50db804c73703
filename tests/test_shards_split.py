"""The validation split: stable across rebuilds and input order, disjoint lineage, verified."""
from __future__ import annotations

import json
import random

import pytest

from shards.build import build_local
from shards.cli import main as shards_main
from shards.config import ShardsConfig
from shards.manifest import verify
from shards.split import holdout_plan, is_holdout, lineage_root
from shards.tario import iter_shard
from shards.tokenizer import train_bpe_tokenizer


def _records(data_dir) -> list[dict]:
    """Originals, augmented variants of some (meta.augment.parent_id) and near-dup cluster
    members kept under a cluster id (a variant inherits its parent's cluster_id)."""
    out = []
    for name, domain, n in (("general_en", "general", 80), ("domain_medical", "medical", 30), ("expert", "expert", 30)):
        with open(data_dir / f"{name}.jsonl", encoding="utf-8") as handle:
            for i, line in enumerate(list(handle)[:n]):
                text = json.loads(line)["text"][:300]
                meta = {"cluster_id": f"{name}-c{i // 3}"} if i % 5 == 0 else {}
                doc_id = f"{name}-{i}"
                out.append({"id": doc_id, "text": text, "domain": domain, "meta": meta})
                if i % 2 == 0:
                    variant_meta = dict(meta, augment={"method": "entity_swap", "parent_id": doc_id, "variant": 0})
                    out.append({"id": f"{doc_id}~e0", "text": text[::-1], "domain": domain, "meta": variant_meta})
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, data_dir):
    texts = [r["text"] for r in _records(data_dir)]
    return train_bpe_tokenizer(texts, 600, tmp_path_factory.mktemp("tok"))


def _write(records, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for r in records:
            handle.write(json.dumps(r, ensure_ascii=False) + "\n")


def _build(tmp_path, records, tokenizer_dir, name, **cfg):
    _write(records, tmp_path / f"in-{name}" / "part.jsonl")
    config = ShardsConfig(samples_per_shard=10, **{"valid_fraction": 0.25, **cfg})
    build_local([str(tmp_path / f"in-{name}")], str(tmp_path / name), config, {"test": True},
                tokenizer_path=str(tokenizer_dir))
    return tmp_path / name


def _ordered_ids(directory) -> list[str]:
    return [json.loads(members["json"])["id"] for shard in sorted(directory.glob("shard-*.tar"))
            for _, members in iter_shard(shard)]


def _ids(directory) -> set[str]:
    return set(_ordered_ids(directory))


def test_lineage_root_follows_cluster_then_augment_parent():
    assert lineage_root("a", {}) == "id:a"
    assert lineage_root("a~e0", {"augment": {"parent_id": "a"}}) == lineage_root("a", {})
    assert lineage_root("b", {"cluster_id": "a"}) == lineage_root("b~m1", {"cluster_id": "a", "augment": {"parent_id": "b"}})
    assert lineage_root("t2", {"conversation_id": "t"}) == "id:t"
    assert not is_holdout("a", {}, 0.0)


def test_holdout_fraction_is_near_its_target_and_monotone():
    ids = [f"doc-{i}" for i in range(20000)]
    small = {i for i in ids if is_holdout(i, {}, 0.05)}
    large = {i for i in ids if is_holdout(i, {}, 0.10)}
    assert 0.04 < len(small) / len(ids) < 0.06
    assert small < large  # raising the fraction only adds records


def test_holdout_plan_uses_every_item_once_interleaved():
    import numpy as np

    plan = holdout_plan({"general": np.ones(6, dtype=np.int64), "domain": np.ones(3, dtype=np.int64),
                         "empty": np.zeros(0, dtype=np.int64)})
    assert plan.names == ("general", "domain")
    assert plan.group.tolist() == [0, 1, 0, 0, 1, 0, 0, 1, 0]
    assert sorted(plan.item[plan.group == 0].tolist()) == list(range(6))


def test_split_is_disjoint_by_lineage_stable_and_verified(tmp_path, data_dir, tokenizer_dir):
    records = _records(data_dir)
    out = _build(tmp_path, records, tokenizer_dir, "a")
    train_ids, valid_ids = _ids(out), _ids(out / "valid")
    by_id = {r["id"]: r for r in records}
    assert valid_ids and train_ids and not train_ids & valid_ids
    assert train_ids | valid_ids == set(by_id)
    roots = {name: {lineage_root(i, by_id[i]["meta"]) for i in ids} for name, ids in (("t", train_ids), ("v", valid_ids))}
    assert not roots["t"] & roots["v"]
    # every variant is on the side of its original
    for i in valid_ids:
        parent = (by_id[i]["meta"].get("augment") or {}).get("parent_id")
        assert parent is None or parent in valid_ids
    valid_manifest = json.loads((out / "valid" / "manifest.json").read_text())
    assert valid_manifest["repeats"] == {g: 1.0 for g in valid_manifest["groups"]}
    assert set(valid_manifest["groups"]) <= {"general", "domain", "expert"}
    # a rebuild from shuffled input keeps the split and its order
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    again = _build(tmp_path, shuffled, tokenizer_dir, "b")
    assert _ordered_ids(again / "valid") == _ordered_ids(out / "valid")
    assert verify(out) == [] and verify(out, deep=True) == []
    assert shards_main(["verify", str(out)]) == 0
    first = out / "valid" / valid_manifest["shards"][0]["name"]
    first.write_bytes(first.read_bytes()[:-10] + b"0123456789")
    assert any(p.startswith("valid/shard-") for p in verify(out))
    assert shards_main(["verify", str(out)]) == 1


def test_rebuild_without_fraction_removes_the_old_valid_set(tmp_path, data_dir, tokenizer_dir):
    records = _records(data_dir)[::5]
    out = _build(tmp_path, records, tokenizer_dir, "c")
    assert (out / "valid" / "manifest.json").is_file()
    _build(tmp_path, records, tokenizer_dir, "c", valid_fraction=0.0)
    assert not (out / "valid").exists() and _ids(out) == {r["id"] for r in records}
    assert verify(out) == []
