"""The training loop: distributed setup, forward step with masked per-domain loss, train steps.

One optimizer step = ``data.accumulation_steps`` micro-batches through megatron's pipeline
schedule (``get_forward_backward_func``), then Megatron's optimizer step (gradient clipping
inside) and one LR-scheduler step. Loss is a per-token mean over the loss-masked tokens of the
whole global batch (megatron ``calculate_per_token_loss``), so any TP/PP/DP layout and any
split into micro-batches gives the same update.
"""
from __future__ import annotations

import datetime
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainer.cpu_shims import maybe_apply_cpu_shims

maybe_apply_cpu_shims()  # before megatron-core creates any tensor

from megatron.core import parallel_state, tensor_parallel  # noqa: E402
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads  # noqa: E402
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer  # noqa: E402
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402

from trainer import checkpoint as ckpt  # noqa: E402
from trainer import lora as lora_lib  # noqa: E402
from trainer import validation  # noqa: E402
from trainer.config import TrainConfig, to_dict  # noqa: E402
from trainer.data import open_reader, reader_vocab_size, to_torch_batch  # noqa: E402
from trainer.extras import StepExtras, build_extras  # noqa: E402
from trainer.metrics import MetricsWriter, StepMetrics, gpu_peak_tflops, memory_gib, throughput, training_flops_per_token  # noqa: E402
from trainer.model import build_model, params_dtype, transformer_config  # noqa: E402
from trainer.pretrained import check_shards_tokenizer, read_common  # noqa: E402

logger = logging.getLogger(__name__)


def init_distributed(timeout_s: int = 600) -> torch.device:
    """Join the torchrun job: NCCL on GPUs (one per local rank), gloo on CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def _destroy_groups() -> None:
    """Destroy megatron's groups and the process groups behind them (the default group stays).

    ``destroy_model_parallel`` only forgets megatron's handles: every gloo/NCCL subgroup it
    created stays alive with its threads and sockets (about 130 groups per layout), so a process
    that changes layout many times (the test suite, an evaluation sweep) accumulates thousands
    of threads.  Every subgroup is destroyed here as well.
    """
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        world = dist.GroupMember.WORLD
        for group in list(dist.distributed_c10d._world.pg_map):
            if group is not world:
                dist.destroy_process_group(group)


def init_parallel(config: TrainConfig) -> None:
    """(Re)create megatron's TP/PP/DP groups for ``config`` and seed the RNG tracker."""
    _destroy_groups()
    p = config.parallel
    world = dist.get_world_size()
    if world % (p.tp * p.pp):
        raise ValueError(f"world size {world} is not divisible by tp*pp = {p.tp * p.pp}")
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.virtual_pp)
    tensor_parallel.model_parallel_cuda_manual_seed(config.seed)
    # Python's and NumPy's global generators are unused in training but saved in every
    # checkpoint (trainer/checkpoint.py _rng_state): seeded as Megatron's pretrain does, so
    # the same run writes the same checkpoint bytes (they were seeded from the OS before).
    random.seed(config.seed)
    np.random.seed(config.seed)


@dataclass
class TrainState:
    """Everything one rank holds during training."""

    config: TrainConfig
    models: list
    optimizer: Any
    scheduler: Any
    reader: Any
    tf_config: Any
    vocab_size: int
    device: torch.device
    step: int = 0
    consumed_tokens: int = 0
    losses: list = field(default_factory=list)
    extras: StepExtras = field(default_factory=StepExtras)
    """distillation, EWC, FGM, fp16 bookkeeping (trainer/extras.py)"""
    valid: str | None = None
    """Validation shard set (``<shards>/valid``) read every ``eval_interval`` steps, or None."""
    valid_batches: list | None = None
    """This rank's validation micro-batches (numpy), read once (trainer/validation.py)."""


def build_reader(config: TrainConfig, shards: str, **reader_kwargs: Any):
    """The shards reader for this rank's data-parallel slot (Megatron's DP group, never RANK)."""
    d = config.data
    return open_reader(shards, dp_rank=parallel_state.get_data_parallel_rank(),
                       dp_size=parallel_state.get_data_parallel_world_size(),
                       seq_len=config.model.seq_len, micro_batch_size=d.micro_batch_size,
                       seed=d.seed, shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers,
                       verify_checksums=d.verify_checksums, **reader_kwargs)


def _wrap_ddp(config: TrainConfig, tf_config, models: list) -> list:
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=config.parallel.overlap_grad_reduce,
        use_distributed_optimizer=config.parallel.distributed_optimizer)
    return [DistributedDataParallel(tf_config, ddp_config, m, disable_bucketing=i > 0)
            for i, m in enumerate(models)]


