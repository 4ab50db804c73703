"""Entity swap: replace knowledge-graph entities by their aliases (meaning kept), or, in the
explicit counterfactual mode, by other entities of the same type.

Entities in a document come from two sources:

* the **knowledge graph** (CSV or JSON/JSONL rows of ``entity, type, aliases``) and the words
  of user dictionaries whose tag maps to a type: every name and alias is matched (Han surfaces
  kept whole by jieba, Latin ones at word boundaries);
* **jieba part-of-speech tags** (``nr`` person, ``ns`` place, ``nt`` organisation by default;
  ``augment.entity_swap.pos_types``) on Han text: words the graph does not know.

``mode: alias`` (the default) replaces a graph entity by one of its own aliases only
(``CPU`` -> ``中央处理器``, ``NIH`` -> ``National Institutes of Health``): the variant says the
same thing.  Words the graph does not know are never replaced, whatever their tag.
``mode: counterfactual`` also replaces a graph entity by another entity of the same type
(``北京`` -> ``上海``, swap kind ``counterfactual``) and a tagged word outside the graph by a
graph entity of the mapped type (kind ``non_graph``): false statements by design, for
robustness to entity names, never for knowledge injection; the lineage records the mode and
each swap's kind.  Within one variant every mention of an entity gets the same replacement,
and a replacement never names an entity already mentioned in the document.
"""
from __future__ import annotations

import collections
import csv
import json
import logging
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from augment.config import AugmentConfig, EntitySwapConfig
from augment.facts import FactExtractor
from augment.lineage import error_variant, guard_variant, is_variant, make_variant, num_variants, variant_rng
from augment.words import Word, pos_tokenizer, segment
from etl.core.document import Document

logger = logging.getLogger(__name__)
METHOD = "entity_swap"
_ALIAS_SPLIT = re.compile(r"[|;；]")


@dataclass(frozen=True)
class Entity:
    """One knowledge-graph entity: its name, type and aliases (``surfaces`` = name + aliases)."""

    name: str
    type: str
    aliases: tuple[str, ...] = ()

    @property
    def surfaces(self) -> tuple[str, ...]:
        return (self.name,) + self.aliases


class KnowledgeGraph:
    """Entities indexed by surface and by type."""

    def __init__(self, entities: Iterable[Entity] = ()):
        self.entities: list[Entity] = []
        self.by_surface: dict[str, Entity] = {}
        self.by_type: dict[str, list[str]] = defaultdict(list)
        self._facts: FactExtractor | None = None
        for entity in entities:
            self.add(entity)

    def fact_extractor(self) -> FactExtractor:
        """The fact extractor of this graph (every surface counts as its entity); built once,
        again only after entities were added."""
        if self._facts is None:
            self._facts = FactExtractor({surface: entity.name for surface, entity in self.by_surface.items()})
        return self._facts

    def add(self, entity: Entity) -> None:
        if entity.name in self.by_surface:
            return  # first definition wins
        self._facts = None
        self.entities.append(entity)
        for surface in entity.surfaces:
            self.by_surface.setdefault(surface, entity)
        self.by_type[entity.type].append(entity.name)

    def add_names(self, names: Iterable[tuple[str, str]]) -> None:
        """Add bare ``(name, type)`` pairs (user-dictionary words) to the same-type pools."""
        for name, etype in names:
            self.add(Entity(name, etype))

    def __len__(self) -> int:
        return len(self.entities)

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike]) -> KnowledgeGraph:
        """Load CSV (header ``entity,type,aliases``) or JSON / JSON Lines files."""
        graph = cls()
        for path in paths:
            for entity in _read_entities(Path(path)):
                graph.add(entity)
        return graph


def _entity(row: dict, where: str) -> Entity:
    name = str(row.get("entity") or row.get("name") or "").strip()
    etype = str(row.get("type") or "").strip()
    if not name or not etype:
        raise ValueError(f"{where}: a knowledge-graph row needs 'entity' and 'type', got {row!r}")
    aliases = row.get("aliases") or []
    if isinstance(aliases, str):
        aliases = _ALIAS_SPLIT.split(aliases)
    return Entity(name, etype, tuple(a.strip() for a in aliases if a.strip() and a.strip() != name))


