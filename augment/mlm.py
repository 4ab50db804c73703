"""Masked-LM substitution with a BERT-family masked language model.

For each variant the document's rng picks ``word_fraction`` of its eligible words (at least
one).  Eligible: a jieba word of Han characters (whole-word masking: a two-character word
becomes two ``[MASK]`` tokens, never a lone character of a word) or a Latin word of two or more
letters; never a stop word, a number or part of an entity (knowledge graph or jieba
``nr``/``ns``/``nt``).  All chosen words of a sentence are masked at once, as in BERT's own
pre-training, and the sentences of a whole batch of documents run through the model in
length-sorted batches.

A masked word of ``n`` tokens is filled position by position: the j-th candidate joins the
j-th best token of every position.  Candidates that equal the original, are stop words, or do
not look like a word of the same script are skipped; the rng picks one of the first ``top_k``
that remain.  A word is replaced only where the model ranks the original word itself (each of
its tokens) among its ``original_top_k`` best predictions: the model sees the replacement and
the original as interchangeable there (a context where the original is unlikely is one where
a substitute changes the meaning).  A word with no candidate stays as it is.  Every variant then
passes the fact guard (:mod:`augment.facts`) and the similarity guard.
"""
from __future__ import annotations

import logging
import random
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from augment.config import AugmentConfig
from augment.entity_swap import EntityFinder, KnowledgeGraph, load_graph
from augment.lineage import derive_seed, error_variant, guard_variant, is_variant, make_variant, num_variants, variant_rng
from augment.sentences import rebuild, split_sentences
from augment.words import Word, is_number, segment
from etl.clean.tokenize import HAN
from etl.core.document import Document

logger = logging.getLogger(__name__)
METHOD = "masked_lm"
#: jieba tags never masked: non-words, numerals, measure words (3台, 二十个), pronouns.
_SKIP_TAGS = frozenset({"x", "m", "mq", "q", "r"})
_ALL_HAN = re.compile(f"[{HAN}]+")
_ALL_LATIN = re.compile(r"[A-Za-z]+(?:['\-][A-Za-z]+)*")

#: Function words never masked (a short list: particles, pronouns, auxiliaries, conjunctions).
ZH_STOP_WORDS = frozenset("""的 了 着 过 是 在 和 与 及 或 而 但 也 又 都 就 才 被 把 将 对 于 从 向 以 为 因 所 之 其 这 那 此 该 各 每 我 你 他 她 它
我们 你们 他们 她们 它们 自己 什么 怎么 哪 谁 吗 呢 吧 啊 呀 嘛 哦 有 没有 不 没 很 更 最 还 已 已经 会 能 可以 可能 要 应 应该 并 并且 如果
因为 所以 但是 而且 或者 以及 然后 虽然 这个 那个 这些 那些 一个 一些 等 等等 上 下 中 里 内 外 前 后 时 个 位 种 次 让 使 给 被 由 等于""".split())
EN_STOP_WORDS = frozenset("""a an the and or but if then else of at by for with about against between into through during before after above below
to from up down in out on off over under again further once here there when where why how all any both each few more most other some
such no nor not only own same so than too very can will just don should now is are was were be been being have has had having do does
did doing i me my myself we our ours you your he him his she her it its they them their what which who whom this that these those am
would could shall may might must also as""".split())


def load_stop_words(paths) -> frozenset[str]:
    """The built-in lists plus words from the given files (one per line)."""
    words = set(ZH_STOP_WORDS) | set(EN_STOP_WORDS)
    for path in paths:
        words.update(w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines() if w.strip())
    return frozenset(words)


def eligible_words(words: list[Word], entity_spans: list[tuple[int, int]], stop_words: frozenset[str]) -> list[Word]:
    """Words that may be masked: Han words or Latin words of 2+ letters, not stop words, numbers or entities."""
    out = []
    for w in words:
        if is_number(w) or w.pos in _SKIP_TAGS or w.text.lower() in stop_words:
            continue
        if not (_ALL_HAN.fullmatch(w.text) or (_ALL_LATIN.fullmatch(w.text) and len(w.text) >= 2)):
            continue
        if any(s < w.end and w.start < e for s, e in entity_spans):
            continue
        out.append(w)
    return out


@dataclass
class _Row:
    """One masked sentence: which document/variant, its span, and the words masked in it."""

    doc_index: int
    variant: int
    span: tuple[int, int]
    sentence: str
    words: list[Word]
    input_ids: list[int] = field(default_factory=list)
    mask_groups: list[list[int]] = field(default_factory=list)  # token positions per masked word
    original_ids: list[list[int]] = field(default_factory=list)  # the original token ids at those positions
    fills: list[str | None] = field(default_factory=list)
    num_not_interchangeable: int = 0  # words left as they are: the model does not rank the original among its top


