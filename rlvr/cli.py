"""The ``rlvr`` command: offline scoring and environment listing.

    rlvr score --env math --input responses.jsonl --output scored.jsonl --workers 2
    rlvr envs           # registered environments and task generators
    rlvr example        # generate a small dataset of responses and score it
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from rlvr.env import available, get_environment_class
from rlvr.rows import UsageError

GENERATE_HELP = """Generate responses with a checkpoint for every row of a dataset, file to file: each
input row is written back with its `response` (`responses` for -n > 1), `response_tokens` and
`finish_reasons`. A row that cannot be used is reported and written with an `error`; re-running
the same command continues after the last complete line.

  rlvr generate --model outputs/default/final --input prompts.jsonl --output out.jsonl
  rlvr generate --model outputs/default/final --input rows.jsonl --template "{question}" -n 8 --output out.jsonl
"""

EVAL_HELP = """Generate with a checkpoint and score the responses with an environment, in this
process (the builtin engine; multi-turn environments play episodes), and print pass@k (unbiased
estimator), the mean reward and the response length; the last line is the summary as JSON.

  rlvr eval --run outputs/default                 # the run's held-out prompts, greedy: its accuracy
  rlvr eval --run outputs/default -n 8 -k 1,8 --model outputs/default/sft
  rlvr eval --model outputs/default/final --env math --input problems.jsonl -n 8 -k 1,8 --output rows.jsonl
"""

SCORE_HELP = """\
Score a dataset of model responses with an environment's reward function, the same code that
training uses. Each output line is the input row plus "reward" (float) and "reward_info"
(object: what was extracted, why it matched, or the error). Rows are written in input order;
re-running onto an existing output resumes after its last complete line.

Input formats: .jsonl, .json (a list of objects), .parquet, or a folder written by
datasets' save_to_disk. For the math environment a row needs "response" (model output) and
"answer" (gold); --field maps other column names onto those fields.

A bad row (missing field, wrong type, malformed JSON, not UTF-8) is reported on stderr with its
row and line number and written with reward 0.0 and reward_info.error; every other row is still
scored. A row that takes longer than --timeout seconds is killed (its worker process is replaced),
reported and counted as a timeout; --retry-failed scores such rows again on a re-run.

Beside the output, OUTPUT.rlvr.json records the job (the input's content fingerprint, the
environment, fields and split): a re-run resumes only the same job, and two runs never write
one output at once. Ctrl-C or SIGTERM keeps every row written so far.

example:
  rlvr score --env math --input gsm8k_outputs.jsonl --output scored.jsonl \\
      --field response=completion --field answer=gold --workers 2
