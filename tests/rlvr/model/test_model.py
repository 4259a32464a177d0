import json

import pytest
import torch
import torch.nn.functional as F

import rlvr.model as M
from rlvr.model.config import HybridConfig, tiny
from rlvr.model.names import checkpoint_items, vllm_items


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return M.HybridLM(tiny(initializer_range=0.1)).eval()


def test_decode_with_cache_equals_full_forward(model):
    ids = torch.randint(0, 256, (3, 40))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        prefill = model(ids[:, :25], cache=cache)
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(25, 40)], dim=1)
    diff = max((prefill - full[:, :25]).abs().max(), (steps - full[:, 25:]).abs().max()).item()
    print(f"cache decode vs full forward: max diff {diff:.2e}")
    assert diff <= 1e-4


def test_prefill_in_pieces_equals_one_prefill(model):
    ids = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        parts = [model(ids[:, a:b], cache=cache) for a, b in ((0, 2), (2, 17), (17, 30))]
    assert (torch.cat(parts, dim=1) - full).abs().max() <= 1e-4


def test_cache_select_drops_rows(model):
    ids = torch.randint(0, 256, (3, 12))
    with torch.no_grad():
        cache = model.new_cache()
        model(ids[:, :10], cache=cache)
        cache.select(torch.tensor([0, 2]))
        out = model(ids[[0, 2], 10:11], cache=cache)
        want = model(ids[[0, 2], :11])[:, -1:]
    assert (out - want).abs().max() <= 1e-4


def test_packed_documents_equal_documents_alone(model):
    lengths = [7, 19, 14]
    docs = [torch.randint(0, 256, (1, n)) for n in lengths]
    packed = torch.cat(docs, dim=1)
    cu = torch.tensor([0, 7, 26, 40])
    with torch.no_grad():
        out = model(packed, cu_seqlens=cu)
        for doc, start in zip(docs, cu[:-1].tolist()):
            alone = model(doc)
            assert (out[:, start:start + doc.shape[1]] - alone).abs().max() <= 1e-4
        seq_idx = torch.tensor([[0] * 7 + [1] * 19 + [2] * 14])
        assert torch.equal(model(packed, seq_idx=seq_idx), out)


def test_gradients_reach_every_parameter_and_training_reduces_loss():
    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1))
    ids = torch.randint(0, 256, (4, 33))
    loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"no gradient reaches {no_grad}"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print("losses", [round(x, 3) for x in losses])
    assert losses[-1] < losses[0] - 0.5


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1)).train()
    ids = torch.randint(0, 256, (2, 20))

    def grads():
        model.zero_grad()
        model(ids).logsumexp(-1).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.gradient_checkpointing_enable()
    checked = grads()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checked))


def test_logits_at_kept_positions_only_equal_those_of_the_full_forward():
    """``keep`` (the learner's response tokens): the same logits and gradients as the full
    forward's at those positions, packed documents included."""
    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1))
    ids = torch.randint(0, 256, (3, 17))
    seq_idx = torch.tensor([[0] * 6 + [1] * 11, [0] * 17, [0] * 9 + [1] * 8])
    keep = torch.rand(3, 17) < 0.5
    full = model(ids, seq_idx=seq_idx)[keep]
    part = model(ids, seq_idx=seq_idx, keep=keep)
    assert part.shape == (int(keep.sum()), model.config.vocab_size)
    assert torch.allclose(part, full, atol=1e-5)
    go = torch.randn_like(full)
    grads = [torch.autograd.grad(out, list(model.parameters()), go) for out in (full, part)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_bf16_forward_close_to_fp32(tmp_path):
    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1)).eval()
    model.save(tmp_path, dtype=torch.bfloat16)
    bf16 = M.load(tmp_path)
    assert bf16.lm_head.weight.dtype == torch.bfloat16
    assert bf16.backbone.layers[0].mixer.A_log.dtype == torch.float32  # SSM maths stays fp32
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        a, b = model(ids), bf16(ids)
    # Mean error, not max: a near-tie in MoE routing may pick another expert under bf16.
    assert b.dtype == torch.float32 and (a - b).abs().mean() < 0.05 * a.abs().mean()


