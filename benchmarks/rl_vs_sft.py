"""Does the RL phase of the default job beat simply training longer with SFT?

    python benchmarks/rl_vs_sft.py [--start outputs/default/sft] [--seconds 150]

Both arms start from the same SFT checkpoint (by default the warm start of the default job; run
``rlvr-train`` first, or pass ``--start``) and get the same wall-clock budget on this machine:

* RL: ``rlvr-train`` from that checkpoint, ``time_limit=--seconds`` (the default job's settings);
* SFT control: the same SFT recipe continued on the same demonstrations for as long.

Held-out greedy accuracy is measured on the same 500 prompts for both, at intervals; pass@k
(k = 1..8, from 8 samples per prompt at temperature 1) for the starting checkpoint and both
results shows the gap between pass@1 and pass@8 that RL turns into accuracy. Curves go to
``--out`` (JSON and PNG). One run of each, one after the other.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def greedy_accuracy(model, prompts, scorer) -> float:
    from rlvr.rollout.builtin import BuiltinEngine
    from rlvr.rollout.engine import SamplingParams
    from rlvr.tokenizer import ByteTokenizer

    engine = BuiltinEngine(model, ByteTokenizer(), max_batch=1024)
    out = engine.generate([p.text for p in prompts], SamplingParams(temperature=0, max_tokens=6))
    outcomes = scorer.map([(p.task, c.text) for p, c in zip(prompts, out)])
    return sum(o.value[0] for o in outcomes if o.status == "ok") / len(prompts)


def pass_at_k(model, prompts, scorer, n: int = 8) -> list[float]:
    """Unbiased pass@k for k = 1..n from n samples per prompt (Chen et al. 2021)."""
    from math import comb

    from rlvr.rollout.builtin import BuiltinEngine
    from rlvr.rollout.engine import SamplingParams
    from rlvr.tokenizer import ByteTokenizer

    engine = BuiltinEngine(model, ByteTokenizer(), max_batch=1024)
    out = engine.generate([p.text for p in prompts], SamplingParams(temperature=1.0, n=n, max_tokens=6, seed=0))
    outcomes = list(scorer.map([(prompts[c.prompt_index].task, c.text) for c in out]))
    correct = [sum(o.status == "ok" and o.value[0] > 0 for o in outcomes[i * n:(i + 1) * n]) for i in range(len(prompts))]
    return [round(sum(1 - comb(n - c, k) / comb(n, k) for c in correct) / len(prompts), 3) for k in range(1, n + 1)]


def sft_arm(start: str, seconds: float, every: float, cfg, prompts) -> list[tuple[float, float]]:
    """Continue SFT (same recipe, same demonstrations, one optimiser throughout) for ``seconds``
    of training, with held-out accuracy every ``every`` seconds (evaluation time not counted)."""
    import rlvr.model as M
    from rlvr.scoring import open_scorer
    from rlvr.training.sft import run_sft
    from rlvr.tokenizer import ByteTokenizer

    model = M.load(start)
    with open_scorer("math", workers=2) as scorer:
        curve = [(0.0, greedy_accuracy(model, prompts, scorer))]

        def evaluate(trained: float) -> None:
            curve.append((round(trained, 1), greedy_accuracy(model, prompts, scorer)))
            print(f"SFT control: {trained:.0f} s, accuracy {curve[-1][1]:.3f}", flush=True)

        run_sft(model, cfg.model_copy(update={"seconds": seconds, "steps": None}), ByteTokenizer(),
                Path("/tmp/rlvr-sft-control"), seed=1, progress=False, every=every, on_every=evaluate)
        curve.append((seconds, greedy_accuracy(model, prompts, scorer)))
        return curve, pass_at_k(model, prompts, scorer)


def rl_arm(start: str, seconds: float, out: Path) -> list[tuple[float, float]]:
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time
    command = [str(Path(sys.executable).parent / "rlvr-train"), f"hydra.run.dir={out}", "name=rl_vs_sft",
               f"model.path={start}", f"time_limit={seconds}", "steps=100000", "resume=false",
               "logging.progress=false"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    clock, at = 0.0, {0: 0.0}
    for r in rows:
        clock += r.get("time/step", 0.0)  # (the final evaluation row has no step time)
        at[r["step"]] = round(clock, 1)
    summary = json.loads((out / "summary.json").read_text())
    return [(at[step], acc) for step, acc in summary["evals"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default=str(ROOT / "outputs" / "default" / "sft"))
    ap.add_argument("--seconds", type=float, default=150, help="training seconds per arm (the default job's GRPO takes ~150 s)")
    ap.add_argument("--every", type=float, default=30, help="seconds between SFT-control evaluations")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "rl_vs_sft"))
    args = ap.parse_args()
    if not (Path(args.start) / "config.json").exists():
        sys.exit(f"no checkpoint at {args.start}: run `rlvr-train` first (its SFT stage writes it) or pass --start")

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rlvr.config import load_config
    from rlvr.data import split_prompts

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = load_config(OmegaConf.to_container(compose("config"), resolve=True))
    _, prompts, _ = split_prompts(cfg)  # the default job's held-out prompts, as the trainer draws them
    out = Path(args.out)
    import rlvr.model as M
    from rlvr.scoring import open_scorer

    with open_scorer("math", workers=2) as scorer:
        start_pass = pass_at_k(M.load(args.start), prompts, scorer)
    rl = rl_arm(args.start, args.seconds, out / "rl")
    with open_scorer("math", workers=2) as scorer:
        rl_pass = pass_at_k(M.load(out / "rl" / "final"), prompts, scorer)
    sft, sft_pass = sft_arm(args.start, args.seconds, args.every, cfg.sft, prompts)
    result = {"start": args.start, "seconds": args.seconds, "eval_prompts": len(prompts),
              "start_pass_at_k": start_pass,
              "rl": {"curve": rl, "final_accuracy": rl[-1][1], "pass_at_k": rl_pass},
              "sft_control": {"curve": sft, "final_accuracy": sft[-1][1], "pass_at_k": sft_pass},
              "rl_minus_sft_points": round(100 * (rl[-1][1] - sft[-1][1]), 1)}
    (out / "rl_vs_sft.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(result, out / "rl_vs_sft.png")
    print(json.dumps(result, indent=1))


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    left.plot(*zip(*result["rl"]["curve"]), "o-", label="GRPO (rlvr-train)")
    left.plot(*zip(*result["sft_control"]["curve"]), "s-", label="SFT continued (control)")
    left.set_xlabel("seconds of training after the warm start")
    left.set_ylabel("held-out greedy accuracy")
    left.set_title("same start, same wall time")
    ks = range(1, len(result["start_pass_at_k"]) + 1)
    right.plot(ks, result["start_pass_at_k"], "^--", color="gray", label="SFT warm start")
    right.plot(ks, result["rl"]["pass_at_k"], "o-", label="after GRPO")
    right.plot(ks, result["sft_control"]["pass_at_k"], "s-", label="after more SFT")
    right.set_xlabel("k")
    right.set_ylabel("pass@k (8 samples at T=1)")
    right.set_title("the pass@1 / pass@8 gap RL closes")
    for ax in (left, right):
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