def _fp16_options(config: TrainConfig) -> dict[str, Any]:
    """megatron's dynamic loss scaler (DynamicGradScaler) settings for precision=fp16."""
    if config.precision != "fp16":
        return {}
    f = config.fp16
    return {"fp16": True, "initial_loss_scale": f.initial_loss_scale, "min_loss_scale": f.min_loss_scale,
            "loss_scale_window": f.loss_scale_window, "hysteresis": f.hysteresis}


def _build_optimizer(config: TrainConfig, models: list):
    o = config.optim
    dtype = params_dtype(config)
    opt_config = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        bf16=dtype == torch.bfloat16, params_dtype=dtype,
        **_fp16_options(config),
        use_distributed_optimizer=config.parallel.distributed_optimizer)
    optimizer = get_megatron_optimizer(opt_config, models)
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr, lr_warmup_steps=o.warmup_steps,
        lr_decay_steps=max(o.decay_steps or config.steps, o.warmup_steps + 1),
        lr_decay_style=o.decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
        wd_incr_steps=config.steps, wd_incr_style="constant",
        override_opt_param_scheduler=True, use_checkpoint_opt_param_scheduler=False)
    return optimizer, scheduler


def setup(config: TrainConfig, shards: str | None, load: str | None = None, reader_factory=None,
          valid: str | None = None, **reader_kwargs: Any) -> TrainState:
    """Build groups, reader, model (pretrained weights, LoRA), DDP, optimizer; resume from ``load``.

    ``reader_factory(dp_rank, dp_size)`` replaces the shards reader (tests feed fixed batches);
    ``valid`` is the validation shard set (see :func:`validate`).
    """
    device = init_distributed()
    init_parallel(config)
    if reader_factory is not None:
        reader = reader_factory(parallel_state.get_data_parallel_rank(),
                                parallel_state.get_data_parallel_world_size())
    else:
        reader = build_reader(config, shards, **reader_kwargs)
    if config.pretrained:
        path = ckpt.latest_checkpoint(config.pretrained)
        if path is None:
            raise ValueError(f"train.pretrained={config.pretrained!r}: no checkpoint there; import a Hugging "
                             "Face model with: python -m trainer.hf import <hf dir or hub id> <checkpoint dir>")
        check_shards_tokenizer(reader.manifest, read_common(path), str(shards), config.pretrained)
    vocab_size = config.model.vocab_size or reader_vocab_size(reader)
    tf_config = transformer_config(config)
    models = build_model(config, tf_config, vocab_size)
    if config.pretrained:
        ckpt.load_checkpoint(path, models)
    if config.mode == "lora":
        lora_lib.apply_lora(models, config.lora, seed=config.seed)
    extras = build_extras(config, models, vocab_size)  # teacher, projection, Fisher
    models = _wrap_ddp(config, tf_config, models)
    tf_config.finalize_model_grads_func = finalize_model_grads
    optimizer, scheduler = _build_optimizer(config, models)
    if config.precision == "fp16":  # the schedule multiplies each loss by the current scale
        tf_config.grad_scale_func = optimizer.scale_loss
    state = TrainState(config=config, models=models, optimizer=optimizer, scheduler=scheduler,
                       reader=reader, tf_config=tf_config, vocab_size=vocab_size, device=device,
                       extras=extras, valid=valid)
    path = ckpt.latest_checkpoint(load) if load else None
    if path is not None:
        common = ckpt.load_checkpoint(path, models, optimizer, scheduler, reader)
        state.step = int(common["step"])
        state.consumed_tokens = int(common.get("consumed_tokens", 0))
    return state


def loss_func(num_domains: int, batch: dict[str, torch.Tensor], output: torch.Tensor):
    """Masked token loss sum, token count and per-domain sums (megatron's 3-tuple contract)."""
    mask = batch["loss_mask"].float()
    per_token = output.float() * mask
    loss_sum = per_token.sum()
    num_tokens = mask.sum()
    domains = batch["domain_ids"].clamp(min=0).view(-1)
    by_domain = torch.zeros(2 * num_domains, dtype=torch.float32, device=loss_sum.device)
    by_domain.index_add_(0, domains, per_token.view(-1).detach())
    by_domain.index_add_(0, domains + num_domains, mask.view(-1))
    stats = torch.cat([torch.stack([loss_sum.detach(), num_tokens]), by_domain])
    return loss_sum, num_tokens.int(), {"stats": stats}


