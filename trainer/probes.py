"""Knowledge probes: cloze prompts from a knowledge-graph CSV, ranked candidates, robustness.

Two CSV forms are read (header names decide):

* **triples** (a user's graph): ``head,relation,tail`` (or ``subject,relation,object``), with an
  optional ``prompt`` column (a template with ``{head}`` and ``{relation}``) and an optional
  ``candidates`` column (``a|b|c``). Without a template the prompt is ``{head}的{relation}是`` for
  a Chinese head and ``The {relation} of {head} is`` otherwise; without candidates they are
  every tail of the same relation.
* **entities** (the augment stage's ``entity,type,aliases``, data/augment/knowledge_graph.csv):
  one probe per alias: ``{alias}，也叫`` / ``{alias}, also called`` -> the entity's name, the
  candidates being the names of every entity of the same type.

Scoring (the ``acc`` of lm-evaluation-harness's multiple-choice tasks): each candidate's score
is the summed log-probability of its tokens after the prompt; the probe's *rank* is 1 + the
number of candidates scoring strictly higher than the true one. Figures:

* ``accuracy``: share of probes ranked first;
* ``entity_recall``: share of distinct true entities ranked first by at least one of their
  probes (knowledge coverage: how much of the graph the model can name);
* ``mrr``: mean reciprocal rank.

Robustness: each probe's prompt is perturbed (:data:`PERTURBATIONS`); the *attack success
rate* is the share of perturbed probes whose top-ranked candidate changes. ``alias`` is the
augment stage's entity-preserving substitution (a surface of a graph entity in the prompt is
replaced by another surface of the same entity, as the entity-swap step matches them);
``char_noise`` is :func:`augment.noise.char_noise` with the entities protected.
"""
from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from augment.lineage import derive_seed
from augment.noise import char_noise

_HAN = re.compile(r"[\u3400-\u9fff]")
_ALIAS_SPLIT = re.compile(r"[|;；]")


@dataclass(frozen=True)
class Probe:
    """One cloze question: ``prompt`` + delimiter + the true ``answer`` among ``candidates``."""

    id: str
    prompt: str
    answer: str
    candidates: tuple[str, ...]
    delimiter: str = " "
    """Text between prompt and candidate (none after a Chinese prompt)."""
    entities: tuple[str, ...] = field(default=())
    """Graph surfaces in the prompt (kept by char noise, swapped by alias substitution)."""
    kind: str = "triple"
    """``alias`` (entity form: the template follows the alias's script) or ``triple``."""


def _is_zh(text: str) -> bool:
    return bool(_HAN.search(text))


def _read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"knowledge graph {str(path)!r} does not exist")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        return [h.strip() for h in reader.fieldnames or []], [{k.strip(): (v or "").strip() for k, v in r.items() if k}
                                                               for r in reader]


def load_probes(path: str | Path) -> tuple[list[Probe], dict[str, tuple[str, ...]]]:
    """(probes, surfaces of each entity name) from a knowledge-graph CSV (module docstring)."""
    header, rows = _read_rows(path)
    if {"entity", "type"} <= set(header):
        return entity_probes(rows, str(path))
    head = "head" if "head" in header else "subject"
    tail = "tail" if "tail" in header else "object"
    if not {head, "relation", tail} <= set(header):
        raise ValueError(f"{path}: a knowledge-graph CSV needs columns entity,type[,aliases] or head,relation,tail; "
                         f"has {header}")
    return triple_probes(rows, str(path), head, tail), {}


def entity_probes(rows: list[dict[str, str]], where: str) -> tuple[list[Probe], dict[str, tuple[str, ...]]]:
    """Alias probes from ``entity,type,aliases`` rows (each needs two entities of its type)."""
    by_type: dict[str, list[str]] = {}
    surfaces: dict[str, tuple[str, ...]] = {}
    for i, row in enumerate(rows, start=2):
        name, etype = row.get("entity", ""), row.get("type", "")
        if not name or not etype:
            raise ValueError(f"{where}: line {i}: a knowledge-graph row needs 'entity' and 'type', got {row!r}")
        if name in surfaces:
            continue
        aliases = tuple(a.strip() for a in _ALIAS_SPLIT.split(row.get("aliases", "")) if a.strip() and a.strip() != name)
        surfaces[name] = (name,) + aliases
        by_type.setdefault(etype, []).append(name)
    probes = []
    for names in by_type.values():
        if len(names) < 2:
            continue
        for name in names:
            for k, alias in enumerate(surfaces[name][1:]):
                zh = _is_zh(alias)
                prompt = f"{alias}，也叫" if zh else f"{alias}, also called"
                probes.append(Probe(f"{name}/alias{k}", prompt, name, tuple(names), "" if zh else " ", (alias,), "alias"))
    return probes, surfaces


def triple_probes(rows: list[dict[str, str]], where: str, head: str, tail: str) -> list[Probe]:
    """Probes from ``head,relation,tail`` rows."""
    tails: dict[str, list[str]] = {}
    for row in rows:
        if row.get(tail) and row[tail] not in tails.setdefault(row["relation"], []):
            tails[row["relation"]].append(row[tail])
    probes = []
    for i, row in enumerate(rows, start=2):
        h, rel, t = row.get(head, ""), row.get("relation", ""), row.get(tail, "")
        if not (h and rel and t):
            raise ValueError(f"{where}: line {i}: {head}, relation and {tail} must all be set, got {row!r}")
        zh = _is_zh(h)
        template = row.get("prompt") or ("{head}的{relation}是" if zh else "The {relation} of {head} is")
        prompt = template.replace("{head}", h).replace("{relation}", rel)
        candidates = tuple(c.strip() for c in row.get("candidates", "").split("|") if c.strip()) or tuple(tails[rel])
        if t not in candidates:
            candidates = (t,) + candidates
        if len(candidates) < 2:
            continue
        probes.append(Probe(f"line{i}", prompt, t, candidates, "" if zh or prompt.endswith(" ") else " ", (h,)))
    return probes


