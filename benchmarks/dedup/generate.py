"""Synthetic near-duplicate corpus with ground truth, made from the shared real corpora.

    python -m benchmarks.dedup.generate --num-docs 10000 --output /tmp/dedup-bench/10k [--seed 0]

How a corpus is made (all randomness from ``--seed``):

1. Sentence pools: every record of ``/work/shared/corpora`` (``general_*``, ``domain_medical``,
   ``expert``) is split into sentences (Chinese on 。！？, English after . ! ?); sentences of
   10-400 characters go to a Chinese or an English pool by their share of Han characters.
2. Base documents: a language (Chinese or English, 50/50), a target length uniform in
   [300, 1500] characters, then random sentences of that pool until the target is reached.
   Bases drawn this way share a sentence only by chance, so different families are far
   apart (a shared sentence gives a Jaccard of a few percent).
3. Families: each base starts a family of 1 + Geometric(p=0.5) documents, capped at 8 (so
   about half the families are singletons).  Member 0 is the base; every other member is
   the base edited at a rate drawn from ``EDIT_RATES``: that share of units (Han characters
   for Chinese, words for English) each gets one edit, a substitution, deletion or
   insertion (equally likely; new units come from the pool).  Rate 0 members differ from
   the base in case and whitespace only (exact duplicates after normalisation).
4. Output: ``docs/part-*.jsonl`` (10,000 records per file; ``meta`` holds ``family``,
   ``edit_rate`` and ``lang``) and ``truth.jsonl`` (id, family, edit_rate).

Ground truth for precision and recall is *not* the family: the evaluation
(``benchmarks/dedup/__main__.py``) computes the true Jaccard of the dedup shingle sets for
every pair inside a family and for every pair the methods put together, and takes as true
duplicate clusters the connected components of the pairs with Jaccard >= the threshold.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from etl.clean.tokenize import count_han
from etl.core.atomic import atomic_dir

CORPORA = Path("/work/shared/corpora")
SOURCES = ("general_zh.jsonl", "general_en.jsonl", "domain_medical.jsonl", "expert.jsonl")
EDIT_RATES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
DOCS_PER_FILE = 10_000
_ZH_SENT = re.compile(r"[^。！？\n]+[。！？]?")
_EN_SENT = re.compile(r"(?<=[.!?])\s+")


def sentence_pools(corpora: Path = CORPORA) -> tuple[list[str], list[str]]:
    """(Chinese sentences, English sentences) from the shared corpora."""
    zh, en = [], []
    for name in SOURCES:
        with open(corpora / name, encoding="utf-8") as handle:
            for line in handle:
                text = json.loads(line).get("text") or ""
                han_share = count_han(text) / max(1, len(text))
                if han_share > 0.3:
                    zh += [s.strip() for s in _ZH_SENT.findall(text) if 10 <= len(s.strip()) <= 400]
                elif han_share < 0.01:
                    en += [s.strip() for s in _EN_SENT.split(text) if 10 <= len(s.strip()) <= 400]
    return zh, en


def base_document(rng: random.Random, pool: list[str], lang: str) -> str:
    target = rng.randint(300, 1500)
    parts, size = [], 0
    while size < target:
        sentence = rng.choice(pool)
        parts.append(sentence)
        size += len(sentence) + 1
    return ("" if lang == "zh" else " ").join(parts)


def edit(rng: random.Random, text: str, lang: str, rate: float, filler: list[str]) -> str:
    """Apply ``round(rate * units)`` random substitutions/deletions/insertions."""
    if rate == 0.0:
        return text.upper() if lang == "en" else "  " + text.replace("。", "。 ")
    units = list(text) if lang == "zh" else text.split()
    for _ in range(max(1, round(rate * len(units)))):
        op = rng.randrange(3)
        pos = rng.randrange(len(units))
        new = rng.choice(filler)
        if op == 0:
            units[pos] = new
        elif op == 1 and len(units) > 1:
            del units[pos]
        else:
            units.insert(pos, new)
    return ("" if lang == "zh" else " ").join(units)


def generate(num_docs: int, seed: int = 0, corpora: Path = CORPORA) -> Iterator[dict]:
    """Yield ``num_docs`` records (families in order) with their ground-truth fields."""
    rng = random.Random(seed)
    zh, en = sentence_pools(corpora)
    fillers = {"zh": [c for s in rng.sample(zh, 2000) for c in s if count_han(c)], "en": [w for s in rng.sample(en, 2000) for w in s.split()]}
    made, family = 0, 0
    while made < num_docs:
        lang = "zh" if rng.random() < 0.5 else "en"
        base = base_document(rng, zh if lang == "zh" else en, lang)
        size = 1
        while size < 8 and rng.random() < 0.5:
            size += 1
        for member in range(min(size, num_docs - made)):
            rate = 0.0 if member == 0 else rng.choice(EDIT_RATES)
            text = base if member == 0 else edit(rng, base, lang, rate, fillers[lang])
            yield {"id": f"f{family:07d}-{member}", "text": text, "domain": "general", "lang": lang,
                   "meta": {"family": family, "edit_rate": rate if member else None}}
            made += 1
        family += 1


def write_corpus(num_docs: int, output: Path, seed: int = 0) -> Path:
    """Write docs/part-*.jsonl and truth.jsonl atomically under ``output``."""
    with atomic_dir(output) as tmp:
        (tmp / "docs").mkdir()
        handle, part = None, 0
        with open(tmp / "truth.jsonl", "w", encoding="utf-8") as truth:
            for i, rec in enumerate(generate(num_docs, seed)):
                if i % DOCS_PER_FILE == 0:
                    if handle:
                        handle.close()
                    handle = open(tmp / "docs" / f"part-{part:05d}.jsonl", "w", encoding="utf-8")
                    part += 1
                handle.write(json.dumps(rec, ensure_ascii=False) + "\n")
                truth.write(json.dumps({"id": rec["id"], "family": rec["meta"]["family"], "edit_rate": rec["meta"]["edit_rate"]}) + "\n")
        if handle:
            handle.close()
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dedup.generate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--num-docs", type=int, default=10_000, help="documents to generate")
    parser.add_argument("--output", required=True, help="output directory (docs/ and truth.jsonl)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    write_corpus(args.num_docs, Path(args.output), args.seed)


if __name__ == "__main__":
    main()
