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
from rlvr.env import MultiTurnEnvironment, TaskError, get_environment_class, get_generator
from rlvr.plugins import generate_checked, make_environment_checked, takes_argument
from rlvr.rows import BadRow, UsageError, mapped, read_rows

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


def load_rows(src: DataSource, seed: int, where: str = "data") -> list[dict | BadRow]:
    """The raw rows of one source (a ``BadRow`` for a line that is not even a JSON object)."""
    if src.generator:
        try:
            return generate_checked(src.generator, src.size or 1000, seed, src.generator_args,
                                    option=f"{where}.generator_args.")
        except UsageError as err:
            raise ConfigError(str(err)) from None
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
    out = [to_prompts(load_rows(src, seed + offset + i, f"data.{split}.{i}"), src, template, f"data.{split}.{i}")
           for i, src in enumerate(sources)]
    names = [source_name(src) for src in sources]
    for i, prompts in enumerate(out):
        if names.count(names[i]) > 1:  # two sources of one name: told apart by their index
            out[i] = [dataclasses.replace(p, source=f"{names[i]}[{i}]") for p in prompts]
    return out


# Prompts per held-out split of a generator when data.eval is empty and eval_prompts is unset.
EVAL_SIZE = 500


def with_split(src: DataSource, split: str) -> DataSource:
    """A generator source with a held-out split of its own (its ``holdout`` argument, see
    ``rlvr.env.in_split``) drawn from ``split`` ("exclude": training, "only": evaluation); a
    training source keeps a ``holdout`` the user gave."""
    if not (src.generator and _has_split(src.generator)):
        return src
    if split == "exclude" and "holdout" in src.generator_args:
        return src
    return src.model_copy(update={"generator_args": src.generator_args | {"holdout": split}})


def _has_split(generator: str) -> bool:
    try:
        return takes_argument(get_generator(generator), "holdout")
    except KeyError:
        return False  # unknown: load_rows names it


def eval_plan(cfg: Config) -> tuple[list[DataSource], list[int], str]:
    """Where the held-out prompts come from: ``data.eval`` when given; else each training source's
    own held-out split (a generator with a ``holdout`` argument) or ``data.holdout`` of its rows;
    ``data.holdout=0``: none. -> (eval sources, indices of training sources to hold rows out of,
    a description for the log and the summary)."""
    if cfg.data.eval:
        trained = {s.generator for s in cfg.data.train if s.generator}
        others = sorted({s.generator for s in cfg.data.eval if s.generator} - trained)
        if others and trained:  # (a file or hub source may well be evaluated on another file)
            log.warning("data.eval evaluates generator(s) %s, which no training source uses (data.train: %s); "
                        "with data.eval empty, evaluation follows the training sources", ", ".join(others),
                        ", ".join(map(source_name, cfg.data.train)))
        return list(cfg.data.eval), [], "data.eval: " + ", ".join(map(source_name, cfg.data.eval))
    if not cfg.data.holdout:
        return [], [], "none (data.eval is empty and data.holdout=0)"
    train = cfg.data.train
    per_source = -(-(cfg.eval_prompts or EVAL_SIZE) // len(train))
    sources, shares, said = [], [], []
    for i, src in enumerate(train):
        if src.generator and _has_split(src.generator):
            sources.append(with_split(src, "only").model_copy(update={"size": per_source, "weight": 1.0}))
            said.append(f"the held-out split of {source_name(src)}")
        else:
            shares.append(i)
            said.append(f"{cfg.data.holdout:.0%} of the rows of {source_name(src)}, held out")
    return sources, shares, ", ".join(said)


def split_prompts(cfg: Config) -> tuple[list[list[Prompt]], list[Prompt], str]:
    """A run's training prompts (one list per source), held-out prompts (at most
    ``eval_prompts``) and where those come from (``eval_plan``). The trainer and
    ``rlvr eval --run`` both draw them here."""
    sources, shares, said = eval_plan(cfg)
    train = load_prompts([with_split(s, "exclude") for s in cfg.data.train], cfg.data.prompt_template, cfg.seed, "train")
    evals = [p for source in load_prompts(sources, cfg.data.prompt_template, cfg.seed, "eval") for p in source]
    for i in shares:
        train[i], held = hold_out(train[i], cfg.data.holdout, f"{cfg.seed}:{i}")
        evals += held
    if not sources and not shares:
        log.warning("no held-out evaluation: %s", said)
    else:
        log.info("held-out evaluation: %s", said)
    return train, evals[:cfg.eval_prompts], said


def hold_out(prompts: list[Prompt], share: float, key: str) -> tuple[list[Prompt], list[Prompt]]:
    """Split ``share`` of one source's prompts off for evaluation (a fixed choice seeded by
    ``key``: the same rows on every launch), at least one and never all of them."""
    order = list(range(len(prompts)))
    random.Random(f"holdout:{key}").shuffle(order)
    k = min(max(1, round(share * len(prompts))), len(prompts) - 1)
    return [prompts[j] for j in sorted(order[k:])], [prompts[j] for j in sorted(order[:k])]


def fitting_prompts(prompts: list[Prompt], *, tokenizer, context: int, budget: int, where: str, setting: str,
                    strict: bool = False) -> list[Prompt]:
    """The prompts whose tokens plus a ``budget`` of new tokens fit the engine's ``context``;
    the others are counted and reported once (how many, the longest, the settings that decide)
    and left out, or with ``strict`` (``data.long_prompts=error``) a ``ConfigError``. A
    multi-turn environment's prompts are left to its own token budget per episode."""
    single = {p.env: not issubclass(get_environment_class(p.env), MultiTurnEnvironment) for p in prompts}
    limit = context - budget
    kept, long = [], []
    for p in prompts:
        n = len(tokenizer.encode(p.text)) if single[p.env] else 0
        (long if n > limit else kept).append((n, p))
    if not long:
        return prompts
    longest = max(n for n, _ in long)
    message = (f"{where}: {len(long)} of {len(prompts)} prompts are longer than {limit} tokens (the longest: "
               f"{longest}): the engine's context of {context} tokens (rollout.max_model_len, by default the "
               f"model's max_position_embeddings) minus {budget} new tokens ({setting})")
    if strict:
        raise ConfigError(f"{message}; data.long_prompts=error")
    if not kept:
        raise ConfigError(f"{message}: none is left")
    log.warning("%s: left out (data.long_prompts=drop)", message)
    return [p for _, p in kept]


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
