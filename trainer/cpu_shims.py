"""Redirect the few CUDA-only calls megatron-core makes, so it runs on CPU over gloo.

megatron-core 0.16 has no CPU path, but only a handful of its calls assume CUDA: the current
device, ``torch.cuda.synchronize``, the CUDA RNG tracker (``torch.cuda.get_rng_state`` and its
private helpers), ``Tensor.cuda()`` and a few hard-coded ``device="cuda"`` tensor creations.
:func:`apply_cpu_shims` points each at its CPU equivalent.  It is applied only when CUDA is
absent (:func:`maybe_apply_cpu_shims`), is idempotent, and changes nothing on a GPU machine.
With these shims TP, sequence parallelism, PP, DP, the distributed optimizer and
dist_checkpointing reproduce the one-process losses (tests/distributed).
"""
from __future__ import annotations

import contextlib
import functools
import logging

import torch

logger = logging.getLogger(__name__)
_APPLIED = False
CPU = torch.device("cpu")


def _cpu_device(device):
    """Map any CUDA device spec (``"cuda"``, ``"cuda:0"``, ``0``, torch.device) to CPU."""
    if device is None:
        return None
    if isinstance(device, int) and not isinstance(device, bool):
        return CPU
    if isinstance(device, str) and device.startswith("cuda"):
        return CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return CPU
    return device


def _redirect_device_kwarg(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return fn(*args, **kwargs)
    return wrapper


_FACTORIES = ("empty", "zeros", "ones", "full", "tensor", "arange", "rand", "randn", "randint",
              "empty_like", "zeros_like", "ones_like", "full_like", "as_tensor")


def _patch_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    def get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    mrandom._get_cuda_rng_state = get_state
    mrandom._set_cuda_rng_state = set_state


def _patch_tensor_type() -> None:
    """megatron's optimizers dispatch on ``param.type() == 'torch.cuda.FloatTensor'`` (and Half,
    BFloat16); report CPU tensors under the CUDA name for that no-argument form only."""
    original = torch.Tensor.type

    @functools.wraps(original)
    def type_(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if not args and not kwargs and result.startswith("torch.") and ".cuda." not in result:
            return "torch.cuda." + result[len("torch."):]
        return result

    torch.Tensor.type = type_


def apply_cpu_shims() -> None:
    """Point megatron-core's CUDA-only calls at CPU equivalents (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    torch.cuda.current_device = lambda: CPU
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    # the CPU generator stands in for the CUDA one (torch.manual_seed would recurse into
    # torch.cuda.manual_seed_all, so seed the default generator directly)
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.cuda.device = lambda device=None: contextlib.nullcontext()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    for name in _FACTORIES:
        setattr(torch, name, _redirect_device_kwarg(getattr(torch, name)))
    torch.Tensor.to = _redirect_to(torch.Tensor.to)
    _patch_rng_tracker()
    _patch_tensor_type()
    _APPLIED = True
    logger.info("CUDA absent: megatron-core CPU shims applied (gloo backend)")


def _redirect_to(to):
    @functools.wraps(to)
    def wrapper(self, *args, **kwargs):
        args = tuple(_cpu_device(a) if isinstance(a, (str, torch.device)) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return to(self, *args, **kwargs)
    return wrapper


def maybe_apply_cpu_shims() -> bool:
    """Apply the shims when CUDA is unavailable; return True when they are active."""
    if torch.cuda.is_available():
        return False
    apply_cpu_shims()
    return True
