"""The ``rlvr`` command: offline scoring, generation and evaluation, and environment listing.

    rlvr score --env math --input responses.jsonl --output scored.jsonl --workers 2
    rlvr generate --model outputs/default/final --input prompts.jsonl --output answers.jsonl
    rlvr eval --run outputs/default -n 8 -k 1,8
    rlvr envs           # registered environments and task generators
    rlvr example        # generate a small dataset of responses and score it
    rlvr plan experiment=nano_gpu --gpu-memory 80 141   # memory per device, before launching
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from rlvr.env import available, get_environment_class
from rlvr.rows import UsageError

GENERATE_HELP = """Generate responses with a checkpoint for every row of a dataset, file to file: each
input row is written back with its `response` (`responses` for -n > 1), `response_tokens` and
`finish_reasons`. A row that cannot be used (no prompt, too long for the model's context) is
reported and written with an `error`; re-running the same command continues after the last
complete line. The engine runs in this process, or as --workers Ray rollout actors (--ray ADDRESS
for a cluster); the last line is a JSON summary (rows, tokens, tokens/s).

  rlvr generate --model outputs/default/final --input prompts.jsonl --output out.jsonl
  rlvr generate --model outputs/default/final --input rows.jsonl --template "{question}" -n 8 --output out.jsonl
  rlvr generate --model outputs/default/final --input big.jsonl --output out.jsonl --workers 4 --ray auto
"""

EVAL_HELP = """Generate with a checkpoint and score the responses with an environment (multi-turn
environments play episodes), and print pass@k (unbiased estimator), the mean reward and the
response length, overall, per environment and per data source (--by COLUMN for a file); the last
line is the summary as JSON. --output keeps every prompt's row with its responses and rewards, and
makes the run resumable: re-running the same command continues after the last complete row. A
prompt too long for the model's context is reported and skipped. With --run, the run's evaluation
sampling (max tokens, stop strings), tokenizer, engine and batch are used: -n and --temperature
change the sampling, --model the checkpoint, --workers/--ray/--threads where it runs.

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

An environment that compares responses (`judge`) scores a row's `responses` (a list) or
`response_1`/`response_2` together: the row gets "rewards" (one per response) and "reward" (their
mean); with a human preference (`--field preference=COLUMN`, 1 or 2) the agreement is printed.

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


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: greedy), got {text}")
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
    plan = sub.add_parser("plan", help="memory per device of an rlvr-train job, before launching it",
                          description="The memory a job needs per device (learner rank: weights, gradients, optimizer "
                          "state, activations, log-probabilities, loading; rollout engine: weights, per-sequence "
                          "state, sequences that fit), and per device size whether it fits. Takes the overrides "
                          "rlvr-train takes. The last line is one JSON object.")
    plan.add_argument("overrides", nargs="*", help="rlvr-train's overrides (experiment=nano_gpu, learner.num_ranks=8, ...)")
    plan.add_argument("--gpu-memory", type=float, nargs="+", default=[80.0, 141.0], metavar="GIB",
                      help="device sizes to judge, in GiB (default: 80 141)")

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
    example.add_argument("--generator-arg", action="append", default=[], type=_parse_env_arg, metavar="KEY=JSON",
                         help="keyword argument for the generator, value as JSON, checked against its "
                         "signature (repeatable; a bare word is a string)")
    example.add_argument("--env-arg", action="append", default=[], type=_parse_env_arg, metavar="KEY=JSON",
                         help="keyword argument for the environment (repeatable)")
    _add_eval_parser(sub)
    _add_generate_parser(sub)
    return parser


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    """The options of a job that generates with a checkpoint (rlvr generate, rlvr eval)."""
    p.add_argument("-n", type=_positive_int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--temperature", type=_temperature, help="default: 0 (greedy) for n=1, else 1")
    p.add_argument("--max-tokens", type=_positive_int, default=256, help="per response (default 256)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--tokenizer", default="byte", help="byte, or a Hugging Face tokenizer (default byte)")
    p.add_argument("--engine", choices=("builtin", "vllm"), help="rollout engine (default builtin; vllm where it "
                   "is installed)")
    p.add_argument("--workers", type=_positive_int, default=1, help="rollout workers: more than 1 runs them as Ray "
                   "actors, each with its own engine (default 1: the engine runs in this process)")
    p.add_argument("--ray", metavar="ADDRESS", help="run the rollout workers on a Ray cluster (`auto`, "
                   "`ray://host:port`, or `local` to start Ray here)")
    p.add_argument("--threads", type=_positive_int, help="torch threads per engine (default: this machine's cores "
                   "shared among the workers; on a cluster 1, as each worker reserves one CPU)")
    p.add_argument("--max-batch", type=_positive_int, default=64, help="sequences an engine decodes together "
                   "(default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_generate_parser(sub) -> None:
    gen = sub.add_parser("generate", help="generate responses with a checkpoint, file to file (resumable)",
                         description=GENERATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--model", required=True, type=Path, help="checkpoint folder")
    gen.add_argument("--input", required=True, type=Path, help="prompts (.jsonl/.json/.parquet/datasets folder)")
    gen.add_argument("--output", required=True, type=Path, help="JSONL to write (resumed when re-run)")
    gen.add_argument("--prompt-field", default="prompt", help="the column holding the prompt (default prompt)")
    gen.add_argument("--template", default="{prompt}", help="format string over the row's fields (default {prompt})")
    gen.add_argument("--split", help="split to use when the input folder holds several")
    _add_engine_options(gen)
    gen.add_argument("--ignore-eos", action="store_true", help="generate --max-tokens tokens per sample whatever "
                     "the model says (throughput measurements)")


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="generate with a checkpoint and score: pass@k, mean reward",
                        description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--model", type=Path, help="checkpoint folder (with --run: default <run>/final)")
    ev.add_argument("--run", type=Path, help="a training run's folder: its held-out prompts, template, evaluation "
                    "sampling, seed and engine settings, so the trainer's held-out accuracy is reproduced exactly")
    ev.add_argument("--env", help="environment name (with --input)")
    ev.add_argument("--input", type=Path, help="prompts to evaluate on (.jsonl/.json/.parquet/folder)")
    ev.add_argument("--prompt-field", default="prompt", help="the column holding the prompt (default prompt)")
    ev.add_argument("--template", default="{prompt}", help="format string over the row's fields (default {prompt})")
    ev.add_argument("--field", action="append", default=[], type=_parse_field, metavar="NAME=COLUMN",
                    help="read environment field NAME from input column COLUMN (repeatable)")
    ev.add_argument("--env-arg", action="append", default=[], type=_parse_env_arg, metavar="KEY=JSON",
                    help="keyword argument for the environment (repeatable)")
    ev.add_argument("--by", metavar="COLUMN", help="also break the summary down by this input column (e.g. level); "
                    "with --run it is broken down by data source")
    ev.add_argument("-k", default="1", help="comma-separated k of pass@k, each <= n (default 1)")
    _add_engine_options(ev)
    ev.add_argument("--score-workers", type=_positive_int, default=1, help="scoring worker processes (default 1)")
    ev.add_argument("--timeout", type=_timeout, default=10.0, help="seconds allowed to score a response")
    ev.add_argument("--output", type=Path, help="JSONL: every prompt's row with its responses and rewards, written "
                    "as it goes; re-running the same command resumes after the last complete row")


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
    from rlvr.plugins import generate_checked
    from rlvr.scoring.scorer import RESPONSE_FIELD

    try:
        rows = generate_checked(args.generator, args.rows, 0, dict(args.generator_arg))
    except UsageError as err:
        raise UsageError(f"--generator: {err}" if str(err).startswith("unknown") else str(err)) from None
    if rows and not any(RESPONSE_FIELD in r or "responses" in r for r in rows[:100]):
        raise UsageError(f"--generator: {args.generator} writes tasks without responses (its rows' fields: "
                         f"{', '.join(rows[0])}); `rlvr example` scores rows with a {RESPONSE_FIELD!r} field, "
                         "as math_responses writes them")
    src, out = args.dir / "responses.jsonl", args.dir / "scored.jsonl"
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
    return _score_and_report(args.env, src, out, workers=args.workers, env_kwargs=dict(args.env_arg))


def _cmd_score(args: argparse.Namespace) -> int:
    connected = False
    if args.ray is not None:  # (Ray is imported only then: plain scoring starts faster without it)
        from rlvr.scoring.cluster import connect

        connected = connect(args.ray, args.workers)
    try:
        return _score_and_report(
            args.env, args.input, args.output, workers=args.workers, timeout=args.timeout,
            field_map=dict(args.field), env_kwargs=dict(args.env_arg), split=args.split,
            ray_address=args.ray, progress=not args.no_progress, retry_failed=args.retry_failed,
        )
    finally:
        if connected:
            import ray

            ray.shutdown()


def _score_and_report(env: str, src: Path, out: Path, **kwargs) -> int:
    from rlvr.scoring.job import score_file

    s = score_file(env, src, out, on_bad_row=_report, **kwargs).as_dict()
    print(f"\nscored {s['new_rows']} rows into {out}"
          + (f" (resumed after {s['resumed_from']})" if s["resumed_from"] else "")
          + (f"; {s['retried']} failed rows scored again" if s["retried"] else ""), file=_summary_stream(out))
    print(f"  mean reward {s['mean_reward']:.4f} over {s['scored']} scored rows;"
          f" errors {s['errors']}, timeouts {s['timeouts']};"
          f" {s['seconds']:.1f} s, {s['rows_per_s'] or 0:.1f} rows/s", file=_summary_stream(out))
    if "agreement" in s:
        print(f"  agreement with the rows' preference labels: {s['agreement']:.4f} over {s['labelled']} labelled pairs",
              file=_summary_stream(out))
    print(json.dumps(s), file=_summary_stream(out))
    if s["new_rows"] and not s["scored"]:
        print(f"rlvr: none of the {s['new_rows']} rows was scored (see the errors above)", file=sys.stderr)
        return 1
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


def _engine_spec(args: argparse.Namespace, model: Path, **base):
    """The rollout engine of a generate/eval job: ``base`` (a run's settings) under the options given."""
    import importlib.util
    import os

    from rlvr.rollout.workers import EngineSpec

    if not (Path(model) / "config.json").is_file():
        raise UsageError(f"--model: {model} is not a checkpoint folder (no config.json)")
    if (args.engine or base.get("backend")) == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UsageError("--engine vllm: vLLM is not installed here (`make setup-vllm`, then .venv-vllm/bin/rlvr); "
                         "--engine builtin runs anywhere")
    local = args.ray in (None, "local")
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.workers) if local else 1)
    spec = dict(tokenizer=args.tokenizer, max_batch=args.max_batch) | base
    return EngineSpec(str(model), **spec | dict(threads=threads, backend=args.engine or spec.get("backend", "builtin")))


def _sampling(args: argparse.Namespace, base=None):
    """--temperature/--max-tokens/--stop as a SamplingConfig (with --run: its evaluation sampling,
    sampled at T=1 when -n > 1 and no --temperature is given)."""
    from rlvr.config import SamplingConfig

    if base is not None:
        if args.temperature is None and args.n == 1:
            return base
        return base.model_copy(update={"temperature": 1.0 if args.temperature is None else args.temperature})
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 1.0)
    try:
        return SamplingConfig(temperature=temperature, max_tokens=args.max_tokens, stop=args.stop)
    except ValueError as err:
        raise UsageError(f"--temperature/--max-tokens/--stop: {err}") from None