class MaskedLMAugmenter:
    """Makes masked-LM substitution variants for a batch of documents."""

    name = "augment_masked_lm"

    def __init__(self, config: AugmentConfig, graph: KnowledgeGraph | None = None):
        self.config = config
        self.cfg = config.masked_lm
        self.stop_words = load_stop_words(self.cfg.stop_words)
        graph = graph if graph is not None else load_graph(config.entity_swap)
        self.finder = EntityFinder(graph, config.entity_swap)
        self.facts = graph.fact_extractor()

    def model_for(self, lang: str):
        from augment.models import load_model

        return load_model("masked_lm", self.cfg.models[lang], self.config.device, self.config.dtype)

    def __call__(self, docs: list[Document]) -> list[Document]:
        jobs = [(i, doc, num_variants(self.config, doc, METHOD)) for i, doc in enumerate(docs)
                if not doc.dropped and not is_variant(doc) and doc.lang in self.cfg.models]
        jobs = [j for j in jobs if j[2] > 0]
        variants: dict[int, list[Document]] = {}
        for lang in sorted({docs[i].lang for i, _, _ in jobs}):
            variants.update(self._run_lang(lang, docs, [j for j in jobs if docs[j[0]].lang == lang]))
        out: list[Document] = []
        for i, doc in enumerate(docs):
            out.append(doc)
            out.extend(variants.get(i, []))
        return out

    def _run_lang(self, lang: str, docs: list[Document], jobs) -> dict[int, list[Document]]:
        try:
            tokenizer, model = self.model_for(lang)
            rows = []
            for i, doc, n in jobs:
                rows.extend(self.plan_rows(i, doc, n))
            fill_rows(rows, tokenizer, model, self.cfg, self.stop_words, {r.doc_index: docs[r.doc_index].id for r in rows}, self.config.seed)
        except Exception as exc:  # noqa: BLE001 - originals are kept; the failure is recorded per parent
            if self.config.on_error == "raise":
                raise
            logger.warning("masked-LM batch failed (%d documents): %s", len(jobs), exc)
            return {i: [error_variant(doc, METHOD, self.name, exc)] for i, doc, _ in jobs}
        return self._assemble(docs, jobs, rows, self.cfg.models[lang])

    def plan_rows(self, doc_index: int, doc: Document, n: int) -> list[_Row]:
        """Choose the words to mask for each of ``n`` variants; one row per touched sentence."""
        words = segment(doc.text, self.finder.tokenizer)
        entity_spans = [(m.start, m.end) for m in self.finder.mentions(doc.text, words)]
        candidates = eligible_words(words, entity_spans, self.stop_words)
        spans = split_sentences(doc.text, self.cfg.max_sentence_chars)
        rows = []
        for variant in range(n):
            if not candidates:
                continue
            rng = variant_rng(self.config.seed, doc.id, METHOD, variant)
            count = max(1, round(self.cfg.word_fraction * len(candidates)))
            chosen = sorted(rng.sample(candidates, count), key=lambda w: w.start)
            for span in spans:
                inside = [w for w in chosen if span[0] <= w.start and w.end <= span[1]]
                if inside:
                    rows.append(_Row(doc_index, variant, span, doc.text[span[0]:span[1]], inside))
        return rows

    def _assemble(self, docs, jobs, rows: list[_Row], model_name: str) -> dict[int, list[Document]]:
        by_variant: dict[tuple[int, int], list[_Row]] = {}
        for row in rows:
            by_variant.setdefault((row.doc_index, row.variant), []).append(row)
        out: dict[int, list[Document]] = {}
        for i, doc, n in jobs:
            for variant in range(n):
                vrows = by_variant.get((i, variant))
                if not vrows:
                    continue
                text, changes = substitute(doc.text, vrows)
                params = {"word_fraction": self.cfg.word_fraction, "top_k": self.cfg.top_k, "original_top_k": self.cfg.original_top_k,
                          "seed": self.config.seed, "num_masked": sum(len(r.words) for r in vrows),
                          "num_not_interchangeable": sum(r.num_not_interchangeable for r in vrows), "changes": changes}
                child = make_variant(doc, METHOD, variant, text, model_name, params)
                out.setdefault(i, []).append(guard_variant(self.config, doc, child, self.name, self.facts))
        return out


def substitute(text: str, rows: list[_Row]) -> tuple[str, list[dict]]:
    """Rebuild ``text`` with the filled words of ``rows``; returns the text and the changes made."""
    spans, new_sentences, changes = [], [], []
    for row in sorted(rows, key=lambda r: r.span):
        s0 = row.span[0]
        sentence = text[row.span[0]:row.span[1]]
        word_spans = [(w.start - s0, w.end - s0) for w, f in zip(row.words, row.fills) if f]
        fills = [f for f in row.fills if f]
        changes.extend({"at": w.start, "from": w.text, "to": f} for w, f in zip(row.words, row.fills) if f)
        spans.append(row.span)
        new_sentences.append(rebuild(sentence, word_spans, fills))
    return rebuild(text, spans, new_sentences), changes


