"""Reading rows of a dataset: ``.jsonl``, ``.json``, ``.parquet`` and ``datasets`` folders.

Used by offline scoring, training data and the SFT warm start alike. A row that cannot be read
is a ``BadRow`` (reported by its caller and skipped or written as an error), never the end of
the file: a line that is not UTF-8 or not JSON, a JSON value that is not an object. A file that
cannot be read at all (a corrupt parquet, gzip bytes named ``.jsonl``, a ``.json`` that is not
UTF-8) is a ``UsageError``, reported in one line.

JSONL is read as bytes and split on ``\\n`` only: a ``\\r`` inside a line (inside a string, say)
does not cut the row in two; a UTF-8 byte-order mark before the first row is ignored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rlvr.env import TaskError

FORMATS = ".jsonl, .json, .parquet or a datasets.save_to_disk folder"


class UsageError(Exception):
    """A mistake in the command line or the input file: reported without a traceback."""


@dataclasses.dataclass(frozen=True)
class BadRow:
    """A row that could not even be read (not UTF-8, malformed JSON, not an object)."""

    error: str


def read_rows(path: Path, split: str | None = None) -> Iterator[dict | BadRow]:
    """The rows of ``path`` (see ``numbered_rows``)."""
    for _, row in numbered_rows(path, split):
        yield row


def numbered_rows(path: Path, split: str | None = None) -> Iterator[tuple[int | None, dict | BadRow]]:
    """(line number in the file for JSONL, else None; row). ``split`` picks one split of a
    ``DatasetDict`` folder; it is an error for anything else."""
    if not path.exists():
        raise UsageError(f"input not found: {path}")
    if path.is_dir():
        for row in load_from_disk(path, split):
            yield None, row
        return
    if split is not None:
        raise UsageError(f"--split {split}: {path} is a single file, it has no splits")
    suffix = path.suffix.lower()
    _refuse_compressed(path)
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from ((None, row) for row in _read_json(path))
    elif suffix == ".parquet":
        yield from ((None, row) for row in _read_parquet(path))
    else:
        raise UsageError(f"unsupported input format {suffix!r} (use {FORMATS})")


def count_rows(path: Path, split: str | None = None) -> int | None:
    """Number of rows, when it is cheap to know (for progress bars and checks)."""
    if path.is_dir():
        return len(load_from_disk(path, split))
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise UsageError(f"{path}: not a readable parquet file ({exc})") from None
    return None


def _refuse_compressed(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"\x1f\x8b") or head.startswith(b"PK\x03\x04") or head.startswith(b"\x28\xb5\x2f\xfd"):
        kind = {b"\x1f": "gzip", b"P": "zip", b"\x28": "zstd"}[head[:1]]
        raise UsageError(f"{path} holds {kind}-compressed data, not {path.suffix}: decompress it first")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict | BadRow]]:
    # Bytes, decoded line by line: a line that is not UTF-8 is one bad row, not the end of the run.
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            if not raw.strip():
                continue
            yield number, _parse_line(raw)


def _parse_line(raw: bytes) -> dict | BadRow:
    try:
        # strict=False: a raw control character (a \r, a tab) inside a string is kept, not an error
        row = json.loads(raw.decode("utf-8"), strict=False)
    except UnicodeDecodeError as exc:
        return BadRow(f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}")
    except json.JSONDecodeError as exc:
        return BadRow(f"invalid JSON ({exc.msg}: column {exc.colno})")
    return row if isinstance(row, dict) else BadRow(f"expected an object, got {type(row).__name__}")


def _read_json(path: Path) -> Iterator[dict | BadRow]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
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


def _read_parquet(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
        for batch in reader.iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UsageError(f"{path}: not a readable parquet file ({exc})") from None


def load_from_disk(path: Path, split: str | None):
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
            raise UsageError(f"--split {split}: not one of {sorted(ds)}")
        return ds[split]
    if split is not None:
        raise UsageError(f"--split {split}: {path} is a single dataset, it has no splits")
    return ds


def first_row(path: Path, split: str | None = None, look: int = 100) -> dict[str, Any] | None:
    """The first readable row among the first ``look`` (None if there is none)."""
    for i, (_, row) in enumerate(numbered_rows(path, split)):
        if i >= look:
            return None
        if not isinstance(row, BadRow):
            return row
    return None


def mapped(row: Mapping[str, Any], field_map: Mapping[str, str]) -> dict:
    """The row with environment fields added from the columns ``field_map`` names (env name ->
    column); ``TaskError`` naming a missing column."""
    task = dict(row)
    for name, column in field_map.items():
        if column not in row:
            raise TaskError(f"missing column {column!r} (mapped to field {name!r})")
        task[name] = row[column]
    return task
