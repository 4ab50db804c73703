"""Hugging Face ``config.json`` <-> :class:`~trainer.config.ModelConfig` (pure; no torch).

Supported families (one megatron GPT with Llama options covers them):

* ``LlamaForCausalLM``: Llama 2/3/3.1/3.2 (llama3 RoPE scaling), DeepSeek-LLM dense,
  DeepSeek-R1-Distill-Llama;
* ``MistralForCausalLM`` without a sliding window (Mistral 7B v0.2 and later);
* ``Qwen2ForCausalLM``: Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen (q/k/v biases, tied
  embeddings in the small sizes).

Anything else (MoE, sliding-window attention, an unknown RoPE scaling, an activation other than
SiLU) raises :class:`UnsupportedModelError` with one line that lists what is supported. The
config.json variants of transformers 4 and 5 are read: ``rope_theta`` / ``rope_scaling`` (4) and
``rope_parameters`` (5), ``torch_dtype`` / ``dtype``, an explicit ``head_dim``, GQA's
``num_key_value_heads``, ``tie_word_embeddings`` and the bias flags.
"""
from __future__ import annotations

from typing import Any

from trainer.config import ModelConfig

#: architecture -> family; the family decides the tensor names and bias layout.
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
SUPPORTED = ("LlamaForCausalLM (Llama 2/3/3.1/3.2, DeepSeek-LLM dense, DeepSeek-R1-Distill-Llama), "
             "MistralForCausalLM (no sliding window), Qwen2ForCausalLM (Qwen2, Qwen2.5, "
             "DeepSeek-R1-Distill-Qwen)")
ROPE_TYPES = ("default", "linear", "llama3")
#: Vocabulary padding unit of imported models: a multiple of 128 splits over any power-of-two TP
#: up to 128 (Megatron-LM's make-vocab-size-divisible-by default).
VOCAB_PAD_UNIT = 128
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


class UnsupportedModelError(ValueError):
    """A Hugging Face model this importer cannot map (one line, lists what is supported)."""


def architecture_of(hf: dict[str, Any]) -> str:
    """The ``*ForCausalLM`` class name of ``hf`` (from ``architectures`` or ``model_type``)."""
    archs = hf.get("architectures") or []
    if archs:
        return archs[0]
    return MODEL_TYPES.get(hf.get("model_type", ""), f"model_type={hf.get('model_type')!r}")


