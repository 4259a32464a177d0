"""``rlvr-train``'s command line, read as Hydra reads it, so that every job of it is composed and
checked before Hydra writes anything or Ray starts, wherever the configs live.

Hydra's own argument parser reads the flags (``--multirun``, ``--config-dir``/``-cd``,
``--config-path``/``-cp``, ``--config-name``/``-cn`` ...) in any position; the command line handed
back to Hydra has the flags first (Hydra's parser refuses a flag after an override) and paths
made absolute against the working directory (Hydra would read ``--config-path`` relative to
the app's source file). Overrides are fitted to the composed config:

* ``~sft`` with data that asks for no warm start is dropped, ``sft=X`` there becomes ``+sft=X``;
* a free-form dictionary (``generator_args``, ``env_args``, ``fields``, ``overrides``,
  ``vllm_kwargs``, ``resources``) given whole replaces the config's (Hydra would merge the two
  and refuse the new keys), and one of its entries may be new (``...generator_args.length=4``).

A ``--multirun`` sweep names each job's folder by the overrides that differ between its jobs
(``multirun/<name>/learner.lr=0.0001``) and ends with a summary of the jobs there.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from rlvr.config import ConfigError

FREE_FORM = ("generator_args", "env_args", "fields", "overrides", "vllm_kwargs", "resources")
NOT_A_JOB = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun")
# Hydra's flags that take a value, by the attribute its parser gives them.
VALUED = {"cfg": "--cfg", "package": "--package", "config_path": "--config-path", "config_name": "--config-name",
          "config_dir": "--config-dir", "experimental_rerun": "--experimental-rerun", "info": "--info"}
SWITCHES = {"help": "--help", "hydra_help": "--hydra-help", "resolve": "--resolve", "run": "--run",
            "multirun": "--multirun", "shell_completion": "--shell-completion"}


@dataclass
class CommandLine:
    overrides: list[str]
    flags: argparse.Namespace
    config_dir: Path  # the primary config folder (--config-path, else the framework's)
    config_name: str

    @property
    def multirun(self) -> bool:
        return bool(self.flags.multirun)

    @property
    def is_job(self) -> bool:
        """False for help, printing the config, shell completion: nothing to check."""
        return not any(getattr(self.flags, k) for k in NOT_A_JOB)

    @property
    def extra_dir(self) -> Path | None:
        return Path(self.flags.config_dir) if self.flags.config_dir else None

    def argv(self, overrides: list[str] | None = None) -> list[str]:
        """The command line for Hydra: flags first, then the overrides."""
        out = [flag for key, flag in SWITCHES.items() if getattr(self.flags, key)]
        for key, flag in VALUED.items():
            if getattr(self.flags, key) is not None:
                out += [flag, str(getattr(self.flags, key))]
        return out + list(self.overrides if overrides is None else overrides)


def parse(args: list[str], framework_configs: Path) -> CommandLine:
    """Hydra's flags and overrides, wherever they stand (Hydra's parser exits with its usage
    message on an unknown flag, as Hydra would)."""
    from hydra._internal.utils import get_args_parser

    flags = get_args_parser().parse_intermixed_args(args)
    overrides = flags.overrides
    for key in ("config_path", "config_dir"):
        if getattr(flags, key) is not None:
            folder = Path(getattr(flags, key)).expanduser().resolve()
            if not folder.is_dir():
                raise ConfigError(f"--{key.replace('_', '-')}: {folder} is not a folder")
            setattr(flags, key, str(folder))
    primary = Path(flags.config_path) if flags.config_path else framework_configs.resolve()
    name = flags.config_name or "config"
    folders = [primary, *([Path(flags.config_dir)] if flags.config_dir else [])]
    if not any((folder / f"{name}.yaml").is_file() for folder in folders):
        raise ConfigError(f"--config-name: no {name}.yaml in {' or '.join(map(str, folders))}")
    return CommandLine(overrides, flags, primary, name)


# ---------------------------------------------------------------- overrides fitted to the config

def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("~+")


def _prefix(override: str) -> str:
    return override[:len(override) - len(override.lstrip("~+"))]


def fit_overrides(cl: CommandLine) -> list[str]:
    """The overrides as Hydra should get them (see the module's docstring): decided on the config
    composed from the first job's other overrides."""
    from omegaconf import OmegaConf

    if not any(_free_form(o) or o == "~sft" or o.startswith("sft=") for o in cl.overrides):
        return list(cl.overrides)  # nothing to fit (and a composition saved)
    plain = [o for o in cl.overrides if not _free_form(o)]
    first = sweep_jobs(plain)[0] if cl.multirun else plain
    fitted_first, cfg = _compose_session(cl, first, fit_sft=True)
    # ~sft / sft=X as the data config needs them (the first job decides for the whole line)
    kept = {(_prefix(o), _key(o)) for o in fitted_first}  # (a sweep's job writes ~sft as ~sft=null)
    out = [o for o in cl.overrides if not (o == "~sft" and ("~", "sft") not in kept)]
    out = [f"+{o}" if o.startswith("sft=") and ("+", "sft") in kept else o for o in out]
    fitted = []
    for o in out:
        kind = _free_form(o)
        if kind == "whole":
            exists = OmegaConf.select(cfg, _key(o), default=_ABSENT) is not _ABSENT
            fitted += ([f"~{_key(o)}"] if exists else []) + [f"++{o}"]
        elif kind == "entry":
            fitted.append(f"++{o}")
        else:
            fitted.append(o)
    return fitted


_ABSENT = object()


def _free_form(override: str) -> str | None:
    """"whole" for ``X.generator_args={...}``, "entry" for ``X.generator_args.k=v`` (both
    without a prefix), else None."""
    if _prefix(override) or "=" not in override:
        return None
    parts = _key(override).split(".")
    if parts[-1] in FREE_FORM and override.split("=", 1)[1].lstrip().startswith("{"):
        return "whole"
    if len(parts) > 1 and parts[-2] in FREE_FORM:
        return "entry"
    return None


def _compose_session(cl: CommandLine, job: list[str], fit_sft: bool = False):
    from hydra import initialize_config_dir

    with initialize_config_dir(str(cl.config_dir), version_base="1.3"):
        return _compose(cl, job, fit_sft)


def _compose(cl: CommandLine, job: list[str], fit_sft: bool = False):
    """Hydra's composition of one job -> (overrides as composed, config). The SFT warm start is a
    default of the data config that asks for it (``data/addition.yaml``), so with other data
    ``~sft`` has nothing to delete and ``sft=X`` nothing to override: with ``fit_sft``, both are
    taken as meant (no warm start; add one)."""
    from hydra import compose
    from hydra.errors import HydraException

    search = [f"hydra.searchpath=[file://{cl.extra_dir}]"] if cl.extra_dir else []
    try:
        return job, compose(cl.config_name, overrides=search + job, return_hydra_config=True)
    except HydraException as err:
        deletes_sft = [a for a in job if _prefix(a) == "~" and _key(a) == "sft"]  # (~sft, or ~sft=null in a sweep)
        if fit_sft and "Could not delete 'sft'" in str(err) and deletes_sft:
            return _compose(cl, [a for a in job if a not in deletes_sft], fit_sft)
        if fit_sft and "use +sft=" in str(err):
            return _compose(cl, [f"+{a}" if a.startswith("sft=") else a for a in job], fit_sft)
        raise


# ---------------------------------------------------------------- the jobs of a command line

@dataclass
class Job:
    overrides: list[str]
    config: dict  # composed, as the plain dict ``load_config`` validates
    out: Path | None  # its output folder (None: only Hydra's runtime can tell)
    sweep_dir: Path | None = None  # the sweep's folder (--multirun)


def compose_jobs(cl: CommandLine, overrides: list[str]) -> list[Job]:
    """Every job of the command line (each of a ``--multirun`` sweep). A composition error (a
    missing experiment, a bad override) raises ``ConfigError`` with Hydra's message."""
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    number, job, out = 0, overrides, []
    try:
        jobs = sweep_jobs(overrides) if cl.multirun else [overrides]
        with initialize_config_dir(str(cl.config_dir), version_base="1.3"):
            for number, job in enumerate(jobs):
                _, cfg = _compose(cl, job)
                out.append(Job(job, plain_config(cfg), _output_dir(cfg, number if cl.multirun else None),
                               _sweep_dir(cfg) if cl.multirun else None))
    except (HydraException, OmegaConfBaseException) as err:
        where = f" (job {number}: {' '.join(job)})" if cl.multirun else ""
        raise ConfigError(f"{_first_lines(err)}{where}") from None
    return out


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of each job of a basic ``--multirun`` sweep (the cartesian product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def sweep_naming(overrides: list[str]) -> list[str]:
    """Overrides that name each sweep job's folder by what sets it apart: Hydra's
    ``override_dirname`` without the keys every job shares. Nothing when nothing differs (the
    folders stay numbered) or the user named them (``hydra.sweep.subdir=...``)."""
    if any(_key(o) == "hydra.sweep.subdir" for o in overrides):
        return []
    jobs = sweep_jobs(overrides)
    keys = sorted({_key(o) for job in jobs for o in job})
    same = [k for k in keys if k.startswith("hydra.") or len({tuple(o for o in job if _key(o) == k) for job in jobs}) == 1]
    if len(same) == len(keys):
        return []
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(same)}]",
            "hydra.sweep.subdir=${hydra.job.override_dirname}"]


