"""Adversarial training by the fast gradient method (FGM; Miyato et al. 2017, arXiv:1605.07725).

After the clean forward/backward of a step, the word-embedding weights move by
``r = epsilon * g / ||g||`` with g their gradient, a second forward/backward runs on the same
micro-batches, the weights are restored and the step uses the sum of both gradients.

Under tensor parallelism each rank holds a vocabulary slice of the embedding, so ||g|| is the
square root of the squared norms all-reduced over the TP group: every rank moves its slice by
the slice of the one global direction (TP=2 equals one process). Only the first pipeline
stage holds the input embedding; g is the data-parallel-reduced gradient, so the distributed
optimizer (which keeps only a DP shard of it) is refused at config time.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist


def fgm_perturbation(grads: list[torch.Tensor], epsilon: float, group=None,
                     device: torch.device | None = None) -> list[torch.Tensor]:
    """epsilon * g / ||g|| for the shards ``grads`` of one vector split over ``group`` (zeros when
    ||g|| is 0 or not finite, e.g. an fp16 overflow: the step is skipped anyway)."""
    # a stage without the embedding still joins its TP group's all-reduce (with 0), on ``device``
    square = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else device)
    for g in grads:
        square = square + g.float().pow(2).sum()
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(square, group=group)
    norm = square.sqrt()
    if not torch.isfinite(norm) or norm == 0:
        return [torch.zeros_like(g, dtype=torch.float32) for g in grads]
    return [g.float() * (epsilon / norm) for g in grads]


def word_embeddings(models: list) -> list[torch.nn.Parameter]:
    """The input word-embedding weight(s) on this rank (first pipeline stage only)."""
    out = []
    for model in models:
        inner = getattr(model, "module", model)
        if getattr(inner, "pre_process", False):
            out.append(inner.embedding.word_embeddings.weight)
    return out


def _grad(param: torch.nn.Parameter) -> torch.Tensor:
    return param.main_grad if getattr(param, "main_grad", None) is not None else param.grad


@torch.no_grad()
def _all_grads(models: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(_grad(p), _grad(p).clone()) for m in models for p in m.parameters()
            if p.requires_grad and _grad(p) is not None]


def fgm_step(models: list, epsilon: float, tp_group, run: Callable[[], list]) -> list:
    """Perturb, run the adversarial pass (``run`` zeroes and refills the gradients), restore,
    and leave clean + adversarial gradients; returns the adversarial pass's loss items."""
    embeddings = word_embeddings(models)
    with torch.no_grad():
        device = next(p for m in models for p in m.parameters()).device
        moves = fgm_perturbation([_grad(p) for p in embeddings], epsilon, tp_group, device)
        saved_grads = _all_grads(models)
        backups = [p.detach().clone() for p in embeddings]
        for param, move in zip(embeddings, moves):
            param.add_(move.to(param.dtype))
    adversarial = run()
    with torch.no_grad():
        for param, backup in zip(embeddings, backups):
            param.copy_(backup)
        for grad, clean in saved_grads:
            grad.add_(clean)
    return adversarial
