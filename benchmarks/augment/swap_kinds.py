"""Count the entity swaps of an augment output by what they do to the meaning.

    python -m benchmarks.augment.swap_kinds --output data/pipeline/augment [--knowledge-graph data/augment/knowledge_graph.csv]

Every swap recorded in ``meta.augment.params.swaps`` of the entity-swap variants (kept and
rejected) is classified against the knowledge graph, independently of the ``kind`` it was
recorded with (outputs made before the swap kinds existed recorded ``same_type`` for both of
the last two):

* ``alias``: the replaced word is a graph surface and the replacement names the same entity;
* ``counterfactual``: the replaced word is a graph surface, the replacement another entity;
* ``non_graph``: the replaced word is not in the graph (picked by a part-of-speech tag).

Prints and returns JSON: swap and variant counts per class, kept and rejected, plus the
rejection reasons of the variants.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def classify(swap: dict, graph) -> str:
    """``alias`` / ``counterfactual`` / ``non_graph`` for one recorded swap."""
    old = graph.by_surface.get(swap["from"][0])
    if old is None:
        return "non_graph"
    new = graph.by_surface.get(swap["to"])
    return "alias" if new is not None and new.name == old.name else "counterfactual"


def table(counts: collections.Counter) -> dict:
    """``{(status, kind): n}`` as ``{status: {kind: n}}`` for kept and rejected."""
    return {status: {k: n for (st, k), n in sorted(counts.items()) if st == status} for status in ("kept", "rejected")}


def count_swap_kinds(records, graph) -> dict:
    """Counts over the entity-swap variants among ``records`` (Documents)."""
    swaps, variants, reasons, examples = collections.Counter(), collections.Counter(), collections.Counter(), {}
    for doc in records:
        lineage = doc.meta.get("augment")
        if not isinstance(lineage, dict) or lineage.get("method") != "entity_swap":
            continue
        status = "rejected" if doc.dropped else "kept"
        reasons[doc.drop_reason or "kept"] += 1
        kinds = set()
        for swap in (lineage.get("params") or {}).get("swaps") or ():
            kind = classify(swap, graph)
            kinds.add(kind)
            swaps[(status, kind)] += 1
            examples.setdefault(kind, []).append(f"{swap['from'][0]} -> {swap['to']}")
        for kind in kinds:
            variants[(status, kind)] += 1
    return {"swaps": table(swaps), "swaps_total": dict(collections.Counter(k for (_, k) in swaps.elements())),
            "variants_with_kind": table(variants), "variants_by_outcome": dict(reasons),
            "examples": {k: v[:8] for k, v in sorted(examples.items())}}


def main(argv: list[str] | None = None) -> dict:
    from augment.entity_swap import KnowledgeGraph
    from etl.io.records import read_parquet_dir

    parser = argparse.ArgumentParser(prog="python -m benchmarks.augment.swap_kinds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="an augment stage output directory (kept/, rejected/)")
    parser.add_argument("--knowledge-graph", nargs="+", default=[str(ROOT / "data" / "augment" / "knowledge_graph.csv")])
    args = parser.parse_args(argv)
    graph = KnowledgeGraph.load(args.knowledge_graph)
    out = Path(args.output)
    records = [d for sub in ("kept", "rejected") if (out / sub).is_dir() for d in read_parquet_dir(out / sub)]
    result = count_swap_kinds(records, graph)
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return result


if __name__ == "__main__":
    main()