def _read_entities(path: Path) -> Iterable[Entity]:
    if not path.is_file():
        raise FileNotFoundError(f"knowledge graph {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        for i, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            yield _entity(row, f"{path}: line {i}")
        return
    stripped = text.lstrip()
    rows = json.loads(stripped) if stripped.startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    for i, row in enumerate(rows, start=1):
        yield _entity(row, f"{path}: record {i}")


def load_graph(config: EntitySwapConfig) -> KnowledgeGraph:
    """The knowledge graph of ``config`` with the typed words of its user dictionaries added."""
    graph = KnowledgeGraph.load(config.knowledge_graph)
    graph.add_names(user_dict_entities(config.user_dicts, dict(config.pos_types)))
    return graph


def user_dict_entities(paths: Iterable[str], pos_types: dict[str, str]) -> list[tuple[str, str]]:
    """``(word, type)`` for user-dictionary words whose tag maps to an entity type."""
    out = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[-1] in pos_types and not parts[-1].isdigit():
                out.append((parts[0], pos_types[parts[-1]]))
    return out


@dataclass(frozen=True)
class Mention:
    """An entity mention: ``text[start:end]``, its consistency key, type and whether it is in the graph."""

    start: int
    end: int
    surface: str
    key: str
    type: str


class EntityFinder:
    """Finds entity mentions with the knowledge graph and jieba POS tags (shared with masked-LM,
    which must not mask entities)."""

    def __init__(self, graph: KnowledgeGraph, config: EntitySwapConfig):
        self.graph = graph
        self.pos_types = dict(config.pos_types)
        words = tuple(sorted((s, "nz") for s in graph.by_surface))
        self.tokenizer = pos_tokenizer(tuple(config.user_dicts), words)
        latin = sorted((s for s in graph.by_surface if not re.search(r"[^\x00-\x7f]", s)), key=len, reverse=True)
        self.latin = re.compile("|".join(rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])" for s in latin)) if latin else None

    def mentions(self, text: str, words: list[Word] | None = None) -> list[Mention]:
        """Entity mentions in ``text``, in order, non-overlapping.

        ``words``: ``segment(text, self.tokenizer)`` when the caller has it already (masked-LM
        segments each document once for both its words and its entities; jieba's HMM pass is
        about half of that method's CPU time on short documents)."""
        found: list[Mention] = []
        for word in words if words is not None else segment(text, self.tokenizer):
            mention = self._mention(word.start, word.end, word.text, word.pos)
            if mention:
                found.append(mention)
        if self.latin:
            taken = [(m.start, m.end) for m in found]
            for match in self.latin.finditer(text):
                if not any(s < match.end() and match.start() < e for s, e in taken):
                    found.append(self._mention(match.start(), match.end(), match.group(), "nz"))
        return sorted(found, key=lambda m: m.start)

    def _mention(self, start: int, end: int, surface: str, pos: str) -> Mention | None:
        entity = self.graph.by_surface.get(surface)
        if entity is not None:
            return Mention(start, end, surface, f"kg:{entity.name}", entity.type)
        if pos in self.pos_types and len(surface) > 1:
            return Mention(start, end, surface, f"pos:{surface}", self.pos_types[pos])
        return None


class EntitySwapAugmenter:
    """Makes entity-swap variants for a batch of documents (no model; CPU only)."""

    name = "augment_entity_swap"

    def __init__(self, config: AugmentConfig, graph: KnowledgeGraph | None = None):
        self.config = config
        cfg = config.entity_swap
        self.graph = graph if graph is not None else load_graph(cfg)
        if graph is not None:  # a graph loaded without this config's user dictionaries
            self.graph.add_names(user_dict_entities(cfg.user_dicts, dict(cfg.pos_types)))
        self.finder = EntityFinder(self.graph, cfg)
        self.facts = self.graph.fact_extractor()
        self.model = f"kg:{len(self.graph)} entities" + (f"; {','.join(map(str, cfg.knowledge_graph))}" if cfg.knowledge_graph else "")

    def __call__(self, docs: list[Document]) -> list[Document]:
        out: list[Document] = []
        for doc in docs:
            out.append(doc)
            n = 0 if doc.dropped or is_variant(doc) else num_variants(self.config, doc, METHOD)
            if n:
                out.extend(self._variants(doc, n))
        return out

    def _variants(self, doc: Document, n: int) -> list[Document]:
        try:
            mentions = self.finder.mentions(doc.text)
            variants = [self.swap(doc, mentions, i) for i in range(n)]
            return [guard_variant(self.config, doc, v, self.name, self.facts, self.expected_facts(doc, mentions, v))
                    for v in variants if v is not None]
        except Exception as exc:  # noqa: BLE001 - the parent is kept either way
            if self.config.on_error == "raise":
                raise
            logger.warning("entity swap failed on %s: %s", doc.id, exc)
            return [error_variant(doc, METHOD, self.name, exc)]

    def swap(self, doc: Document, mentions: list[Mention], variant: int) -> Document | None:
        """One variant of ``doc`` (None when it has no swappable entity)."""
        cfg = self.config.entity_swap
        rng = variant_rng(self.config.seed, doc.id, METHOD, variant)
        plan = plan_swaps(mentions, self.graph, cfg, rng)
        if not plan:
            return None
        text = apply_swaps(doc.text, mentions, plan)
        swaps = [{"from": sorted({m.surface for m in mentions if m.key == key}), "to": new, "type": t, "kind": kind,
                  "mentions": sum(m.key == key for m in mentions)}
                 for key, (new, t, kind) in sorted(plan.items())]
        params = {"mode": cfg.mode, "entity_fraction": cfg.entity_fraction, "seed": self.config.seed, "swaps": swaps}
        if cfg.mode == "counterfactual":
            params["alias_prob"] = cfg.alias_prob
        return make_variant(doc, METHOD, variant, text, self.model, params)

    def expected_facts(self, doc: Document, mentions: list[Mention], child: Document | None) -> dict | None:
        """The facts a counterfactual variant should hold: its parent's, less the facts of each
        replaced mention (an entity, or the ``四`` of ``四川省``), plus those of its replacement.
        None when every swap is an alias: the variant must keep exactly its parent's facts."""
        if child is None:
            return None
        swaps = child.meta["augment"]["params"]["swaps"]
        if all(s["kind"] == "alias" for s in swaps):
            return None
        expected = {kind: collections.Counter(values) for kind, values in self.facts.facts(doc.text).items()}
        for swap in swaps:
            replaced = set(swap["from"])
            for mention in (m for m in mentions if m.surface in replaced):
                for kind, values in self.facts.facts(mention.surface).items():
                    expected[kind].subtract(values)
                for kind, values in self.facts.facts(swap["to"]).items():
                    expected[kind].update(values)
        return {kind: +values for kind, values in expected.items()}


def plan_swaps(mentions: list[Mention], graph: KnowledgeGraph, config: EntitySwapConfig, rng: random.Random) -> dict[str, tuple[str, str, str]]:
    """Entity key -> (replacement, type, kind) for the chosen entities; kind ``alias`` (an alias
    of the same graph entity), ``counterfactual`` (another graph entity of the same type) or
    ``non_graph`` (a tagged word outside the graph replaced by a graph entity).  Alias mode plans
    aliases only, and only for graph entities."""
    counterfactual = config.mode == "counterfactual"
    keys = sorted({m.key for m in mentions if counterfactual or m.key.startswith("kg:")})
    mentioned = {m.surface for m in mentions}
    options = {k: _options(k, mentions, graph, mentioned, counterfactual) for k in keys}
    keys = [k for k in keys if options[k][0] or options[k][1]]
    if not keys:
        return {}
    count = max(1, round(config.entity_fraction * len(keys)))
    plan: dict[str, tuple[str, str, str]] = {}
    used: set[str] = set()  # two entities never get the same replacement
    for key in sorted(rng.sample(keys, count)):
        aliases = [a for a in options[key][0] if a not in used]
        peers = [p for p in options[key][1] if p not in used]
        etype = next(m.type for m in mentions if m.key == key)
        if aliases and (not peers or rng.random() < config.alias_prob):
            plan[key] = (rng.choice(aliases), etype, "alias")
        elif peers:
            plan[key] = (rng.choice(peers), etype, "counterfactual" if key.startswith("kg:") else "non_graph")
        else:
            continue
        used.add(plan[key][0])
    return plan


def _options(key: str, mentions: list[Mention], graph: KnowledgeGraph, mentioned: set[str], counterfactual: bool) -> tuple[list[str], list[str]]:
    """(aliases usable for ``key``, same-type peers not mentioned in the document: none unless ``counterfactual``)."""
    surfaces = {m.surface for m in mentions if m.key == key}
    etype = next(m.type for m in mentions if m.key == key)
    entity = graph.by_surface.get(next(iter(surfaces))) if key.startswith("kg:") else None
    aliases = [] if entity is None or len(surfaces) > 1 else [s for s in entity.surfaces if s not in surfaces]
    if not counterfactual:
        return aliases, []
    own = set(entity.surfaces) if entity else surfaces
    peers = [name for name in graph.by_type.get(etype, []) if name not in own and name not in mentioned
             and not (set(graph.by_surface[name].surfaces) & mentioned)]
    return aliases, peers


def apply_swaps(text: str, mentions: list[Mention], plan: dict[str, tuple[str, str, str]]) -> str:
    """``text`` with every mention of a planned entity replaced by its one replacement."""
    out, prev = [], 0
    for m in mentions:
        if m.key in plan:
            out.append(text[prev:m.start])
            out.append(plan[m.key][0])
            prev = m.end
    out.append(text[prev:])
    return "".join(out)
