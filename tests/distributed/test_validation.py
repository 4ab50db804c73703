"""Validation during training: per-domain loss equals a direct computation and is the same for
every TP/PP/DP layout; the metrics line and metrics.jsonl carry it.

Run with the distributed tier (``torchrun --standalone --nproc_per_node 4 -m pytest -q -p
no:cacheprovider -m distributed tests/distributed``). The shard set of the tier's fixture serves
as the validation set (any shard set is one).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.distributed

from test_trainer import LAYOUT_ATOL, fixed_reader, global_batches, save_initial, tiny_config  # noqa: E402

from trainer import loop, validation  # noqa: E402
from trainer.data import to_torch_batch  # noqa: E402

EVAL_ITERS = 8  # 64 rows of 64 tokens: enough to reach all three groups


@pytest.fixture()
def shared_dir(tmp_path_factory):
    """One temporary directory seen by all ranks (made by rank 0, path broadcast)."""
    box = [str(tmp_path_factory.mktemp("jl-valid")) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    yield Path(box[0])
    dist.barrier()


def direct_domain_losses(state, shard_dir) -> dict[str, float]:
    """Per-domain mean token loss of the validation rows, row by row with plain torch on the
    TP=1 PP=1 model (log-softmax of the logits at the label), no megatron loss or schedule."""
    c = state.config
    num_rows = EVAL_ITERS * c.data.micro_batch_size * c.data.accumulation_steps * 4
    rows, domains = validation.read_rows(str(shard_dir), num_rows, seq_len=c.model.seq_len, seed=c.data.seed,
                                         shuffle_buffer=c.data.shuffle_buffer)
    model = state.models[0].module
    model.eval()
    sums, counts = {}, {}
    with torch.no_grad():
        for row in rows:
            b = to_torch_batch(row, state.device)
            logits = model(b["tokens"], b["position_ids"], b["attention_mask"])
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, b["labels"][..., None])[..., 0]
            for pos in torch.nonzero(b["loss_mask"][0] > 0)[:, 0].tolist():
                domain = domains[int(b["domain_ids"][0, pos])]
                sums[domain] = sums.get(domain, 0.0) - float(logp[0, pos])
                counts[domain] = counts.get(domain, 0) + 1
    model.train()
    return {d: sums[d] / counts[d] for d in sums}


def test_validation_equals_direct_computation_under_every_layout(shared_dir, shard_dir):
    reference_config = tiny_config(eval_iters=EVAL_ITERS)
    init = save_initial(reference_config, shared_dir / "init", shard_dir)
    batches = global_batches(shard_dir, 1)
    results = {}
    for name, layout in (("dp4", {}), ("tp2", {"tp": 2}), ("pp2", {"pp": 2}), ("tp2pp2", {"tp": 2, "pp": 2})):
        config = tiny_config(pretrained=str(init), eval_iters=EVAL_ITERS, **layout)
        state = loop.setup(config, None, reader_factory=fixed_reader(batches, config), valid=str(shard_dir))
        results[name] = loop.validate(state)
        if name == "dp4":
            direct = direct_domain_losses(state, shard_dir)
    reference = results["dp4"]
    assert set(reference["val_loss_by_domain"]) == set(direct) == {"general", "domain", "expert"}
    for domain, value in direct.items():
        assert reference["val_loss_by_domain"][domain] == pytest.approx(value, abs=1e-4), domain
        assert reference["val_ppl_by_domain"][domain] == pytest.approx(np.exp(value), rel=1e-3)
    for name, got in results.items():
        assert got["val_tokens"] == reference["val_tokens"] > 0, name
        assert got["val_loss"] == pytest.approx(reference["val_loss"], abs=LAYOUT_ATOL), name
        for domain, value in reference["val_loss_by_domain"].items():
            assert got["val_loss_by_domain"][domain] == pytest.approx(value, abs=LAYOUT_ATOL), (name, domain)


def test_training_logs_validation_every_eval_interval(shared_dir, shard_dir):
    config = tiny_config(tp=2, steps=3, eval_interval=2, eval_iters=EVAL_ITERS, log_interval=100)
    batches = global_batches(shard_dir, 3)
    state = loop.setup(config, None, reader_factory=fixed_reader(batches, config), valid=str(shard_dir))
    metrics = shared_dir / "metrics.jsonl"
    loop.train(state, metrics_path=str(metrics))
    dist.barrier()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3]  # the eval steps (2, and the last) are logged
    for row in rows:
        assert set(row["val_ppl_by_domain"]) == {"general", "domain", "expert"}
        assert row["val_ppl"] == pytest.approx(np.exp(row["val_loss"]), rel=1e-6)