def forward_step(num_domains: int, data_iterator: Iterator, model: torch.nn.Module):
    """Megatron forward step: next micro-batch through this stage; loss on the last stage."""
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    return output, partial(loss_func, num_domains, batch)


def _reduce_stats(losses: list[dict], size: int, device) -> torch.Tensor:
    """Sum the micro-batch stats; share them from the last PP stage and over DP."""
    total = torch.zeros(size, dtype=torch.float32, device=device)
    for item in losses:
        total += item["stats"]
    dist.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return total


def forward_backward(state: TrainState, batches: list[dict[str, torch.Tensor]]) -> list:
    """Zero the gradient buffers, then forward and backward ``batches`` through megatron's
    schedule (gradients DP-reduced and divided by the loss tokens); returns the loss items."""
    config = state.config
    for model in state.models:
        model.zero_grad_buffer()
    iterators = [iter(batches) for _ in state.models]
    return get_forward_backward_func()(
        forward_step_func=state.extras.forward_step_func(forward_step, len(state.reader.domains)),
        data_iterator=iterators if len(iterators) > 1 else iterators[0],
        model=state.models if len(state.models) > 1 else state.models[0],
        num_microbatches=len(batches), seq_length=config.model.seq_len,
        micro_batch_size=config.data.micro_batch_size, forward_only=False)


def reduce_loss(state: TrainState, losses: list[dict]) -> float:
    """The global masked mean loss of one schedule run's loss items."""
    stats = _reduce_stats(losses, 2 + 2 * len(state.reader.domains), state.device)
    return float(stats[0] / stats[1].clamp(min=1))


def train_step(state: TrainState, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """One optimizer step over ``batches`` (this DP rank's micro-batches)."""
    state.optimizer.zero_grad()
    num_domains = len(state.reader.domains)
    losses = forward_backward(state, batches)
    extra = state.extras.after_backward(state, partial(forward_backward, state, batches))
    lr = state.optimizer.param_groups[0]["lr"]  # the rate this step uses (scheduler steps after)
    update_successful, grad_norm, _ = state.optimizer.step()
    if update_successful:  # an fp16 overflow skips the step, and the schedule waits (Megatron-LM)
        state.scheduler.step(increment=1)
    extra.update(state.extras.after_step(state, update_successful))
    stats = _reduce_stats(losses, 2 + 2 * num_domains, state.device).tolist()
    num_tokens = max(stats[1], 1.0)
    domain_loss = stats[2:2 + num_domains]
    domain_tokens = stats[2 + num_domains:]
    return {"loss": stats[0] / num_tokens, "loss_tokens": int(stats[1]), "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "loss_by_domain": {d: domain_loss[i] / domain_tokens[i]
                               for i, d in enumerate(state.reader.domains) if domain_tokens[i] > 0},
            "tokens_by_domain": {d: int(domain_tokens[i]) for i, d in enumerate(state.reader.domains)},
            "extra": extra}


def evaluate(state: TrainState, batches: list[dict[str, torch.Tensor]]) -> float:
    """Forward-only masked mean loss over ``batches`` (this DP rank's part), averaged over DP."""
    stats = evaluate_stats(state, batches)
    return float(stats[0] / stats[1].clamp(min=1))


