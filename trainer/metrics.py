"""Training metrics: FLOPs per token, MFU, the per-step metrics line and its JSON Lines file.

FLOPs per token (matmuls only, Narayanan et al. 2021 "Efficient Large-Scale Language Model
Training on GPU Clusters", eq. 3, generalised to grouped-query attention and gated MLPs):

    forward per layer = 2*h*(h + 2*h_kv)   QKV projection (h_kv = kv_heads * head_dim)
                      + 4*s*h              attention scores QK^T and the weighted sum AV
                      + 2*h*h              output projection
                      + 2*k*h*f            MLP (k = 3 for SwiGLU, 2 for GELU)
    forward logits    = 2*h*V
    training          = 3 * forward        (backward costs twice the forward)

Attention is counted over the full s x s square as Megatron does, though causal kernels skip
half of it. MFU = achieved FLOP/s per GPU / the GPU's dense bf16 peak.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ModelConfig

logger = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks, TFLOP/s (vendor datasheets, without sparsity).
BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.05,
    "A10": 125.0,
}


def gpu_peak_tflops(device_name: str | None) -> float | None:
    """bf16 dense peak of the named GPU (longest matching key), None if unknown or CPU."""
    if not device_name:
        return None
    name = device_name.upper()
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if all(part in name for part in key.upper().split()):
            return BF16_PEAK_TFLOPS[key]
    return None


def training_flops_per_token(model: ModelConfig, vocab_size: int) -> float:
    """Training (forward + backward) matmul FLOPs per token; see the module docstring."""
    h, s, f = model.hidden_size, model.seq_len, model.ffn_size
    head_dim = model.kv_channels  # hidden / heads unless the model sets head_dim (imported models)
    h_q, h_kv = model.num_attention_heads * head_dim, model.query_groups * head_dim
    mlp_mats = 3 if model.activation == "swiglu" else 2
    per_layer = 2 * h * (h_q + 2 * h_kv) + 4 * s * h_q + 2 * h_q * h + 2 * mlp_mats * h * f
    forward = model.num_layers * per_layer + 2 * h * vocab_size
    return 3.0 * forward


@dataclass
class StepMetrics:
    """Everything reported for one log step."""

    step: int
    loss: float
    grad_norm: float | None
    lr: float
    tokens_per_s: float
    tflops_per_gpu: float
    mfu: float | None
    data_wait_pct: float
    memory_gib: float
    step_time_s: float
    loss_by_domain: dict[str, float]
    tokens_by_domain: dict[str, int]
    consumed_tokens: int
    extra: dict[str, float] = field(default_factory=dict)
    """optional figures: loss_scale and skipped_steps (fp16), ewc_penalty, adv_loss (FGM)"""
    validation: dict[str, Any] | None = None
    """Validation figures of this step (trainer/validation.py ``figures``), when a pass ran."""

    def line(self, total_steps: int) -> str:
        """The human metrics line (one per log step)."""
        grad = "n/a" if self.grad_norm is None else f"{self.grad_norm:.3f}"
        mfu = "n/a" if self.mfu is None else f"{100 * self.mfu:.1f}%"
        domains = " ".join(f"{d}={v:.3f}" for d, v in self.loss_by_domain.items())
        return (f"step {self.step}/{total_steps} | loss {self.loss:.4f} | grad_norm {grad} | "
                f"lr {self.lr:.3e} | tokens/s {self.tokens_per_s:,.0f} | "
                f"TFLOP/s/GPU {self.tflops_per_gpu:.2f} | MFU {mfu} | "
                f"data_wait {self.data_wait_pct:.1f}% | mem {self.memory_gib:.2f} GiB | "
                f"loss_by_domain {domains or '-'}"
                + "".join(f" | {k} {v:.4g}" for k, v in self.extra.items()) + self.validation_text())

    def validation_text(self) -> str:
        """`` | val_loss L | val_ppl P | val_ppl_by_domain d=p ...`` (empty without a pass)."""
        v = self.validation
        if not v:
            return ""
        ppl = " ".join(f"{d}={p:.2f}" for d, p in v["val_ppl_by_domain"].items())
        return f" | val_loss {v['val_loss']:.4f} | val_ppl {v['val_ppl']:.2f} | val_ppl_by_domain {ppl or '-'}"

    def to_json(self) -> dict[str, Any]:
        """The metrics.jsonl row: extra figures flattened; validation figures (``val_*``) only on
        steps with a pass."""
        row = {k: v for k, v in self.__dict__.items() if k not in ("validation", "extra")}
        row.update(self.extra)
        row.update(self.validation or {})
        return row


def throughput(num_tokens: int, step_time_s: float, flops_per_token: float, world_size: int,
               peak_tflops: float | None) -> tuple[float, float, float | None]:
    """(tokens/s over the job, TFLOP/s per GPU, MFU or None without a known peak)."""
    tokens_per_s = num_tokens / max(step_time_s, 1e-9)
    tflops_per_gpu = tokens_per_s * flops_per_token / world_size / 1e12
    mfu = tflops_per_gpu / peak_tflops if peak_tflops else None
    return tokens_per_s, tflops_per_gpu, mfu


def memory_gib() -> float:
    """Peak GPU memory allocated on this rank, or the process RSS on CPU."""
    import torch  # noqa: PLC0415

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil  # noqa: PLC0415

    return psutil.Process(os.getpid()).memory_info().rss / 2**30


class MetricsWriter:
    """Appends one JSON object per log step to ``<save>/metrics.jsonl`` (rank 0 only)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, metrics: StepMetrics) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics.to_json(), sort_keys=True) + "\n")
