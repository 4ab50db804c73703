"""Distributed tier: the tiny recipe over 4 gloo processes in one torchrun session.

Run: ``torchrun --standalone --nproc_per_node 4 -m pytest -q -p no:cacheprovider -m distributed
tests/distributed``. Every test builds (and tears down) its own megatron TP/PP/DP layout over the
same 4 processes. Layout-equivalence tests feed one fixed global batch split by data-parallel
rank, and start every layout from one saved initial checkpoint, so all layouts compute the
same function of the same data; with per-token loss averaging they must agree to float
round-off (tolerance LAYOUT_ATOL on the loss, fp32).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.distributed

from shards.reader import ShardReader  # noqa: E402
from trainer import checkpoint as ckpt  # noqa: E402
from trainer import loop  # noqa: E402 (applies the CPU shims before megatron is used)
from trainer import lora as lora_lib  # noqa: E402
from trainer.config import apply_overrides  # noqa: E402
from trainer.data import to_torch_batch  # noqa: E402
from trainer.recipes import get_recipe  # noqa: E402

WORLD = 4
GLOBAL_ROWS = 8          # sequences per global batch (divisible by every DP size used: 1, 2, 4)
LAYOUT_ATOL = 2e-4       # fp32 losses of different layouts: summation order only
NUM_STEPS = 4


@pytest.fixture(scope="module", autouse=True)
def distributed():
    loop.init_distributed()
    assert dist.get_world_size() == WORLD, "run with --nproc_per_node 4"
    yield
    loop.teardown()


@pytest.fixture()
def shared_dir():
    """One temporary directory seen by all ranks (made by rank 0, path broadcast)."""
    box = [tempfile.mkdtemp(prefix="jl-trainer-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    yield Path(box[0])
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(box[0], ignore_errors=True)


def global_batches(shard_dir, num_batches: int, seq_len: int = 64, seed: int = 7) -> list[dict[str, np.ndarray]]:
    """Fixed global batches of GLOBAL_ROWS sequences read from the shards (one reader, dp_size 1)."""
    source = iter(ShardReader(shard_dir, dp_rank=0, dp_size=1, seq_len=seq_len,
                              micro_batch_size=GLOBAL_ROWS, seed=seed, shuffle_buffer=16))
    return [next(source) for _ in range(num_batches)]


class FixedBatchReader:
    """Serves this DP rank's rows of fixed global batches as micro-batches (resumable)."""

    domains = ("general", "domain", "expert")
    manifest = {"tokenizer": {"vocab_size": 1000}}

    def __init__(self, batches, dp_rank: int, dp_size: int, micro_batch_size: int, repeat: bool = False):
        rows = GLOBAL_ROWS // dp_size
        self.micro = []
        for batch in batches:
            mine = {k: v[dp_rank * rows:(dp_rank + 1) * rows] for k, v in batch.items()}
            for start in range(0, rows, micro_batch_size):
                self.micro.append({k: v[start:start + micro_batch_size] for k, v in mine.items()})
        self.repeat, self.position = repeat, 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]

    def __iter__(self):
        while True:
            self.position += 1  # counted when handed out, so state_dict() after a step is exact
            yield self.micro[(self.position - 1) % len(self.micro)]


def tiny_config(tp=1, pp=1, **overrides):
    """The tiny recipe with a layout; accumulation chosen so a step = one global batch."""
    dp = WORLD // (tp * pp)
    mbs = 1
    values = {"parallel.tp": tp, "parallel.pp": pp, "data.micro_batch_size": mbs,
              "data.accumulation_steps": GLOBAL_ROWS // (dp * mbs), "steps": NUM_STEPS,
              "log_interval": 100, "data.shuffle_buffer": 16}
    values.update(overrides)
    return apply_overrides(get_recipe(values.pop("recipe", "tiny")), values)


def fixed_reader(batches, config, repeat=False):
    return lambda dp_rank, dp_size: FixedBatchReader(batches, dp_rank, dp_size,
                                                     config.data.micro_batch_size, repeat)


def run_layout(config, batches, **setup_kwargs):
    state = loop.setup(config, None, reader_factory=fixed_reader(batches, config), **setup_kwargs)
    losses = loop.train(state)
    return state, losses


def local_batches(state, batch):
    """This DP rank's micro-batches of one global batch, as torch tensors."""
    reader = FixedBatchReader([batch], 0 if state is None else _dp_rank(), _dp_size(),
                              state.config.data.micro_batch_size)
    return [to_torch_batch(m, state.device) for m in reader.micro]


