"""trainer.hf unit tests (one process, no torchrun): config mapping, unsupported models, tensor
layouts, safetensors I/O, import -> export round trip, the tokenizer check, --pretrained config."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.hf_tiny import fixed_batch, hf_logits_and_loss, make_model, make_tokenizer
from trainer.config import ModelConfig
from trainer.hf import _layer_row_blocks, export_hf, import_hf
from trainer.hf_config import UnsupportedModelError, model_config_from_hf
from trainer.hf_weights import FC1, QKV, SafetensorsReader, pack_qkv
from trainer.pretrained import check_shards_tokenizer, read_common

LLAMA31 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-5, "hidden_act": "silu",
           "max_position_embeddings": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
QWEN25_15B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
              "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
              "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6, "hidden_act": "silu",
              "max_position_embeddings": 131072, "rope_theta": 1000000.0, "sliding_window": 131072,
              "use_sliding_window": False, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_llama31_config_maps_in_transformers_4_and_5_layouts():
    m = model_config_from_hf(LLAMA31)
    assert (m.num_layers, m.hidden_size, m.query_groups, m.ffn_size, m.kv_channels) == (32, 4096, 8, 14336, 128)
    assert (m.rotary_base, m.rope_scaling, m.rope_scaling_factor, m.rope_original_max_positions) == \
        (500000.0, "llama3", 8.0, 8192)
    assert (m.vocab_size, m.padded_vocab_size, m.untie_embeddings, m.add_qkv_bias) == (128256, 128256, True, False)
    v5 = {k: v for k, v in LLAMA31.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    v5.update(dtype="bfloat16", rope_parameters={**LLAMA31["rope_scaling"], "rope_theta": 500000.0})
    assert model_config_from_hf(v5) == m


def test_qwen25_config_has_qkv_bias_tied_embeddings_and_tp_padding():
    m = model_config_from_hf(QWEN25_15B)
    assert (m.add_qkv_bias, m.add_bias_linear, m.untie_embeddings, m.rotary_base) == (True, False, False, 1e6)
    assert m.padded_vocab_size == 151936 and m.padded_vocab_size % 8 == 0  # any TP up to 128 splits it
    odd = model_config_from_hf({**QWEN25_15B, "vocab_size": 151665, "head_dim": 256})
    assert (odd.padded_vocab_size, odd.kv_channels) == (151680, 256)


@pytest.mark.parametrize("change, match", [
    ({"architectures": ["MixtralForCausalLM"]}, "architecture MixtralForCausalLM is not supported"),
    ({"num_experts": 64}, "mixture of experts"),
    ({"use_sliding_window": True}, "sliding-window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
])
def test_unsupported_models_are_one_line_errors_listing_the_supported(change, match):
    with pytest.raises(UnsupportedModelError, match=match) as err:
        model_config_from_hf({**QWEN25_15B, **change})
    assert "\n" not in str(err.value) and "supported" in str(err.value)


def test_mistral_sliding_window_is_refused_but_null_window_maps():
    mistral = {**LLAMA31, "architectures": ["MistralForCausalLM"], "rope_scaling": None, "sliding_window": 4096}
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        model_config_from_hf(mistral)
    assert model_config_from_hf({**mistral, "sliding_window": None}).rope_scaling == "none"


def test_qkv_packing_groups_query_heads_with_their_kv_head():
    m = ModelConfig(num_layers=1, hidden_size=8, num_attention_heads=4, num_query_groups=2, head_dim=2)
    q = torch.arange(8.0)[:, None].expand(8, 3) + 0  # head h owns rows 2h, 2h+1
    k, v = 100 + torch.arange(4.0)[:, None].expand(4, 3), 200 + torch.arange(4.0)[:, None].expand(4, 3)
    packed = pack_qkv(q, k, v, m)
    # group 0: q heads 0, 1, k head 0, v head 0; then group 1
    assert packed[:, 0].tolist() == [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]
    # the importer's row blocks (each stored as one checkpoint chunk) tile the packed rows in order
    blocks = sorted(_layer_row_blocks(QKV + "weight", ["q", "k", "v"], m), key=lambda b: b[3])
    assert [b[3] for b in blocks] == [sum(b[2] for b in blocks[:i]) for i in range(len(blocks))]
    assert torch.equal(torch.cat([{"q": q, "k": k, "v": v}[n][first:first + rows] for n, first, rows, _ in blocks]), packed)


@pytest.mark.parametrize("kind, dtype, shard", [("llama", torch.float32, None), ("qwen2", torch.bfloat16, "60KB")])
def test_import_then_export_is_bit_identical_and_loads_in_transformers(tmp_path, tokenizer_dir, kind, dtype, shard):
    source = make_model(kind, tmp_path / "hf", dtype, tokenizer=tokenizer_dir, max_shard_size=shard)
    assert (source / "model.safetensors.index.json").exists() == bool(shard)
    import_hf(str(source), tmp_path / "ckpt")
    from torch.utils.serialization import config as serialization_config
    assert serialization_config.save.compute_crc32  # the import's no-CRC write does not leak out
    from trainer.dcp_reader import CheckpointTensors
    from trainer.pretrained import checkpoint_path
    stored = CheckpointTensors(checkpoint_path(tmp_path / "ckpt"))
    for key in stored.shapes:
        stored.get(key)
    assert stored.fallbacks == 0  # the direct reader reads records written without a CRC
    model = read_common(tmp_path / "ckpt")["config"]["model"]
    chunks = {k: len(stored.metadata.state_dict_metadata[k].chunks) for k in (QKV + "weight", FC1 + "weight")}
    # weights are stored as row blocks of the Hugging Face tensors, written from the mapped files
    assert chunks == {QKV + "weight": model["num_layers"] * 3 * (model["num_query_groups"] or model["num_attention_heads"]), FC1 + "weight": model["num_layers"] * 2}
    common = read_common(tmp_path / "ckpt")
    assert common["hf"]["tokenizer"]["eos_id"] == 0 and common["config"]["model"]["padded_vocab_size"] == 384
    export_hf(tmp_path / "ckpt", tmp_path / "out", max_shard_bytes=50_000)
    original, exported = SafetensorsReader(source), SafetensorsReader(tmp_path / "out")
    assert set(original.entries) == set(exported.entries)
    for name in original.entries:
        a, b = original.get(name), exported.get(name)
        assert a.dtype == b.dtype == dtype and torch.equal(a, b), name
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).exists(), name
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == str(dtype).removeprefix("torch.") and config["architectures"] == \
        json.loads((source / "config.json").read_text())["architectures"]
    batch = fixed_batch(rows=2)
    ref_logits, ref_loss = hf_logits_and_loss(source, batch)
    logits, loss = hf_logits_and_loss(tmp_path / "out", batch)
    assert torch.equal(logits, ref_logits) and loss == ref_loss
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "out").eos_token_id == 0


def test_import_refuses_an_unmapped_tensor_and_cli_answers_one_line(tmp_path):
    source = make_model("llama", tmp_path / "hf")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "num_local_experts": 8}))
    result = subprocess.run([sys.executable, "-m", "trainer.hf", "import", str(source), str(tmp_path / "ck")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "mixture of experts" in result.stderr, result.stderr
    missing = subprocess.run([sys.executable, "-m", "trainer.hf", "export", str(tmp_path / "none"), str(tmp_path / "o")],
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 1 and "no checkpoint there" in missing.stderr
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    refused = subprocess.run([sys.executable, "-m", "trainer.hf", "import", str(make_model("llama", tmp_path / "hf2")), str(users)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 1 and "not a jinglian output" in refused.stderr and sorted(p.name for p in users.iterdir()) == ["notes.txt"]


def test_tokenizer_mismatch_names_both_sides():
    common = {"hf": {"source": "Qwen/Qwen2.5-1.5B", "tokenizer": {"vocab_size": 151665, "eos_id": 151643}}}
    check_shards_tokenizer({"tokenizer": {"vocab_size": 151665, "eos_id": 151643}}, common, "shards", "ck")
    with pytest.raises(ValueError) as err:
        check_shards_tokenizer({"tokenizer": {"vocab_size": 1000, "eos_id": 0}}, common, "shards", "ck")
    text = str(err.value)
    assert "vocab_size=1000 eos_id=0" in text and "vocab_size=151665 eos_id=151643" in text and "\n" not in text
    check_shards_tokenizer({"tokenizer": {"vocab_size": 1000}}, {}, "shards", "ck")  # nothing to compare


def test_pretrained_takes_the_model_from_the_checkpoint(tmp_path):
    from trainer.train import build_arg_parser, resolve_config

    import_hf(str(make_model("qwen2", tmp_path / "hf")), tmp_path / "ck")
    args = build_arg_parser().parse_args(["--shards", "synthetic", "--pretrained", str(tmp_path / "ck"), "--tp", "2"])
    config = resolve_config(args, {"train": {"recipe": "tiny"}})
    assert config.name == "cpt" and (config.optim.lr, config.optim.warmup_steps, config.optim.weight_decay,
                                     config.data.accumulation_steps) == (3e-5, 500, 0.01, 8)
    assert (config.model.num_layers, config.model.add_qkv_bias, config.model.untie_embeddings) == (2, True, False)
    assert config.model.seq_len == 2048 and config.parallel.tp == 2
    args = build_arg_parser().parse_args(["--shards", "synthetic", "--pretrained", str(tmp_path / "ck"),
                                          "--recipe", "tiny_sft", "--set", "model.num_layers=4"])
    with pytest.raises(ValueError, match=r"model.num_layers=4: the model comes from pretrained"):
        resolve_config(args, {})
    args = build_arg_parser().parse_args(["--shards", "synthetic", "--pretrained", str(tmp_path / "none")])
    with pytest.raises(ValueError, match="no checkpoint there"):
        resolve_config(args, {})


def test_rope_inv_freq_matches_transformers_llama3(tmp_path):
    from transformers import AutoModelForCausalLM

    from trainer.model import rope_inv_freq

    source = make_model("llama", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(source)
    m = model_config_from_hf(json.loads((source / "config.json").read_text()))
    assert torch.allclose(rope_inv_freq(m), hf.model.rotary_emb.inv_freq, rtol=1e-6, atol=0)
    assert not torch.allclose(rope_inv_freq(m), rope_inv_freq(ModelConfig(num_layers=1, hidden_size=64,
                                                                          num_attention_heads=4, rotary_base=500000.0)))


def test_local_layer_spec_saves_under_the_transformer_engine_names():
    """One checkpoint serves both layer specs: megatron's local spec maps its norms onto the TE
    spec's fused-norm names, which are the names the importer writes."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from trainer.hf_weights import FC1, QKV

    keys_map = get_gpt_layer_local_spec(normalization="RMSNorm").submodules.sharded_state_dict_keys_map
    layer = "decoder.layers."
    assert layer + keys_map["input_layernorm."] + "weight" == QKV + "layer_norm_weight"
    assert layer + keys_map["pre_mlp_layernorm."] + "weight" == FC1 + "layer_norm_weight"