def encode_row(row: _Row, tokenizer, max_tokens: int) -> None:
    """Token ids of the sentence with each chosen word replaced by as many masks as it has tokens."""
    encode_rows([row], tokenizer, max_tokens)


def _row_pieces(row: _Row) -> tuple[list[str], list[bool]]:
    """The sentence cut at the chosen words: text between words and the words themselves."""
    s0, sentence = row.span[0], row.sentence
    pieces, is_word, prev = [], [], s0
    for w in row.words:
        pieces += [sentence[prev - s0:w.start - s0], w.text]
        is_word += [False, True]
        prev = w.end
    pieces.append(sentence[prev - s0:])
    is_word.append(False)
    return pieces, is_word


def encode_rows(rows: list[_Row], tokenizer, max_tokens: int) -> None:
    """:func:`encode_row` for many rows with one (batched, Rust-side) tokenizer call.

    Each piece (text between chosen words, or a chosen word) is encoded on its own, so a word's
    token count is known exactly and its tokens can be replaced by as many ``[MASK]``s."""
    cut = [_row_pieces(row) for row in rows]
    flat = [piece for pieces, _ in cut for piece in pieces]
    encoded = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    cls_id, sep_id, mask_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    at = 0
    for row, (pieces, is_word) in zip(rows, cut):
        ids, groups, originals = [cls_id], [], []
        for piece_ids, word in zip(encoded[at:at + len(pieces)], is_word):
            if word:
                groups.append(list(range(len(ids), len(ids) + len(piece_ids))))
                originals.append(list(piece_ids))
                ids.extend([mask_id] * len(piece_ids))
            else:
                ids.extend(piece_ids)
        at += len(pieces)
        ids = ids[:max_tokens - 1] + [sep_id]
        row.input_ids = ids
        # a word cut off by truncation (or with no token at all) is not masked
        row.mask_groups = [g if g and g[-1] < len(ids) - 1 else [] for g in groups]
        row.original_ids = [o if g else [] for o, g in zip(originals, row.mask_groups)]


#: Cost of one forward call in padded-token equivalents, for :func:`plan_batches`.  On CPU a call of
#: the benchmark's small BERT costs about as much as 25 tokens of compute (bert-base: about 1), so
#: a little padding is cheaper than another call; on a GPU a call's launch latency dominates and
#: batches are kept full.
CALL_COST_TOKENS = {"cpu": 32}
GPU_CALL_COST_TOKENS = 4096


def plan_batches(lengths: list[int], max_rows: int, call_cost_tokens: int) -> list[tuple[int, int]]:
    """Cut ascending ``lengths`` into consecutive batches ``[start, end)`` of at most ``max_rows``
    that minimise padded tokens (rows x longest row, summed) plus ``call_cost_tokens`` per batch.

    Exact dynamic programme, O(rows x max_rows).  Fixed chunks of ``max_rows`` waste about a
    third of the compute on padding when sentence lengths vary (3,740 real tokens became 5,551
    padded ones on the benchmark's 32 documents); this plan pads 7% there, in 13 calls instead of 4."""
    n = len(lengths)
    best = [0] + [float("inf")] * n  # best[j]: cost of rows [0, j)
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[end - 1]  # ascending: the last row is the widest
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + call_cost_tokens + (end - start) * width
            if cost < best[end]:
                best[end], cut[end] = cost, start
    spans, end = [], n
    while end > 0:
        spans.append((cut[end], end))
        end = cut[end]
    return spans[::-1]