def test_checkpoint_layouts_and_names(model, tmp_path):
    model.save(tmp_path)
    from safetensors.torch import load_file, save_file

    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert "backbone.layers.3.mixer.experts.7.up_proj.weight" in on_disk
    assert "backbone.layers.3.mixer.experts.up_proj" not in on_disk
    # transformers' in-memory layout (model. prefix, stacked experts) loads too.
    stacked = {k.replace("backbone.", "model.", 1): v.contiguous() for k, v in model.state_dict().items()}
    other = tmp_path / "stacked"
    other.mkdir()
    save_file(stacked, str(other / "model.safetensors"))
    (other / "config.json").write_text((tmp_path / "config.json").read_text())
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        assert torch.equal(M.load(other)(ids), model(ids))
    names = dict(vllm_items(model.state_dict()))
    assert names.keys() == on_disk.keys()
    view = names["backbone.layers.3.mixer.experts.2.down_proj.weight"]
    assert view.data_ptr() == model.state_dict()["backbone.layers.3.mixer.experts.down_proj"][2].data_ptr()


def test_checkpoint_names_are_per_expert_views():
    state = {"backbone.layers.0.mixer.experts.up_proj": torch.randn(3, 4, 5), "lm_head.weight": torch.randn(2, 2)}
    items = dict(checkpoint_items(state))
    assert sorted(items) == ["backbone.layers.0.mixer.experts.0.up_proj.weight", "backbone.layers.0.mixer.experts.1.up_proj.weight",
                             "backbone.layers.0.mixer.experts.2.up_proj.weight", "lm_head.weight"]
    assert torch.equal(items["backbone.layers.0.mixer.experts.2.up_proj.weight"], state["backbone.layers.0.mixer.experts.up_proj"][2])


def test_config_reads_every_pattern_spelling(tmp_path):
    base = tiny().to_dict()
    for key, value in [("hybrid_override_pattern", "M*-E"),
                       ("layers_block_type", ["linear_attention", "full_attention", "mlp", "moe"]),
                       ("layers_block_type", ["mamba", "attention", "mlp", "moe"])]:
        data = {k: v for k, v in base.items() if k not in ("hybrid_override_pattern", "layers_block_type")}
        data[key] = value
        assert HybridConfig.from_dict(data).pattern == "M*-E"
    legacy = HybridConfig.from_dict({"hybrid_override_pattern": "M", "mamba_d_conv": 3, "norm_eps": 1e-6})
    assert legacy.conv_kernel == 3 and legacy.layer_norm_epsilon == 1e-6
    written = json.loads(json.dumps(tiny().to_dict()))
    assert written["layers_block_type"][0] == "linear_attention" and written["model_type"] == "nemotron_h"
    with pytest.raises(ValueError, match="unknown layer characters"):
        HybridConfig(pattern="MX")


def test_presets():
    nano = M.PRESETS["nemotron3-nano-30b-a3b"]()
    assert nano.num_hidden_layers == 52 and nano.pattern.count("E") == 23 and nano.pattern.count("*") == 6
    with pytest.raises(KeyError, match="unknown preset"):
        M.from_preset("huge")


def test_right_padded_batched_prefill_then_decode_rows_of_different_lengths(model):
    torch.manual_seed(1)
    prompts = [torch.randint(0, 256, (n,)) for n in (5, 9, 13)]
    follow = torch.randint(0, 256, (3, 4))
    lengths = torch.tensor([5, 9, 13])
    padded = torch.zeros(3, 13, dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, :len(p)] = p
    with torch.no_grad():
        cache = model.new_cache()
        logits = model(padded, cache=cache, lengths=lengths)
        last = logits[torch.arange(3), lengths - 1]
        steps = torch.stack([model.step(follow[:, t], cache) for t in range(4)], dim=1)
        for i, p in enumerate(prompts):
            alone = model(torch.cat([p, follow[i]])[None])[0]
            assert (last[i] - alone[len(p) - 1]).abs().max() <= 1e-4
            assert (steps[i] - alone[len(p):]).abs().max() <= 1e-4


def test_merged_caches_continue_each_row(model):
    a, b = torch.randint(0, 256, (2, 6)), torch.randint(0, 256, (1, 11))
    nxt = torch.randint(0, 256, (3,))
    with torch.no_grad():
        cache, other = model.new_cache(), model.new_cache()
        model(a, cache=cache)
        model(b, cache=other)
        cache.merge(other)
        out = model.step(nxt, cache)
        want = torch.cat([model(torch.cat([a, nxt[:2, None]], 1))[:, -1], model(torch.cat([b, nxt[2:, None]], 1))[:, -1]])
    assert (out - want).abs().max() <= 1e-4


