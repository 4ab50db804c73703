"""Frozen, validated trainer configuration.

A recipe (:mod:`trainer.recipes`) returns a :class:`TrainConfig`; the ``train:`` section of
params.yaml and ``--set key=value`` flags override its fields through :func:`apply_overrides`,
which rebuilds the whole config with :func:`etl.core.config.build_config` so every override is
validated and a bad one names its dotted field.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from etl.core.config import build_config, closest, config_to_dict


def _check(cond: bool, where: str, value: Any, why: str) -> None:
    if not cond:
        raise ValueError(f"{where}={value!r}: {why}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """GPT/Llama-style decoder shape (megatron-core TransformerConfig + GPTModel options)."""

    num_layers: int
    """Transformer layers (divisible by parallel.pp * (parallel.virtual_pp or 1))."""
    hidden_size: int
    """Model width d_model."""
    num_attention_heads: int
    """Query heads (divisible by parallel.tp)."""
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention; None = num_attention_heads (plain MHA)."""
    ffn_hidden_size: int | None = None
    """MLP inner width; None = 4 * hidden_size."""
    seq_len: int = 2048
    """Training sequence length in tokens (must equal the reader's seq_len)."""
    vocab_size: int | None = None
    """Vocabulary; None = the shards manifest's vocab size. Padded up to a multiple of
    ``make_vocab_size_divisible_by * tp`` as Megatron does."""
    make_vocab_size_divisible_by: int = 128
    """Vocab padding unit (Megatron-LM default 128) so the embedding splits evenly over TP."""
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    """Norm layer (Llama: RMSNorm)."""
    norm_epsilon: float = 1e-5
    """Norm epsilon."""
    activation: Literal["swiglu", "gelu"] = "swiglu"
    """MLP activation; swiglu = gated SiLU (Llama)."""
    position_embedding: Literal["rope", "learned_absolute"] = "rope"
    """Position encoding (Llama: rope)."""
    rotary_base: float = 10000
    """RoPE base theta (Llama-2: 10000, Llama-3: 500000, Qwen2.5: 1000000)."""
    rope_scaling: Literal["none", "linear", "llama3"] = "none"
    """RoPE frequency scaling as in Hugging Face ``rope_type`` (llama3: Llama 3.1/3.2)."""
    rope_scaling_factor: float = 1.0
    """RoPE scaling ``factor`` (Llama 3.1: 8, Llama 3.2: 32); 1 = none."""
    rope_low_freq_factor: float = 1.0
    """llama3 scaling ``low_freq_factor`` (Llama 3.1: 1)."""
    rope_high_freq_factor: float = 4.0
    """llama3 scaling ``high_freq_factor`` (Llama 3.1: 4)."""
    rope_original_max_positions: int = 8192
    """llama3 scaling ``original_max_position_embeddings``, in tokens (Llama 3.1: 8192)."""
    head_dim: int | None = None
    """Attention head width (megatron kv_channels); None = hidden_size / num_attention_heads."""
    untie_embeddings: bool = True
    """Separate input embedding and output projection (Llama: untied)."""
    add_bias_linear: bool = False
    """Biases in linear layers (Llama: none)."""
    add_qkv_bias: bool = False
    """Biases on the query/key/value projection only (Qwen2)."""
    padded_vocab_size: int | None = None
    """Embedding rows including padding, fixed for every layout (imported models: vocab_size
    rounded up to 128, so any power-of-two TP up to 128 splits it); None = Megatron's
    ``make_vocab_size_divisible_by * tp`` rounding."""
    hidden_dropout: float = 0.0
    """Dropout after attention/MLP (0 for pretraining at scale)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    init_method_std: float = 0.02
    """Std of the normal weight init (GPT-2/Megatron default 0.02)."""
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    """Layer spec: auto = Transformer Engine spec when TE is installed and CUDA present, else local."""

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_attention_heads", "seq_len"):
            _check(getattr(self, name) > 0, f"model.{name}", getattr(self, name), "must be > 0")
        _check(self.head_dim is not None or self.hidden_size % self.num_attention_heads == 0,
               "model.hidden_size", self.hidden_size,
               f"must be divisible by num_attention_heads={self.num_attention_heads} (or set model.head_dim)")
        _check(self.head_dim is None or (self.head_dim > 0 and self.head_dim % 2 == 0), "model.head_dim",
               self.head_dim, "must be a positive even number")
        _check(self.padded_vocab_size is None or (self.vocab_size is not None
                                                  and self.padded_vocab_size >= self.vocab_size),
               "model.padded_vocab_size", self.padded_vocab_size, f"needs model.vocab_size <= it (is {self.vocab_size})")
        _check(self.rope_scaling_factor >= 1.0, "model.rope_scaling_factor", self.rope_scaling_factor, "must be >= 1")
        groups = self.num_query_groups
        _check(groups is None or (groups > 0 and self.num_attention_heads % groups == 0),
               "model.num_query_groups", groups, "must divide num_attention_heads")
        _check(0.0 <= self.hidden_dropout < 1 and 0.0 <= self.attention_dropout < 1,
               "model.hidden_dropout", self.hidden_dropout, "dropouts must be in [0, 1)")

    @property
    def ffn_size(self) -> int:
        """The MLP inner width actually used."""
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def kv_channels(self) -> int:
        """The attention head width actually used."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        """The number of key/value heads actually used."""
        return self.num_query_groups or self.num_attention_heads


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """Megatron parallel layout; DP = world size / (tp * pp)."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size."""
    virtual_pp: int | None = None
    """Interleaved pipeline chunks per stage (None = plain 1F1B)."""
    sequence_parallel: bool = True
    """Shard layer-norm/dropout activations over the TP group (only effective when tp > 1)."""
    distributed_optimizer: bool = False
    """Shard optimizer state over the data-parallel group (ZeRO-1, Megatron's distributed optimizer)."""
    overlap_grad_reduce: bool = False
    """Overlap the DP gradient all-reduce with backward (GPU clusters; off on CPU/gloo)."""

    def __post_init__(self) -> None:
        _check(self.tp >= 1, "parallel.tp", self.tp, "must be >= 1")
        _check(self.pp >= 1, "parallel.pp", self.pp, "must be >= 1")
        _check(self.virtual_pp is None or (self.virtual_pp >= 2 and self.pp >= 2),
               "parallel.virtual_pp", self.virtual_pp, "needs pp >= 2 and virtual_pp >= 2, or None")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with cosine decay and linear warmup (Megatron OptimizerConfig + OptimizerParamScheduler)."""

    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Floor of the cosine decay."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay; norms and biases are excluded by Megatron."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2 (Llama/GPT-3: 0.95)."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    warmup_steps: int = 100
    """Linear warmup, in optimizer steps."""
    decay_steps: int | None = None
    """Cosine decay length in optimizer steps; None = train.steps."""
    decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    """LR decay after warmup."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _check(0 <= self.min_lr <= self.lr, "optim.min_lr", self.min_lr, "must be in [0, lr]")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(self.clip_grad >= 0, "optim.clip_grad", self.clip_grad, "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How batches are drawn from the shards."""

    micro_batch_size: int = 1
    """Sequences per micro-batch per data-parallel rank."""
    accumulation_steps: int = 1
    """Micro-batches per optimizer step (gradient accumulation; the pipeline's micro-batches)."""
    seed: int = 0
    """Reader shuffle seed (the reader's order depends on it, not on the model seed)."""
    shuffle_buffer: int = 1000
    """Reader shuffle buffer, in samples."""
    num_workers: int = 0
    """Reader worker processes per rank."""
    verify_checksums: bool = True
    """Check every sample read against the shard index's CRC-32 (and each index against the
    manifest's sha256): a corrupt shard stops training, naming the shard and sample, instead of
    being trained on. Its own CPU is about 2% of read time (docs/reliability.md); false turns it off."""

    def __post_init__(self) -> None:
        _check(self.micro_batch_size >= 1, "data.micro_batch_size", self.micro_batch_size, "must be >= 1")
        _check(self.accumulation_steps >= 1, "data.accumulation_steps", self.accumulation_steps, "must be >= 1")


#: the guide's short LoRA target names -> megatron's module names
LORA_TARGET_ALIASES = {"fc1": "linear_fc1", "fc2": "linear_fc2", "qkv": "linear_qkv", "proj": "linear_proj"}
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Low-rank adapters (Hu et al. 2021) on Megatron's parallel linear layers."""

    rank: int = 16
    """Adapter rank r."""
    alpha: float = 32.0
    """Scale numerator: the update is (alpha / rank) * B @ A."""
    dropout: float = 0.1
    """Dropout probability on the adapter input (the base path is not dropped; the guide's 0.1)."""
    targets: tuple[str, ...] = ("linear_qkv", "linear_proj")
    """Module names that get adapters: linear_qkv, linear_proj (attention), linear_fc1, linear_fc2
    (MLP); the short names fc1, fc2, qkv, proj are accepted and stored as megatron's names."""

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "lora.rank", self.rank, "must be >= 1")
        _check(self.alpha > 0, "lora.alpha", self.alpha, "must be > 0")
        _check(0.0 <= self.dropout < 1, "lora.dropout", self.dropout, "must be in [0, 1)")
        targets = tuple(LORA_TARGET_ALIASES.get(t, t) for t in self.targets)
        _check(bool(targets) and set(targets) <= set(LORA_TARGETS), "lora.targets", self.targets,
               f"must be a non-empty subset of {list(LORA_TARGETS)} (or fc1, fc2, qkv, proj)")
        object.__setattr__(self, "targets", tuple(dict.fromkeys(targets)))


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Teacher-student distillation (Hinton et al. 2015): loss = alpha * T^2 * KL(teacher || student)
    + (1 - alpha) * cross-entropy + mse_weight * MSE(projected student layer, teacher layer)."""

    teacher: str | None = None
    """Teacher checkpoint (a jinglian checkpoint, e.g. an imported Hugging Face model); mode=distill."""
    alpha: float = 0.7
    """Weight of the KL term; 1 - alpha weighs the cross-entropy on the labels (the guide's 0.7)."""
    temperature: float = 1.0
    """Softmax temperature T of both models in the KL term (Hinton et al. 2015 use 1-20); the KL is
    multiplied by T^2 so its gradient scale does not depend on T."""
    student_layer: int = 0
    """1-based student layer whose output is aligned to the teacher's by MSE (0 = no alignment;
    the guide aligns layer 12)."""
    teacher_layer: int = 0
    """1-based teacher layer for the MSE alignment (0 = the same number as student_layer)."""
    mse_weight: float = 1.0
    """Weight of the per-token MSE between the (projected) student and teacher layer outputs."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.alpha <= 1.0, "distill.alpha", self.alpha, "must be in [0, 1]")
        _check(self.temperature > 0, "distill.temperature", self.temperature, "must be > 0")
        _check(self.student_layer >= 0, "distill.student_layer", self.student_layer, "must be >= 0")
        _check(self.teacher_layer >= 0, "distill.teacher_layer", self.teacher_layer, "must be >= 0")
        _check(self.mse_weight >= 0, "distill.mse_weight", self.mse_weight, "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class EwcConfig:
    """Elastic weight consolidation (Kirkpatrick et al. 2017): adds 0.5 * lambda * sum F (theta -
    theta_old)^2 with F the diagonal Fisher of an earlier task (``python -m trainer.fisher``)."""

    fisher: str | None = None
    """Directory written by ``python -m trainer.fisher`` (Fisher and theta_old); None = no EWC."""
    lambda_: float = 1.0
    """Penalty strength lambda (set as ``ewc.lambda``); the Fisher is a per-token mean, so lambda
    trades one unit of mean token loss against F-weighted squared drift."""

    def __post_init__(self) -> None:
        _check(self.lambda_ >= 0, "ewc.lambda", self.lambda_, "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class Fp16Config:
    """Dynamic loss scaling for precision=fp16 (megatron-core's DynamicGradScaler): an overflow
    (inf/nan gradient) skips the step and, after ``hysteresis`` overflows, halves the scale;
    ``loss_scale_window`` clean steps double it."""

    initial_loss_scale: float = 65536.0
    """Starting loss scale (torch GradScaler's 2**16; the project guide uses 256)."""
    min_loss_scale: float = 1.0
    """Floor of the scale."""
    loss_scale_window: int = 1000
    """Clean steps before the scale doubles (Megatron-LM default)."""
    hysteresis: int = 2
    """Overflows tolerated before the scale halves (Megatron-LM default 2; 1 = halve at once)."""

    def __post_init__(self) -> None:
        _check(self.initial_loss_scale > 0, "fp16.initial_loss_scale", self.initial_loss_scale, "must be > 0")
        _check(0 < self.min_loss_scale <= self.initial_loss_scale, "fp16.min_loss_scale",
               self.min_loss_scale, "must be in (0, initial_loss_scale]")
        _check(self.loss_scale_window >= 1, "fp16.loss_scale_window", self.loss_scale_window, "must be >= 1")
        _check(self.hysteresis >= 1, "fp16.hysteresis", self.hysteresis, "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class FgmConfig:
    """Adversarial training by the fast gradient method (Miyato et al. 2017): each step adds a
    second forward/backward with the word embeddings moved by epsilon * g / ||g||."""

    epsilon: float = 0.0
    """Perturbation size in embedding-weight norm units (0 = off; FGM papers use 1.0)."""

    def __post_init__(self) -> None:
        _check(self.epsilon >= 0, "fgm.epsilon", self.epsilon, "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training job: model, parallel layout, optimizer, data and schedule."""

    name: str
    """Recipe name (recorded in checkpoints and metrics)."""
    mode: Literal["pretrain", "sft", "lora", "distill"] = "pretrain"
    """pretrain: causal LM on every token; sft: loss on responses only (the shards' loss_mask);
    lora: sft loss with frozen base weights and trainable adapters; distill: learn from the
    frozen teacher ``distill.teacher`` (docs/distill.md)."""
    model: ModelConfig
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    ewc: EwcConfig = field(default_factory=EwcConfig)
    fp16: Fp16Config = field(default_factory=Fp16Config)
    fgm: FgmConfig = field(default_factory=FgmConfig)
    steps: int = 100
    """Optimizer steps to train (total, counting steps done before a resume)."""
    seed: int = 1234
    """Model init and dropout seed (megatron model_parallel_cuda_manual_seed)."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 mixed precision on GPU, fp32 on CPU; fp16: fp16 with dynamic loss scaling
    (section fp16)."""
    log_interval: int = 10
    """Steps between metrics lines."""
    save_interval: int = 0
    """Steps between checkpoints (0 = only at the end)."""
    pretrained: str | None = None
    """Checkpoint whose model weights initialise this run (fine-tuning); any TP/PP layout."""
    eval_interval: int = 0
    """Steps between validation passes over the shards' ``valid/`` set (and at the last step);
    0 = none. Validation loss and perplexity per domain go into the metrics line and metrics.jsonl."""
    eval_iters: int = 10
    """Global batches (micro_batch_size x accumulation_steps x DP sequences) per validation pass:
    the same first rows of the validation stream every time, for any TP/PP/DP layout."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "train.steps", self.steps, "must be >= 1")
        _check(self.eval_interval >= 0, "train.eval_interval", self.eval_interval, "must be >= 0")
        _check(self.eval_iters >= 1, "train.eval_iters", self.eval_iters, "must be >= 1")
        _check(self.log_interval >= 1, "train.log_interval", self.log_interval, "must be >= 1")
        _check(self.save_interval >= 0, "train.save_interval", self.save_interval, "must be >= 0")
        m, p = self.model, self.parallel
        _check(m.num_attention_heads % p.tp == 0, "parallel.tp", p.tp,
               f"must divide model.num_attention_heads={m.num_attention_heads}")
        _check(m.query_groups % p.tp == 0, "parallel.tp", p.tp,
               f"must divide model.num_query_groups={m.query_groups}")
        _check(m.ffn_size % p.tp == 0, "parallel.tp", p.tp, f"must divide ffn size {m.ffn_size}")
        _check(m.padded_vocab_size is None or m.padded_vocab_size % p.tp == 0, "parallel.tp", p.tp,
               f"must divide model.padded_vocab_size={m.padded_vocab_size}")
        chunks = p.pp * (p.virtual_pp or 1)
        _check(m.num_layers % chunks == 0, "model.num_layers", m.num_layers,
               f"must be divisible by pp * virtual_pp = {chunks}")
        _check(p.virtual_pp is None or self.data.accumulation_steps % p.pp == 0,
               "data.accumulation_steps", self.data.accumulation_steps,
               "interleaved pipelining needs a multiple of parallel.pp")
        _check((self.mode == "distill") == bool(self.distill.teacher), "distill.teacher", self.distill.teacher,
               "mode=distill needs a teacher checkpoint (--teacher) and a teacher needs mode=distill")
        _check(self.mode != "distill" or p.pp == 1, "parallel.pp", p.pp,
               "distillation runs with pp=1 (the teacher would need its own pipeline schedule); use tp/dp")
        _check(self.fgm.epsilon == 0 or not p.distributed_optimizer, "fgm.epsilon", self.fgm.epsilon,
               "FGM needs the full embedding gradient, which the distributed optimizer shards; "
               "set parallel.distributed_optimizer=false")


def parse_override(text: str) -> tuple[str, Any]:
    """``optim.lr=1e-4`` -> ("optim.lr", 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key=value (for example optim.lr=1e-4)")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string; the user meant a number
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


#: override names that are not Python identifiers -> the field
OVERRIDE_ALIASES = {"ewc.lambda": "ewc.lambda_"}


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return ``config`` with dotted-key overrides applied and the whole config re-validated."""
    data = copy.deepcopy(config_to_dict(config))
    for dotted, value in overrides.items():
        dotted = OVERRIDE_ALIASES.get(dotted, dotted)
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"train.{dotted}: {part!r} is not a config section{closest(part, [k for k, v in node.items() if isinstance(v, dict)])}")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"train.{dotted}: unknown key{closest(parts[-1], node)}; known: {sorted(node)}")
        node[parts[-1]] = value
    return build_config(TrainConfig, data, "train")


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON-ready view of the config (stored in checkpoints and the metrics file)."""
    return config_to_dict(config)