def _eval_setup(args: argparse.Namespace):
    """-> (model folder, prompts, sampling config, seed, engine spec, job record) from --run or --input."""
    from rlvr.collect import eval_seed
    from rlvr.config import DataSource, load_config
    from rlvr.data import load_rows, split_prompts, to_prompts
    from rlvr.scoring.job import fingerprint

    if args.run is not None:
        given = [option for option, value in (("--input", args.input), ("--env", args.env), ("--by", args.by))
                 if value is not None]
        if given:
            raise UsageError(f"--run takes the run's held-out prompts and environments: leave out {', '.join(given)} "
                             "(or leave out --run and give --model)")
        path = args.run / "config.json"
        if not path.is_file():
            raise UsageError(f"--run: {args.run} holds no config.json (not an rlvr-train run folder)")
        cfg = load_config(json.loads(path.read_text()))
        _, prompts, _ = split_prompts(cfg)
        if not prompts:
            raise UsageError(f"--run: the run {args.run} has no held-out prompts (data.eval empty and data.holdout=0)")
        rc, model = cfg.rollout, args.model or args.run / "final"
        spec = _engine_spec(args, model, tokenizer=cfg.model.tokenizer, max_batch=rc.max_batch, backend=rc.engine,
                            max_model_len=rc.max_model_len, dtype=cfg.rollout_dtype)
        job = {"input": str(args.run.resolve()), "fingerprint": fingerprint(path)}
        return model, prompts, _sampling(args, rc.eval_sampling), eval_seed(cfg.seed), spec, job
    if args.model is None or args.env is None or args.input is None:
        raise UsageError("give --run DIR, or --model, --env and --input")
    if not args.input.exists():
        raise UsageError(f"--input: {args.input} not found")
    src = DataSource(env=args.env, path=str(args.input), prompt_field=args.prompt_field, env_args=dict(args.env_arg),
                     fields=dict(args.field))
    prompts = to_prompts(load_rows(src, args.seed), src, args.template, "--input")
    if args.by is not None:
        if not any(args.by in p.task for p in prompts):
            raise UsageError(f"--by: no row has a column {args.by!r} (columns: {', '.join(prompts[0].task)})")
        prompts = [dataclasses.replace(p, source=str(p.task.get(args.by, "(none)"))) for p in prompts]
    job = {"input": str(args.input.resolve()), "fingerprint": fingerprint(args.input), "env": args.env,
           "template": args.template, "prompt_field": args.prompt_field, "fields": dict(args.field),
           "env_args": dict(args.env_arg)}
    return args.model, prompts, _sampling(args), args.seed, _engine_spec(args, args.model), job


