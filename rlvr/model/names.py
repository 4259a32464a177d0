"""Parameter names: our modules <-> Hugging Face Nemotron-H checkpoints <-> vLLM's loader.

Our ``state_dict`` keys are the checkpoint keys (``backbone.layers.3.mixer.in_proj.weight``,
``lm_head.weight``) except for routed experts, which we keep stacked in one 3-D tensor per
projection, as transformers does in memory:

    ours / transformers in memory:  backbone.layers.3.mixer.experts.up_proj          (E, I, d)
    checkpoint on disk (and vLLM):  backbone.layers.3.mixer.experts.{e}.up_proj.weight  (I, d)

vLLM's ``NemotronHForCausalLM.load_weights`` takes checkpoint names (it maps ``backbone.`` to
its own ``model.`` itself), so weight sync to vLLM is ``checkpoint_items``: views, not copies.
transformers' in-memory names use ``model.`` for ``backbone.``; ``canonical_name`` maps them to ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

_STACKED_RE = re.compile(r"^(.*\.mixer\.experts)\.(up_proj|down_proj)$")
PER_EXPERT_RE = re.compile(r"^(.*\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$")


def checkpoint_items(state: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """Our (name, tensor) pairs in checkpoint layout: stacked experts become per-expert views."""
    items = state.items() if isinstance(state, dict) else state
    for name, tensor in items:
        m = _STACKED_RE.match(name)
        if m is None:
            yield name, tensor
            continue
        for e in range(tensor.shape[0]):
            yield f"{m.group(1)}.{e}.{m.group(2)}.weight", tensor[e]


def vllm_items(state) -> Iterator[tuple[str, torch.Tensor]]:
    """What ``vllm``'s Nemotron-H loader expects: checkpoint names (a rename, not a conversion)."""
    return checkpoint_items(state)


def canonical_name(name: str) -> str:
    """A checkpoint or transformers name -> ours (``model.`` prefix -> ``backbone.``)."""
    if name.startswith("model."):
        return "backbone." + name[len("model."):]
    return name


def targets(model: torch.nn.Module):
    """name -> the tensor of ``model`` that checkpoint tensor ``name`` is (a parameter or buffer,
    or a per-expert slice of a stacked parameter: a view, for loading in place); unknown names
    raise."""
    params = dict(model.named_parameters()) | dict(model.named_buffers())

    def target_of(name: str) -> torch.Tensor:
        name = canonical_name(name)
        m = PER_EXPERT_RE.match(name)
        if m:
            target = params.get(f"{m.group(1)}.{m.group(3)}")
            target = None if target is None else target[int(m.group(2))]
        else:
            target = params.get(name)
        if target is None:
            raise KeyError(f"weight {name!r} matches no parameter of the model")
        return target

    return target_of


@torch.no_grad()
def load_named(model: torch.nn.Module, items: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy (checkpoint name, tensor) pairs into ``model``'s parameters in place: a per-expert
    tensor goes into its slice of the stacked expert parameter, so no full second copy of the
    weights is ever built. Returns how many tensors were loaded; unknown names raise."""
    target_of = targets(model)
    count = 0
    for name, tensor in items:
        target = target_of(name)
        if target.shape != tensor.shape:
            raise ValueError(f"weight {name!r}: shape {tuple(tensor.shape)}, model has {tuple(target.shape)}")
        target.copy_(tensor)
        count += 1
    return count
