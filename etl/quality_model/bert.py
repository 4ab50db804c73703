"""The BERT kind: a BERT-family sequence classifier (transformers), fine-tuned by the train command.

Any model ``AutoModelForSequenceClassification`` can load is a base: a local directory or a hub
id (``bert-base-chinese``, ``bert-base-multilingual-cased``, a RoBERTa...).  The fine-tuned
model and its tokenizer are saved under ``bert/`` in the model directory.

Scoring is batched the padding-aware way the masked-LM augmenter batches
(:func:`etl.core.batching.plan_batches`): texts are encoded without padding, sorted by length,
and cut into batches that minimise padded tokens plus a per-call cost; on a GPU it runs in
bf16 (fp16 where bf16 is missing), on CPU in fp32.  With the attention mask, a text's score
does not depend on its batch beyond float rounding (checked to 1e-5 in the tests).

torch and transformers are imported lazily, here only.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from etl.core.batching import plan_batches

logger = logging.getLogger(__name__)

SUBDIR = "bert"
#: Padded-token cost of one forward call (as augment.mlm): on CPU a little padding beats another
#: call; on a GPU a call's launch latency dominates, so batches stay full.
CALL_COST_TOKENS = {"cpu": 32, "cuda": 4096}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"quality_model.device is {device!r} but no CUDA device is visible")
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` -> bf16 on a GPU that has it (fp16 on older ones), fp32 on CPU."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class BertClassifier:
    """A fine-tuned sequence classifier (see the module docstring)."""

    kind = "bert"

    def __init__(self, settings: dict[str, Any], tokenizer, model, batch_size: int = 64):
        self.settings = dict(settings)
        self.tokenizer = tokenizer
        self.model = model
        self.batch_size = batch_size

    # ------------------------------------------------------------------ scoring

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to ``max_tokens``, unpadded."""
        cut = [t[: self.settings["max_chars"]] for t in texts]
        return self.tokenizer(cut, truncation=True, max_length=self.settings["max_tokens"], padding=False)["input_ids"]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros(0)
        ids = self.encode(texts)
        order = sorted(range(len(ids)), key=lambda k: len(ids[k]))
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = np.empty(len(ids))
        spans = plan_batches([len(ids[k]) for k in order], self.batch_size, CALL_COST_TOKENS.get(device.type, 4096))
        for start, end in spans:
            rows = [ids[k] for k in order[start:end]]
            input_ids, mask = _pad(rows, pad)
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            probs = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
            out[order[start:end]] = probs
        return out.astype(np.float64)

    # ------------------------------------------------------------------ training

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], train, device: str = "auto", dtype: str = "auto",
            progress: bool = False) -> BertClassifier:
        """Fine-tune ``train.bert_base`` on ``texts``/``labels`` (AdamW, linear decay, seeded)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        _quiet_transformers()
        device = resolve_device(device)
        torch.manual_seed(train.seed)
        try:
            tokenizer = AutoTokenizer.from_pretrained(train.bert_base)
            model = AutoModelForSequenceClassification.from_pretrained(
                train.bert_base, num_labels=2, id2label={0: "lq", 1: "hq"}, label2id={"lq": 0, "hq": 1})
        except (OSError, ValueError) as exc:
            raise ValueError(f"quality_model.train.bert_base {train.bert_base!r} cannot be loaded: {' '.join(str(exc).split())[:300]} "
                             "(give a local directory, or a hub id with hub access)") from None
        model.to(device).train()
        settings = {"max_tokens": train.bert_max_tokens, "max_chars": train.max_chars, "base": train.bert_base}
        clf = cls(settings, tokenizer, model)
        ids = clf.encode(texts)
        y = torch.tensor(list(labels), dtype=torch.long)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        steps_per_epoch = -(-len(ids) // train.bert_batch_size)
        optim = torch.optim.AdamW(model.parameters(), lr=train.bert_lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: max(0.0, 1.0 - s / (steps_per_epoch * train.bert_epochs)))
        autocast = torch.autocast("cuda", dtype=resolve_dtype(dtype, device)) if device.startswith("cuda") else _null()
        gen = torch.Generator().manual_seed(train.seed)
        for epoch in range(train.bert_epochs):
            perm = torch.randperm(len(ids), generator=gen).tolist()
            total = 0.0
            for b in range(0, len(perm), train.bert_batch_size):
                rows = perm[b:b + train.bert_batch_size]
                input_ids, mask = _pad([ids[k] for k in rows], pad)
                with autocast:
                    out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=y[rows].to(device))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optim.step()
                sched.step()
                optim.zero_grad(set_to_none=True)
                total += float(out.loss.detach()) * len(rows)
            logger.info("bert epoch %d/%d: mean loss %.4f", epoch + 1, train.bert_epochs, total / max(1, len(ids)))
        model.eval()
        return clf

    # ------------------------------------------------------------------ files

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory / SUBDIR)
        self.tokenizer.save_pretrained(directory / SUBDIR)

    @classmethod
    def load(cls, directory: Path, settings: dict[str, Any], device: str = "auto", dtype: str = "auto",
             batch_size: int = 64) -> BertClassifier:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        _quiet_transformers()
        path = directory / SUBDIR
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{SUBDIR}/config.json is missing")
        device = resolve_device(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=resolve_dtype(dtype, device))
        model.to(device).eval()
        return cls(settings, tokenizer, model, batch_size)


def _pad(rows: list[list[int]], pad: int):
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    return input_ids, mask


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def random_bert(out: Path, texts: Sequence[str], *, vocab_size: int, hidden: int, layers: int, heads: int,
                ffn: int, max_positions: int, min_frequency: int = 2) -> Path:
    """A randomly initialised BERT sequence classifier with a WordPiece tokenizer trained on
    ``texts``, saved to ``out`` (a base to fine-tune offline: tests and the benchmark)."""
    import torch  # noqa: PLC0415
    from tokenizers import BertWordPieceTokenizer  # noqa: PLC0415
    from tokenizers.processors import BertProcessing  # noqa: PLC0415
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency)
    inner = wp._tokenizer  # transformers 5's BertTokenizerFast(vocab_file=...) ignores the file: wrap the trained tokenizer
    inner.post_processor = BertProcessing(("[SEP]", inner.token_to_id("[SEP]")), ("[CLS]", inner.token_to_id("[CLS]")))
    PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=wp.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=max_positions,
                        num_labels=2)
    BertForSequenceClassification(config).save_pretrained(out)
    return out
