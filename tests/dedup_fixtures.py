"""Crafted near-duplicate fixtures shared by the dedup unit and Spark tests.

Built with a fixed rng so the true Jaccard of every relation the tests rely on is known and
asserted in the tests themselves (a chain A~B~C with J(A,C) below the threshold, an exact
copy, a Chinese pair, and dissimilar documents).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from etl.core.document import Document

#: Threshold used with these fixtures (the chain links are ~0.80, A-C ~0.64).
THRESHOLD = 0.7
#: Many short bands so the 0.75-0.8 chain links are candidates with near certainty; verification
#: at the threshold then removes the weaker pairs.
DEDUP_PARAMS = {"threshold": THRESHOLD, "num_bands": 32, "rows_per_band": 4}


def _edit(words: list[str], positions: list[int]) -> list[str]:
    out = list(words)
    for p in positions:
        out[p] = f"q{p}x"
    return out


def crafted_documents(data_dir: Path) -> list[Document]:
    """The fixture documents (ids sort in the order the tests reason about)."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    base = [rng.choice(vocab) for _ in range(60)]
    a = base
    b = _edit(a, [20, 40])
    c = _edit(b, [5, 50]) + ["tail", "words"]
    other = [rng.choice(vocab) for _ in range(60)]
    half = base[:30] + [rng.choice(vocab) for _ in range(30)]
    zh = [json.loads(line)["text"] for line in open(data_dir / "general_zh.jsonl", encoding="utf-8")]
    zh = [t for t in zh if 200 <= len(t) <= 600][:2]
    z1 = zh[0]
    z2 = list(z1)
    for p in (40, 120):
        z2[p] = "鑫"
    z2 = "".join(z2) + "。"
    return [
        Document("en-a", " ".join(a)),
        Document("en-b", " ".join(b)),
        Document("en-c", " ".join(c)),
        Document("en-d", " ".join(other)),
        Document("en-e", " ".join(a).upper()),  # exact copy of en-a after case folding
        Document("en-f", " ".join(half)),  # shares half of en-a: J ~ 0.33, must not merge
        Document("zh-1", z1),
        Document("zh-2", z2),  # two characters changed, one mark added: J ~ 0.93
        Document("zh-3", zh[1]),
        Document("p-1", "!!! ???"),  # no shingles: exact dedup only
        Document("p-2", "!!!\t???"),  # same length, same normalised text
    ]


#: (id -> (drop_reason, duplicate_of, cluster_id)) for every rejected fixture document.
EXPECTED_REJECTED = {
    "en-a": ("near_duplicate", "en-c", "en-a"),
    "en-b": ("near_duplicate", "en-c", "en-a"),
    "en-e": ("exact_duplicate", "en-a", None),
    "zh-1": ("near_duplicate", "zh-2", "zh-1"),
    "p-2": ("exact_duplicate", "p-1", None),
}
EXPECTED_KEPT = {"en-c", "en-d", "en-f", "zh-2", "zh-3", "p-1"}


def write_jsonl(docs: list[Document], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for d in docs:
            handle.write(json.dumps({"id": d.id, "text": d.text, "meta": d.meta}, ensure_ascii=False) + "\n")
    return path


def write_params(path: Path, dedup: dict | None = None, tfidf: dict | None = None) -> Path:
    import yaml

    from etl.core.config import load_params

    params = load_params()
    params["dedup"] = dict(DEDUP_PARAMS if dedup is None else dedup)
    if tfidf is not None:
        params["tfidf"] = tfidf
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return path