def evaluate_stats(state: TrainState, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Forward-only ``[loss sum, tokens, per-domain loss sums, per-domain tokens]`` over
    ``batches`` (this DP rank's part), summed over PP and DP."""
    for model in state.models:
        model.eval()
    num_domains = len(state.reader.domains)
    with torch.no_grad():
        losses = get_forward_backward_func()(
            forward_step_func=partial(forward_step, num_domains),
            data_iterator=[iter(batches) for _ in state.models] if len(state.models) > 1 else iter(batches),
            model=state.models if len(state.models) > 1 else state.models[0],
            num_microbatches=len(batches), seq_length=state.config.model.seq_len,
            micro_batch_size=state.config.data.micro_batch_size, forward_only=True)
    for model in state.models:
        model.train()
    return _reduce_stats(losses, 2 + 2 * num_domains, state.device)


def validate(state: TrainState) -> dict[str, Any]:
    """Validation loss and perplexity, overall and per domain, over the first ``eval_iters``
    global batches of ``state.valid``: the same rows and numbers for any TP/PP/DP layout."""
    c = state.config
    if state.valid_batches is None:
        dp_size = parallel_state.get_data_parallel_world_size()
        num_rows = c.eval_iters * c.data.micro_batch_size * c.data.accumulation_steps * dp_size
        rows, domains = validation.read_rows(state.valid, num_rows, seq_len=c.model.seq_len, seed=c.data.seed,
                                             shuffle_buffer=c.data.shuffle_buffer,
                                             verify_checksums=c.data.verify_checksums)
        mapping = validation.domain_map(domains, state.reader.domains, state.valid)
        state.valid_batches = validation.rank_micro_batches(
            rows, mapping, parallel_state.get_data_parallel_rank(), dp_size, c.data.micro_batch_size)
    stats = evaluate_stats(state, [to_torch_batch(b, state.device) for b in state.valid_batches])
    return validation.figures(stats.tolist(), state.reader.domains)


def _next_batches(state: TrainState, reader_iter: Iterator) -> list[dict[str, torch.Tensor]]:
    return [to_torch_batch(next(reader_iter), state.device) for _ in range(state.config.data.accumulation_steps)]


def train(state: TrainState, save: str | None = None, metrics_path: str | None = None,
          exit_at_step: int | None = None) -> list[float]:
    """Train from ``state.step`` to ``config.steps`` (or ``exit_at_step``, saving there: a job
    with a time limit, as Megatron-LM's --exit-interval); log, write metrics, checkpoint.
    Returns this call's per-step losses."""
    config = state.config
    rank0 = dist.get_rank() == 0
    writer = MetricsWriter(metrics_path if rank0 else None)
    flops_per_token = training_flops_per_token(config.model, state.vocab_size)
    peak = gpu_peak_tflops(torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    tokens_per_step = (config.model.seq_len * config.data.micro_batch_size
                       * config.data.accumulation_steps * parallel_state.get_data_parallel_world_size())
    reader_iter = iter(state.reader)
    losses = []
    last_step = min(config.steps, exit_at_step or config.steps)
    while state.step < last_step:
        start = time.perf_counter()
        batches = _next_batches(state, reader_iter)
        data_s = time.perf_counter() - start
        result = train_step(state, batches)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        step_s = time.perf_counter() - start
        state.step += 1
        state.consumed_tokens += tokens_per_step
        losses.append(result["loss"])
        validated = None
        if state.valid and config.eval_interval and (state.step % config.eval_interval == 0
                                                     or state.step == last_step):
            validated = validate(state)
        if state.step % config.log_interval == 0 or state.step == config.steps or validated:
            tps, tflops, mfu = throughput(tokens_per_step, step_s, flops_per_token, dist.get_world_size(), peak)
            metrics = StepMetrics(
                step=state.step, loss=result["loss"], grad_norm=result["grad_norm"],
                lr=result["lr"], tokens_per_s=tps, tflops_per_gpu=tflops,
                mfu=mfu, data_wait_pct=100.0 * data_s / step_s, memory_gib=memory_gib(),
                step_time_s=step_s, loss_by_domain=result["loss_by_domain"],
                tokens_by_domain=result["tokens_by_domain"], consumed_tokens=state.consumed_tokens,
                extra=result["extra"], validation=validated)
            if rank0:
                logger.info(metrics.line(config.steps))
            writer.write(metrics)
        if save and ((config.save_interval and state.step % config.save_interval == 0)
                     or state.step == last_step):
            save_state(state, save)
    return losses


def save_state(state: TrainState, save: str) -> None:
    """Checkpoint everything (and, for LoRA, the adapters alone)."""
    common = {"config": to_dict(state.config), "consumed_tokens": state.consumed_tokens,
              "vocab_size": state.vocab_size, "domains": list(state.reader.domains)}
    if state.config.pretrained:  # the imported model's dtype and tokenizer travel with the run
        common["hf"] = read_common(state.config.pretrained).get("hf")
    ckpt.save_checkpoint(save, state.step, state.models, state.optimizer, state.scheduler,
                         state.reader.state_dict(), common)
    copy_hf_meta(state.config.pretrained, save)
    if state.config.mode == "lora":
        lora_lib.save_adapters(state.models, save, state.step, state.config.lora)


def copy_hf_meta(pretrained: str | None, save: str) -> None:
    """Carry an imported model's ``hf/`` directory (config.json, tokenizer) into the run, so
    ``python -m trainer.hf export`` finds it next to the run's checkpoints (rank 0, once)."""
    if not pretrained or dist.get_rank() != 0:
        return
    sources = [p for p in (Path(pretrained) / "hf", Path(pretrained).parent / "hf") if p.is_dir()]
    target = Path(save) / "hf"
    if sources and not target.exists():
        source = sources[0]
        tmp = Path(save) / ".hf.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        os.replace(tmp, target)


def teardown() -> None:
    """Destroy megatron's groups (the default process group stays for the next layout)."""
    _destroy_groups()