@pytest.mark.parametrize("kwargs,needle", [
    (dict(cu_seqlens=torch.tensor([0, 7, 20])), "batch 1"),  # two rows of 20
    (dict(seq_idx=torch.zeros(40, dtype=torch.long)), "seq_idx must be integers of input_ids' shape"),
    (dict(seq_idx=torch.tensor([[0] * 10 + [1] * 5 + [0] * 5] * 2)), "non-decreasing"),
    (dict(seq_idx=torch.full((2, 20), -1)), ">= 0"),
])
def test_packing_offsets_are_checked_before_any_kernel_reads_them(kwargs, needle):
    """The torch path raised on these, the C path read out of bounds and returned garbage."""
    torch.manual_seed(0)
    model = M.HybridLM(tiny())
    with torch.no_grad(), pytest.raises(ValueError, match=needle):
        model(torch.randint(0, 256, (2, 20)), **kwargs)
    with torch.no_grad(), pytest.raises(ValueError, match="rise strictly from 0 to seqlen = 20"):
        model(torch.randint(0, 256, (1, 20)), cu_seqlens=torch.tensor([0, 7, 7, 20]))
    with torch.no_grad(), pytest.raises(ValueError, match="rise strictly"):
        model(torch.randint(0, 256, (1, 20)), cu_seqlens=torch.tensor([0, 7, 15]))


@pytest.mark.parametrize("preset,total,active", [("nemotron3-nano-30b-a3b", 31.6e9, 3.6e9),
                                                 ("nemotron3-super-120b-a12b", 120.7e9, 12.8e9)])
def test_published_presets_have_the_published_parameter_counts(preset, total, active):
    """Nano: 31.6B total / 3.6B active with embeddings; Super: ~120B / ~12B (its config.json:
    40 Mamba-2, 40 MoE, 8 attention layers; the MTP layer not modelled)."""
    cfg = M.PRESETS[preset]()
    with torch.device("meta"):
        model = M.HybridLM(cfg)
    n = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    n_active = n - experts + experts * cfg.num_experts_per_tok // cfg.n_routed_experts
    print(f"{preset}: {n / 1e9:.2f}B total, {n_active / 1e9:.2f}B active")
    assert n == pytest.approx(total, rel=0.01) and n_active == pytest.approx(active, rel=0.01)


def test_nano_slice_has_nanos_widths_with_one_layer_of_each_kind():
    nano, piece = M.PRESETS["nemotron3-nano-30b-a3b"](), M.PRESETS["nano-slice"]()
    for key in ("hidden_size", "vocab_size", "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups",
                "head_dim", "num_attention_heads", "num_key_value_heads", "moe_intermediate_size",
                "moe_shared_expert_intermediate_size", "num_experts_per_tok"):
        assert getattr(piece, key) == getattr(nano, key), key
    assert sorted(piece.pattern) == ["*", "E", "M"] and piece.n_routed_experts == 8
    with torch.device("meta"):
        n = sum(p.numel() for p in M.HybridLM(piece).parameters())
    assert n == pytest.approx(0.867e9, rel=0.01)


def test_routing_replay_through_the_model_gives_the_forced_experts_and_gradients():
    from rlvr.kernels import moe as moe_kernels

    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1))
    moe = [i for i, block in enumerate(model.backbone.layers) if block.kind == "E"]
    assert moe, "the tiny preset has MoE layers"
    ids = torch.randint(1, 200, (2, 9))
    top_k = model.config.num_experts_per_tok
    # the model's own choices: each MoE layer's router applied to what reaches it
    seen = []
    hooks = [model.backbone.layers[i].mixer.register_forward_pre_hook(
        lambda m, args: seen.append(moe_kernels.route_ref(args[0].reshape(-1, args[0].shape[-1]), m.gate.weight,
                                                          m.gate.e_score_correction_bias, m.dims)[0]))
        for i in moe]
    with torch.no_grad():
        plain = model(ids)
    for hook in hooks:
        hook.remove()
    own = torch.stack([s.view(2, 9, top_k) for s in seen], dim=2)
    assert own.shape == (2, 9, len(moe), top_k)
    with torch.no_grad():
        assert torch.allclose(model(ids, experts=own), plain, atol=1e-5)
    # other experts: other logits, and the loss's gradient still reaches every router
    other = (own + 1) % model.config.n_routed_experts
    model.zero_grad()
    forced = model(ids, experts=other)
    assert not torch.allclose(forced, plain, atol=1e-3)
    forced.logsumexp(-1).mean().backward()
    for i in moe:
        assert model.backbone.layers[i].mixer.gate.weight.grad.abs().sum() > 0
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # under gradient checkpointing the recomputed forward replays the same experts
    model.gradient_checkpointing_enable(True)
    model.train()
    model.zero_grad()
    model(ids, experts=other).logsumexp(-1).mean().backward()
    for n, p in model.named_parameters():
        if n in want:
            assert torch.allclose(p.grad, want[n], atol=1e-5, rtol=1e-4), n
    with pytest.raises(ValueError, match="experts must be"):
        model(ids, experts=own[:, :5])  # (not one choice per token)
