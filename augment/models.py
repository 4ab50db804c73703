"""Model loading at the edge: once per process, cached by (kind, path, device, dtype).

Models are Hugging Face checkpoints given by hub id (``Helsinki-NLP/opus-mt-zh-en``,
``bert-base-chinese``) or local directory.  The Spark adapter caches the pipeline per executor
process and this cache is per process too, so each executor loads each model once.

torch and transformers are imported here lazily: ``import augment`` never imports torch.
"""
from __future__ import annotations

import functools
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"augment.device is {device!r} but no CUDA device is visible")
    return device


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles), where bf16
    matrix products run about twice as fast as fp32 (measured here on an AVX512-BF16 EPYC:
    a bert-base forward of 16 x 48 tokens, one thread, 1.56 s in fp32, 0.73 s in bf16).
    Without it bf16 is converted in software, which is usually slower than fp32."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(probe() for probe in probes if probe is not None)
    except RuntimeError:  # private probes: a build without them is treated as no native bf16
        return False


def resolve_dtype(dtype: str, device: str):
    """``auto`` -> bf16 on GPUs that support it, fp16 on other GPUs; on CPU bf16 where the
    CPU has native bf16 (:func:`cpu_has_native_bf16`), else fp32."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return getattr(torch, dtype)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_model(kind: str, path: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """``(tokenizer, model)`` for ``kind`` ``seq2seq`` or ``masked_lm``, in eval mode on the device."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (kind, path, device, str(torch_dtype))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(kind, path, device, torch_dtype)
        return _CACHE[key]


def _load(kind: str, path: str, device: str, torch_dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

    _quiet_transformers()
    model_cls = {"seq2seq": AutoModelForSeq2SeqLM, "masked_lm": AutoModelForMaskedLM}[kind]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = model_cls.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot load {kind} model {path!r}: {exc}. Give a local directory, or a hub id with hub access "
                           f"(offline: download it once with `huggingface-cli download {path}`)") from exc
    model.to(device).eval()
    logger.info("loaded %s model %s on %s (%s)", kind, path, device, torch_dtype)
    return tokenizer, model


def clear_cache() -> None:
    """Forget loaded models (tests)."""
    with _LOCK:
        _CACHE.clear()
