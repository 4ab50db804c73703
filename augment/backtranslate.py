"""Back-translation: source -> pivot -> source with two seq2seq translation models.

Documents are split into sentences (:mod:`augment.sentences`); the sentences of a whole batch
of documents are pooled, sorted by token length and translated ``batch_sentences`` at a time,
first forward (source -> pivot) and then backward (pivot -> source); each document is rebuilt
with its separators kept.  Only sentences in the document's own script are translated (Han
sentences of a ``zh`` document, Han-free sentences with letters of other documents); the rest
(code, numbers, quotes in another language) are copied.

Decoding is beam search by default (deterministic, one variant per document).  With
``do_sample`` every sentence draws from its own generator seeded by (seed, document id,
variant, sentence, direction), applied row by row inside one batched ``generate`` call, so the
result does not depend on which other sentences share the batch.  Every variant passes the fact
guard (:mod:`augment.facts`: a translation round trip that drops a number, a negation or an
entity is ``changed_fact``) and the similarity guard.  Models run on the GPU in
bf16 (fp16 where bf16 is unsupported) when one is present.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from augment.config import AugmentConfig, BackTranslationConfig
from augment.entity_swap import KnowledgeGraph, load_graph
from augment.lineage import derive_seed, error_variant, guard_variant, is_variant, make_variant, num_variants
from augment.sentences import rebuild, split_sentences
from etl.clean.tokenize import HAN
from etl.core.document import Document

logger = logging.getLogger(__name__)
METHOD = "back_translation"
_HAS_HAN = re.compile(f"[{HAN}]")
_HAS_LETTER = re.compile(r"[^\W\d_]")


def translatable(sentence: str, lang: str) -> bool:
    """Whether a sentence is in the document's script (see the module notes)."""
    if lang == "zh":
        return bool(_HAS_HAN.search(sentence))
    return not _HAS_HAN.search(sentence) and bool(_HAS_LETTER.search(sentence))


@dataclass
class _Item:
    """One sentence of one variant of one document on its way through both models."""

    doc_index: int
    variant: int
    sentence_index: int
    text: str
    seed: int


class SeededSampler:
    """A logits processor that samples each row with its own ``torch.Generator``.

    It leaves exactly one finite score per row, so ``generate``'s greedy step takes the sampled
    token; the draw of a row depends only on its own scores and seed, never on its batch.
    """

    def __init__(self, seeds: list[int], temperature: float, top_k: int, top_p: float):
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.top_p
            probs = torch.zeros_like(probs).scatter(1, order, sorted_probs * keep)
        probs = probs.cpu()  # one transfer per step; the draws use per-row CPU generators
        tokens = [int(torch.multinomial(probs[row], 1, generator=gen)) for row, gen in enumerate(self.generators)]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(tokens), device=scores.device), torch.tensor(tokens, device=scores.device)] = 0.0
        return out