def _dp_rank():
    from megatron.core import parallel_state
    return parallel_state.get_data_parallel_rank()


def _dp_size():
    from megatron.core import parallel_state
    return parallel_state.get_data_parallel_world_size()


def optimizer_tensors(optimizer) -> dict:
    """Copies of every Adam state tensor (and step) of this rank, keyed by position."""
    out = {}
    for i, inner in enumerate(getattr(optimizer, "chained_optimizers", [optimizer])):
        torch_opt = inner.optimizer
        for g, group in enumerate(torch_opt.param_groups):
            for j, param in enumerate(group["params"]):
                out[(i, g, j, "param")] = param.detach().clone()
                for k, v in torch_opt.state.get(param, {}).items():
                    out[(i, g, j, k)] = torch.as_tensor(v).detach().clone().float()
    return out


def save_initial(config, root: Path, shard_dir) -> Path:
    """Build a model in ``config``'s layout and save its initial weights."""
    state = loop.setup(config, None, reader_factory=fixed_reader(global_batches(shard_dir, 1), config))
    loop.save_state(state, str(root))
    return ckpt.latest_checkpoint(root)


def test_loss_falls_on_repeated_batch_tp2_pp2(shard_dir):
    config = tiny_config(tp=2, pp=2, steps=15, **{"optim.warmup_steps": 1})
    batch = global_batches(shard_dir, 1)
    state = loop.setup(config, None, reader_factory=fixed_reader(batch, config, repeat=True))
    losses = loop.train(state)
    assert losses[-1] < 0.75 * losses[0], losses


LAYOUTS = [
    {"tp": 2},                                            # TP=2 (sequence parallel), DP=2
    {"pp": 2},                                            # PP=2, DP=2
    {"tp": 2, "pp": 2},                                   # TP=2 x PP=2, DP=1
    {"pp": 2, "parallel.virtual_pp": 2},                  # interleaved PP, DP=2
    {"parallel.distributed_optimizer": True},             # DP=4 with the distributed optimizer
    {"tp": 2, "parallel.sequence_parallel": False},       # TP=2 without sequence parallelism
]


def test_layouts_match_tp1_reference(shared_dir, shard_dir):
    """Same init, same global batches: every TP/PP/DP layout gives the TP=1 DP=4 losses."""
    reference_config = tiny_config()
    init = save_initial(reference_config, shared_dir / "init", shard_dir)
    batches = global_batches(shard_dir, NUM_STEPS)
    _, reference = run_layout(apply_overrides(reference_config, {"pretrained": str(init)}), batches)
    assert reference[-1] < reference[0]
    for layout in LAYOUTS:
        config = tiny_config(pretrained=str(init), **layout)
        _, losses = run_layout(config, batches)
        np.testing.assert_allclose(losses, reference, atol=LAYOUT_ATOL, rtol=0,
                                   err_msg=f"layout {layout}")


@pytest.mark.parametrize("layout", [{"tp": 2, "pp": 2}, {"tp": 2, "parallel.distributed_optimizer": True}])
def test_resume_equals_uninterrupted(shared_dir, shard_dir, layout):
    """Stream the shards; save at step 3 of 6, resume in new model/optimizer/reader objects:
    the optimizer state is bit-identical and losses 4..6 equal the uninterrupted run's."""
    config = tiny_config(steps=6, save_interval=3, **layout)
    save = shared_dir / "run"
    state = loop.setup(config, str(shard_dir))
    uninterrupted = loop.train(state, save=str(save), exit_at_step=3)
    saved_optimizer = optimizer_tensors(state.optimizer)
    uninterrupted += loop.train(state, save=str(save))
    resumed_state = loop.setup(config, str(shard_dir), load=str(save / "iter_0000003"))
    assert resumed_state.step == 3
    loaded_optimizer = optimizer_tensors(resumed_state.optimizer)
    assert saved_optimizer.keys() == loaded_optimizer.keys()
    for key, value in saved_optimizer.items():
        assert torch.equal(value, loaded_optimizer[key]), key
    assert resumed_state.reader.state_dict()["consumed_batches"] == 3 * config.data.accumulation_steps
    resumed = loop.train(resumed_state)
    assert resumed == uninterrupted[3:], (resumed, uninterrupted)