# ----------------------------------------------------------------------------- scoring


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def continuation_logprobs(model: Any, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 16) -> list[float]:
    """Summed log-probability of each continuation's tokens after its context (right-padded
    batches; a context must have at least one token)."""
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        seqs = [ctx + cont for ctx, cont in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.as_tensor(s)
            mask[i, :len(s)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for i, (ctx, cont) in enumerate(chunk):
            positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=device)
            out.append(float(logp[i, positions, torch.as_tensor(cont, device=device)].sum()))
    return out


def score_probes(model: Any, tokenizer: Any, probes: Sequence[Probe], batch_size: int = 16) -> list[dict[str, Any]]:
    """Per probe: candidate scores, the rank of the true answer and the top candidate."""
    pairs, spans = [], []
    for probe in probes:
        context = _encode(tokenizer, probe.prompt)
        if not context:
            raise ValueError(f"probe {probe.id}: the prompt {probe.prompt!r} has no tokens")
        first = len(pairs)
        for cand in probe.candidates:
            pairs.append((context, _encode(tokenizer, probe.delimiter + cand)))
        spans.append((first, len(pairs)))
    scores = continuation_logprobs(model, pairs, batch_size)
    results = []
    for probe, (lo, hi) in zip(probes, spans):
        mine = scores[lo:hi]
        true = mine[probe.candidates.index(probe.answer)]
        best = max(range(len(mine)), key=lambda j: (mine[j], -j))
        results.append({"id": probe.id, "answer": probe.answer, "rank": 1 + sum(s > true for s in mine),
                        "predicted": probe.candidates[best], "num_candidates": len(mine)})
    return results


def probe_figures(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """accuracy, entity_recall, mrr and counts (module docstring)."""
    if not results:
        return {"num_probes": 0, "num_entities": 0, "accuracy": None, "entity_recall": None, "mrr": None}
    recalled: dict[str, bool] = {}
    for r in results:
        recalled[r["answer"]] = recalled.get(r["answer"], False) or r["rank"] == 1
    return {"num_probes": len(results), "num_entities": len(recalled),
            "accuracy": sum(r["rank"] == 1 for r in results) / len(results),
            "entity_recall": sum(recalled.values()) / len(recalled),
            "mrr": sum(1.0 / r["rank"] for r in results) / len(results)}


# ----------------------------------------------------------------------------- robustness

Perturbation = Callable[[Probe, random.Random, dict], Probe]


def alias_substitution(probe: Probe, rng: random.Random, surfaces: dict[str, tuple[str, ...]]) -> Probe:
    """Replace a graph surface in the prompt by another surface of the same entity."""
    by_surface = {s: name for name, all_s in surfaces.items() for s in all_s}
    for span in probe.entities:
        # an alias probe never gets the answer itself as its new prompt
        others = [s for s in surfaces.get(by_surface.get(span, ""), ()) if s != span
                  and not (probe.kind == "alias" and s == probe.answer)]
        if others and span in probe.prompt:
            new = rng.choice(others)
            if probe.kind == "alias":  # the alias template follows the new surface's script
                zh = _is_zh(new)
                return replace(probe, prompt=f"{new}，也叫" if zh else f"{new}, also called",
                               delimiter="" if zh else " ", entities=(new,))
            return replace(probe, prompt=probe.prompt.replace(span, new, 1), entities=(new,))
    return probe


def noise_perturbation(probe: Probe, rng: random.Random, surfaces: dict[str, tuple[str, ...]], rate: float = 0.1) -> Probe:
    """Character noise on the prompt's template words (entities protected)."""
    return replace(probe, prompt=char_noise(probe.prompt, rng, rate, protect=probe.entities))


PERTURBATIONS: dict[str, Perturbation] = {"alias": alias_substitution, "char_noise": noise_perturbation}


def attack_success(model: Any, tokenizer: Any, probes: Sequence[Probe], clean: Sequence[dict[str, Any]],
                   surfaces: dict[str, tuple[str, ...]], seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """Per perturbation: probes actually changed, how many flipped their top candidate, and the
    attack success rate (flipped / changed); ``all`` pools them."""
    out: dict[str, Any] = {}
    flipped_all = changed_all = 0
    for name, perturb in PERTURBATIONS.items():
        pairs = [(i, perturb(p, random.Random(derive_seed(seed, p.id, name)), surfaces)) for i, p in enumerate(probes)]
        pairs = [(i, q) for i, q in pairs if q.prompt != probes[i].prompt and q.prompt.strip()]
        attacked = score_probes(model, tokenizer, [q for _, q in pairs], batch_size) if pairs else []
        flipped = sum(a["predicted"] != clean[i]["predicted"] for (i, _), a in zip(pairs, attacked))
        out[name] = {"changed": len(pairs), "flipped": flipped,
                     "attack_success": flipped / len(pairs) if pairs else None}
        flipped_all += flipped
        changed_all += len(pairs)
    out["all"] = {"changed": changed_all, "flipped": flipped_all,
                  "attack_success": flipped_all / changed_all if changed_all else None}
    return out