def _unsupported(arch: str, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{arch}: {what} is not supported; supported: {SUPPORTED}")


def rope_settings(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE theta and scaling of ``hf`` as ModelConfig fields (transformers 4 and 5 layouts)."""
    arch = architecture_of(hf)
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in ROPE_TYPES:
        raise UnsupportedModelError(f"{arch}: rope_scaling type {rope_type!r} is not supported; "
                                    f"supported: {', '.join(ROPE_TYPES)}")
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise UnsupportedModelError(f"{arch}: partial_rotary_factor={partial} is not supported; "
                                    "supported: RoPE over the whole head")
    out: dict[str, Any] = {"rotary_base": float(theta)}
    if rope_type == "default":
        return out
    out.update(rope_scaling=rope_type, rope_scaling_factor=float(scaling["factor"]))
    if rope_type == "llama3":
        out.update(rope_low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
                   rope_high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
                   rope_original_max_positions=int(scaling.get("original_max_position_embeddings", 8192)))
    return out


def _check_supported(hf: dict[str, Any]) -> str:
    arch = architecture_of(hf)
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"architecture {arch} is not supported; supported: {SUPPORTED}")
    for key in _MOE_KEYS:
        if hf.get(key):
            raise _unsupported(arch, f"mixture of experts ({key}={hf[key]})")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise _unsupported(arch, f"hidden_act={act!r} (only silu/SwiGLU)")
    family = ARCHITECTURES[arch]
    sliding = hf.get("use_sliding_window", family == "llama") and hf.get("sliding_window")
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if sliding or layer_types != {"full_attention"}:
        raise _unsupported(arch, f"sliding-window attention (sliding_window={hf.get('sliding_window')})")
    if family == "llama" and bool(hf.get("attention_bias")) != bool(hf.get("mlp_bias")):
        raise _unsupported(arch, "attention_bias without mlp_bias (or the reverse)")
    return family


def model_config_from_hf(hf: dict[str, Any], seq_len: int = 4096) -> ModelConfig:
    """The megatron model shape of Hugging Face config ``hf``; UnsupportedModelError otherwise.

    ``seq_len`` is the training length (capped at ``max_position_embeddings``); the vocabulary is
    padded up to a multiple of :data:`VOCAB_PAD_UNIT`.
    """
    family = _check_supported(hf)
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    head_dim = hf.get("head_dim") or hidden // heads
    vocab = int(hf["vocab_size"])
    return ModelConfig(
        num_layers=int(hf["num_hidden_layers"]), hidden_size=hidden, num_attention_heads=heads,
        num_query_groups=int(hf.get("num_key_value_heads") or heads),
        ffn_hidden_size=int(hf["intermediate_size"]),
        seq_len=min(seq_len, int(hf.get("max_position_embeddings") or seq_len)),
        vocab_size=vocab, padded_vocab_size=-(-vocab // VOCAB_PAD_UNIT) * VOCAB_PAD_UNIT,
        make_vocab_size_divisible_by=VOCAB_PAD_UNIT,
        normalization="RMSNorm", norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)), activation="swiglu",
        position_embedding="rope", untie_embeddings=not hf.get("tie_word_embeddings", False),
        add_bias_linear=family == "llama" and bool(hf.get("attention_bias")),
        add_qkv_bias=family == "qwen2",
        head_dim=None if head_dim * heads == hidden else int(head_dim),
        init_method_std=float(hf.get("initializer_range", 0.02)),
        **rope_settings(hf))


def hf_dtype_name(hf: dict[str, Any]) -> str | None:
    """The ``dtype`` (transformers 5) or ``torch_dtype`` (4) named by ``hf``, if any."""
    return hf.get("dtype") or hf.get("torch_dtype")


def hf_config_from_model(model: ModelConfig, dtype: str, base: dict[str, Any] | None = None,
                         *, bos_id: int | None = None, eos_id: int | None = None) -> dict[str, Any]:
    """config.json for ``model``: ``base`` (the imported config) with the shape fields set from
    ``model``, or a fresh Llama/Qwen2 config for a model trained from scratch."""
    arch = "Qwen2ForCausalLM" if model.add_qkv_bias else "LlamaForCausalLM"
    out = dict(base) if base else {"architectures": [arch], "model_type": arch[:-len("ForCausalLM")].lower(),
                                   "hidden_act": "silu", "bos_token_id": bos_id, "eos_token_id": eos_id,
                                   "max_position_embeddings": model.seq_len}
    out.update(
        hidden_size=model.hidden_size, intermediate_size=model.ffn_size, num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads, num_key_value_heads=model.query_groups,
        head_dim=model.kv_channels, vocab_size=model.vocab_size, rms_norm_eps=model.norm_epsilon,
        tie_word_embeddings=not model.untie_embeddings, initializer_range=model.init_method_std)
    if not model.add_qkv_bias:
        out.update(attention_bias=model.add_bias_linear, mlp_bias=model.add_bias_linear)
    if not base:
        scaling = None
        if model.rope_scaling != "none":
            scaling = {"rope_type": model.rope_scaling, "factor": model.rope_scaling_factor}
            if model.rope_scaling == "llama3":
                scaling.update(low_freq_factor=model.rope_low_freq_factor,
                               high_freq_factor=model.rope_high_freq_factor,
                               original_max_position_embeddings=model.rope_original_max_positions)
        out.update(rope_theta=model.rotary_base, rope_scaling=scaling)
    out.pop("torch_dtype", None)
    out["dtype"] = dtype
    return out
