"""Greedy decoding with a key/value cache, and its speed, for a Hugging Face causal LM.

The evaluation runs on the exported model (``trainer.hf export``: transformers' Llama/Qwen2
classes), one process, CPU or one GPU. Prompts of a batch are left-padded; the attention mask
hides the padding and position ids count real tokens only, so a padded prompt decodes as it
would alone.

With the cache, the prompt runs once and each new token attends to the cached keys and values
of everything before it: one token of compute per step instead of the whole prefix
(:func:`greedy_decode` with ``use_cache=False`` recomputes the prefix every step; the two give
the same tokens, which the tests check).
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, prompt in enumerate(prompts):
        if len(prompt):
            ids[i, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
            mask[i, width - len(prompt):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def cache_argument(model: Any) -> str:
    """The forward argument (and output field) of the KV cache: ``cache`` in transformers 5.x
    (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


@torch.no_grad()
def greedy_decode(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, use_cache: bool = True,
                  eos_id: int | None = None, pad_id: int = 0) -> list[list[int]]:
    """The ``max_new_tokens`` greedy continuations of ``prompts`` (token id lists; each stops
    after ``eos_id`` when given)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_decode: every prompt needs at least one token")
    device = next(model.parameters()).device
    ids, mask = _left_pad(prompts, pad_id, device)
    out = torch.empty((len(prompts), 0), dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    past, step_ids, step_pos = None, ids, _positions(mask)
    cache_arg = cache_argument(model)
    for _ in range(max_new_tokens):
        if use_cache:
            result = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                           **{cache_arg: past}, use_cache=True)
            past = getattr(result, cache_arg)
        else:
            full = torch.cat([ids, out], dim=1)
            result = model(input_ids=full, attention_mask=mask, position_ids=_positions(mask), use_cache=False)
        token = result.logits[:, -1].float().argmax(-1)
        if eos_id is not None:
            token = torch.where(done, torch.full_like(token, eos_id), token)
            done |= token == eos_id
        out = torch.cat([out, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_ids, step_pos = token[:, None], _positions(mask)[:, -1:]
        if eos_id is not None and bool(done.all()):
            break
    rows = out.tolist()
    if eos_id is not None:
        rows = [r[:r.index(eos_id) + 1] if eos_id in r else r for r in rows]
    return rows


@dataclass
class SpeedResult:
    """Decoding throughput of one setting."""

    batch_size: int
    use_cache: bool
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "use_cache": self.use_cache, "new_tokens": self.new_tokens,
                "seconds": round(self.seconds, 4), "tokens_per_s": round(self.tokens_per_s, 2)}


def measure_speed(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int, *,
                  use_cache: bool = True, pad_id: int = 0, warmup: bool = True) -> SpeedResult:
    """Generated tokens per second of greedy decoding over ``prompts`` in batches of
    ``batch_size`` (no early stop, so every row makes ``max_new_tokens``; one warm-up batch
    first)."""
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    if warmup:
        greedy_decode(model, batches[0], min(2, max_new_tokens), use_cache=use_cache, pad_id=pad_id)
    _sync(model)
    start = time.perf_counter()
    made = 0
    for batch in batches:
        made += sum(len(r) for r in greedy_decode(model, batch, max_new_tokens, use_cache=use_cache, pad_id=pad_id))
    _sync(model)
    return SpeedResult(batch_size, use_cache, made, time.perf_counter() - start)


def _sync(model: Any) -> None:
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
