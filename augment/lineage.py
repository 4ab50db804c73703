"""Variant records: ids, lineage, per-document rng, how many variants a document gets.

A variant of document ``P`` made by method ``m`` is a new :class:`Document` with id
``P~<code><i>`` (``code`` from :data:`augment.config.METHOD_CODES`, ``i`` the variant index),
the parent's source, domain, language and provenance meta, and::

    meta.augment = {"method": m, "parent_id": P, "variant": i, "model": ..., "params": {...}}

Every random choice for that variant comes from :func:`variant_rng`, seeded by
(config seed, parent id, method, variant index) only, so the output does not depend on how
documents are partitioned or batched.

Every variant passes two guards (:func:`guard_variant`): the fact guard
(:mod:`augment.facts`: numbers, dates, units, entities up to aliases and negations must
survive; reason ``changed_fact``, with what changed in ``meta.augment.guard.changed``) and the
similarity guard (:mod:`augment.guard`: ``too_similar`` / ``too_different``).
"""
from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from augment.config import METHOD_CODES, AugmentConfig
from augment.guard import check_variant
from etl.core.document import Document

if TYPE_CHECKING:
    import collections

    from augment.facts import FactExtractor

#: Provenance keys that a variant does not inherit from its parent.
_NOT_INHERITED = ("drop_reason", "drop_step", "augment")


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the parts' string forms (stable across processes and Python runs)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def variant_rng(seed: int, doc_id: str, method: str, variant: int) -> random.Random:
    """The rng for one variant of one document."""
    return random.Random(derive_seed(seed, doc_id, method, variant))


def variant_id(parent_id: str, method: str, variant: int) -> str:
    return f"{parent_id}~{METHOD_CODES[method]}{variant}"


def is_variant(doc: Document) -> bool:
    """True for records made by augmentation (they are never augmented again)."""
    return isinstance(doc.meta.get("augment"), dict)


def num_variants(config: AugmentConfig, doc: Document, method: str) -> int:
    """How many variants ``doc`` gets from ``method``: floor(rate) plus one more with
    probability frac(rate), drawn from the document's rng."""
    rate = config.rate(doc.domain, method)
    whole = int(rate)
    frac = rate - whole
    if frac > 0 and random.Random(derive_seed(config.seed, doc.id, method, "count")).random() < frac:
        whole += 1
    return whole


def make_variant(parent: Document, method: str, variant: int, text: str, model: str, params: dict[str, Any]) -> Document:
    """A new record for one variant of ``parent`` with its lineage in ``meta.augment``."""
    meta = {k: copy.deepcopy(v) for k, v in parent.meta.items() if k not in _NOT_INHERITED}
    meta["augment"] = {"method": method, "parent_id": parent.id, "variant": variant, "model": model, "params": params}
    return Document(id=variant_id(parent.id, method, variant), text=text, source=parent.source,
                    domain=parent.domain, lang=parent.lang, meta=meta)


def guard_variant(config: AugmentConfig, parent: Document, child: Document, step: str, facts: FactExtractor,
                  expected: Mapping[str, collections.Counter] | None = None) -> Document:
    """Apply the fact guard and the similarity guard; a failing variant is marked dropped.

    ``changed_fact`` (a fact of the method's ``guard.<method>.facts`` kinds lost, changed or
    added) comes first, then ``too_similar`` / ``too_different``; ``meta.augment.guard`` holds
    the similarity, the length ratio and, when facts changed, ``changed``: per kind the values
    ``missing`` from the variant and ``added`` to it.  ``expected`` replaces the parent's facts
    of a kind (a counterfactual entity swap names other entities on purpose)."""
    guard = config.guard_for(child.meta["augment"]["method"])
    reason, detail = check_variant(parent.text, child.text, guard)
    changed = facts.changes(parent.text, child.text, guard.facts, expected) if guard.facts else {}
    if changed:
        reason = "changed_fact"
        detail["changed"] = changed
    child.meta["augment"]["guard"] = detail
    if reason:
        child.drop(reason, step)
    return child


def error_variant(parent: Document, method: str, step: str, exc: Exception) -> Document:
    """An empty, rejected variant that records why augmenting ``parent`` failed (the parent is kept)."""
    child = make_variant(parent, method, 0, "", "", {})
    return child.drop(f"error_{type(exc).__name__}", step, error=str(exc)[:500])