"""


def _parse_field(spec: str) -> tuple[str, str]:
    name, sep, column = spec.partition("=")
    if not sep or not name or not column:
        raise argparse.ArgumentTypeError(f"--field expects NAME=COLUMN, got {spec!r}")
    return name, column


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 86400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvr", description="rlvr: RL with verifiable rewards.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score = sub.add_parser("score", help="score a dataset of responses offline",
                           description=SCORE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    score.add_argument("--env", required=True, help="environment name (see `rlvr envs`)")
    score.add_argument("--input", required=True, type=Path, help="dataset to score")
    score.add_argument("--output", required=True, type=Path, help="JSONL file to write (appended/resumed)")
    score.add_argument("--workers", type=_positive_int, default=1,
                       help="parallel worker processes (default 1)")
    score.add_argument("--timeout", type=_timeout, default=10.0,
                       help="wall-clock seconds allowed per row (default 10)")
    score.add_argument("--field", action="append", default=[], type=_parse_field, metavar="NAME=COLUMN",
                       help="read environment field NAME from input column COLUMN (repeatable)")
    score.add_argument("--split", help="split to use when the input folder holds several")
    score.add_argument("--env-arg", action="append", default=[], type=_parse_env_arg, metavar="KEY=JSON",
                       help="keyword argument for the environment, value as JSON, checked against the "
                       "environment's signature (repeatable; a bare word is a string)")
    score.add_argument("--retry-failed", action="store_true",
                       help="on a re-run, score again the rows that failed or timed out")
    score.add_argument("--ray", metavar="ADDRESS",
                       help="score on a Ray cluster (`auto`, `ray://host:port`, or `local`)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("envs", help="list registered environments")

    example = sub.add_parser("example", help="write a small generated dataset of responses and score it",
                             description="Generate arithmetic word problems with imitation model "
                             "responses (some wrong, one malformed row) under --dir and score them "
                             "with the math environment, as `rlvr score` would.")
    example.add_argument("--dir", type=Path, default=Path("outputs/example"), help="where to write (default outputs/example)")
    example.add_argument("--rows", type=_positive_int, default=2000, help="rows to generate (default 2000)")
    example.add_argument("--workers", type=_positive_int, default=2, help="worker processes (default 2)")
    example.add_argument("--generator", default="math_responses",
                         help="a registered generator of rows with responses (group rlvr.generators; "
                              "default math_responses)")
    example.add_argument("--env", default="math", help="the environment that scores them (default math)")
    _add_eval_parser(sub)
    _add_generate_parser(sub)
    return parser


def _add_generate_parser(sub) -> None:
    gen = sub.add_parser("generate", help="generate responses with a checkpoint, file to file (resumable)",
                         description=GENERATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--model", required=True, type=Path, help="checkpoint folder")
    gen.add_argument("--input", required=True, type=Path, help="prompts (.jsonl/.json/.parquet/datasets folder)")
    gen.add_argument("--output", required=True, type=Path, help="JSONL to write (resumed when re-run)")
    gen.add_argument("--prompt-field", default="prompt", help="the column holding the prompt (default prompt)")
    gen.add_argument("--template", default="{prompt}", help="format string over the row's fields (default {prompt})")
    gen.add_argument("--split", help="split to use when the input folder holds several")
    gen.add_argument("-n", type=_positive_int, default=1, help="samples per prompt (default 1: a `response`; "
                     "more: `responses`)")
    gen.add_argument("--temperature", type=float, help="default: 0 (greedy) for n=1, else 1")
    gen.add_argument("--max-tokens", type=_positive_int, default=256, help="per response (default 256)")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    gen.add_argument("--tokenizer", default="byte", help="byte, or a Hugging Face tokenizer (default byte)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="generate with a checkpoint and score: pass@k, mean reward",
                        description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--model", type=Path, help="checkpoint folder (with --run: default <run>/final)")
    ev.add_argument("--run", type=Path, help="a training run's folder: its held-out prompts, template, evaluation "
                    "sampling and seed, so the trainer's held-out accuracy is reproduced exactly")
    ev.add_argument("--env", help="environment name (with --input)")
    ev.add_argument("--input", type=Path, help="prompts to evaluate on (.jsonl/.json/.parquet/folder)")
    ev.add_argument("--prompt-field", default="prompt", help="the column holding the prompt (default prompt)")
    ev.add_argument("--template", default="{prompt}", help="format string over the row's fields (default {prompt})")
    ev.add_argument("--field", action="append", default=[], type=_parse_field, metavar="NAME=COLUMN",
                    help="read environment field NAME from input column COLUMN (repeatable)")
    ev.add_argument("--env-arg", action="append", default=[], type=_parse_env_arg, metavar="KEY=JSON",
                    help="keyword argument for the environment (repeatable)")
    ev.add_argument("-n", type=_positive_int, default=1, help="samples per prompt (default 1)")
    ev.add_argument("-k", default="1", help="comma-separated k of pass@k, each <= n (default 1)")
    ev.add_argument("--temperature", type=float, help="default: 0 (greedy) for n=1, else 1 (with --run and n=1: "
                    "the run's evaluation sampling)")
    ev.add_argument("--max-tokens", type=_positive_int, default=256, help="per response (default 256)")
    ev.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ev.add_argument("--tokenizer", default="byte", help="byte, or a Hugging Face tokenizer (default byte)")
    ev.add_argument("--workers", type=_positive_int, default=1, help="scoring worker processes (default 1)")
    ev.add_argument("--timeout", type=_timeout, default=10.0, help="seconds allowed to score a response")
    ev.add_argument("--output", type=Path, help="JSONL: every input row with its responses and rewards")


def _parse_env_arg(spec: str) -> tuple[str, object]:
    key, raw = _parse_field(spec)
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        if re.fullmatch(r"[A-Za-z_][\w.-]*", raw):
            return key, raw  # a bare word: a string
        raise argparse.ArgumentTypeError(f"{spec!r}: the value is not JSON (a string with spaces or symbols "
                                         f"needs quotes: {key}='\"...\"')") from None


def _cmd_example(args: argparse.Namespace) -> int:
    from rlvr.env import get_generator

    try:
        generate = get_generator(args.generator)
    except KeyError as err:
        raise UsageError(f"--generator: {err.args[0]}") from None
    src, out = args.dir / "responses.jsonl", args.dir / "scored.jsonl"
    rows = generate(args.rows, seed=0)
    lines = [json.dumps(r) for r in rows]
    lines[len(lines) // 2] = json.dumps({"id": "broken", "answer": "3"})  # a bad row, on purpose
    try:
        args.dir.mkdir(parents=True, exist_ok=True)
        src.write_text("\n".join(lines) + "\n")
        for old in (out, out.with_name(out.name + ".rlvr.json")):
            old.unlink(missing_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the example under {args.dir}: {exc.strerror or exc}") from None
    print(f"wrote {len(rows)} generated rows to {src}; scoring them into {out}")
    return _score_and_report(args.env, src, out, workers=args.workers)


def _cmd_score(args: argparse.Namespace) -> int:
    if args.ray not in (None, "local"):
        from rlvr.training.preflight import unreachable_ray

        why = unreachable_ray(args.ray)
        if why:
            raise UsageError(f"--ray {args.ray}: {why}")
    return _score_and_report(
        args.env, args.input, args.output, workers=args.workers, timeout=args.timeout,
        field_map=dict(args.field), env_kwargs=dict(args.env_arg), split=args.split,
        ray_address=args.ray, progress=not args.no_progress, retry_failed=args.retry_failed,
    )


def _score_and_report(env: str, src: Path, out: Path, **kwargs) -> int:
    from tqdm import tqdm

    from rlvr.scoring.job import score_file

    def report(where: str, message: str) -> None:
        tqdm.write(f"{where}: {message}", file=sys.stderr)

    s = score_file(env, src, out, on_bad_row=report, **kwargs).as_dict()
    print(f"\nscored {s['new_rows']} rows into {out}"
          + (f" (resumed after {s['resumed_from']})" if s["resumed_from"] else "")
          + (f"; {s['retried']} failed rows scored again" if s["retried"] else ""), file=_summary_stream(out))
    print(f"  mean reward {s['mean_reward']:.4f} over {s['scored']} scored rows;"
          f" errors {s['errors']}, timeouts {s['timeouts']};"
          f" {s['seconds']:.1f} s, {s['rows_per_s'] or 0:.1f} rows/s", file=_summary_stream(out))
    print(json.dumps(s), file=_summary_stream(out))
    return 0


def _summary_stream(out: Path):
    """The summary goes to stdout, unless the scores themselves do (--output /dev/stdout)."""
    return sys.stderr if str(out) in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1") else sys.stdout


def _eval_ks(text: str, n: int) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",")})
    except ValueError:
        raise UsageError(f"-k: expected comma-separated whole numbers, got {text!r}") from None
    if ks[0] < 1 or ks[-1] > n:
        raise UsageError(f"-k: each k must be between 1 and -n ({n}); got {text}")
    return ks


def _eval_setup(args: argparse.Namespace):
    """-> (model folder, prompts, sampling config, seed, engine spec) from --run or --input."""
    from rlvr.config import DataSource, SamplingConfig, load_config
    from rlvr.collect import eval_seed
    from rlvr.data import load_rows, split_prompts, to_prompts

    if args.run is not None:
        path = args.run / "config.json"
        if not path.is_file():
            raise UsageError(f"--run: {args.run} holds no config.json (not an rlvr-train run folder)")
        cfg = load_config(json.loads(path.read_text()))
        _, prompts = split_prompts(cfg)
        if not prompts:
            raise UsageError(f"--run: the run {args.run} has no held-out prompts (data.eval empty, data.holdout 0)")
        rc = cfg.rollout
        spec = dict(tokenizer=cfg.model.tokenizer, max_batch=rc.max_batch, max_model_len=rc.max_model_len,
                    dtype=cfg.model.dtype, threads=rc.threads)
        sampling = rc.eval_sampling  # the run's (greedy), unless sampled here: -n > 1 or --temperature
        if args.temperature is not None or args.n > 1:
            sampling = sampling.model_copy(update={"temperature": 1.0 if args.temperature is None else args.temperature})
        return args.model or args.run / "final", prompts, sampling, eval_seed(cfg.seed), spec
    if args.model is None or args.env is None or args.input is None:
        raise UsageError("give --run DIR, or --model, --env and --input")
    if not args.input.exists():
        raise UsageError(f"--input: {args.input} not found")
    src = DataSource(env=args.env, path=str(args.input), prompt_field=args.prompt_field, env_args=dict(args.env_arg),
                     fields=dict(args.field))
    prompts = to_prompts(load_rows(src, args.seed), src, args.template, "--input")
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 1.0)
    sampling = SamplingConfig(temperature=temperature, max_tokens=args.max_tokens, stop=args.stop)
    return args.model, prompts, sampling, args.seed, dict(tokenizer=args.tokenizer)


def _cmd_eval(args: argparse.Namespace) -> int:
    from rlvr.collect import Collector, LocalPool
    from rlvr.config import ConfigError
    from rlvr.evaluation import evaluate
    from rlvr.rollout.workers import EngineSpec, build_engine
    from rlvr.scoring import open_scorer

    ks = _eval_ks(args.k, args.n)
    try:
        model, prompts, sampling, seed, spec = _eval_setup(args)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if not (Path(model) / "config.json").is_file():
        raise UsageError(f"--model: {model} is not a checkpoint folder (no config.json)")
    engine = build_engine(EngineSpec(str(model), **spec))
    collector = Collector(LocalPool(engine), {p.scorer_key for p in prompts},
                          lambda env, kw: open_scorer(env, workers=args.workers, timeout=args.timeout, env_kwargs=kw))
    for i, prompt in enumerate(prompts):  # (an episode renders its own prompt and keeps to the context itself)
        tokens = len(engine.tokenizer.encode(prompt.text))
        if not collector.multi_turn[prompt.scorer_key] and tokens + sampling.max_tokens > engine.max_model_len:
            collector.close()
            raise UsageError(f"prompt {i} ({prompt.text[:40]!r}...): {tokens} tokens + --max-tokens "
                             f"{sampling.max_tokens} exceed the model's context of {engine.max_model_len}")
    try:
        summary, rows = evaluate(collector, engine.tokenizer, prompts, sampling, seed, args.n, ks)
    finally:
        collector.close()
    if args.output is not None:
        args.output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"evaluated {model} on {len(prompts)} prompts x {args.n} samples (temperature {sampling.temperature:g}):")
    print("  " + ", ".join(f"pass@{k} {summary[f'pass@{k}']:.3f}" for k in ks) +
          f", mean reward {summary['mean_reward']:.3f}, {summary['response_tokens_mean']:.1f} tokens per response")
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in summary.items()}))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from rlvr.config import SamplingConfig
    from rlvr.generation import generate_file
    from rlvr.rollout.workers import EngineSpec, build_engine

    if not (args.model / "config.json").is_file():
        raise UsageError(f"--model: {args.model} is not a checkpoint folder (no config.json)")
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 1.0)
    try:
        sampling = SamplingConfig(temperature=temperature, max_tokens=args.max_tokens, stop=args.stop)
    except ValueError as err:
        raise UsageError(f"--temperature/--max-tokens/--stop: {err}") from None
    engine = build_engine(EngineSpec(str(args.model), tokenizer=args.tokenizer))
    summary = generate_file(engine, args.input, args.output, model=args.model, n=args.n, sampling=sampling,
                            seed=args.seed, prompt_field=args.prompt_field, template=args.template, split=args.split,
                            progress=not args.no_progress,
                            on_bad_row=lambda where, message: print(f"{where}: {message}", file=sys.stderr))
    done = summary.as_dict()
    print(f"generated for {done['generated']} rows into {args.output} ({done['errors']} reported, "
          f"{done['resumed_from']} already there); {done['tokens']} tokens, {done['tokens_per_s']} tokens/s")
    print(json.dumps(done))
    return 0


def _cmd_envs() -> int:
    from rlvr.env import available_generators, get_generator

    print("environments:")
    for name in sorted(available()):
        cls = get_environment_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"  {name:14s} {cls.__module__}.{cls.__qualname__}  {doc[0] if doc else ''}")
    print("task generators (data.train[i].generator, rlvr example --generator):")
    for name in sorted(available_generators()):
        fn = get_generator(name)
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"  {name:14s} {fn.__module__}.{fn.__qualname__}  {doc[0] if doc else ''}")
    return 0


def _stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the run the way Ctrl-C does: workers stopped, rows kept


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if args.command == "score":
            return _cmd_score(args)
        if args.command == "example":
            return _cmd_example(args)
        if args.command == "eval":
            return _cmd_eval(args)
        if args.command == "generate":
            return _cmd_generate(args)
        return _cmd_envs()
    except UsageError as exc:
        print(f"rlvr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlvr: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
