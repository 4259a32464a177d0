"""Offline scoring: a dataset of responses -> environment rewards -> JSONL, parallel and resumable.

The same ``Environment.score`` that training calls runs here, in a ``DeadlinePool`` of worker
processes (or on Ray actors, each with its own pool), so a row that hangs is killed at the
timeout and every other row is still scored. Output rows are the input rows plus ``reward``
(float) and ``reward_info`` (object), written in input order; re-running onto an existing output
continues after its last complete line.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rlvr.env import Environment, TaskError, get_environment_class
from rlvr.pool import DeadlinePool, Outcome

RESPONSE_FIELD = "response"


class UsageError(Exception):
    """A mistake in the command line or the input file: reported without a traceback."""


# ---------------------------------------------------------------- reading datasets

@dataclasses.dataclass(frozen=True)
class BadRow:
    """A row that could not even be read (malformed JSON, not an object)."""

    error: str


def count_rows(path: Path) -> int | None:
    """Number of rows, when it is cheap to know (for the progress bar)."""
    if path.is_dir():
        return len(_load_from_disk(path, None))
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


def read_rows(path: Path, split: str | None = None) -> Iterator[dict | BadRow]:
    """Rows of a ``.jsonl``, ``.json``, ``.parquet`` file or a ``datasets.save_to_disk`` folder."""
    if not path.exists():
        raise UsageError(f"input not found: {path}")
    if path.is_dir():
        yield from _load_from_disk(path, split)
        return
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    else:
        raise UsageError(f"unsupported input format {suffix!r} (use .jsonl, .json, .parquet "
                         "or a datasets.save_to_disk folder)")


def _read_jsonl(path: Path) -> Iterator[dict | BadRow]:
    # Bytes, decoded line by line: a line that is not UTF-8 is one bad row, not the end of the run.
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield BadRow(f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}")
                continue
            except json.JSONDecodeError as exc:
                yield BadRow(f"invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            yield row if isinstance(row, dict) else BadRow(f"expected an object, got {type(row).__name__}")


def _read_json(path: Path) -> Iterator[dict | BadRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of rows (or {{\"data\": [...]}})")
    for row in data:
        yield row if isinstance(row, dict) else BadRow(f"expected an object, got {type(row).__name__}")


def _load_from_disk(path: Path, split: str | None):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"{path}: not a datasets.save_to_disk folder ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise UsageError(f"{path} holds splits {sorted(ds)}: choose one with --split")
            split = next(iter(ds))
        if split not in ds:
            raise UsageError(f"split {split!r} not in {sorted(ds)}")
        ds = ds[split]
    return ds


# ---------------------------------------------------------------- turning rows into tasks

def build_task(row: Mapping[str, Any], field_map: Mapping[str, str], env: Environment) -> tuple[dict, str]:
    """The environment's view of ``row``: fields renamed by ``field_map`` (env name -> column),
    validated; returns (task, response). Raises ``TaskError`` naming the field."""
    task = dict(row)
    for name, column in field_map.items():
        if column not in row:
            raise TaskError(f"missing column {column!r} (mapped to field {name!r})")
        task[name] = row[column]
    if RESPONSE_FIELD not in task or task[RESPONSE_FIELD] is None:
        raise TaskError(f"missing field {RESPONSE_FIELD!r}")
    if not isinstance(task[RESPONSE_FIELD], str):
        raise TaskError(f"field {RESPONSE_FIELD!r} must be str, got {type(task[RESPONSE_FIELD]).__name__}")
    env.check_task(task)
    return task, task[RESPONSE_FIELD]


class _Scorer:
    """What a pool worker runs: one environment instance, many ``score`` calls."""

    def __init__(self, env_name: str, env_kwargs: dict):
        self.env = get_environment_class(env_name)(**env_kwargs)

    def __call__(self, payload: tuple[dict, str]) -> tuple[float, dict]:
        task, response = payload
        reward = self.env.score(task, response)
        return float(reward.value), dict(reward.info)


def _make_scorer(env_name: str, env_kwargs: dict) -> _Scorer:
    return _Scorer(env_name, env_kwargs)


def open_scorer(env_name: str, *, workers: int = 1, timeout: float = 10.0,
                env_kwargs: dict | None = None, ray_address: str | None = None):
    """A context manager whose ``map(payloads)`` scores (task, response) pairs in worker
    processes (or on Ray actors) and yields an ``Outcome`` per pair, in order, with
    ``Outcome.value == (reward, info)``. Used by ``rlvr score`` and by the trainer."""
    env_kwargs = env_kwargs or {}
    if ray_address is not None:
        from rlvr.ray_scoring import RayScorer

        return RayScorer(env_name, env_kwargs, workers=workers, timeout=timeout, address=ray_address)
    return DeadlinePool(_make_scorer, (env_name, env_kwargs), workers=workers, timeout=timeout)


# ---------------------------------------------------------------- the file-to-file job

@dataclasses.dataclass
class Summary:
    rows: int = 0
    scored: int = 0
    resumed_from: int = 0
    reward_sum: float = 0.0
    errors: int = 0
    timeouts: int = 0
    seconds: float = 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.scored if self.scored else 0.0

    def as_dict(self) -> dict:
        new_rows = self.rows - self.resumed_from
        return {
            "rows": self.rows, "new_rows": new_rows, "resumed_from": self.resumed_from,
            "scored": self.scored, "mean_reward": round(self.mean_reward, 4),
            "errors": self.errors, "timeouts": self.timeouts,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(new_rows / self.seconds, 1) if self.seconds > 0 else None,
        }


def completed_rows(output: Path) -> int:
    """Rows already in ``output``; a trailing partial line (a killed run) is cut off."""
    if not output.exists():
        return 0
    data = output.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with output.open("r+b") as f:
            f.truncate(end)
    return data[:end].count(b"\n")


CHUNK_ROWS = 2048  # rows read, scored and written per round: bounded memory on big inputs


def score_file(env_name: str, input_path: Path, output_path: Path, *, workers: int = 1,
               timeout: float = 10.0, field_map: Mapping[str, str] | None = None,
               env_kwargs: dict | None = None, split: str | None = None,
               ray_address: str | None = None, progress: bool = True,
               on_bad_row=None) -> Summary:
    """Score every row of ``input_path`` into ``output_path`` (JSONL), resuming if it exists.
    ``on_bad_row(row_number, message)`` is called for each unusable row."""
    env_kwargs = env_kwargs or {}
    if not input_path.exists():
        raise UsageError(f"input not found: {input_path}")
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise UsageError(f"--output is the input file {input_path}: scoring writes a new file (name another one)")
    try:
        env = get_environment_class(env_name)(**env_kwargs)
    except (KeyError, TypeError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    field_map = dict(field_map or {})
    summary = Summary(resumed_from=completed_rows(output_path))
    summary.rows = summary.resumed_from
    rows = _skip(read_rows(input_path, split), summary.resumed_from)
    bar = _progress(count_rows(input_path) if progress else None, summary.resumed_from, progress)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open_scorer(env_name, workers=workers, timeout=timeout, env_kwargs=env_kwargs,
                     ray_address=ray_address) as scorer, \
            output_path.open("a", encoding="utf-8") as out:
        for chunk in _chunks(enumerate(rows, start=summary.resumed_from), CHUNK_ROWS):
            prepared, payloads = _prepare(chunk, field_map, env)
            outcomes = scorer.map(payloads)
            for number, row, error in prepared:
                record = dict(row) if isinstance(row, dict) else {}
                if error is not None:
                    if on_bad_row:
                        on_bad_row(number, error)
                    record.update(reward=0.0, reward_info={"error": error, "row": number})
                    summary.errors += 1
                else:
                    record.update(_record_fields(next(outcomes), number, summary))
                out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                summary.rows += 1
                bar.update(1)
            out.flush()
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _prepare(chunk: list, field_map: Mapping[str, str], env: Environment):
    """(row number, row, error or None) per row, and the payloads of the good rows."""
    prepared, payloads = [], []
    for number, row in chunk:
        try:
            if isinstance(row, BadRow):
                raise TaskError(row.error)
            task, response = build_task(row, field_map, env)
        except TaskError as exc:
            prepared.append((number, row, str(exc)))
            continue
        prepared.append((number, row, None))
        payloads.append((task, response))
    return prepared, payloads


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _record_fields(outcome: Outcome, number: int, summary: Summary) -> dict:
    if outcome.status == "ok":
        value, info = outcome.value
        summary.scored += 1
        summary.reward_sum += value
        return {"reward": value, "reward_info": {**info, "row": number}}
    if outcome.status == "timeout":
        summary.timeouts += 1
    else:
        summary.errors += 1
    return {"reward": 0.0, "reward_info": {outcome.status: outcome.error, "row": number}}


def _skip(rows: Iterator, n: int) -> Iterator:
    for i, row in enumerate(rows):
        if i >= n:
            yield row


def _progress(total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="row", disable=not enabled, dynamic_ncols=True)
