"""``rlvr score``: a dataset of responses -> environment rewards -> JSONL, the file-to-file job.

Output rows are the input rows plus ``reward`` (float) and ``reward_info`` (object), in input
order, as strict JSON (no bare NaN; bytes as text). What makes it a tool people trust with
their data:

* Nothing is lost: a row that cannot be read or scored is reported on stderr (``row N (line
  M): why``) and written with reward 0 and the reason; every other row is scored. Ctrl-C or
  SIGTERM stops the workers and keeps every row written so far; re-running the same command
  continues after the last complete line; ``--retry-failed`` scores again the rows that failed
  or timed out.
* Nothing is mixed: beside the output, ``<output>.rlvr.json`` records which input (a content
  fingerprint), environment, fields and split produced it. A re-run resumes only into an output
  of the same job and refuses any other (another input, a file it did not write, one longer
  than the input or with a garbled last line); it also holds a lock, so two runs never write one
  output. ``--output`` naming the input is refused.
* Everything that can be checked is checked before the output is created: the environment and
  its arguments (types from its signature), the mapped columns in the first row, the split.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rlvr.env import Environment, TaskError, scores_groups
from rlvr.scoring.pool import Outcome
from rlvr.rows import BadRow, UsageError, count_rows, first_row, numbered_rows
from rlvr.scoring import open_scorer
from rlvr.plugins import make_environment_checked
from rlvr.scoring.scorer import build_group_task, build_task, map_groups

CHUNK_ROWS = 2048  # rows read, scored and written per round: bounded memory on big inputs
Report = Callable[[str, str], None]  # (where: "row 3 (line 5)", message)


@dataclasses.dataclass
class Summary:
    rows: int = 0
    scored: int = 0
    resumed_from: int = 0
    retried: int = 0
    workers: int = 0
    reward_sum: float = 0.0
    errors: int = 0
    timeouts: int = 0
    seconds: float = 0.0
    labelled: int = 0  # pairs with a human preference (a judge's job)
    agreement_sum: float = 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.scored if self.scored else 0.0

    def as_dict(self) -> dict:
        new_rows = self.rows - self.resumed_from
        return {
            "rows": self.rows, "new_rows": new_rows, "resumed_from": self.resumed_from, "retried": self.retried,
            "workers": self.workers,
            "scored": self.scored, "mean_reward": round(self.mean_reward, 4),
            "errors": self.errors, "timeouts": self.timeouts,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(new_rows / self.seconds, 1) if self.seconds > 0 else None,
            **({"agreement": round(self.agreement_sum / self.labelled, 4), "labelled": self.labelled}
               if self.labelled else {}),
        }


def score_file(env_name: str, input_path: Path, output_path: Path, *, workers: int = 1,
               timeout: float = 10.0, field_map: Mapping[str, str] | None = None,
               env_kwargs: dict | None = None, split: str | None = None,
               ray_address: str | None = None, progress: bool = True,
               on_bad_row: Report | None = None, retry_failed: bool = False) -> Summary:
    """Score every row of ``input_path`` into ``output_path`` (JSONL), resuming the same job.
    ``on_bad_row(where, message)`` is called for each row that could not be read or scored."""
    env_kwargs, field_map = dict(env_kwargs or {}), dict(field_map or {})
    report = on_bad_row or (lambda where, message: None)
    env = make_environment_checked(env_name, env_kwargs)
    check_paths(input_path, output_path)
    first = first_row(input_path, split)
    if first is not None:
        _check_columns(first, field_map)
    total = count_rows(input_path, split)
    job = {"input": str(input_path.resolve()), "fingerprint": fingerprint(input_path), "env": env_name,
           "fields": field_map, "env_args": env_kwargs, "split": split}
    with Output(output_path, job, total) as out:
        summary = Summary(resumed_from=out.done, rows=out.done)
        remaining = None if total is None else total - out.done
        if remaining == 0 and not (retry_failed and out.failed):
            return summary
        n_workers = summary.workers = max(1, min(workers, remaining if remaining is not None else workers))
        start = time.perf_counter()
        with open_scorer(env_name, workers=n_workers, timeout=timeout, env_kwargs=env_kwargs,
                         ray_address=ray_address) as scorer:
            if retry_failed and out.failed:
                summary.retried = _retry(out, input_path, split, field_map, env, scorer, report)
            write_rows(out, numbered_rows(input_path, split), total, progress, summary, report,
                       lambda chunk: _score_chunk(chunk, field_map, env, scorer, summary, report))
        summary.seconds = time.perf_counter() - start
    return summary


# ---------------------------------------------------------------- checks before any output

def check_paths(input_path: Path, output_path: Path) -> None:
    if not input_path.exists():
        raise UsageError(f"input not found: {input_path}")
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise UsageError(f"--output is the input file {input_path}: the output is a new file (name another one)")
    if output_path.is_dir():
        raise UsageError(f"--output {output_path} is a folder: name a file in it")
    for parent in output_path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--output {output_path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK) and not output_path.exists():
                raise UsageError(f"--output {output_path}: cannot write in {parent} (permission denied)")
            break
    if output_path.exists() and _is_regular(output_path) and not os.access(output_path, os.W_OK):
        raise UsageError(f"--output {output_path}: not writable (permission denied)")


def _check_columns(first: dict, field_map: Mapping[str, str]) -> None:
    missing = [f"{name}={column}" for name, column in field_map.items() if column not in first]
    if missing:
        raise UsageError(f"--field {missing[0]}: the first row has no column {missing[0].split('=', 1)[1]!r} "
                         f"(its columns: {', '.join(map(str, first)) or 'none'})")


def fingerprint(path: Path) -> str:
    """sha256 of the input's bytes (of every file's name and bytes, for a folder)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else "").encode())
        with f.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _is_regular(path: Path) -> bool:
    return stat.S_ISREG(path.stat().st_mode)