def fill_rows(rows: list[_Row], tokenizer, model, cfg, stop_words: frozenset[str], doc_ids: dict[int, str], seed: int) -> None:
    """Run the masked LM over all rows in length-sorted, padding-aware batches and choose each word's fill."""
    import torch

    encode_rows(rows, tokenizer, cfg.max_input_tokens)
    table = vocab_table(tokenizer)
    for row in rows:
        row.fills = [None] * len(row.words)
    # rows whose words were all cut off by truncation need no forward pass
    order = sorted((k for k, r in enumerate(rows) if any(r.mask_groups)), key=lambda k: len(rows[k].input_ids))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    call_cost = CALL_COST_TOKENS.get(device.type, GPU_CALL_COST_TOKENS)
    for start, end in plan_batches([len(rows[k].input_ids) for k in order], cfg.batch_sentences, call_cost):
        batch = [rows[k] for k in order[start:end]]
        where = [(b, p) for b, r in enumerate(batch) for g in r.mask_groups for p in g]
        width = max(len(r.input_ids) for r in batch)
        ids = torch.tensor([r.input_ids + [pad] * (width - len(r.input_ids)) for r in batch], dtype=torch.long)
        mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in batch], dtype=torch.long)
        with torch.inference_mode():
            logits = masked_logits(model, ids.to(device), mask.to(device), where)
        top = torch.topk(logits.float(), k=min(max(cfg.top_k * 4, cfg.original_top_k), logits.shape[-1]), dim=-1).indices.cpu().tolist()
        ranked = dict(zip(where, top))
        for b, r in enumerate(batch):
            rng = random.Random(derive_seed(seed, doc_ids[r.doc_index], METHOD, r.variant, r.span[0]))
            fill_words(r, [[ranked[(b, p)] for p in g] for g in r.mask_groups], table, stop_words, cfg, rng)


def fill_words(row: _Row, ranked: list[list[list[int]]], table: list[str | None], stop_words: frozenset[str], cfg, rng: random.Random) -> None:
    """Set ``row.fills``: per masked word (``ranked``: per token position, ids best first) a
    replacement, or None where it has no token, no valid candidate, or the model does not rank
    the original word among its ``cfg.original_top_k`` best (counted in ``num_not_interchangeable``)."""
    row.fills = []
    for word, ranks, original in zip(row.words, ranked, row.original_ids):
        if ranks and not interchangeable(original, ranks, cfg.original_top_k):
            row.num_not_interchangeable += 1
            ranks = []
        row.fills.append(choose_fill(word, ranks, table, stop_words, cfg.top_k, rng) if ranks else None)


def masked_logits(model, input_ids, attention_mask, where: list[tuple[int, int]]):
    """Vocabulary logits at the masked positions only, shape (len(where), vocab).

    The prediction head (hidden x vocabulary, about a fifth of bert-base's compute) runs on the
    masked positions alone (about 15% of tokens) when the model exposes it (BERT ``cls``,
    RoBERTa-style ``lm_head``); otherwise the full forward is gathered."""
    import torch

    rows = torch.tensor([b for b, _ in where], device=input_ids.device)
    cols = torch.tensor([p for _, p in where], device=input_ids.device)
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is not None and base is not None:
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return head(hidden[rows, cols])
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, cols]


_VOCAB_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocab_table(tokenizer) -> list[str | None]:
    """Per token id, the text it adds to a word (``##`` continuation prefix and ``▁`` removed),
    or None for special tokens; built once per tokenizer (21128 entries for bert-base-chinese)
    so candidate checks do not convert ids to tokens again and again.  Ids past the table (a
    model whose embedding matrix is padded beyond its tokenizer) are not candidates."""
    try:
        return _VOCAB_TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    table = [None if i in special or tok is None else (tok[2:] if tok.startswith("##") else tok).replace("▁", "")
             for i, tok in enumerate(tokens)]
    try:
        _VOCAB_TABLES[tokenizer] = table
    except TypeError:  # not weak-referenceable: rebuilt per call
        pass
    return table


def interchangeable(original_ids: list[int], ranked_ids: list[list[int]], original_top_k: int) -> bool:
    """Whether the model ranks every original token of a word among its ``original_top_k`` best
    predictions at that token's position (always true for ``original_top_k`` 0)."""
    if not original_top_k:
        return True
    return len(original_ids) == len(ranked_ids) and all(o in ranked[:original_top_k] for o, ranked in zip(original_ids, ranked_ids))


def choose_fill(word: Word, ranked_ids: list[list[int]], table: list[str | None], stop_words: frozenset[str], top_k: int,
                rng: random.Random) -> str | None:
    """Pick one replacement for ``word`` among the first ``top_k`` valid candidates (or None).

    ``ranked_ids``: per masked position of the word, token ids best first; ``table``: :func:`vocab_table`."""
    han = bool(_ALL_HAN.fullmatch(word.text))
    word_script = _ALL_HAN if han else _ALL_LATIN
    original = word.text.lower()
    size = len(table)
    valid: list[str] = []
    for j in range(len(ranked_ids[0])):
        pieces = [table[ids[j]] if ids[j] < size else None for ids in ranked_ids]
        if None in pieces:  # a special token, or an id the tokenizer does not know
            continue
        cand = pieces[0] if len(pieces) == 1 else "".join(pieces)
        if word_script.fullmatch(cand) and cand.lower() != original and cand.lower() not in stop_words and cand not in valid:
            valid.append(cand)
            if len(valid) == top_k:
                break
    if not valid:
        return None
    pick = rng.choice(valid)
    return pick.capitalize() if word.text[:1].isupper() and not han else pick
