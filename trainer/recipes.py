"""Recipes: functions returning a validated :class:`~trainer.config.TrainConfig`.

Every real-size recipe has a tiny twin that runs on a CPU in seconds (STYLE.md rule 7).
Real sizes use the Llama options megatron-core offers: RoPE, RMSNorm, SwiGLU, untied
embeddings, no linear biases, grouped-query attention from 1.3B up.
"""
from __future__ import annotations

from collections.abc import Callable

from trainer.config import DataConfig, LoraConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig

RECIPES: dict[str, Callable[[], TrainConfig]] = {}

# Fine-tuning defaults from the project seeds: lr 3e-5, 500 warmup steps, 8 accumulation steps.
FINETUNE_LR = 3e-5
FINETUNE_WARMUP_STEPS = 500
FINETUNE_ACCUMULATION_STEPS = 8
FINETUNE_WEIGHT_DECAY = 0.01
#: recipe of ``trainer.train --pretrained`` when no --recipe is given
PRETRAINED_DEFAULT_RECIPE = "cpt"


def recipe(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
    """Register ``fn`` under its name."""
    RECIPES[fn.__name__] = fn
    return fn


def get_recipe(name: str) -> TrainConfig:
    """The config of recipe ``name``; ValueError listing the known recipes otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]()


def _tiny_model() -> ModelConfig:
    # 4 layers so PP=2 (and virtual PP=2) split evenly; 4 heads / 2 KV groups so TP=2 splits GQA.
    return ModelConfig(num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                       ffn_hidden_size=128, seq_len=64)


@recipe
def tiny() -> TrainConfig:
    """CPU debug pretraining: 4 layers x 64 wide, seq 64; a few seconds per 10 steps."""
    return TrainConfig(name="tiny", model=_tiny_model(),
                       optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2),
                       data=DataConfig(micro_batch_size=2, accumulation_steps=2, shuffle_buffer=64),
                       steps=20, log_interval=1)


@recipe
def tiny_sft() -> TrainConfig:
    """Tiny twin of :func:`sft_1b3`: loss on responses only."""
    base = tiny()
    return TrainConfig(name="tiny_sft", mode="sft", model=base.model, data=base.data,
                       optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2), steps=20, log_interval=1)


@recipe
def tiny_lora() -> TrainConfig:
    """Tiny twin of :func:`lora_1b3`: rank-16 adapters on the attention projections."""
    base = tiny()
    return TrainConfig(name="tiny_lora", mode="lora", model=base.model, data=base.data,
                       optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2, weight_decay=0.0),
                       lora=LoraConfig(rank=16, alpha=32.0), steps=20, log_interval=1)


@recipe
def gpt_125m() -> TrainConfig:
    """GPT-3 Small shape (12 x 768, 12 heads) with Llama components; 1 GPU."""
    model = ModelConfig(num_layers=12, hidden_size=768, num_attention_heads=12, ffn_hidden_size=2048,
                        seq_len=2048)
    return TrainConfig(name="gpt_125m", model=model,
                       optim=OptimConfig(lr=6e-4, min_lr=6e-5, warmup_steps=2000),
                       data=DataConfig(micro_batch_size=8, accumulation_steps=4),
                       steps=100_000, log_interval=10, save_interval=1000)


@recipe
def llama_1b3() -> TrainConfig:
    """1.3B class (24 x 2048, 16 heads, 8 KV groups, SwiGLU 5504); one H100/H200 in bf16."""
    model = ModelConfig(num_layers=24, hidden_size=2048, num_attention_heads=16, num_query_groups=8,
                        ffn_hidden_size=5504, seq_len=2048)
    return TrainConfig(name="llama_1b3", model=model,
                       optim=OptimConfig(lr=3e-4, min_lr=3e-5, warmup_steps=2000),
                       data=DataConfig(micro_batch_size=4, accumulation_steps=8),
                       parallel=ParallelConfig(distributed_optimizer=True),
                       steps=100_000, log_interval=10, save_interval=1000)


@recipe
def llama_7b() -> TrainConfig:
    """Llama-2-7B shape (32 x 4096, 32 heads, 8 KV groups, SwiGLU 11008, seq 4096); TP=2 x PP=2 per 4 GPUs."""
    model = ModelConfig(num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
                        ffn_hidden_size=11008, seq_len=4096)
    return TrainConfig(name="llama_7b", model=model,
                       optim=OptimConfig(lr=3e-4, min_lr=3e-5, warmup_steps=2000),
                       parallel=ParallelConfig(tp=2, pp=2, distributed_optimizer=True),
                       data=DataConfig(micro_batch_size=1, accumulation_steps=16),
                       steps=100_000, log_interval=10, save_interval=500)


def _finetune_optim() -> OptimConfig:
    return OptimConfig(lr=FINETUNE_LR, min_lr=FINETUNE_LR / 10, warmup_steps=FINETUNE_WARMUP_STEPS)


@recipe
def sft_1b3() -> TrainConfig:
    """Supervised fine-tuning of llama_1b3 (set train.pretrained to the base checkpoint)."""
    base = llama_1b3()
    return TrainConfig(name="sft_1b3", mode="sft", model=base.model, parallel=base.parallel,
                       optim=_finetune_optim(),
                       data=DataConfig(micro_batch_size=4, accumulation_steps=FINETUNE_ACCUMULATION_STEPS),
                       steps=5000, log_interval=10, save_interval=500)


@recipe
def lora_1b3() -> TrainConfig:
    """LoRA fine-tuning of llama_1b3: rank 16, alpha 32 on the attention projections."""
    base = sft_1b3()
    return TrainConfig(name="lora_1b3", mode="lora", model=base.model, parallel=base.parallel,
                       optim=OptimConfig(lr=1e-4, min_lr=1e-5, warmup_steps=FINETUNE_WARMUP_STEPS,
                                         weight_decay=0.0),
                       data=base.data, lora=LoraConfig(), steps=5000, log_interval=10, save_interval=500)


@recipe
def cpt() -> TrainConfig:
    """Continued pretraining of an imported model (``--pretrained``; the model shape comes from the
    checkpoint, the 1.3B model here is a placeholder): re-warmup to lr 3e-5 over 500 steps, then
    cosine to 3e-6; weight decay 0.01; 8 accumulation steps; seq 2048 (the fine-tuning numbers of
    the project guide)."""
    return TrainConfig(name="cpt", model=llama_1b3().model,
                       optim=OptimConfig(lr=FINETUNE_LR, min_lr=FINETUNE_LR / 10, warmup_steps=FINETUNE_WARMUP_STEPS,
                                         weight_decay=FINETUNE_WEIGHT_DECAY, decay_style="cosine"),
                       data=DataConfig(micro_batch_size=4, accumulation_steps=FINETUNE_ACCUMULATION_STEPS),
                       parallel=ParallelConfig(distributed_optimizer=True),
                       steps=10_000, log_interval=10, save_interval=1000)


@recipe
def tiny_cpt() -> TrainConfig:
    """Tiny twin of :func:`cpt` (seq 64, 2-step re-warmup, a few steps) for CPU tests."""
    base = tiny()
    return TrainConfig(name="tiny_cpt", model=base.model,
                       optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2, weight_decay=FINETUNE_WEIGHT_DECAY),
                       data=base.data, steps=10, log_interval=1)
