"""GRPO maths as pure functions: group advantages, the clipped policy loss, KL estimators,
importance-sampling correction, loss aggregation and reward shaping. Tensors in, tensors out;
the learner only wires them together through ``grpo_loss``.

Shapes: ``B`` sequences (prompts x group size G, grouped consecutively), ``T`` response tokens;
per-token tensors are (B, T) with ``mask`` 1 on tokens the model generated and that are trained.

Sources for the variants: GRPO (Shao et al. 2024, DeepSeekMath), Dr. GRPO (Liu et al. 2025,
"Understanding R1-Zero-Like Training": no std normalisation, constant length normaliser), DAPO
(Yu et al. 2025: clip-higher, token-level loss, dynamic sampling, overlong reward shaping),
KL estimators k1/k2/k3 (Schulman 2020, "Approximating KL divergence"), truncated importance
sampling for inference/training mismatch (Yao et al. 2025), masked importance sampling (Liu et
al. 2025, "When Speed Kills Stability"), the decoupled PPO objective for stale rollouts (Hilton
et al. 2022; AReaL, Fu et al. 2025: clip against a recomputed proximal policy, correct for the
behaviour policy with importance weights), GSPO (Zheng et al. 2025: one clipped ratio per
sequence, the geometric mean of its token ratios).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

Tensor = torch.Tensor


# ---------------------------------------------------------------- advantages

def group_advantages(rewards: Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """A_i = r_i - mean(group), divided by the group's standard deviation for GRPO (unbiased, as
    TRL and verl compute it) or not at all for Dr. GRPO. rewards: (B,) -> (B,)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    advantages = r - r.mean(dim=1, keepdim=True)
    if normalize_std:
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        # A group of equal rewards has zero advantage whatever eps is (no 0/0).
        advantages = torch.where(std > 0, advantages / (std + eps), torch.zeros_like(advantages))
    return advantages.view(-1)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "grpo": lambda rewards, group_size: group_advantages(rewards, group_size, normalize_std=True),
    "dr_grpo": lambda rewards, group_size: group_advantages(rewards, group_size, normalize_std=False),
}


