"""Model provider: megatron-core GPTModel (Llama options) for this rank's pipeline stage(s)."""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from trainer.config import ModelConfig, TrainConfig

logger = logging.getLogger(__name__)


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Round the vocabulary up to a multiple of ``divisible_by * tp`` (Megatron's padding)."""
    unit = divisible_by * tp
    return -(-vocab_size // unit) * unit


def model_vocab_size(config: TrainConfig, vocab_size: int) -> int:
    """Embedding rows of the model: ``model.padded_vocab_size`` when fixed (imported models),
    else Megatron's rounding of ``vocab_size`` for this TP size."""
    m = config.model
    if m.padded_vocab_size is not None:
        return m.padded_vocab_size
    return padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by, config.parallel.tp)


def rope_inv_freq(model: ModelConfig) -> torch.Tensor:
    """RoPE inverse frequencies [head_dim / 2] in fp32, computed as Hugging Face transformers
    does for ``rope_type`` default, linear and llama3 (Llama 3.1 scaling with its low/high
    frequency factors and original context, which megatron-core fixes at 1, 4 and 8192)."""
    dim = model.kv_channels
    inv_freq = 1.0 / (model.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    factor = model.rope_scaling_factor
    if model.rope_scaling == "linear":
        return inv_freq / factor
    if model.rope_scaling != "llama3":
        return inv_freq
    low_wavelen = model.rope_original_max_positions / model.rope_low_freq_factor
    high_wavelen = model.rope_original_max_positions / model.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = ((model.rope_original_max_positions / wavelen - model.rope_low_freq_factor)
              / (model.rope_high_freq_factor - model.rope_low_freq_factor))
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def mask_padded_logits(output_layer: torch.nn.Module, vocab_size: int) -> None:
    """Give the padded vocabulary entries a logit of -inf on this TP rank's slice, so they take
    no probability mass: the loss and the softmax of real tokens are those of the unpadded
    model, and the padded rows of the output layer get no gradient (they stay zero)."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()

    def hook(module, args, output):
        logits, bias = output
        local = logits.shape[-1]
        first_padded = vocab_size - tp_rank * local  # local column of the first padded id
        if first_padded >= local:
            return output
        logits = logits.clone()
        logits[..., max(first_padded, 0):] = float("-inf")
        return logits, bias

    output_layer.register_forward_hook(hook)


def use_transformer_engine(config: TrainConfig) -> bool:
    """Whether to build the Transformer Engine layer spec (needs TE and CUDA)."""
    impl = config.model.transformer_impl
    if impl == "local":
        return False
    if config.mode == "lora":
        # TE fuses the norm into linear_qkv, so an adapter could not see the normalised input
        if impl == "transformer_engine":
            raise ValueError("mode=lora needs model.transformer_impl=local (TE fuses norm and qkv)")
        return False
    try:
        import transformer_engine  # noqa: F401, PLC0415
        have_te = torch.cuda.is_available()
    except ImportError:
        have_te = False
    if impl == "transformer_engine" and not have_te:
        raise ValueError("model.transformer_impl=transformer_engine but Transformer Engine/CUDA is unavailable")
    return have_te


def params_dtype(config: TrainConfig) -> torch.dtype:
    """bf16 on GPU (precision auto/bf16), fp16 for precision fp16, fp32 otherwise."""
    if config.precision == "fp16":
        return torch.float16
    if config.precision == "bf16" or (config.precision == "auto" and torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def transformer_config(config: TrainConfig) -> TransformerConfig:
    """megatron TransformerConfig for ``config`` (fusions only on GPU)."""
    m, p = config.model, config.parallel
    on_gpu = torch.cuda.is_available()
    dtype = params_dtype(config)
    return TransformerConfig(
        num_layers=m.num_layers, hidden_size=m.hidden_size, num_attention_heads=m.num_attention_heads,
        num_query_groups=m.query_groups, ffn_hidden_size=m.ffn_size, kv_channels=m.kv_channels,
        add_qkv_bias=m.add_qkv_bias,
        normalization=m.normalization, layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=m.activation == "swiglu",
        activation_func=F.silu if m.activation == "swiglu" else F.gelu,
        add_bias_linear=m.add_bias_linear, hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout, init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.virtual_pp,
        sequence_parallel=p.sequence_parallel and p.tp > 1,
        pipeline_dtype=dtype, params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        autocast_dtype=dtype,
        # per-token loss: gradients are divided by the number of loss tokens in the whole
        # global batch, so DP and accumulation layouts give the same update.
        calculate_per_token_loss=True,
        # initialise full weights on CPU, then split: identical init for any TP size
        use_cpu_initialization=True, perform_initialization=True,
        # gloo/interleaved PP: batched isend/irecv silently misorders on gloo
        batch_p2p_comm=on_gpu, deallocate_pipeline_outputs=on_gpu,
        bias_activation_fusion=on_gpu and m.add_bias_linear, masked_softmax_fusion=on_gpu,
        bias_dropout_fusion=on_gpu, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False, cross_entropy_loss_fusion=False,
    )


class ParallelTorchNorm:
    """torch RMSNorm/LayerNorm usable with sequence parallelism.

    megatron's local-spec ``WrappedTorchNorm`` refuses sequence parallelism (it would need Apex).
    Under SP each TP rank normalises its own slice of the sequence, so the norm's weight grads
    are partial sums; marking the weights ``sequence_parallel`` makes ``finalize_model_grads``
    all-reduce them over the TP group, which is what Apex/TE norms do.
    """

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_: Any):
        norm_cls = torch.nn.RMSNorm if config.normalization == "RMSNorm" else torch.nn.LayerNorm
        norm = norm_cls(hidden_size, eps=eps, dtype=config.params_dtype)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def layer_spec(config: TrainConfig, tf_config: TransformerConfig, vp_stage: int | None):
    """Transformer block spec for this stage: TE spec if available, else local with our norm."""
    if use_transformer_engine(config):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec  # noqa: PLC0415

        spec = get_gpt_layer_with_transformer_engine_spec()
        # packed documents: the block-diagonal mask must be honoured, not replaced by causal
        spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.arbitrary
        return spec
    spec = get_gpt_layer_local_spec(normalization=config.model.normalization)
    spec.submodules.input_layernorm = ParallelTorchNorm
    spec.submodules.pre_mlp_layernorm = ParallelTorchNorm
    num_layers = get_num_layers_to_build(tf_config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[spec] * num_layers, layer_norm=ParallelTorchNorm)


def build_model(config: TrainConfig, tf_config: TransformerConfig, vocab_size: int) -> list[GPTModel]:
    """GPTModel chunk(s) of this pipeline rank (several with virtual pipelining)."""
    m = config.model
    chunks = config.parallel.virtual_pp or 1
    models = []
    rows = model_vocab_size(config, vocab_size)
    for vp_stage in range(chunks):
        vp = vp_stage if config.parallel.virtual_pp else None
        model = GPTModel(
            config=tf_config, transformer_layer_spec=layer_spec(config, tf_config, vp),
            vocab_size=rows,
            max_sequence_length=m.seq_len,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp),
            share_embeddings_and_output_weights=not m.untie_embeddings,
            position_embedding_type=m.position_embedding, rotary_base=m.rotary_base, vp_stage=vp)
        if m.position_embedding == "rope":
            model.rotary_pos_emb.inv_freq = rope_inv_freq(m)
        if model.post_process and rows > vocab_size:
            mask_padded_logits(model.output_layer, vocab_size)
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        models.append(model)
    return models


def num_parameters(models: list[torch.nn.Module]) -> int:
    """Parameters held by this rank (sum over its chunks)."""
    return sum(p.numel() for m in models for p in m.parameters())