def test_the_same_import_twice_gives_byte_identical_checkpoints_that_torch_still_loads(tmp_path, tokenizer_dir):
    import torch.distributed.checkpoint as dcp

    from trainer.pretrained import checkpoint_path

    source = make_model("qwen2", tmp_path / "hf", torch.float32, tokenizer=tokenizer_dir)
    first, second = checkpoint_path(import_hf(str(source), tmp_path / "a").parent), checkpoint_path(import_hf(str(source), tmp_path / "b").parent)
    names = sorted(p.name for p in first.iterdir())
    assert ".metadata" in names and names == sorted(p.name for p in second.iterdir())
    for name in names:  # torch would record the temporary directory's absolute path and a random save id
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    metadata = dcp.FileSystemReader(str(second)).read_metadata()
    assert metadata.storage_meta.checkpoint_id == second.name
    key = "decoder.final_layernorm.weight"
    loaded = {key: torch.zeros(metadata.state_dict_metadata[key].size)}
    dcp.load(loaded, storage_reader=dcp.FileSystemReader(str(second)), no_dist=True)  # torch's own reader still reads it
    assert torch.equal(loaded[key], SafetensorsReader(source).get("model.norm.weight"))


def test_the_checkpoint_index_is_canonical_whatever_order_the_writer_threads_finished_in(tmp_path, tokenizer_dir):
    """megatron's writer collects the chunks' locations in the order its threads finish, and
    pickle's bytes follow object sharing: neither may change the index's bytes (CI saw a DVC
    rerun change a checkpoint's hash through this alone)."""
    import pickle
    import shutil

    import torch.distributed.checkpoint as dcp

    from trainer.dcp_reader import DCP_METADATA, canonical_dcp_metadata
    from trainer.pretrained import checkpoint_path

    source = make_model("llama", tmp_path / "hf", torch.float32, tokenizer=tokenizer_dir)
    ckpt = checkpoint_path(import_hf(str(source), tmp_path / "a").parent)
    canonical = (ckpt / DCP_METADATA).read_bytes()
    metadata = pickle.loads(canonical)
    assert len(metadata.storage_data) > 3
    shuffled = tmp_path / ckpt.name
    shutil.copytree(ckpt, shuffled)
    metadata.storage_data = dict(reversed(list(metadata.storage_data.items())))
    metadata.state_dict_metadata = dict(reversed(list(metadata.state_dict_metadata.items())))
    shared = next(iter(metadata.storage_data.values())).relative_path
    for info in metadata.storage_data.values():  # every entry in that file now shares one path object
        if info.relative_path == shared:
            info.relative_path = shared
    (shuffled / DCP_METADATA).write_bytes(pickle.dumps(metadata))
    assert (shuffled / DCP_METADATA).read_bytes() != canonical
    canonical_dcp_metadata(shuffled, ckpt.name)
    assert (shuffled / DCP_METADATA).read_bytes() == canonical
    key = "decoder.final_layernorm.weight"
    loaded = {key: torch.zeros(metadata.state_dict_metadata[key].size)}
    dcp.load(loaded, storage_reader=dcp.FileSystemReader(str(shuffled)), no_dist=True)  # torch's own reader still reads it
    assert torch.equal(loaded[key], SafetensorsReader(source).get("model.norm.weight"))