def informative_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Dynamic sampling (DAPO): a group whose rewards are all equal has zero advantage everywhere
    and teaches nothing. Returns a (num_groups,) bool mask of the groups to keep."""
    r = rewards.view(-1, group_size)
    return (r.max(dim=1).values - r.min(dim=1).values) > 0


# ---------------------------------------------------------------- KL estimators

def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """log pi/pi_ref: unbiased, high variance, can be negative per token."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """(log pi/pi_ref)^2 / 2: biased, low variance."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """pi_ref/pi - log(pi_ref/pi) - 1: unbiased and always >= 0 (the GRPO paper's choice)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def routing_agreement(own: Tensor, recorded: Tensor, mask: Tensor) -> dict[str, float]:
    """How often a router's own top-k equals the recorded one (a rollout engine's), on the
    positions of ``mask`` that have a record: own and recorded (..., MoE layers, top_k), mask
    (...). -> routing_agreement: the share of (token, layer) decisions whose expert sets are the
    same; routing_tokens_agree: the share of tokens whose sets are the same in every layer."""
    same = (own.sort(-1).values == recorded.long().sort(-1).values).all(-1)  # (..., layers)
    where = mask.bool() & (recorded >= 0).all(-1).all(-1)
    n = max(int(where.sum()), 1)
    return {"routing_agreement": float(same[where].float().mean(-1).sum()) / n,
            "routing_tokens_agree": float(same[where].all(-1).float().sum()) / n}


# ---------------------------------------------------------------- the policy loss

IS_LEVELS = ("token", "sequence", "geometric")
IS_MODES = ("truncate", "mask")


def importance_ratios(prox_logp: Tensor, engine_logp: Tensor, mask: Tensor, level: str = "token",
                      segments: Tensor | None = None) -> Tensor:
    """The behaviour correction's ratio pi_prox / pi_engine, on every token of (B, T): the
    tokens were sampled by the inference engine (other kernels and precision; with
    ``max_staleness`` > 0, older weights too), the loss is taken against the proximal policy.
    - ``token``: each token's own ratio;
    - ``sequence``: the product of the sequence's token ratios, on each of its tokens;
    - ``geometric``: the geometric mean of the sequence's token ratios (GSPO's length-normalised
      ratio), on each of its tokens.
    Log-ratios are clamped to +-20 before ``exp`` (a long sequence's product would overflow).
    ``segments``: the sequences of packed rows (``segment_totals``)."""
    log_ratio = (prox_logp - engine_logp) * mask
    if level == "token":
        return torch.exp(log_ratio)
    if level not in IS_LEVELS:
        raise ValueError(f"unknown importance-sampling level {level!r} ({', '.join(IS_LEVELS)})")
    total, count = segment_totals(log_ratio, mask, segments)
    if level == "geometric":
        total = total / count.clamp(min=1)
    return torch.exp(total.clamp(-20, 20))


def importance_weights(prox_logp: Tensor, engine_logp: Tensor, mask: Tensor, mode: str = "truncate",
                       level: str = "token", low: float = 0.0, high: float = 2.0,
                       segments: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-token loss weights for the engine/learner mismatch, and the tokens that stay in the loss:
    - ``truncate`` (TIS, Yao et al. 2025): weight min(ratio, high); every token stays;
    - ``mask`` (MIS, "When Speed Kills Stability", 2025): a token (``level`` token) or a whole
      sequence (``sequence``, ``geometric``) whose ratio leaves [low, high] leaves the loss, the
      rest keep their ratio as weight. The caller removes the rejected tokens from the loss mask
      *before* the loss is normalised, so they count in no denominator.
    Detached: no gradient flows through. -> (weights, keep), both (B, T)."""
    ratio = importance_ratios(prox_logp, engine_logp, mask, level, segments).detach()
    if mode == "truncate":
        return ratio.clamp(max=high), mask.bool()
    if mode != "mask":
        raise ValueError(f"unknown importance-sampling mode {mode!r} ({', '.join(IS_MODES)})")
    keep = mask.bool() & (ratio >= low) & (ratio <= high)
    return torch.where(keep, ratio, torch.zeros_like(ratio)), keep


def truncated_is_weights(old_logp: Tensor, engine_logp: Tensor, cap: float = 2.0) -> Tensor:
    """Token-level truncated importance sampling, min(pi_trainer_old / pi_engine, cap), for a loss
    that compares against the policy it differentiates (its ``old_logp`` is that forward's own)."""
    return importance_weights(old_logp, engine_logp, torch.ones_like(old_logp), "truncate", "token", high=cap)[0]


def importance_metrics(ratio: Tensor, weights: Tensor, keep: Tensor, mask: Tensor, mode: str, high: float
                       ) -> dict[str, float]:
    """Statistics of a batch's importance ratios over its trained tokens (``mask``, before any
    rejection): mean, min, max, and the share of tokens truncated (``truncate``) or masked out
    (``mask``)."""
    on = mask.bool()
    if not on.any():
        return {}
    r = ratio[on]
    out = {"is/ratio_mean": float(r.mean()), "is/ratio_min": float(r.min()), "is/ratio_max": float(r.max()),
           "is/weight_mean": float(weights[on].mean())}
    if mode == "truncate":
        out["is/truncated_share"] = float((r > high).float().mean())
    else:
        out["is/masked_share"] = float((~keep[on]).float().mean())
    return out


def clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_low: float = 0.2, clip_high: float = 0.2
                      ) -> tuple[Tensor, Tensor]:
    """PPO-clip per token: -min(ratio A, clip(ratio, 1-clip_low, 1+clip_high) A).
    ``clip_high > clip_low`` is DAPO's clip-higher (more room for raising unlikely tokens).
    advantages: (B,) per sequence or (B, T). Returns (loss per token, clipped indicator)."""
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def clipped_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_low: float = 0.2,
                        clip_high: float = 0.2) -> tuple[Tensor, Tensor]:
    """The clipped surrogate of each token's own ratio pi_theta / pi_old (PPO, GRPO)."""
    return clipped_surrogate(torch.exp(logp - old_logp), advantages, clip_low, clip_high)


def segment_totals(values: Tensor, mask: Tensor, segments: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """On every token, the sum of ``values`` over the masked tokens of its sequence and their
    number. A row is one sequence, or (``segments``: (B, T) sequence numbers within each row,
    packed micro-batches' ``seq_idx``) several. No gradient flows through."""
    values, mask = values.detach().float(), mask.float()
    if segments is None:
        return ((values * mask).sum(1, keepdim=True).expand_as(values),
                mask.sum(1, keepdim=True).expand_as(values))
    rows, per_row = values.shape[0], int(segments.max()) + 1
    key = (torch.arange(rows, device=values.device)[:, None] * per_row + segments).reshape(-1)
    total = torch.zeros(rows * per_row, device=values.device).index_add_(0, key, (values * mask).reshape(-1))
    count = torch.zeros(rows * per_row, device=values.device).index_add_(0, key, mask.reshape(-1))
    return total[key].view_as(values), count[key].view_as(values)


def segment_mean(values: Tensor, mask: Tensor, segments: Tensor | None = None) -> Tensor:
    """On every token, the mean of ``values`` over the masked tokens of its sequence."""
    total, count = segment_totals(values, mask, segments)
    return total / count.clamp(min=1)


def sequence_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, segments: Tensor | None = None) -> Tensor:
    """GSPO's ratio (Zheng et al. 2025, "Group Sequence Policy Optimization"), in its token form:
    s_i = (pi_theta(y_i) / pi_old(y_i)) ** (1 / |y_i|), the geometric mean of the sequence's
    token ratios, on each of its tokens as sg[s_i] * pi_theta(y_t) / sg[pi_theta(y_t)]. Its value
    is s_i, so one sequence is clipped as a whole; with the loss averaged over each sequence's
    tokens (``seq_mean_token_mean``) its gradient is GSPO's, s_i / |y_i| * sum_t grad log pi(y_t)."""
    log_s = segment_mean(logp - old_logp, mask, segments)
    return torch.exp(log_s) * torch.exp(logp - logp.detach())


def loss_weights(mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """The weight of each token in the loss, so that ``(per_token * weights).sum()`` is the
    aggregated loss. Weights are computed once over the whole batch: the loss then splits over
    micro-batches, packed rows and data-parallel ranks as a plain sum, whatever the split.
    - ``token_mean``: 1 / number of tokens (DAPO: long answers weigh more);
    - ``seq_mean_token_mean``: 1 / (B * the sequence's token count) (original GRPO);
    - ``seq_mean_token_sum_norm``: 1 / (B * max_len), a constant normaliser (Dr. GRPO: no length
      bias; ``max_len`` is the generation budget, default T).
    mask: (B, T) -> (B, T), zero where the mask is."""
    mask = mask.float()
    if mode == "token_mean":
        return mask / mask.sum().clamp(min=1)
    if mode == "seq_mean_token_mean":
        return mask / (mask.sum(1, keepdim=True).clamp(min=1) * mask.shape[0])
    if mode == "seq_mean_token_sum_norm":
        return mask / (mask.shape[0] * (max_len or mask.shape[1]))
    raise ValueError(f"unknown loss aggregation {mode!r} (token_mean, seq_mean_token_mean, seq_mean_token_sum_norm)")


def aggregate(per_token: Tensor, mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """Reduce (B, T) token losses to a scalar with the weights of ``loss_weights``."""
    return (per_token * loss_weights(mask, mode, max_len).to(per_token.dtype)).sum()


# ---------------------------------------------------------------- reward shaping

def overlong_penalty(lengths: Tensor, max_len: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment, added to the reward: 0 up to max_len - buffer, then
    falling linearly to -1 at max_len (and -1 beyond)."""
    start = max_len - buffer
    return ((start - lengths.float()) / buffer).clamp(min=-1.0, max=0.0)


def kl_in_reward(rewards: Tensor, kl_per_token: Tensor, mask: Tensor, beta: float) -> Tensor:
    """KL as a reward penalty instead of a loss term: r - beta * sum_t KL_t per sequence."""
    return rewards - beta * (kl_per_token * mask).sum(dim=1)


def kl_placement(kl_coef: float, in_reward: bool) -> tuple[float, float]:
    """(beta in the reward, beta in the loss): the KL to the reference policy penalises either
    each sequence's reward or each token's loss, never both."""
    return (kl_coef, 0.0) if in_reward else (0.0, kl_coef)


def shape_rewards(rewards: Tensor, lengths: Tensor, truncated: Tensor, mask: Tensor, max_tokens: int,
                  overlong_buffer: int = 0, overlong_mask: bool = False, kl_per_token: Tensor | None = None,
                  kl_beta: float = 0.0) -> tuple[Tensor, Tensor]:
    """Rewards and loss mask after the optional shaping: DAPO's overlong penalty (``overlong_buffer``
    tokens before ``max_tokens``), truncated responses masked out of the loss (``overlong_mask``),
    and the KL penalty in the reward (``kl_beta`` > 0 with per-token KL). -> (rewards, mask)."""
    shaped = rewards.clone()
    if overlong_buffer:
        shaped = shaped + overlong_penalty(lengths, max_tokens, overlong_buffer)
    if overlong_mask:
        mask = mask.masked_fill(truncated[:, None], 0)
    if kl_beta:
        if kl_per_token is None:
            raise ValueError("kl_beta > 0 needs the per-token KL")
        shaped = kl_in_reward(shaped, kl_per_token, mask, kl_beta)
    return shaped, mask


# ---------------------------------------------------------------- all together

@dataclasses.dataclass(frozen=True)
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.28
    aggregation: str = "token_mean"
    kl_estimator: str = "k3"
    kl_coef: float = 0.0  # KL to the reference policy in the loss; 0 = off
    tis_cap: float | None = 2.0  # truncated importance-sampling cap; None = no correction
    is_level: str = "token"  # whose ratio the truncation caps: "token", "sequence", "geometric"
    policy_ratio: str = "token"  # "token": PPO/GRPO's per-token ratio; "sequence": GSPO's


def grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, config: LossConfig,
              engine_logp: Tensor | None = None, ref_logp: Tensor | None = None,
              weights: Tensor | None = None, is_weights: Tensor | None = None,
              segments: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """The scalar loss to backpropagate and detached metrics (clip fraction, KL, IS weight:
    means over the masked tokens). ``weights``: per-token loss weights computed over the whole
    batch (``loss_weights``) when this is a slice of it; else ``config.aggregation`` over
    these tokens. ``is_weights``: importance weights computed beforehand (``importance_weights``
    against a proximal policy); else truncation (at ``config.is_level``) against ``old_logp``. ``segments``:
    which sequence each token belongs to in a packed row (GSPO's per-sequence ratio)."""
    if config.policy_ratio == "sequence":
        per_token, clipped = clipped_surrogate(sequence_ratio(logp, old_logp, mask, segments), advantages,
                                               config.clip_low, config.clip_high)
    elif config.policy_ratio == "token":
        per_token, clipped = clipped_policy_loss(logp, old_logp, advantages, config.clip_low, config.clip_high)
    else:
        raise ValueError(f"unknown policy ratio {config.policy_ratio!r} (token, sequence)")
    metrics = {}
    if is_weights is None and config.tis_cap is not None and engine_logp is not None:
        if config.is_level == "token":
            is_weights = truncated_is_weights(old_logp, engine_logp, config.tis_cap)
        else:
            is_weights = importance_weights(old_logp, engine_logp, mask, "truncate", config.is_level,
                                            high=config.tis_cap, segments=segments)[0]
        metrics["is_truncated_share"] = _masked_mean((is_weights >= config.tis_cap).to(logp.dtype), mask)
    if is_weights is not None:
        per_token = per_token * is_weights
        metrics["is_weight_mean"] = _masked_mean(is_weights, mask)
    if config.kl_coef:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs reference log-probabilities")
        kl = KL_ESTIMATORS[config.kl_estimator](logp, ref_logp)
        per_token = per_token + config.kl_coef * kl
        metrics["kl"] = _masked_mean(kl.detach(), mask)
    loss = (per_token * weights).sum() if weights is not None else aggregate(per_token, mask, config.aggregation)
    metrics["clip_fraction"] = _masked_mean(clipped, mask)
    return loss, metrics


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    mask = mask.to(values.dtype)
    return float((values * mask).sum() / mask.sum().clamp(min=1))