def plain_config(cfg) -> dict:
    """A composed Hydra config as the plain dict ``load_config`` validates (a ``???`` value
    left unset raises, naming its key)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    body = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        return OmegaConf.to_container(body, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = re.sub(r"\[(\d+)\]", r".\1", err.full_key)
        raise ConfigError(f"{key}: must be set (e.g. {key}=...)") from None


def _output_dir(cfg, number: int | None) -> Path | None:
    from omegaconf import OmegaConf

    try:
        if cfg.get("output_dir"):
            return Path(cfg.output_dir)
        if number is None:
            return Path(cfg.hydra.run.dir)
        OmegaConf.update(cfg, "hydra.job.num", number, force_add=True)
        return Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's runtime resolves: the trainer checks later
        return None


def _sweep_dir(cfg) -> Path | None:
    try:
        return Path(cfg.hydra.sweep.dir)
    except Exception:  # noqa: BLE001 - as in _output_dir
        return None


def _first_lines(err: Exception) -> str:
    text = str(err).strip()
    if m := re.match(r"Could not override '([^']+)'\.\s*To append to your config use", text):
        key = m.group(1)
        return (f"{key}: unknown key, or a value with keys the config does not have (a typo? a new key is added "
                f"with +{key}=...)")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("\tprovider=", "Config search path"))]
    return " ".join(ln.strip() for ln in lines[:6])


# ---------------------------------------------------------------- the sweep's summary

def write_sweep_summary(jobs: list[Job]) -> Path | None:
    """``sweep_summary.md`` and ``.json`` in the sweep's folder: one row per job (the overrides
    that set it apart, held-out accuracy before and after, wall time; a job that did not finish
    says so)."""
    root = jobs[0].sweep_dir if jobs else None
    if root is None:
        return None
    varying = [[o for o in j.overrides if not all(o in other.overrides for other in jobs)] or j.overrides for j in jobs]
    rows = []
    for job, label in zip(jobs, varying):
        summary = job.out / "summary.json" if job.out else None
        s = json.loads(summary.read_text()) if summary and summary.is_file() else {}
        rows.append({"job": " ".join(label), "folder": _relative(job.out, root),
                     "eval_accuracy_before": s.get("eval_accuracy_before"),
                     "eval_accuracy_after": s.get("eval_accuracy_after"), "wall_seconds": s.get("wall_seconds"),
                     "finished": bool(s)})
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep_summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| job | held-out before | after | wall time | folder |", "|---|---|---|---|---|"]
    for r in rows:
        acc = [f"{r[k]:.3f}" if r[k] is not None else "-" for k in ("eval_accuracy_before", "eval_accuracy_after")]
        wall = f"{r['wall_seconds'] / 60:.1f} min" if r["wall_seconds"] is not None else "did not finish"
        lines.append(f"| {r['job']} | {acc[0]} | {acc[1]} | {wall} | {r['folder']} |")
    (root / "sweep_summary.md").write_text("\n".join(lines) + "\n")
    return root / "sweep_summary.md"


def _relative(folder: Path | None, root: Path) -> str | None:
    if folder is None:
        return None
    return str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)


# ---------------------------------------------------------------- checking a command line

@dataclass
class Checked:
    argv: list[str]  # the command line for Hydra
    jobs: list[Job]  # every job, composed and checked (none for help, --cfg ...)
    multirun: bool


def fitted_overrides(cl) -> list[str]:
    """``fit_overrides``, or the overrides as given where composing them fails (``compose_jobs``
    then says why, naming the key and the job)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return fit_overrides(cl)
    except (HydraException, OmegaConfBaseException):
        return list(cl.overrides)


def check_command_line(framework_configs: Path, args: list[str]) -> Checked:
    """Compose, validate and check every job of the command line against the world
    (``preflight.check``); raise ``ConfigError`` naming the key (and the job, in a sweep)."""
    from rlvr.config import load_config
    from rlvr.training.preflight import check

    cl = parse(args, framework_configs)
    if not cl.is_job:
        return Checked(cl.argv(), [], cl.multirun)
    overrides = fitted_overrides(cl)
    if cl.multirun:
        overrides += sweep_naming(overrides)
    jobs = compose_jobs(cl, overrides)
    for job in jobs:
        try:
            check(load_config(job.config), job.out)
        except ConfigError as err:
            if cl.multirun:  # named by the overrides that set it apart from the other jobs
                label = " ".join(a for a in job.overrides if not all(a in other.overrides for other in jobs))
                raise ConfigError(f"job {label or ' '.join(job.overrides)}: {err}") from None
            raise
    return Checked(cl.argv(overrides), jobs, cl.multirun)
