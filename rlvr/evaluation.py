"""Evaluation metrics over sampled responses: pass@k (the unbiased estimator) and the summary an
evaluation prints (pure functions), and the evaluation job of ``rlvr eval`` (on ``rlvr.collect``).

pass@k (Chen et al., 2021, "Evaluating Large Language Models Trained on Code"): with n samples of
a problem of which c pass, the chance that at least one of k samples drawn without replacement
passes is 1 - C(n - c, k) / C(n, k); averaged over problems it is an unbiased estimate of pass@k,
where "first c of k samples" would be biased. Computed as a product, stable for large n.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from rlvr.generation import check_length
from rlvr.rows import UsageError
from rlvr.scoring.job import Output, OutputKind, Report


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


def breakdown(prompts: Sequence, rewards: Sequence[Sequence[float]], ks: Iterable[int]) -> dict:
    """``summarize`` per environment (``by_env``) and per data source (``by_source``), each only
    where the prompts have more than one."""
    out = {}
    for name, key in (("by_env", lambda p: p.env), ("by_source", lambda p: p.source)):
        groups: dict[str, list] = {}
        for prompt, r in zip(prompts, rewards):
            groups.setdefault(key(prompt), []).append(r)
        if len(groups) > 1:
            out[name] = {group: summarize(mine, ks) for group, mine in sorted(groups.items())}
    return out


# ---------------------------------------------------------------- the evaluation job (`rlvr eval`)

EVALUATED = OutputKind(tool="rlvr eval", record_key="rewards", noun="evaluation rows", row_noun="evaluated row")


def evaluate(collector, pool, prompts: list, sampling, seed: int, n: int, ks: Iterable[int], *,
             output: Path | None = None, job: dict | None = None, chunk_prompts: int = 64, progress: bool = False,
             report: Report | None = None) -> dict:
    """``n`` samples of every prompt, scored -> the summary: pass@k for each k (a sample passes
    with reward 1), the mean reward ("accuracy", what the trainer's held-out evaluation reports
    for n=1 greedy), the mean response length in generated tokens, per environment and per source.

    A single-turn prompt too long for the model's context with ``max_tokens`` is reported and
    skipped (counted in ``skipped``). With ``output``, one row per prompt (its task fields, the
    prompt, ``responses``, ``rewards``, ``response_tokens``, ``finish_reasons``) is written a chunk
    at a time; re-running the same ``job`` continues after the last complete row."""
    report = report or (lambda where, message: None)
    kept, longest = [], 0
    for i, prompt in enumerate(prompts):  # (an episode renders its own prompt and keeps to the context itself)
        try:
            if not collector.multi_turn[prompt.scorer_key]:
                check_length(pool, prompt.text, sampling.max_tokens)
            kept.append(prompt)
        except ValueError as err:
            longest = max(longest, len(pool.tokenizer.encode(prompt.text)))
            if i + 1 - len(kept) <= 10:  # the first ten by number, then the count below
                report(f"prompt {i} ({prompt.text[:40]!r}...)", f"{err}; skipped")
    if kept and len(kept) < len(prompts):
        report("prompts", f"{len(prompts) - len(kept)} of {len(prompts)} are longer than the model's context of "
                          f"{pool.max_model_len} tokens minus --max-tokens {sampling.max_tokens} (the longest: "
                          f"{longest} tokens): skipped")
    if not kept:
        raise UsageError(f"none of the {len(prompts)} prompts fits the model's context with --max-tokens "
                         f"{sampling.max_tokens}")
    rewards, tokens, infos = [], [], {}
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(Output(output, job or {}, len(kept), EVALUATED)) if output is not None else None
        if out is not None and out.done:
            rewards, tokens = _read_back(output, out.done)
        bar = stack.enter_context(tqdm(total=len(kept), initial=len(rewards), unit="prompt", disable=not progress,
                                       dynamic_ncols=True))
        for start in range(len(rewards), len(kept), chunk_prompts):
            rows, found = _evaluate_chunk(collector, pool, kept[start:start + chunk_prompts], sampling, seed, n)
            for name, values in found.items():
                infos.setdefault(name, []).extend(values)
            for row in rows:
                rewards.append(row["rewards"])
                tokens.append(row["response_tokens"])
                if out is not None:
                    out.write(row, report)
            if out is not None:
                out.flush()
            bar.update(min(chunk_prompts, len(kept) - start))
    summary = summarize(rewards, ks)
    flat = [t for per in tokens for t in per]
    return {**summary, "accuracy": summary["mean_reward"], "samples_per_problem": n,
            "response_tokens_mean": round(sum(flat) / len(flat), 2), "skipped": len(prompts) - len(kept),
            **breakdown(kept, rewards, ks),
            # the environments' info metrics (e.g. judge/fallback_share), over the responses scored in this run
            **({"info": {name: sum(v) / len(v) for name, v in infos.items()}} if infos else {})}


def _evaluate_chunk(collector, pool, prompts: list, sampling, seed: int, n: int) -> tuple[list[dict], dict]:
    """Rows of one chunk of prompts, and the environments' info metrics of their responses."""
    got = collector.collect(prompts, n, sampling, seed)
    rewards = got.rewards.view(len(prompts), n).tolist()
    rows = []
    for i, prompt in enumerate(prompts):
        samples = got.samples[i * n:(i + 1) * n]
        responses = [s.text or pool.tokenizer.decode(s.token_ids) for s in samples]  # an episode: its transcript
        transcripts = got.transcripts[i * n:(i + 1) * n]
        rows.append({**prompt.task, "prompt": prompt.text, "responses": responses, "rewards": rewards[i],
                     "response_tokens": [sum(m) for m in got.masks[i * n:(i + 1) * n]],
                     "finish_reasons": [s.finish_reason for s in samples],
                     # an episode's chat, what `rlvr score` replays (a row per transcript, as `response`)
                     **({"transcripts": transcripts} if any(transcripts) else {})})
    return rows, got.info_metrics


def _read_back(path: Path, count: int) -> tuple[list, list]:
    """The rewards and response lengths of the first ``count`` rows an earlier run wrote."""
    rewards, tokens = [], []
    with path.open(encoding="utf-8") as f:
        for line in itertools.islice(f, count):
            row = json.loads(line)
            rewards.append(row["rewards"])
            tokens.append(row["response_tokens"])
    return rewards, tokens
