"""Teacher-student distillation on vocabulary-parallel logits (``mode: distill``).

Per loss token (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"; the project
guide's alpha = 0.7)::

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, label)
           + mse_weight * mean_h (P h_student[l_s] - h_teacher[l_t])^2

The frozen teacher runs in the same processes under the same tensor parallelism. Its logits
never leave their TP shard: :func:`vocab_parallel_kl` takes the softmax statistics (max and sum
of exponentials) with all-reduces over the TP group, as megatron's vocab-parallel cross-entropy
does, and its backward is the local ``(p_student - p_teacher) / T``. The optional intermediate
alignment reads one layer of each model with a forward hook, gathers the sequence-parallel
shards, and maps the student width to the teacher's with a learned ``nn.Linear`` (attached to
the student as ``distill_projection``, so the optimizer and the checkpoint carry it).

Pipeline parallelism is refused at config time (one line): the teacher's activations would need
their own send/receive schedule beside the student's.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from functools import partial

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def _all_reduce(tensor: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def vocab_parallel_log_softmax(logits: torch.Tensor, group=None) -> torch.Tensor:
    """log softmax over a vocabulary split along the last dim across ``group`` (no gradient)."""
    with torch.no_grad():
        peak = _all_reduce(logits.max(dim=-1, keepdim=True).values, dist.ReduceOp.MAX, group)
        shifted = logits - peak
        total = _all_reduce(shifted.exp().sum(dim=-1, keepdim=True), dist.ReduceOp.SUM, group)
        return shifted - total.log()


class _VocabParallelKL(torch.autograd.Function):
    """Per-token KL(teacher || student) over vocab-parallel logits; gradient to the student only."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, temperature: float, group):
        log_p_s = vocab_parallel_log_softmax(student.float() / temperature, group)
        log_p_t = vocab_parallel_log_softmax(teacher.float() / temperature, group)
        p_t = log_p_t.exp()
        # padded vocabulary entries are -inf in both models: p_t = 0 there and they add nothing
        terms = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t))
        kl = _all_reduce(terms.sum(dim=-1), dist.ReduceOp.SUM, group)
        ctx.save_for_backward(log_p_s.exp() - p_t)
        ctx.temperature, ctx.dtype = temperature, student.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_kl: torch.Tensor):
        (diff,) = ctx.saved_tensors
        grad = diff * (grad_kl.unsqueeze(-1) / ctx.temperature)
        return grad.to(ctx.dtype), None, None, None


def vocab_parallel_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      group=None) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) per position, [...] from logits [..., V_local].

    Both logit tensors hold this rank's slice of the vocabulary; ``group`` is the TP group (None:
    the whole vocabulary is local). Every TP rank returns the same full KL.
    """
    return _VocabParallelKL.apply(student_logits, teacher_logits.detach(), temperature, group)


def distillation_loss(kl: torch.Tensor, ce: torch.Tensor, mse: torch.Tensor | None, alpha: float,
                      temperature: float, mse_weight: float) -> torch.Tensor:
    """Per-token combination (module docstring): alpha * T^2 * KL + (1 - alpha) * CE (+ w * MSE)."""
    loss = alpha * temperature ** 2 * kl + (1 - alpha) * ce.float()
    return loss if mse is None else loss + mse_weight * mse


class _LayerCapture:
    """Keeps the last output hidden state [s, b, h] of one TransformerLayer."""

    def __init__(self, layer: torch.nn.Module):
        self.value: torch.Tensor | None = None
        layer.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.value = output[0] if isinstance(output, tuple) else output

    def take(self, sequence_parallel: bool) -> torch.Tensor:
        from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

        value, self.value = self.value, None
        if sequence_parallel:  # the loss is computed identically on every TP rank: split backward
            value = gather_from_sequence_parallel_region(value, tensor_parallel_output_grad=False)
        return value


def _layer(model: torch.nn.Module, number: int, where: str) -> torch.nn.Module:
    layers = getattr(model, "module", model).decoder.layers
    if not 1 <= number <= len(layers):
        raise ValueError(f"{where}={number}: the model has layers 1..{len(layers)}")
    return layers[number - 1]


def _projection(student_width: int, teacher_width: int, dtype: torch.dtype, seed: int) -> torch.nn.Linear:
    # identical on every rank (replicated over TP and DP; DDP does not broadcast): seeded init
    proj = torch.nn.Linear(student_width, teacher_width, bias=False, dtype=dtype)
    bound = 1.0 / student_width ** 0.5
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        proj.weight.copy_((torch.rand(teacher_width, student_width, generator=gen) * 2 - 1) * bound)
    return proj


@dataclasses.dataclass
class Distiller:
    """The frozen teacher and the hooks of one student; :meth:`forward_step` is megatron's."""

    teacher: torch.nn.Module
    alpha: float
    temperature: float
    mse_weight: float
    sequence_parallel: bool
    student_capture: _LayerCapture | None = None
    teacher_capture: _LayerCapture | None = None
    projection: torch.nn.Module | None = None

    def forward_step(self, num_domains: int, data_iterator: Iterator, model: torch.nn.Module):
        """Student and teacher forward on the next micro-batch; per-token distillation loss."""
        from megatron.core import parallel_state, tensor_parallel

        from trainer.loop import loss_func

        batch = next(data_iterator)
        inputs = (batch["tokens"], batch["position_ids"], batch["attention_mask"])
        with torch.no_grad():
            teacher_logits = self.teacher(*inputs)
        student_logits = model(*inputs)  # [b, s, v / tp]
        group = parallel_state.get_tensor_model_parallel_group()
        kl = vocab_parallel_kl(student_logits, teacher_logits, self.temperature, group)
        ce = tensor_parallel.vocab_parallel_cross_entropy(student_logits, batch["labels"])
        loss = distillation_loss(kl, ce, self._layer_mse(), self.alpha, self.temperature, self.mse_weight)
        return loss, partial(loss_func, num_domains, batch)

    def _layer_mse(self) -> torch.Tensor | None:
        if self.student_capture is None:
            return None
        student = self.student_capture.take(self.sequence_parallel)
        teacher = self.teacher_capture.take(self.sequence_parallel).detach()
        if self.projection is not None:
            student = self.projection(student)
        return (student.float() - teacher.float()).pow(2).mean(dim=-1).transpose(0, 1)  # [b, s]