def translate(texts: list[str], seeds: list[int], tokenizer, model, cfg: BackTranslationConfig) -> list[str]:
    """Translate ``texts`` in length-sorted batches; output order equals input order."""
    import torch
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=True, max_length=cfg.max_input_tokens)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda k: (lengths[k], k))
    out: list[str] = [""] * len(texts)
    for start in range(0, len(order), cfg.batch_sentences):
        idx = order[start:start + cfg.batch_sentences]
        enc = tokenizer([texts[k] for k in idx], return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_input_tokens)
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        max_new = min(cfg.max_new_tokens, int(enc["input_ids"].shape[1] * 1.5) + 10)
        kwargs = dict(max_new_tokens=max_new, num_beams=cfg.num_beams, do_sample=False)
        if cfg.do_sample:
            sampler = SeededSampler([seeds[k] for k in idx], cfg.temperature, cfg.top_k, cfg.top_p)
            kwargs.update(num_beams=1, logits_processor=LogitsProcessorList([sampler]))
        with torch.inference_mode():
            generated = model.generate(**enc, **kwargs)
        for k, text in zip(idx, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            out[k] = text.strip()
    return out


class BackTranslationAugmenter:
    """Makes back-translation variants for a batch of documents."""

    name = "augment_back_translation"

    def __init__(self, config: AugmentConfig, graph: KnowledgeGraph | None = None):
        self.config = config
        self.cfg = config.back_translation
        self.facts = (graph if graph is not None else load_graph(config.entity_swap)).fact_extractor()

    def models_for(self, lang: str):
        """((tokenizer, model) forward, (tokenizer, model) backward) for documents in ``lang``."""
        from augment.models import load_model

        route = self.cfg.routes[lang]
        load = lambda path: load_model("seq2seq", path, self.config.device, self.config.dtype)  # noqa: E731
        return load(route.forward), load(route.backward)

    def variant_count(self, doc: Document) -> int:
        n = num_variants(self.config, doc, METHOD)
        return n if self.cfg.do_sample else min(n, 1)  # beam search gives one answer per input

    def __call__(self, docs: list[Document]) -> list[Document]:
        jobs = [(i, doc, self.variant_count(doc)) for i, doc in enumerate(docs)
                if not doc.dropped and not is_variant(doc) and doc.lang in self.cfg.routes]
        jobs = [j for j in jobs if j[2] > 0]
        variants: dict[int, list[Document]] = {}
        for lang in sorted({doc.lang for _, doc, _ in jobs}):
            variants.update(self._run_lang(lang, [j for j in jobs if j[1].lang == lang]))
        out: list[Document] = []
        for i, doc in enumerate(docs):
            out.append(doc)
            out.extend(variants.get(i, []))
        return out

    def _run_lang(self, lang: str, jobs) -> dict[int, list[Document]]:
        spans = {i: split_sentences(doc.text, self.cfg.max_sentence_chars) for i, doc, _ in jobs}
        items = [_Item(i, v, k, doc.text[s:e], derive_seed(self.config.seed, doc.id, METHOD, v, k))
                 for i, doc, n in jobs for v in range(n) for k, (s, e) in enumerate(spans[i]) if translatable(doc.text[s:e], lang)]
        try:
            (fwd_tok, fwd_model), (bwd_tok, bwd_model) = self.models_for(lang)
            route = self.cfg.routes[lang]
            pivots = self._translate_unique(items, fwd_tok, fwd_model, "forward", route.forward_prefix)
            back = self._translate_unique([_Item(it.doc_index, it.variant, it.sentence_index, p, it.seed) for it, p in zip(items, pivots)],
                                          bwd_tok, bwd_model, "backward", route.backward_prefix)
        except Exception as exc:  # noqa: BLE001 - originals are kept; the failure is recorded per parent
            if self.config.on_error == "raise":
                raise
            logger.warning("back-translation batch failed (%d documents): %s", len(jobs), exc)
            return {i: [error_variant(doc, METHOD, self.name, exc)] for i, doc, _ in jobs}
        return self._assemble(jobs, spans, items, pivots, back, f"{route.forward} -> {route.backward}")

    def _translate_unique(self, items: list[_Item], tokenizer, model, direction: str, prefix: str = "") -> list[str]:
        """Translate, sending each distinct (text, seed) once; beam search needs no per-item seed."""
        keys = [(prefix + it.text, derive_seed(it.seed, direction) if self.cfg.do_sample else 0) for it in items]
        unique = sorted(set(keys))
        done = dict(zip(unique, translate([t for t, _ in unique], [s for _, s in unique], tokenizer, model, self.cfg))) if unique else {}
        return [done[k] for k in keys]

    def _assemble(self, jobs, spans, items, pivots, back, model_name: str) -> dict[int, list[Document]]:
        new_text = {(it.doc_index, it.variant, it.sentence_index): t or it.text for it, t in zip(items, back)}
        pivot_chars = {}
        for it, p in zip(items, pivots):
            pivot_chars[(it.doc_index, it.variant)] = pivot_chars.get((it.doc_index, it.variant), 0) + len(p)
        params = {"num_beams": 1 if self.cfg.do_sample else self.cfg.num_beams, "do_sample": self.cfg.do_sample, "seed": self.config.seed}
        if self.cfg.do_sample:
            params.update(temperature=self.cfg.temperature, top_k=self.cfg.top_k, top_p=self.cfg.top_p)
        out: dict[int, list[Document]] = {}
        for i, doc, n in jobs:
            for v in range(n):
                sentences = [new_text.get((i, v, k), doc.text[s:e]) for k, (s, e) in enumerate(spans[i])]
                num_translated = sum((i, v, k) in new_text for k in range(len(spans[i])))
                if not num_translated:
                    continue
                child = make_variant(doc, METHOD, v, rebuild(doc.text, spans[i], sentences), model_name,
                                     dict(params, num_sentences=len(spans[i]), num_translated=num_translated,
                                          pivot_chars=pivot_chars.get((i, v), 0)))
                out.setdefault(i, []).append(guard_variant(self.config, doc, child, self.name, self.facts))
        return out
