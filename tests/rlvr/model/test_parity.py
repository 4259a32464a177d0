"""Parity with an implementation nobody here wrote: transformers' NemotronH, both directions."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is in the dev extra")

import rlvr.model as M  # noqa: E402
from rlvr.model.config import tiny  # noqa: E402

CONFIGS = {
    "all-kinds": dict(pattern="M*-EM*E"),
    "latent-moe": dict(pattern="ME*E", moe_latent_size=32),
    "grouped-routing": dict(pattern="EM", n_routed_experts=8, n_group=2, topk_group=1),
    "mamba-only-odd-chunks": dict(pattern="MM", chunk_size=8),
}


def _randomise(model):
    """Move every 1-D parameter (norm weights, D, dt_bias...) off its default so a swapped or
    missing one shows up in the logits."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return model


def _hf_reference(path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    for layer in hf.model.layers:
        if hasattr(layer.mixer, "time_step_limit"):
            # transformers' own forward clamps dt >= time_step_min; its decode step and vLLM do
            # not, and neither does the config default (0, inf) that we follow.
            layer.mixer.time_step_limit = (0.0, float("inf"))
    return hf.eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_loads_ours_and_agrees(name, tmp_path):
    torch.manual_seed(0)
    ours = _randomise(M.HybridLM(tiny(initializer_range=0.1, **CONFIGS[name]))).eval()
    ours.save(tmp_path)
    hf = _hf_reference(tmp_path)
    ids = torch.randint(0, ours.config.vocab_size, (2, 45))
    with torch.no_grad():
        a, b = ours(ids), hf(ids, use_cache=False).logits
    diff = (a - b).abs().max().item()
    print(f"{name}: max |ours - transformers| = {diff:.2e}, mean |logit| = {a.abs().mean():.3f}")
    assert a.std() > 0.1  # logits depend on the input: the comparison means something
    assert diff <= 1e-4


def test_we_load_transformers_checkpoint_and_agree(tmp_path):
    torch.manual_seed(0)
    cfg = tiny(initializer_range=0.1, pattern="M*-EM").to_dict()
    hf_config = transformers.AutoConfig.for_model("nemotron_h", **{k: v for k, v in cfg.items() if k != "model_type"})
    hf = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").float()
    _randomise(hf)
    hf.save_pretrained(tmp_path)  # writes backbone.* names with per-expert keys
    ours = M.load(tmp_path).eval()
    hf = _hf_reference(tmp_path)
    ids = torch.randint(0, ours.config.vocab_size, (3, 33))
    with torch.no_grad():
        diff = (ours(ids) - hf(ids, use_cache=False).logits).abs().max().item()
    print(f"transformers -> ours: max diff {diff:.2e}")
    assert diff <= 1e-4
