"""Supervised fine-tuning: the warm start RL begins from.

Plain next-token cross-entropy on the response tokens (and the end-of-sequence token) of
demonstration rows, one process, AdamW, for a time or step budget. The default CPU job uses it to
turn a freshly initialised hybrid into a model that has learnt the task's format and most of its
content from imperfect demonstrations; RL then takes it from there (see ``configs/``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import rlvr.model as M
from rlvr import chat
from rlvr.config import ConfigError, ModelConfig, SFTConfig
from rlvr.data import load_rows
from rlvr.tokenizer import Tokenizer
from rlvr.training.packing import right_pad

log = logging.getLogger(__name__)


def demonstrations(cfg: SFTConfig, seed: int) -> list[tuple[str, str] | list[dict]]:
    """The demonstrations: (prompt, response) pairs, or chat transcripts (a ``response_field``
    that holds a list of messages: a multi-turn episode, trained on its model turns only)."""
    rows = load_rows(cfg.data, seed)
    demos, bad = [], 0
    for i, row in enumerate(rows):
        row = row if isinstance(row, dict) else {}  # a BadRow (malformed line)
        prompt, response = row.get(cfg.data.prompt_field), row.get(cfg.response_field)
        if isinstance(response, list) and all(isinstance(m, dict) for m in response):
            demos.append(response)
        elif isinstance(prompt, str) and isinstance(response, str):
            demos.append((prompt, response))
        else:
            bad += 1
            if bad <= 10:
                log.warning("sft.data row %d skipped: needs string fields %r and %r (or a list of chat messages "
                            "in %r)", i, cfg.data.prompt_field, cfg.response_field, cfg.response_field)
    if not demos:
        raise ConfigError("sft.data: no usable rows")
    return demos


def encode(demo: tuple[str, str] | list[dict], tokenizer: Tokenizer) -> tuple[list[int], list[int], list[int]]:
    """-> (prompt ids, response ids, which response ids to learn): the response and its
    end-of-sequence token; of a transcript, the model turns and the final end-of-sequence."""
    if isinstance(demo, tuple):
        response = tokenizer.encode(demo[1]) + [tokenizer.eos_token_id]
        return tokenizer.encode(demo[0]), response, [1] * len(response)
    prompt, pieces = chat.transcript_ids(tokenizer, demo)
    response, learn = [], []
    for ids, model_turn in pieces:
        response += ids
        learn += [int(model_turn)] * len(ids)
    return prompt, response + [tokenizer.eos_token_id], learn + [1]


def collate(demos: list, tokenizer: Tokenizer, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input ids (B, L) right-padded, and a (B, L - 1) mask of the target positions to learn."""
    encoded = [encode(d, tokenizer) for d in demos]
    ids, mask, _ = right_pad([p for p, _, _ in encoded], [r for _, r, _ in encoded], pad_id,
                             [m for _, _, m in encoded])
    return ids, mask


def build_model(cfg: ModelConfig, tokenizer: Tokenizer) -> M.HybridLM:
    overrides = dict(cfg.overrides)
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        overrides.setdefault(key, getattr(tokenizer, key, None))
    model = M.from_preset(cfg.preset, **overrides)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.overrides.vocab_size: {model.config.vocab_size} < the tokenizer's {tokenizer.vocab_size}")
    return model


def run_sft(model: M.HybridLM, cfg: SFTConfig, tokenizer: Tokenizer, out_dir: Path, seed: int,
            progress: bool = True, every: float | None = None, on_every=None, stop=None) -> dict:
    """Train ``model`` in place on the demonstrations; save it to ``out_dir``; return stats.
    ``on_every(seconds_trained)`` is called every ``every`` seconds of training (its own time
    does not count against the budget); ``stop(where)`` before every step may raise to end the
    warm start early (nothing is saved then: a relaunch runs it again from the start)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = random.Random(seed)
    demos = demonstrations(cfg, seed)
    pad_id = getattr(tokenizer, "pad_token_id", tokenizer.eos_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    start, step, loss = time.monotonic(), 0, float("nan")
    paused, next_call = 0.0, every
    budget = f"{cfg.seconds:.0f} s" if cfg.seconds else f"{cfg.steps} steps"
    bar = tqdm(total=cfg.steps or int(cfg.seconds), desc=f"SFT warm start ({budget})", disable=not progress,
               unit="step" if cfg.steps else "s", leave=False)
    while not _done(cfg, step, start + paused):
        if stop is not None:
            stop(f"the SFT warm start (step {step})")
        ids, mask = collate(rng.sample(demos, min(cfg.batch_size, len(demos))), tokenizer, pad_id)
        logits = model(ids[:, :-1])
        per_token = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        loss_t = (per_token * mask.flatten()).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step, loss = step + 1, loss_t.item()
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        trained = time.monotonic() - start - paused
        bar.update((step if cfg.steps else min(int(trained), bar.total)) - bar.n)
        if on_every is not None and trained >= next_call:
            before = time.monotonic()
            on_every(trained)
            model.train()
            paused += time.monotonic() - before
            next_call += every
    bar.close()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir)
    stats = {"steps": step, "seconds": round(time.monotonic() - start - paused, 1), "final_loss": round(loss, 4),
             "demonstrations": len(demos)}
    (out_dir / "sft.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def _done(cfg: SFTConfig, step: int, start: float) -> bool:
    if cfg.steps is not None and step >= cfg.steps:
        return True
    return cfg.seconds is not None and time.monotonic() - start >= cfg.seconds
