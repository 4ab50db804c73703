"""The optional per-step additions of a training run, behind three hooks of the loop:
distillation (the forward step), FGM and EWC (after the backward), fp16 loss-scale bookkeeping
(after the optimizer step). See docs/distill.md."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any


@dataclass
class StepExtras:
    """What a config switches on; all None/0 for a plain run."""

    distiller: Any = None
    ewc: Any = None
    fgm_epsilon: float = 0.0
    fp16: bool = False
    skipped_steps: int = 0

    def forward_step_func(self, default: Callable, num_domains: int) -> Callable:
        """The megatron forward step: the distiller's in mode distill, else ``default``."""
        return partial(self.distiller.forward_step if self.distiller else default, num_domains)

    def after_backward(self, state, run: Callable[[], list]) -> dict[str, float]:
        """FGM's second pass and EWC's gradient; returns their metrics."""
        from megatron.core import parallel_state

        from trainer.loop import reduce_loss

        out: dict[str, float] = {}
        if self.fgm_epsilon > 0:
            from trainer.fgm import fgm_step

            adversarial = fgm_step(state.models, self.fgm_epsilon,
                                   parallel_state.get_tensor_model_parallel_group(), run)
            out["adv_loss"] = reduce_loss(state, adversarial)
        if self.ewc is not None:
            out["ewc_penalty"] = self.ewc.value()
            self.ewc.add_gradients(float(state.optimizer.get_loss_scale()))
        return out

    def after_step(self, state, update_successful: bool) -> dict[str, float]:
        """fp16: the loss scale and the count of skipped (overflowed) steps."""
        if not update_successful:
            self.skipped_steps += 1
        if not self.fp16:
            return {}
        return {"loss_scale": float(state.optimizer.get_loss_scale()), "skipped_steps": self.skipped_steps,
                "skipped": int(not update_successful)}


def build_extras(config, models: list, vocab_size: int) -> StepExtras:
    """Teacher and projection (before DDP wraps the student), EWC's Fisher, FGM, fp16."""
    extras = StepExtras(fgm_epsilon=config.fgm.epsilon, fp16=config.precision == "fp16")
    if config.mode == "distill":
        from trainer.distill import build_distiller

        extras.distiller = build_distiller(config, models, vocab_size)
    if config.ewc.fisher:
        from trainer.ewc import EwcPenalty, load_fisher

        extras.ewc = EwcPenalty(load_fisher(models, config.ewc.fisher), config.ewc.lambda_)
    return extras