def teacher_config(config, teacher_path: str):
    """``config`` with the teacher checkpoint's model (same parallel layout and precision)."""
    from trainer.config import DistillConfig, EwcConfig, FgmConfig
    from trainer.pretrained import checkpoint_model, read_common

    model = checkpoint_model(read_common(teacher_path))
    if model is None:
        raise ValueError(f"distill.teacher={teacher_path}: the checkpoint records no model config")
    return dataclasses.replace(config, mode="pretrain", model=model, pretrained=None, distill=DistillConfig(),
                               ewc=EwcConfig(), fgm=FgmConfig())


def build_distiller(config, student_models: list, vocab_size: int) -> Distiller:
    """Build and load the frozen teacher in this layout; attach the student's projection."""
    from trainer import checkpoint as ckpt
    from trainer.model import build_model, model_vocab_size, params_dtype, transformer_config
    from trainer.pretrained import checkpoint_path

    d = config.distill
    t_config = teacher_config(config, d.teacher)
    t_vocab = t_config.model.vocab_size or vocab_size
    if t_vocab != vocab_size or model_vocab_size(t_config, t_vocab) != model_vocab_size(config, vocab_size):
        raise ValueError(f"distill.teacher={d.teacher}: teacher vocabulary {t_vocab} "
                         f"({model_vocab_size(t_config, t_vocab)} rows) != student's {vocab_size} "
                         f"({model_vocab_size(config, vocab_size)} rows); both must share the tokenizer")
    t_tf = transformer_config(t_config)
    (teacher,) = build_model(t_config, t_tf, t_vocab)
    ckpt.load_checkpoint(checkpoint_path(d.teacher), [teacher])
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad = False
    distiller = Distiller(teacher=teacher, alpha=d.alpha, temperature=d.temperature, mse_weight=d.mse_weight,
                          sequence_parallel=bool(t_tf.sequence_parallel))
    if d.student_layer:
        (student,) = student_models
        distiller.student_capture = _LayerCapture(_layer(student, d.student_layer, "distill.student_layer"))
        distiller.teacher_capture = _LayerCapture(
            _layer(teacher, d.teacher_layer or d.student_layer, "distill.teacher_layer"))
        widths = (config.model.hidden_size, t_config.model.hidden_size)
        if widths[0] != widths[1]:
            student.distill_projection = _projection(*widths, params_dtype(config), config.seed)
            distiller.projection = student.distill_projection
    logger.info("distillation: teacher %s (%d layers x %d), alpha %.2f, T %.2f, layer MSE %s",
                d.teacher, t_config.model.num_layers, t_config.model.hidden_size, d.alpha, d.temperature,
                f"{d.student_layer}->{d.teacher_layer or d.student_layer}" if d.student_layer else "off")
    return distiller
