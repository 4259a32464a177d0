"""Prompts for training and evaluation.

Sources are local files (.jsonl/.json/.parquet, read row by row so that one malformed line is
reported instead of failing the whole file), ``datasets`` ``save_to_disk`` folders and hub names
(through Hugging Face ``datasets``), or a registered task generator (``rlvr.env.get_generator``); each row becomes a ``Prompt``
(text, environment, task fields). Rows an environment cannot score are reported by number and
skipped. ``PromptStream`` draws from a weighted mixture of sources, each shuffled per epoch; its
``state_dict`` is part of every checkpoint, so a resumed run sees exactly the prompts an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import random
from pathlib import Path
from typing import Any

from rlvr.config import Config, ConfigError, DataSource
from rlvr.env import TaskError, get_generator
from rlvr.rows import BadRow, UsageError, read_rows
from rlvr.scoring.scorer import make_environment_checked, mapped

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str
    env: str
    task: dict[str, Any]  # what the environment's score() reads (e.g. {"answer": "579"})
    env_args: str = "{}"  # the environment's keyword arguments, as canonical JSON (hashable)
    source: str = ""  # where it came from, for per-source breakdowns (``source_name``)

    @property
    def scorer_key(self) -> tuple[str, str]:
        """Prompts with equal keys are scored by one environment instance (one scorer)."""
        return self.env, self.env_args


def load_rows(src: DataSource, seed: int) -> list[dict | BadRow]:
    """The raw rows of one source (a ``BadRow`` for a line that is not even a JSON object)."""
    if src.generator:
        try:
            generate = get_generator(src.generator)
        except KeyError as err:
            raise ConfigError(f"data: {err.args[0]}") from None
        return generate(src.size or 1000, seed=seed, **src.generator_args)
    if src.path:
        path = Path(src.path).expanduser()
        if not path.exists():
            raise ConfigError(f"data: {path} not found")
        try:
            rows = list(itertools.islice(read_rows(path, src.split if path.is_dir() else None), src.size))
        except UsageError as err:
            raise ConfigError(f"data: {err}") from None
        return rows
    import datasets

    ds = datasets.load_dataset(src.hub, split=src.split)
    if src.size is not None:
        ds = ds.select(range(min(src.size, len(ds))))
    return ds.to_list()


def source_name(src: DataSource) -> str:
    """A data source's short name: its generator, its file's stem, or its hub name."""
    return src.generator or (Path(src.path).stem if src.path else src.hub)


def to_prompts(rows: list[dict | BadRow], src: DataSource, template: str, where: str) -> list[Prompt]:
    """Rows -> prompts; a row that cannot be used is logged (``where`` row N: why) and skipped."""
    try:
        env = make_environment_checked(src.env, src.env_args, option=f"{where}.env_args.")
    except UsageError as err:
        raise ConfigError(str(err)) from None
    env_args = json.dumps(src.env_args, sort_keys=True)
    prompts, bad, first = [], 0, None
    for i, row in enumerate(rows):
        try:
            if isinstance(row, BadRow):
                raise TaskError(row.error)
            task = mapped(row, src.fields)
            if src.prompt_field not in row:
                raise TaskError(f"no column {src.prompt_field!r} for the prompt (its columns: {', '.join(map(str, row))})")
            if not isinstance(row[src.prompt_field], str):
                raise TaskError(f"field {src.prompt_field!r} must be a string")
            env.check_task(task)
            text = template.format(**(row | {"prompt": row[src.prompt_field]}))
        except (TaskError, KeyError, IndexError) as err:
            bad += 1
            first = first or f"row {i}: {err}"
            if bad <= 10:
                log.warning("%s row %d skipped: %s", where, i, err)
            continue
        prompts.append(Prompt(text, src.env, task, env_args, source_name(src)))
    if bad:
        log.warning("%s: %d of %d rows skipped", where, bad, len(rows))
    if not prompts:
        raise ConfigError(f"{where}: none of its {len(rows)} rows is usable ({first or 'no rows'})")
    return prompts


def load_prompts(sources: list[DataSource], template: str, seed: int, split: str) -> list[list[Prompt]]:
    """One list of prompts per source (``split`` is "train" or "eval", for messages and seeds)."""
    offset = 0 if split == "train" else 1_000_003  # generators: held-out rows differ from training rows
    out = [to_prompts(load_rows(src, seed + offset + i), src, template, f"data.{split}[{i}]")
           for i, src in enumerate(sources)]
    names = [source_name(src) for src in sources]
    for i, prompts in enumerate(out):
        if names.count(names[i]) > 1:  # two sources of one name: told apart by their index
            out[i] = [dataclasses.replace(p, source=f"{names[i]}[{i}]") for p in prompts]
    return out


def split_prompts(cfg: Config) -> tuple[list[list[Prompt]], list[Prompt]]:
    """A run's training prompts (one list per source) and held-out prompts: ``data.eval``, or
    else ``data.holdout`` of the training rows (never trained on), or else none (said plainly);
    at most ``eval_prompts`` of them. The trainer and ``rlvr eval --run`` both draw them here."""
    train = load_prompts(cfg.data.train, cfg.data.prompt_template, cfg.seed, "train")
    if cfg.data.eval:
        evals = [p for source in load_prompts(cfg.data.eval, cfg.data.prompt_template, cfg.seed, "eval") for p in source]
    elif cfg.data.holdout:
        train, evals = hold_out(train, cfg.data.holdout, cfg.seed)
        log.info("held out %d training rows for evaluation (data.holdout=%g; data.eval is empty)",
                 len(evals), cfg.data.holdout)
    else:
        evals = []
        log.warning("no held-out evaluation: data.eval is empty and data.holdout=0")
    return train, evals[:cfg.eval_prompts]


def hold_out(sources: list[list[Prompt]], share: float, seed: int) -> tuple[list[list[Prompt]], list[Prompt]]:
    """Split ``share`` of each source's prompts off for evaluation (a fixed, seeded choice: the
    same rows on every launch), at least one and never all of them."""
    train, held = [], []
    for i, prompts in enumerate(sources):
        order = list(range(len(prompts)))
        random.Random(f"holdout:{seed}:{i}").shuffle(order)
        k = min(max(1, round(share * len(prompts))), len(prompts) - 1)
        held += [prompts[j] for j in sorted(order[:k])]
        train.append([prompts[j] for j in sorted(order[k:])])
    return train, held


class PromptStream:
    """Draws prompts from a weighted mixture: each draw picks a source by weight, then that
    source's next prompt in an order reshuffled every epoch. Deterministic given the seed."""

    def __init__(self, sources: list[list[Prompt]], weights: list[float], seed: int):
        self.sources, self.weights, self.seed = sources, weights, seed
        self._mixer = random.Random(seed)
        self._epoch = [0] * len(sources)
        self._pos = [0] * len(sources)
        self._orders = [self._order(i) for i in range(len(sources))]

    def _order(self, i: int) -> list[int]:
        order = list(range(len(self.sources[i])))
        random.Random(f"{self.seed}:{i}:{self._epoch[i]}").shuffle(order)
        return order

    def next(self, n: int) -> list[Prompt]:
        out = []
        for _ in range(n):
            i = self._mixer.choices(range(len(self.sources)), weights=self.weights)[0]
            if self._pos[i] == len(self._orders[i]):
                self._epoch[i] += 1
                self._pos[i] = 0
                self._orders[i] = self._order(i)
            out.append(self.sources[i][self._orders[i][self._pos[i]]])
            self._pos[i] += 1
        return out

    def state_dict(self) -> dict:
        return {"mixer": self._mixer.getstate(), "epoch": list(self._epoch), "pos": list(self._pos)}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["mixer"]
        self._mixer.setstate((version, tuple(internal), gauss))
        self._epoch, self._pos = list(state["epoch"]), list(state["pos"])
        self._orders = [self._order(i) for i in range(len(self.sources))]