def _cmd_eval(args: argparse.Namespace) -> int:
    from rlvr.collect import Collector, open_pool
    from rlvr.config import ConfigError
    from rlvr.evaluation import evaluate
    from rlvr.scoring import open_scorer

    ks = _eval_ks(args.k, args.n)
    try:
        model, prompts, sampling, seed, spec, job = _eval_setup(args)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    job |= {"model": str(Path(model).resolve()), "n": args.n, "sampling": sampling.model_dump(), "seed": seed}
    pool = open_pool(spec, args.workers, args.ray)
    collector = Collector(pool, {p.scorer_key for p in prompts},
                          lambda env, kw: open_scorer(env, workers=args.score_workers, timeout=args.timeout,
                                                      env_kwargs=kw, ray_address=args.ray))
    try:
        summary = evaluate(collector, pool, prompts, sampling, seed, args.n, ks, output=args.output, job=job,
                           chunk_prompts=max(32, spec.max_batch * args.workers // args.n),
                           progress=not args.no_progress, report=_report)
    finally:
        collector.close()
        pool.shutdown()
    print(f"evaluated {model} on {summary['problems']} prompts x {args.n} samples (temperature "
          f"{sampling.temperature:g})" + (f"; {summary['skipped']} skipped" if summary["skipped"] else "") + ":")
    for name, scores in [("all", summary), *[(g, s) for key in ("by_env", "by_source")
                                             for g, s in summary.get(key, {}).items()]]:
        print(f"  {name:>12s}: " + ", ".join(f"pass@{k} {scores[f'pass@{k}']:.3f}" for k in ks)
              + f", mean reward {scores['mean_reward']:.3f} over {scores['problems']} prompts")
    print(f"  {summary['response_tokens_mean']:.1f} tokens per response")
    print(json.dumps(_rounded(summary)))
    return 0


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 6) if isinstance(value, float) else value


