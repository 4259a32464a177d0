"""``rlvr-train``: the Hydra app that launches a GRPO run.

    rlvr-train                                     # the default CPU job (configs/config.yaml)
    rlvr-train learner.lr=3e-4 steps=300           # any key can be overridden
    rlvr-train experiment=nano_gpu cluster=ray     # presets and config groups
    rlvr-train --multirun learner.lr=1e-4,3e-4     # a sweep, one run per value
    rlvr-train --config-dir my_configs data=mine   # configs of your own beside the framework's
    rlvr-train --cfg job                           # print the composed config and exit

Every job of the command line is composed, validated by ``rlvr.config`` and checked against the
world (``rlvr.training.command_line``) before anything starts; a mistake is reported by key,
without a traceback. Outputs go to ``outputs/<name>`` (``hydra.run.dir``): relaunching the same
command resumes from the newest checkpoint there. ``train(overrides)`` is the same job from
Python.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
log = logging.getLogger("rlvr")


class RunStopped(Exception):
    """A run that stopped before its end (a signal, a gate): the message says how to go on."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def train(overrides: list[str] | tuple[str, ...] = (), config_dir: str | Path | None = None) -> dict:
    """One ``rlvr-train`` job from Python: the same overrides as the command line (and
    ``config_dir`` as ``--config-dir``), the same checks before anything starts, the same output
    folder (its ``train.log`` included). Returns the summary (``summary.json``'s content).

    Raises ``rlvr.config.ConfigError`` for a mistake in the config (one line naming the key) and
    ``RunStopped`` when a signal or a gate stopped the run (a checkpoint is saved: calling again
    with the same overrides resumes)."""
    from rlvr.config import ConfigError, load_config
    from rlvr.training.command_line import check_command_line

    args = [*(["--config-dir", str(config_dir)] if config_dir is not None else []), *overrides]
    checked = check_command_line(CONFIG_DIR, args)
    if checked.multirun or len(checked.jobs) != 1:
        raise ConfigError("train() runs one job: leave out --multirun, --cfg, --help (call it once per job)")
    job = checked.jobs[0]
    if job.out is None:
        raise ConfigError("output_dir: the run's folder cannot be told from the config; set output_dir=...")
    job.out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(job.out / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        return run_job(load_config(job.config), job.out)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def run_job(config, out: Path) -> dict:
    """Train ``config`` in ``out``: the trainer, then the summary on the terminal and at the end
    of ``train.log``. ``RunStopped`` when a signal or a gate stopped it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from rlvr.training.gates import GateTripped
    from rlvr.training.interrupt import Interrupted
    from rlvr.training.preflight import check_relaunch
    from rlvr.training.trainer import Trainer

    check_relaunch(config, out)  # (done before Hydra started too, where the folder could be told)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=1) + "\n")
    log.info("run %r in %s (resolved config: config.json there)", config.name, out)
    trainer = Trainer(config, out)
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, never glued to them
            summary = trainer.run()
    except Interrupted as stop:
        if trainer.step:
            message = f"interrupted at step {trainer.step}: relaunch the same command to resume"
        else:
            message = f"interrupted during {stop.where}: relaunch the same command to start again"
        raise RunStopped(message, stop.exit_code) from None
    except GateTripped as gate:
        raise RunStopped(f"stopped at step {trainer.step} by a gate: {gate} (config key gates; the checkpoint of "
                         "this step is saved: fix the cause and relaunch to resume)", 3) from None
    _print_summary(summary, out)
    return summary


def _run(cfg) -> dict:
    """The Hydra app's job."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from rlvr.config import load_config

    config = load_config(OmegaConf.to_container(cfg, resolve=True))
    try:
        return run_job(config, Path(config.output_dir or HydraConfig.get().runtime.output_dir))
    except RunStopped as stopped:
        print(f"rlvr-train: {stopped}", file=sys.stderr, flush=True)
        sys.exit(stopped.exit_code)


def _print_summary(s: dict, out: Path) -> None:
    before, after = s["eval_accuracy_before"], s["eval_accuracy_after"]
    minutes, seconds = divmod(int(s["wall_seconds"]), 60)
    lines = [f"rlvr-train finished: {s['steps']} GRPO steps, {minutes}m {seconds:02d}s wall time"]
    if before is None:
        lines.append(f"  no held-out evaluation ran ({s.get('eval_source') or 'no held-out prompts'})")
    else:
        lines.append(f"  held-out greedy accuracy: {before:.3f} -> {after:.3f} ({100 * (after - before):+.1f} points, "
                     f"{s['eval_prompts']} prompts: {s.get('eval_source', 'held-out prompts')})")
    if s.get("reward_first_steps") is not None:
        lines.append(f"  training reward: {s['reward_first_steps']:.3f} (first steps) -> {s['reward_last_steps']:.3f} (last)")
    phases = [f"{p} {s[f'seconds_per_step/{p}']:.2f}s" for p in ("rollout", "reward", "learn", "sync")
              if f"seconds_per_step/{p}" in s]
    if phases:
        lines.append("  per step: " + ", ".join(phases))
    lines.append(f"  in {out}: summary.json, reward_curve.png, metrics.jsonl, tensorboard/, final/ (the trained model)")
    text = "\n".join(lines)
    print(text, flush=True)
    with open(out / "train.log", "a", encoding="utf-8") as f:  # the log ends as the terminal did
        f.write(text + "\n")


def main() -> None:
    import hydra

    from rlvr.config import ConfigError
    from rlvr.training.command_line import check_command_line, write_sweep_summary

    # Every job of the command line (each of a --multirun sweep), wherever its configs live, is
    # composed, validated and checked against the world here, before Hydra writes anything or
    # Ray starts.
    try:
        checked = check_command_line(CONFIG_DIR, sys.argv[1:])
    except ConfigError as err:
        print(f"rlvr-train: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = checked.argv

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def app(cfg) -> None:
        try:
            _run(cfg)
        except ConfigError as err:
            # A user mistake: say what and where, no traceback, exit code 2.
            print(f"rlvr-train: {err}", file=sys.stderr)
            sys.exit(2)

    try:
        app()
    finally:
        if checked.multirun and checked.jobs:
            table = write_sweep_summary(checked.jobs)
            if table is not None:
                print(f"rlvr-train: sweep of {len(checked.jobs)} jobs: summary in {table}", flush=True)


if __name__ == "__main__":
    main()
