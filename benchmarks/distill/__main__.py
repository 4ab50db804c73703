"""Benchmark distillation cost and EWC forgetting against plain training in the same run.

    python -m benchmarks.distill [--timed-steps 10] [--steps-a 150] [--steps-b 150]
                                 [--lambdas 1e3,1e4,1e5] [--out benchmarks/results/distill.json]

One process (gloo, CPU unless CUDA is present), the tiny recipe's student (4 x 64):

* step time: median seconds per optimizer step of plain training of the student against
  distillation from a frozen teacher of 1x the student's size (4 x 64) and of about 4x its
  transformer parameters (4 x 128, with layer-2 MSE through the learned projection); the ratio
  is the teacher's forward (and the KL) as a share of a step;
* forgetting: task A and task B are next-token maps over the same 128 tokens (a different
  random permutation each: B overwrites what A taught). Train A, take the Fisher of A, train B
  from the A model without and with EWC (lambda swept); report the loss on A before and after
  B (forgetting = the rise) and the loss reached on B.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TOKENS = 128  # task alphabet: ids 2..129
SEQ = 64


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timed-steps", type=int, default=10, help="timed optimizer steps per variant (after 3 warm-up)")
    p.add_argument("--steps-a", type=int, default=150, help="optimizer steps on task A")
    p.add_argument("--steps-b", type=int, default=150, help="optimizer steps on task B")
    p.add_argument("--fisher-batches", type=int, default=20, help="batches of task A for the Fisher")
    p.add_argument("--lambdas", default="1e3,1e4,1e5", help="comma-separated EWC strengths to compare")
    p.add_argument("--out", default="benchmarks/results/distill.json", help="results JSON (written atomically)")
    return p.parse_args(argv)


class TaskReader:
    """Rows of a fixed next-token map: token t is followed by perm[t] (a learnable 'task')."""

    domains = ("general",)
    manifest = {"vocab_size": 2 + TOKENS}

    def __init__(self, task_seed: int, micro_batch_size: int, stream_seed: int = 0):
        self.perm = np.random.default_rng(task_seed).permutation(TOKENS) + 2
        self.micro_batch_size, self.stream_seed, self.position = micro_batch_size, stream_seed, 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]

    def batch(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.stream_seed, index])
        rows = np.empty((self.micro_batch_size, SEQ + 1), dtype=np.int64)
        rows[:, 0] = rng.integers(2, 2 + TOKENS, self.micro_batch_size)
        for i in range(SEQ):
            rows[:, i + 1] = self.perm[rows[:, i] - 2]
        shape = (self.micro_batch_size, SEQ)
        return {"tokens": rows[:, :-1], "labels": rows[:, 1:], "loss_mask": np.ones(shape, np.float32),
                "position_ids": np.broadcast_to(np.arange(SEQ), shape).copy(),
                "segment_ids": np.zeros(shape, np.int32), "domain_ids": np.zeros(shape, np.int32)}

    def __iter__(self):
        while True:
            self.position += 1
            yield self.batch(self.position - 1)


def _init_process_group() -> None:
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")


def _config(**values):
    from trainer.config import apply_overrides
    from trainer.recipes import get_recipe

    base = {"model.seq_len": SEQ, "model.vocab_size": 2 + TOKENS, "data.micro_batch_size": 8,
            "data.accumulation_steps": 1, "log_interval": 10_000, "optim.warmup_steps": 5,
            "optim.decay_style": "constant", "optim.lr": 3e-3}
    base.update(values)
    return apply_overrides(get_recipe("tiny"), base)


def _setup(config, task_seed: int = 1, stream_seed: int = 0, **kwargs):
    from trainer import loop

    return loop.setup(config, None, reader_factory=lambda r, n: TaskReader(task_seed, config.data.micro_batch_size,
                                                                           stream_seed), **kwargs)


def _median_step_s(state, steps: int) -> float:
    from trainer import loop

    it = iter(state.reader)
    times = []
    for i in range(3 + steps):
        batches = loop._next_batches(state, it)
        start = time.perf_counter()
        loop.train_step(state, batches)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_times(work: Path, steps: int) -> dict:
    """Plain student vs distillation from 1x and ~4x teachers (random weights: cost only)."""
    from trainer import loop

    out = {"student": "4 layers x 64", "plain_step_s": _median_step_s(_setup(_config()), steps)}
    for name, width, extra in (("1x", 64, {}), ("4x", 128, {"distill.student_layer": 2})):
        teacher = work / f"teacher_{name}"
        loop.save_state(_setup(_config(**{"model.hidden_size": width, "model.ffn_hidden_size": 2 * width})), str(teacher))
        state = _setup(_config(mode="distill", **{"distill.teacher": str(teacher)}, **extra))
        seconds = _median_step_s(state, steps)
        out[f"distill_{name}"] = {"teacher": f"4 layers x {width}", "layer_mse": bool(extra), "step_s": seconds,
                                  "ratio_to_plain": seconds / out["plain_step_s"]}
    return out


def _task_loss(state, task_seed: int) -> float:
    from trainer import loop
    from trainer.data import to_torch_batch

    reader = TaskReader(task_seed, state.config.data.micro_batch_size, stream_seed=999)  # held-out rows
    return float(np.mean([loop.evaluate(state, [to_torch_batch(reader.batch(i), state.device)]) for i in range(4)]))


def forgetting(work: Path, steps_a: int, steps_b: int, fisher_batches: int, lambdas: list[float]) -> dict:
    """Train A, Fisher of A, then B without and with EWC: loss on A before/after, loss on B."""
    from trainer import ewc, loop

    state = _setup(_config(steps=steps_a), task_seed=1)
    loop.train(state, save=str(work / "task_a"))
    before = _task_loss(state, 1)
    fstate = _setup(_config(pretrained=str(work / "task_a")), task_seed=1, stream_seed=5)
    ewc.save_fisher(fstate.models, ewc.compute_fisher(fstate, fisher_batches), work / "fisher", {"batches": fisher_batches})
    runs = []
    for lam in [0.0, *lambdas]:
        values = {"pretrained": str(work / "task_a"), "steps": steps_b}
        if lam:
            values.update({"ewc.fisher": str(work / "fisher"), "ewc.lambda": lam})
        state = _setup(_config(**values), task_seed=2)
        loop.train(state)
        after_a, after_b = _task_loss(state, 1), _task_loss(state, 2)
        runs.append({"ewc_lambda": lam, "loss_a_after_b": after_a, "forgetting_a": after_a - before,
                     "loss_b": after_b})
    return {"steps_a": steps_a, "steps_b": steps_b, "fisher_batches": fisher_batches, "loss_a_before_b": before,
            "runs": runs}


def main(argv=None) -> int:
    args = _args(argv)
    _init_process_group()
    import torch

    from trainer import loop

    loop.init_distributed()
    with tempfile.TemporaryDirectory(prefix="jl-bench-distill-") as tmp:
        work = Path(tmp)
        result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "command": "python -m benchmarks.distill " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "step_time": step_times(work, args.timed_steps),
                  "forgetting": forgetting(work, args.steps_a, args.steps_b, args.fisher_batches,
                                           [float(x) for x in args.lambdas.split(",") if x])}
    loop.teardown()
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
