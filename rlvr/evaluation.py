"""Evaluation metrics over sampled responses: pass@k (the unbiased estimator) and the summary an
evaluation prints. Pure functions; generation and scoring happen elsewhere.

pass@k (Chen et al., 2021, "Evaluating Large Language Models Trained on Code"): with n samples of
a problem of which c pass, the chance that at least one of k samples drawn without replacement
passes is 1 - C(n - c, k) / C(n, k); averaged over problems it is an unbiased estimate of pass@k,
where "first c of k samples" would be biased. Computed as a product, stable for large n.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with ``c`` passing samples out of ``n`` (k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        miss *= 1.0 - k / i
    return 1.0 - miss


def summarize(rewards: Sequence[Sequence[float]], ks: Iterable[int], success: float = 1.0) -> dict[str, float]:
    """Per problem, the rewards of its samples -> ``pass@k`` for each k (a sample passes when its
    reward reaches ``success``), the mean reward over all samples, and the number of problems.
    Every problem must have at least max(ks) samples."""
    if not rewards:
        raise ValueError("no problems to summarize")
    ks = sorted(set(ks))
    fewest = min(len(r) for r in rewards)
    if ks and ks[-1] > fewest:
        raise ValueError(f"pass@{ks[-1]} needs at least {ks[-1]} samples per problem; some have {fewest}")
    out = {}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(len(r), sum(x >= success for x in r), k) for r in rewards) / len(rewards)
    samples = [x for r in rewards for x in r]
    out["mean_reward"] = sum(samples) / len(samples)
    out["problems"] = len(rewards)
    return out


# ---------------------------------------------------------------- the evaluation job (`rlvr eval`)

def evaluate(collector, tokenizer, prompts: list, sampling, seed: int, n: int, ks: Iterable[int]
             ) -> tuple[dict, list[dict]]:
    """``n`` samples of every prompt, scored -> (summary, one output row per prompt). The summary
    holds pass@k for each k (a sample passes with reward 1), the mean reward ("accuracy", what
    the trainer's held-out evaluation reports for n=1 greedy), the mean response length in
    generated tokens, and the same per environment."""
    got = collector.collect(prompts, n, sampling, seed)
    rewards = got.rewards.view(len(prompts), n).tolist()
    generated = [sum(m) for m in got.masks]
    summary = {**summarize(rewards, ks), "samples_per_problem": n,
               "response_tokens_mean": round(sum(generated) / len(generated), 2)}
    summary["accuracy"] = summary["mean_reward"]
    envs = sorted({p.env for p in prompts})
    if len(envs) > 1:
        for env in envs:
            mine = [r for p, r in zip(prompts, rewards) if p.env == env]
            summary.update({f"{env}/{k}": v for k, v in summarize(mine, ks).items()})
    rows = []
    for i, prompt in enumerate(prompts):
        samples = got.samples[i * n:(i + 1) * n]
        responses = [s.text or tokenizer.decode(s.token_ids) for s in samples]  # an episode: its transcript
        rows.append({**prompt.task, "prompt": prompt.text, "responses": responses, "rewards": rewards[i],
                     "response_tokens": generated[i * n:(i + 1) * n],
                     "finish_reasons": [s.finish_reason for s in samples]})
    return summary, rows
