"""``rlvr-train``: the Hydra app that launches a GRPO run.

    rlvr-train                                     # the default CPU job (configs/config.yaml)
    rlvr-train learner.lr=3e-4 steps=300           # any key can be overridden
    rlvr-train experiment=nano_gpu cluster=ray     # presets and config groups
    rlvr-train --multirun learner.lr=1e-4,3e-4     # a sweep, one run per value
    rlvr-train --cfg job                           # print the composed config and exit

The composed config is validated by ``rlvr.config`` before anything starts; a mistake is
reported by key, without a traceback. Outputs go to ``outputs/<name>`` (``hydra.run.dir``):
relaunching the same command resumes from the newest checkpoint there.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
log = logging.getLogger("rlvr")


def _run(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from rlvr.config import load_config
    from rlvr.training.preflight import check_relaunch

    config = load_config(OmegaConf.to_container(cfg, resolve=True))
    out = Path(config.output_dir or HydraConfig.get().runtime.output_dir)
    check_relaunch(config, out)  # (done before Hydra started too, where the folder could be told)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=1) + "\n")
    log.info("run %r in %s (resolved config: config.json there)", config.name, out)

    from rlvr.training.gates import GateTripped
    from rlvr.training.interrupt import Interrupted
    from rlvr.training.trainer import Trainer

    trainer = Trainer(config, out)
    try:
        summary = trainer.run()
    except Interrupted as stop:
        if trainer.step:
            message = f"interrupted at step {trainer.step}: relaunch the same command to resume"
        else:
            message = f"interrupted during {stop.where}: relaunch the same command to start again"
        print(f"rlvr-train: {message}", file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)
    except GateTripped as gate:
        print(f"rlvr-train: stopped at step {trainer.step} by a gate: {gate} (config key gates; the checkpoint "
              "of this step is saved: fix the cause and relaunch to resume)", file=sys.stderr, flush=True)
        sys.exit(3)
    _print_summary(summary, out)
    return summary


def _print_summary(s: dict, out: Path) -> None:
    before, after = s["eval_accuracy_before"], s["eval_accuracy_after"]
    minutes, seconds = divmod(int(s["wall_seconds"]), 60)
    lines = [f"rlvr-train finished: {s['steps']} GRPO steps, {minutes}m {seconds:02d}s wall time"]
    if before is None:
        lines.append("  no held-out evaluation ran (data.eval is empty and data.holdout=0)")
    else:
        lines.append(f"  held-out greedy accuracy: {before:.3f} -> {after:.3f} ({100 * (after - before):+.1f} points, "
                     f"{s['eval_prompts']} prompts)")
    if s.get("reward_first_steps") is not None:
        lines.append(f"  training reward: {s['reward_first_steps']:.3f} (first steps) -> {s['reward_last_steps']:.3f} (last)")
    phases = [f"{p} {s[f'seconds_per_step/{p}']:.2f}s" for p in ("rollout", "reward", "learn", "sync")
              if f"seconds_per_step/{p}" in s]
    if phases:
        lines.append("  per step: " + ", ".join(phases))
    lines.append(f"  in {out}: summary.json, reward_curve.png, metrics.jsonl, tensorboard/, final/ (the trained model)")
    print("\n".join(lines), flush=True)


# Hydra flags after which the command line is not a training job to check (help, printing the
# config, shell completion) or is composed from elsewhere (another config path or name).
NOT_A_JOB = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
             "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--version", "--package", "-p",
             "--resolve", "--experimental-rerun")


def main() -> None:
    import hydra

    from rlvr.config import ConfigError

    args = sys.argv[1:]
    if not any(a.split("=")[0] in NOT_A_JOB for a in args):
        # Every job of the command line (each of a --multirun sweep) is composed, validated and
        # checked against the world here, before Hydra writes anything or Ray starts.
        from rlvr.training.preflight import check_command_line

        try:
            sys.argv[1:] = check_command_line(CONFIG_DIR, args)
        except ConfigError as err:
            print(f"rlvr-train: {err}", file=sys.stderr)
            sys.exit(2)

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def app(cfg) -> None:
        try:
            _run(cfg)
        except ConfigError as err:
            # A user mistake: say what and where, no traceback, exit code 2.
            print(f"rlvr-train: {err}", file=sys.stderr)
            sys.exit(2)

    app()


if __name__ == "__main__":
    main()
