"""Checkpoints read one tensor (or one flat range) at a time, and written shard by shard."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import rlvr.model as M
from rlvr.model import checkpoint
from rlvr.model.checkpoint import CheckpointReader, save_state
from rlvr.model.config import tiny


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return M.HybridLM(tiny(initializer_range=0.1))


def test_flat_ranges_of_every_tensor_equal_the_whole_tensor_cut(model, tmp_path):
    """What a ZeRO-3 rank reads for its partition: any [start, end), across expert boundaries,
    a row's middle, one element, the whole tensor."""
    model.save(tmp_path)
    g = torch.Generator().manual_seed(0)
    reader = CheckpointReader(tmp_path)
    assert set(reader.names) == set(model.state_dict())
    for name, expected in model.state_dict().items():
        flat = expected.reshape(-1)
        assert reader.shape(name) == tuple(expected.shape)
        assert torch.equal(reader.read(name), expected)
        n = flat.numel()
        bounds = [(0, n), (n - 1, n), (0, 1)] + [sorted(torch.randint(0, n + 1, (2,), generator=g).tolist()) for _ in range(20)]
        for start, end in bounds:
            assert torch.equal(reader.read_flat(name, start, end), flat[start:end]), (name, start, end)
    experts = "backbone.layers.3.mixer.experts.up_proj"
    per_expert = model.state_dict()[experts][0].numel()
    across = reader.read_flat(experts, per_expert - 5, per_expert + 7)  # the end of expert 0, the start of 1
    assert torch.equal(across, model.state_dict()[experts].reshape(-1)[per_expert - 5:per_expert + 7])


def test_loading_streams_into_the_dtype_asked_and_keeps_the_ssm_in_fp32(model, tmp_path):
    model.save(tmp_path)
    loaded = M.load(tmp_path, dtype=torch.bfloat16)
    for name, tensor in loaded.state_dict().items():
        fp32 = name.endswith(("A_log", "D", "dt_bias", "e_score_correction_bias"))
        assert tensor.dtype == (torch.float32 if fp32 else torch.bfloat16), name
        assert torch.equal(tensor, model.state_dict()[name].to(tensor.dtype)), name


def test_a_checkpoint_that_does_not_match_its_config_names_the_tensors(model, tmp_path):
    model.save(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["mtp.layers.0.weight"] = torch.zeros(2)  # multi-token prediction: skipped, not an error
    save_file(tensors, str(tmp_path / "model.safetensors"))
    assert torch.equal(M.load(tmp_path).lm_head.weight, model.lm_head.weight)

    del tensors["backbone.norm_f.weight"]
    tensors["backbone.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['backbone.norm_f.weight'\], unexpected \['backbone.extra.weight'\]"):
        M.load(tmp_path)

    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["backbone.extra.weight"]
    tensors["backbone.norm_f.weight"] = torch.ones(3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"backbone.norm_f.weight: shape \(3,\), the model has \(64,\)"):
        M.load(tmp_path)

    del tensors["backbone.layers.3.mixer.experts.1.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="expert indices"):
        M.load(tmp_path)


def test_a_stream_of_tensors_is_written_shard_by_shard(model, tmp_path, monkeypatch):
    """The ZeRO-3 export's path: tensors arrive one at a time and each shard is written when it
    fills; the folder reads back the same, with an index naming every tensor's shard."""
    monkeypatch.setattr(checkpoint, "SHARD_BYTES", 200_000)
    seen = []

    def stream():
        for name, tensor in model.state_dict().items():
            seen.append(name)
            yield name, tensor.clone()  # (a fresh tensor each time, as a gather gives)

    save_state(model.config, stream(), tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) > 2 and set(index["weight_map"].values()) == set(files) and not list(tmp_path.glob(".shard-*"))
    assert files[-1] == f"model-{len(files):05d}-of-{len(files):05d}.safetensors"
    assert seen == list(model.state_dict())
    loaded = M.load(tmp_path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    transformers = pytest.importorskip("transformers", reason="transformers is a test dependency")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)  # (it reads the index)
    assert torch.equal(hf.lm_head.weight, model.lm_head.weight)
    experts = hf.model.layers[3].mixer.experts
    got = experts.up_proj if hasattr(experts, "up_proj") else torch.stack([e.up_proj.weight for e in experts])
    assert torch.equal(got, model.backbone.layers[3].mixer.experts.up_proj)