# ---------------------------------------------------------------- the output file

@dataclasses.dataclass(frozen=True)
class OutputKind:
    """What a job writes: its command (in messages), the key every line it wrote has, and names."""

    tool: str = "rlvr score"
    record_key: str = "reward_info"
    noun: str = "scores"
    row_noun: str = "scored row"


class Output:
    """The output and its record (``<output>.rlvr.json``, also the lock). A stream (a pipe,
    /dev/stdout) has neither: it is written from the first row, nothing resumed."""

    def __init__(self, path: Path, job: dict, total: int | None, kind: OutputKind = OutputKind()):
        self.path, self.job, self.total, self.kind = path, job, total, kind
        self.stream = path.exists() and not _is_regular(path)
        self.done, self.failed = 0, []
        self._lock = None
        self._file = None

    def __enter__(self) -> Output:
        try:
            if not self.stream:
                self._take_lock()
                self.done, self.failed = self._resume_point()
            self._file = self.path.open("ab" if not self.stream else "wb")
        except OSError as exc:
            self.__exit__()
            raise UsageError(f"--output {self.path}: cannot write it ({exc.strerror or exc})") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
        if self._lock is not None:
            self._lock.close()
        self._file = self._lock = None

    def _take_lock(self) -> None:
        record = self.path.with_name(self.path.name + ".rlvr.json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = record.open("a+", encoding="utf-8")  # the lock, and the job's record
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise UsageError(f"another {self.kind.tool} is writing {self.path} right now") from None
        self._lock.seek(0)
        text = self._lock.read()
        has_rows = self.path.exists() and self.path.stat().st_size > 0
        if not text and has_rows:
            raise UsageError(f"{self.path} exists but was not written by {self.kind.tool} (no {record.name} beside it): "
                             "remove it or choose another --output")
        if text and has_rows:
            before = json.loads(text)
            changed = [k for k in self.job if k != "input" and before.get(k) != self.job[k]]
            if changed:
                what = "the input's content" if "fingerprint" in changed else ", ".join(changed)
                raise UsageError(f"{self.path} holds the {self.kind.noun} of another job ({what} differs): remove it (and "
                                 f"{record.name}) or choose another --output")
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(json.dumps(self.job, indent=1) + "\n")
        self._lock.flush()

    def _resume_point(self) -> tuple[int, list[int]]:
        """Complete lines already written (a partial last line, from a kill, is cut off), and
        the row numbers among them that failed or timed out."""
        if not self.path.exists():
            return 0, []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        lines = data[:end].splitlines()
        failed = []
        for i, line in enumerate(lines):
            try:
                info = json.loads(line)[self.kind.record_key]
            except (ValueError, KeyError, TypeError):
                raise UsageError(f"{self.path}: line {i + 1} is not a {self.kind.row_noun} (garbled?): remove the "
                                 "file to start again from the beginning") from None
            if isinstance(info, dict) and ("timeout" in info or "error" in info):
                failed.append(i)
        if self.total is not None and len(lines) > self.total:
            raise UsageError(f"{self.path} has {len(lines)} rows, more than the input's {self.total}: not this "
                             f"input's {self.kind.noun}")
        if end < len(data):
            with self.path.open("r+b") as f:
                f.truncate(end)
        return len(lines), failed

    def write(self, record: dict, report: Report) -> None:
        self._file.write(encode(record, report))

    def flush(self) -> None:
        self._file.flush()


def encode(record: dict, report: Report | None = None) -> bytes:
    """One strict-JSON line. A lone surrogate (``"\\ud83d"`` in the input) cannot be UTF-8: that
    row is written with \\u escapes instead, which read back as the same string."""
    clean = _jsonable(record)
    try:
        return (json.dumps(clean, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        if report is not None:
            report(f"row {record.get('reward_info', {}).get('row', '?')}", "a field holds a lone surrogate "
                   "(not valid Unicode): written with \\u escapes")
        return (json.dumps(clean, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


# ---------------------------------------------------------------- scoring rows

def _score_chunk(chunk: list, field_map: Mapping[str, str], env: Environment, scorer, summary: Summary,
                 report: Report) -> Iterator[dict]:
    """The output record of each row of ``chunk`` ((number, (line, row)) pairs), in order."""
    grouped = scores_groups(type(env))  # a row is a group of responses (a judge compares them)
    prepared, payloads = [], []
    for number, (line, row) in chunk:
        try:
            if isinstance(row, BadRow):
                raise TaskError(row.error)
            payloads.append((build_group_task if grouped else build_task)(row, field_map, env))
            prepared.append((number, line, row, None))
        except TaskError as exc:
            prepared.append((number, line, row, str(exc)))
    outcomes = map_groups(scorer, payloads) if grouped else scorer.map(payloads)
    tasks = iter(payloads)
    for number, line, row, error in prepared:
        record = dict(row) if isinstance(row, dict) else {}
        where = f"row {number}" + (f" (line {line})" if line is not None else "")
        if error is not None:
            report(where, error)
            record.update(reward=0.0, reward_info={"error": error, "row": number})
            summary.errors += 1
        elif grouped:
            record.update(_group_fields(next(outcomes), next(tasks)[0], number, summary, where, report))
        else:
            record.update(_record_fields(next(outcomes), number, summary, where, report))
        yield record


def _record_fields(outcome: Outcome, number: int, summary: Summary, where: str, report: Report) -> dict:
    if outcome.status == "ok":
        value, info = outcome.value
        summary.scored += 1
        summary.reward_sum += value
        return {"reward": value, "reward_info": {**info, "row": number}}
    if outcome.status == "timeout":
        summary.timeouts += 1
        report(where, f"timeout: {outcome.error}")
    else:
        summary.errors += 1
        report(where, f"the environment raised {outcome.error}")
    return {"reward": 0.0, "reward_info": {outcome.status: outcome.error, "row": number}}


def _group_fields(outcome: Outcome, task: dict, number: int, summary: Summary, where: str, report: Report) -> dict:
    """A scored group's record: ``rewards`` (one per response), ``reward`` (their mean) and
    ``reward_info.responses`` (each response's info). A pair with a human ``preference`` (1 or
    2) counts towards the agreement: 1 where the judge rewarded that response more, 0.5 on a tie."""
    if outcome.status != "ok":
        return {**_record_fields(outcome, number, summary, where, report), "rewards": []}
    rewards = [value for value, _ in outcome.value]
    mean = sum(rewards) / len(rewards)
    summary.scored += 1
    summary.reward_sum += mean
    label = str(task.get("preference", "")).strip()
    if len(rewards) == 2 and label in ("1", "2"):
        picked = 0.5 if rewards[0] == rewards[1] else (1.0 if rewards[0] > rewards[1] else 2.0)
        summary.labelled += 1
        summary.agreement_sum += 0.5 if picked == 0.5 else float(picked == float(label))
    return {"reward": mean, "rewards": rewards,
            "reward_info": {"responses": [info for _, info in outcome.value], "row": number}}


def _retry(out: Output, input_path: Path, split: str | None, field_map, env, scorer, report: Report) -> int:
    """Score the failed rows again and rewrite the output with their new records (atomically)."""
    wanted = set(out.failed)
    redo = [(n, item) for n, item in enumerate(_take(numbered_rows(input_path, split), out.done)) if n in wanted]
    fresh = Summary()
    records = {r["reward_info"]["row"]: r for r in _score_chunk(redo, field_map, env, scorer, fresh, report)}
    tmp = out.path.with_name(out.path.name + ".retry")
    with out.path.open("rb") as old, tmp.open("wb") as new:
        for i, line in enumerate(old):
            new.write(encode(records[i], report) if i in records else line)
    out._file.close()
    os.replace(tmp, out.path)
    out._file = out.path.open("ab")
    out.failed = [i for i, r in records.items() if "timeout" in r["reward_info"] or "error" in r["reward_info"]]
    return len(records) - len(out.failed)


def _take(rows: Iterator, n: int) -> Iterator:
    for i, row in enumerate(rows):
        if i >= n:
            return
        yield row


def write_rows(out: Output, rows: Iterator, total: int | None, progress: bool, summary, report: Report,
               handle_chunk: Callable[[list], Iterable[dict]], chunk_rows: int = CHUNK_ROWS) -> None:
    """The input ``rows`` after those ``out`` already holds, ``chunk_rows`` at a time through
    ``handle_chunk(chunk) -> records``, written in order under a progress bar (``summary.rows``
    counts them); each chunk is flushed, so an interruption loses at most the chunk in hand."""
    bar = _progress(total, out.done, progress)
    try:
        for chunk in _chunks(enumerate(_skip(rows, out.done), start=out.done), chunk_rows):
            for record in handle_chunk(chunk):
                out.write(record, report)
                summary.rows += 1
                bar.update(1)
            out.flush()
    finally:
        bar.close()


def _skip(rows: Iterator, n: int) -> Iterator:
    for i, row in enumerate(rows):
        if i >= n:
            yield row


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress(total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="row", disable=not enabled, dynamic_ncols=True)
