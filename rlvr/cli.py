"""The ``rlvr`` command: offline scoring and environment listing.

    rlvr score --env math --input responses.jsonl --output scored.jsonl --workers 2
    rlvr envs
    rlvr example        # generate a small dataset of responses and score it
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlvr.env import available, get_environment_class
from rlvr.scoring import UsageError, score_file

SCORE_HELP = """\
Score a dataset of model responses with an environment's reward function, the same code that
training uses. Each output line is the input row plus "reward" (float) and "reward_info"
(object: what was extracted, why it matched, or the error). Rows are written in input order;
re-running onto an existing output resumes after its last complete line.

Input formats: .jsonl, .json (a list of objects), .parquet, or a folder written by
datasets' save_to_disk. For the math environment a row needs "response" (model output) and
"answer" (gold); --field maps other column names onto those fields.

A bad row (missing field, wrong type, malformed JSON) is reported with its row number and written
with reward 0.0 and reward_info.error; every other row is still scored. A row that takes longer
than --timeout seconds is killed (its worker process is replaced) and counted as a timeout.

example:
  rlvr score --env math --input gsm8k_outputs.jsonl --output scored.jsonl \\
      --field response=completion --field answer=gold --workers 2
"""


def _parse_field(spec: str) -> tuple[str, str]:
    name, sep, column = spec.partition("=")
    if not sep or not name or not column:
        raise argparse.ArgumentTypeError(f"--field expects NAME=COLUMN, got {spec!r}")
    return name, column


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
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
    score.add_argument("--timeout", type=_positive_float, default=10.0,
                       help="wall-clock seconds allowed per row (default 10)")
    score.add_argument("--field", action="append", default=[], type=_parse_field, metavar="NAME=COLUMN",
                       help="read environment field NAME from input column COLUMN (repeatable)")
    score.add_argument("--split", help="split to use when the input folder holds several")
    score.add_argument("--env-arg", action="append", default=[], type=_parse_field, metavar="KEY=JSON",
                       help="keyword argument for the environment, value as JSON (repeatable)")
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
    return parser


def _env_kwargs(pairs: list[tuple[str, str]]) -> dict:
    kwargs = {}
    for key, raw in pairs:
        try:
            kwargs[key] = json.loads(raw)
        except json.JSONDecodeError:
            kwargs[key] = raw
    return kwargs


def _cmd_example(args: argparse.Namespace) -> int:
    from environments.math.synthetic import example_dataset

    args.dir.mkdir(parents=True, exist_ok=True)
    src, out = args.dir / "responses.jsonl", args.dir / "scored.jsonl"
    rows = example_dataset(args.rows)
    lines = [json.dumps(r) for r in rows]
    lines[len(lines) // 2] = json.dumps({"id": "broken", "answer": "3"})  # a bad row, on purpose
    src.write_text("\n".join(lines) + "\n")
    out.unlink(missing_ok=True)
    print(f"wrote {len(rows)} generated rows to {src}; scoring them into {out}")
    return _score_and_report("math", src, out, workers=args.workers)


def _cmd_score(args: argparse.Namespace) -> int:
    return _score_and_report(
        args.env, args.input, args.output, workers=args.workers, timeout=args.timeout,
        field_map=dict(args.field), env_kwargs=_env_kwargs(args.env_arg), split=args.split,
        ray_address=args.ray, progress=not args.no_progress,
    )


def _score_and_report(env: str, src: Path, out: Path, **kwargs) -> int:
    from tqdm import tqdm

    def report(row: int, message: str) -> None:
        tqdm.write(f"row {row}: {message}", file=sys.stderr)

    s = score_file(env, src, out, on_bad_row=report, **kwargs).as_dict()
    print(f"\nscored {s['new_rows']} rows into {out}"
          + (f" (resumed after {s['resumed_from']})" if s["resumed_from"] else ""))
    print(f"  mean reward {s['mean_reward']:.4f} over {s['scored']} scored rows;"
          f" errors {s['errors']}, timeouts {s['timeouts']};"
          f" {s['seconds']:.1f} s, {s['rows_per_s'] or 0:.1f} rows/s")
    print(json.dumps(s))
    return 0


def _cmd_envs() -> int:
    for name in sorted(available()):
        cls = get_environment_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:12s} {cls.__module__}.{cls.__qualname__}  {doc[0] if doc else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "score":
            return _cmd_score(args)
        if args.command == "example":
            return _cmd_example(args)
        return _cmd_envs()
    except UsageError as exc:
        print(f"rlvr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlvr: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