@pytest.mark.parametrize("optimizer", [{}, {"parallel.distributed_optimizer": True}])
def test_checkpoint_loads_into_another_layout(shared_dir, shard_dir, optimizer):
    """A TP=2 x PP=2 checkpoint (model + optimizer) loads into TP=1 x PP=2 and into DP=4: the
    same eval loss, and the next optimizer step lands on the same weights as the original's."""
    config = tiny_config(tp=2, pp=2, steps=4, **optimizer)
    batches = global_batches(shard_dir, 4)
    state = loop.setup(config, None, reader_factory=fixed_reader(batches, config))
    loop.train(state, save=str(shared_dir / "a"), exit_at_step=3)
    expected = loop.evaluate(state, local_batches(state, batches[3]))
    loop.train(state)  # step 4 on batches[3]
    expected_after = loop.evaluate(state, local_batches(state, batches[3]))
    for layout in ({"pp": 2}, {}):
        other = tiny_config(steps=4, **layout, **optimizer)
        loaded = loop.setup(other, None, load=str(shared_dir / "a"),
                            reader_factory=fixed_reader([batches[3]], other))
        assert loaded.step == 3
        got = loop.evaluate(loaded, local_batches(loaded, batches[3]))
        assert abs(got - expected) < LAYOUT_ATOL, (layout, got, expected)
        loop.train(loaded)
        got_after = loop.evaluate(loaded, local_batches(loaded, batches[3]))
        assert abs(got_after - expected_after) < LAYOUT_ATOL, (layout, got_after, expected_after)


def test_sft_loss_ignores_prompt_tokens(shard_dir):
    """Changing labels where loss_mask is 0 (prompts, padding) leaves the SFT loss unchanged."""
    config = tiny_config(tp=2, recipe="tiny_sft")
    # the batch with the most masked labels (SFT prompts, document boundaries, padding)
    batch = max(global_batches(shard_dir, 24), key=lambda b: int((b["loss_mask"] == 0).sum()))
    state = loop.setup(config, None, reader_factory=fixed_reader([batch], config))
    base = loop.evaluate(state, local_batches(state, batch))
    rng = np.random.default_rng(0)
    prompt = batch["loss_mask"] == 0
    assert prompt.any() and (~prompt).any()
    noisy_prompt = dict(batch, labels=np.where(prompt, rng.integers(2, 500, prompt.shape), batch["labels"]))
    noisy_response = dict(batch, labels=np.where(~prompt, rng.integers(2, 500, prompt.shape), batch["labels"]))
    assert loop.evaluate(state, local_batches(state, noisy_prompt)) == pytest.approx(base, abs=1e-6)
    assert abs(loop.evaluate(state, local_batches(state, noisy_response)) - base) > 1e-4


def test_lora_tp2_frozen_base_separate_adapters_and_merge(shared_dir, shard_dir):
    """LoRA under TP=2: base unchanged, loss falls, adapters saved alone, merge keeps outputs."""
    base_config = tiny_config(tp=2)
    init = save_initial(base_config, shared_dir / "base", shard_dir)
    config = tiny_config(tp=2, recipe="tiny_lora", steps=8, pretrained=str(init))
    batch = global_batches(shard_dir, 1)
    state = loop.setup(config, None, reader_factory=fixed_reader(batch, config, repeat=True))
    base_weights = {n: p.detach().clone() for m in state.models for n, p in m.named_parameters()
                    if "lora_" not in n}
    losses = loop.train(state, save=str(shared_dir / "lora"))
    assert losses[-1] < losses[0]
    for m in state.models:
        for n, p in m.named_parameters():
            if "lora_" in n:
                assert p.requires_grad
            else:
                assert not p.requires_grad and torch.equal(p, base_weights[n]), n
    adapters = shared_dir / "lora" / "lora" / "iter_0000008"
    assert adapters.is_dir()
    micro = local_batches(state, batch[0])
    before = loop.evaluate(state, micro)
    # adapters load alone into a fresh LoRA model on the base weights
    fresh = loop.setup(config, None, reader_factory=fixed_reader(batch, config))
    assert loop.evaluate(fresh, micro) != pytest.approx(before, abs=1e-4)
    lora_lib.load_adapters(fresh.models, adapters)
    assert loop.evaluate(fresh, micro) == pytest.approx(before, abs=1e-5)
    assert lora_lib.merge_lora(fresh.models) == 2 * config.model.num_layers
    assert not list(lora_lib.lora_modules(fresh.models))
    assert loop.evaluate(fresh, micro) == pytest.approx(before, abs=1e-5)
