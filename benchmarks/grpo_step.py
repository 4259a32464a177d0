"""One GRPO step, timed by phase: rlvr-train vs TRL's GRPOTrainer, same model, same batch, CPU.

    python benchmarks/grpo_step.py [--prompts 64] [--group 8] [--max-tokens 16] [--steps 8] [--rounds 3]
                                   [--trl-gradient-checkpointing]

Both sides train the tiny hybrid preset (the same checkpoint: transformers' NemotronH runs it for
TRL) on the project's addition prompts, ``--prompts`` x ``--group`` completions of up to
``--max-tokens`` tokens per step, sampled at temperature 1, graded by the same math environment,
one optimiser step per batch (no KL term, one pass), fp32, the machine's torch threads. The first
step of each is warm-up; the others are averaged. rlvr reports its phases from metrics.jsonl
(rollout on a Ray worker, reward in the scoring pool, learn on the DeepSpeed rank, weight sync),
run twice: rollouts on a worker of their own (the default) and inside the learner rank
(``rollout.colocate=true``, no weight sync: one process samples and trains, as TRL's does);
TRL's step is generate + reward + loss/backward/optimiser in one process, timed by a callback.
The three run in turn ``--rounds`` times; each round's ratios are reported, and their medians.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def make_checkpoint(path: Path) -> None:
    import torch

    import rlvr.model as M
    from rlvr.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    torch.manual_seed(0)
    M.from_preset("tiny", initializer_range=0.1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id).save(path)


def run_rlvr(ckpt: Path, out: Path, args, colocate: bool) -> dict:
    command = [
        str(Path(sys.executable).parent / "rlvr-train"), f"hydra.run.dir={out}", "name=grpo_step", "resume=false",
        f"model.path={ckpt}", "~sft", f"steps={args.steps}", "time_limit=null", f"prompts_per_step={args.prompts}",
        f"algorithm.group_size={args.group}", "learner.max_tokens_per_micro_batch=1000000",
        f"rollout.sampling.max_tokens={args.max_tokens}", "eval_prompts=8", "eval_every=0", "checkpoint_every=0",
        "logging.progress=false", "logging.tensorboard=false", "logging.plot=false", f"rollout.colocate={colocate}",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r][1:]  # training steps; the first is warm-up
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    tokens = mean("response/length_mean") * args.prompts * args.group
    step = mean("time/step")
    return {"seconds_per_step": round(step, 3),
            "phases": {p: round(mean(f"time/{p}"), 3) for p in ("rollout", "reward", "learn", "sync")},
            "generated_tokens_per_step": round(tokens), "generated_tokens_per_s": round(tokens / step, 1),
            "mean_completion_length": round(mean("response/length_mean"), 2)}


def byte_tokenizer_for_transformers():
    """Our byte tokenizer as a transformers tokenizer (same ids: byte value, then pad/bos/eos)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(32, 127)} | {"<pad>": 256, "<s>": 257, "</s>": 258}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def run_trl(ckpt: Path, out: Path, args) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.data import load_rows
    from rlvr.config import DataSource
    from rlvr.scoring import open_scorer

    rows = load_rows(DataSource(generator="addition", size=args.prompts * (args.steps + 1)), seed=0)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    scorer = open_scorer("math", workers=2)

    def reward(prompts, completions, answer, **_):
        return [o.value[0] if o.status == "ok" else 0.0
                for o in scorer.map([({"answer": a}, c) for a, c in zip(answer, completions)])]

    class Timer(transformers.TrainerCallback):
        def __init__(self):
            self.times, self.lengths = [], []

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1,
        num_generations=args.group, max_completion_length=args.max_tokens, max_steps=args.steps, learning_rate=1e-4,
        beta=0.0, temperature=1.0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        bf16=False, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        # TRL's default recomputes activations in the backward; rlvr's learner here does not.
        gradient_checkpointing=args.trl_gradient_checkpointing)
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=byte_tokenizer_for_transformers(), callbacks=[timer])
    trainer.train()
    scorer.close()
    times = timer.times[1:]
    step = sum(times) / len(times)
    length = sum(timer.lengths[1:]) / max(1, len(timer.lengths[1:]))
    tokens = length * args.prompts * args.group
    return {"seconds_per_step": round(step, 3), "generated_tokens_per_step": round(tokens),
            "generated_tokens_per_s": round(tokens / step, 1), "mean_completion_length": round(length, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="rlvr then TRL, this many times (the ratio's median)")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="TRL as its GRPOConfig defaults (recomputing activations); off: the same work as rlvr's")
    args = ap.parse_args()
    import torch

    result = {"preset": "tiny", "prompts": args.prompts, "group": args.group, "max_tokens": args.max_tokens,
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "trl_gradient_checkpointing": args.trl_gradient_checkpointing, "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        make_checkpoint(ckpt)
        for k in range(args.rounds):
            # Alternated, so that a drift in the machine's speed (a shared host) weighs on both.
            ours = run_rlvr(ckpt, Path(tmp) / f"rlvr{k}", args, colocate=False)
            colocated = run_rlvr(ckpt, Path(tmp) / f"colocated{k}", args, colocate=True)
            theirs = run_trl(ckpt, Path(tmp) / f"trl{k}", args)
            result["rounds"].append({
                "rlvr": ours, "rlvr_colocated": colocated, "trl": theirs,
                "speedup_step": round(theirs["seconds_per_step"] / ours["seconds_per_step"], 2),
                "speedup_step_colocated": round(theirs["seconds_per_step"] / colocated["seconds_per_step"], 2)})
    for key in ("speedup_step", "speedup_step_colocated"):
        result[f"{key}_median"] = statistics.median(r[key] for r in result["rounds"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