def _report(where: str, message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"{where}: {message}", file=sys.stderr)


def _cmd_generate(args: argparse.Namespace) -> int:
    from rlvr.collect import open_pool
    from rlvr.generation import generate_file

    spec = _engine_spec(args, args.model)
    sampling = _sampling(args)
    pool = open_pool(spec, args.workers, args.ray)
    try:
        summary = generate_file(pool, args.input, args.output, model=args.model, n=args.n, sampling=sampling,
                                seed=args.seed, prompt_field=args.prompt_field, template=args.template,
                                split=args.split, ignore_eos=args.ignore_eos,
                                chunk_rows=max(16, spec.max_batch * args.workers // args.n),
                                progress=not args.no_progress, on_bad_row=_report)
    finally:
        pool.shutdown()
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


def _cmd_plan(args: argparse.Namespace) -> int:
    from rlvr.config import ConfigError, load_config
    from rlvr.training.app import CONFIG_DIR
    from rlvr.training.command_line import compose_jobs, fitted_overrides, parse
    from rlvr.training.plan import model_shape, plan

    overrides = list(args.overrides)
    try:
        cl = parse(overrides, CONFIG_DIR)
        try:
            [job] = compose_jobs(cl, fitted_overrides(cl))
        except ConfigError as err:
            if not str(err).startswith("model.path: must be set"):
                raise
            # no checkpoint yet: the preset's shape (the tokenizer, which names the checkpoint, is not needed)
            [job] = compose_jobs(cl, [*fitted_overrides(cl), "model.path=null", "model.tokenizer=byte"])
        cfg = load_config(job.config)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if cfg.model.path is not None and not (Path(cfg.model.path).expanduser() / "config.json").is_file():
        raise UsageError(f"model.path: {cfg.model.path} holds no config.json")
    model_config = model_shape(cfg)
    source = str(cfg.model.path) if cfg.model.path is not None else f"model.preset={cfg.model.preset}"
    result = plan(cfg, model_config, args.gpu_memory) | {"model": source}
    _print_plan(result)
    print(json.dumps(result))
    return 0


def _print_plan(p: dict) -> None:
    print(f"{p['model']}: {p['parameters'] / 1e9:.2f}B parameters ({p['expert_parameters'] / 1e9:.2f}B in routed experts)")
    for part in ("learner", "rollout"):
        for row in p[part]:
            print(f"  {row['name']:<30s} {row['gib']:>9.2f} GiB   {row['how']}")
    print(f"  (+ {p['overhead_gib']:g} GiB per learner rank: {p['overhead']})")
    for device, v in p["devices"].items():
        state = "fits" if v["fits"] else f"does NOT fit: {v['first_problem']}"
        print(f"  {device}: {state}; learner step {v['learner_step_gib']} GiB, load {v['learner_load_gib']} GiB; "
              f"rollout: {v['rollout']['sequences_that_fit']} sequences of {v['rollout']['sequence_tokens']} tokens "
              f"at gpu_memory_utilization {v['rollout']['gpu_memory_utilization']:g}")


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
        if args.command == "plan":
            return _cmd_plan(args)
        return _cmd_envs()
    except UsageError as exc:
        print(f"rlvr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlvr: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
