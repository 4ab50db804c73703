"""Labelled sets for the quality classifier: reading them, the held-out split, synthetic negatives.

The recipe that builds the sets from the pipeline itself (docs/quality_model.md):

* positives: documents the rule filters kept from curated sources, e.g. the clean stage's
  ``kept/`` restricted to the ``domain`` and ``expert`` domains (``--positive-domains``);
* negatives: what the rule filters rejected, the clean stage's ``rejected/``, optionally only
  for some reasons (``--negative-reasons gopher_,c4_,dup_``), since a record rejected for its
  language or as a duplicate says nothing about quality;
* for a corpus too small to have enough rejects (the offline demo), ``--synthesize-negatives``
  adds one corrupted copy of each positive (:func:`corrupt`): shuffled words, mojibake,
  navigation boilerplate, keyword spam or a table of numbers.

The held-out split is chosen by a hash of (seed, id), so it does not depend on file order or on
how many files the sets come in.
"""
from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from etl.clean.tokenize import TokenizerConfig, tokenize
from etl.core.document import Document
from etl.core.errors import JinglianError
from etl.io.records import ReaderConfig, read_inputs

logger = logging.getLogger(__name__)

_WORDS = TokenizerConfig(english="wordpunct")
CORRUPTIONS = ("shuffle", "mojibake", "boilerplate", "spam", "table")
_NAV_EN = ["Home", "About us", "Contact", "Login", "Sign up", "Privacy Policy", "Terms of Use", "Cookie settings",
           "Share on Facebook", "Tweet", "Subscribe to our newsletter", "Click here", "Read more", "Next page",
           "Copyright 2024 All rights reserved", "Advertisement", "Related posts", "Previous", "Menu", "Search"]
_NAV_ZH = ["首页", "关于我们", "联系我们", "登录", "注册", "隐私政策", "用户协议", "分享到微信", "点击这里", "阅读全文",
           "下一页", "版权所有 2024", "广告", "相关文章", "上一篇", "下一篇", "返回顶部", "扫码关注", "免费下载", "立即购买"]


@dataclass
class LabelledSet:
    """Texts with labels (1 = high quality), their ids and the held-out mask."""

    ids: list[str]
    texts: list[str]
    labels: list[int]
    holdout: list[bool]

    def part(self, held_out: bool) -> tuple[list[str], list[int]]:
        """(texts, labels) of the training part (``False``) or the held-out part (``True``)."""
        rows = [i for i, h in enumerate(self.holdout) if h == held_out]
        return [self.texts[i] for i in rows], [self.labels[i] for i in rows]

    def counts(self) -> dict[str, int]:
        train = [lab for lab, h in zip(self.labels, self.holdout) if not h]
        test = [lab for lab, h in zip(self.labels, self.holdout) if h]
        return {"train_pos": sum(train), "train_neg": len(train) - sum(train),
                "holdout_pos": sum(test), "holdout_neg": len(test) - sum(test)}


def is_holdout(doc_id: str, frac: float, seed: int) -> bool:
    """Whether ``doc_id`` is in the held-out part (a hash of seed and id below ``frac``)."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < frac


def read_positive(paths: Sequence[str], reader: ReaderConfig, domains: Sequence[str] = ()) -> list[Document]:
    """Kept (not rejected) documents with text, of ``domains`` when given."""
    docs = [d for d in read_inputs(paths, reader) if not d.dropped and d.text.strip()]
    return [d for d in docs if not domains or d.domain in domains]


def read_negative(paths: Sequence[str], reader: ReaderConfig, reasons: Sequence[str] = ()) -> list[Document]:
    """Documents with text (rejected ones included); with ``reasons``, only rejected documents
    whose ``drop_reason`` starts with one of them."""
    docs = [d for d in read_inputs(paths, reader) if d.text.strip() and d.drop_reason not in ("duplicate_id", "invalid_record")]
    if reasons:
        docs = [d for d in docs if d.drop_reason and any(d.drop_reason.startswith(r) for r in reasons)]
    return docs


def build_labelled(positive: Iterable[Document], negative: Iterable[Document], frac: float, seed: int) -> LabelledSet:
    """One labelled set; an id in both sets (or twice) is taken once, the first time it is seen."""
    out = LabelledSet([], [], [], [])
    seen: set[str] = set()
    for label, docs in ((1, positive), (0, negative)):
        for doc in docs:
            if doc.id in seen:
                continue
            seen.add(doc.id)
            out.ids.append(doc.id)
            out.texts.append(doc.text)
            out.labels.append(label)
            # a synthetic negative follows its parent, so no text is on both sides of the split
            out.holdout.append(is_holdout(str(doc.meta.get("parent_id", doc.id)), frac, seed))
    counts = out.counts()
    for name, num in counts.items():
        if num == 0:
            raise JinglianError(f"labelled set has no documents for {name} ({counts}); give more positive and negative "
                                "documents (or a larger quality_model.train.holdout_frac)")
    return out


# ------------------------------------------------------------------ synthetic negatives


def corrupt(doc: Document, seed: int = 0, kind: str | None = None) -> Document:
    """A low-quality variant of ``doc`` (id ``<id>#lq-<kind>``), deterministic in (seed, id)."""
    rng = random.Random(f"{seed}\x00{doc.id}")
    kind = kind or CORRUPTIONS[rng.randrange(len(CORRUPTIONS))]
    text = doc.text
    zh = sum("\u4e00" <= ch <= "\u9fff" for ch in text[:400]) > 40
    if kind == "shuffle":
        words = tokenize(text[:2000], _WORDS)
        rng.shuffle(words)
        new = ("" if zh else " ").join(words)
    elif kind == "mojibake":
        raw = text[:1500].encode("utf-8")
        new = raw.decode("latin-1") if rng.random() < 0.5 else raw.decode("gbk", errors="replace")
    elif kind == "boilerplate":
        nav = _NAV_ZH if zh else _NAV_EN
        lines = [" | ".join(rng.sample(nav, 5)) for _ in range(rng.randint(6, 14))]
        lines.insert(rng.randrange(len(lines)), text[: rng.randint(20, 80)])
        new = "\n".join(lines)
    elif kind == "spam":
        words = [w for w in tokenize(text[:400], _WORDS) if len(w) > 1][:6] or ["free"]
        phrase = ("" if zh else " ").join(rng.sample(words, min(3, len(words))))
        sep = "，" if zh else ", "
        new = sep.join([phrase] * rng.randint(15, 40)) + (" 点击购买！" if zh else " buy now!!!")
    elif kind == "table":
        rows = [" | ".join(str(rng.randint(0, 99999)) for _ in range(rng.randint(4, 8))) for _ in range(rng.randint(8, 25))]
        new = "\n".join(rows)
    else:
        raise ValueError(f"unknown corruption {kind!r}; known: {list(CORRUPTIONS)}")
    return Document(id=f"{doc.id}#lq-{kind}", text=new, source=doc.source, domain=doc.domain, lang=doc.lang,
                    meta={"corruption": kind, "parent_id": doc.id})
