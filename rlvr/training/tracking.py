"""Where training metrics go: a JSONL file (always readable, resumable), TensorBoard, and
Weights & Biases when it is installed and a project is configured; plus the reward-curve plot
written at the end of a run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rlvr.config import LoggingConfig

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, cfg: LoggingConfig, directory: Path, run_name: str, config: dict, resume_step: int = 0):
        self.directory = directory
        self.jsonl = None
        self.rows: list[dict] = []  # every step logged so far in this run (earlier launches too)
        if cfg.jsonl:
            path = directory / "metrics.jsonl"
            if resume_step and path.exists():
                self.rows = _rows_up_to(path, resume_step)  # steps past the checkpoint are redone
                path.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
            self.jsonl = path.open("a" if resume_step else "w", encoding="utf-8")
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(directory / "tensorboard"), purge_step=resume_step or None)
        self.wandb = None
        if cfg.wandb_project:
            try:
                import wandb
            except ImportError:
                log.warning("logging.wandb_project is set but wandb is not installed: not logging to W&B")
            else:
                self.wandb = wandb.init(project=cfg.wandb_project, name=run_name, config=config, resume="allow",
                                        id=run_name)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.append({"step": step, **metrics})
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(self.rows[-1]) + "\n")
            self.jsonl.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _rows_up_to(path: Path, step: int) -> list[dict]:
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [r for r in rows if r.get("step", 0) <= step]


def plot_reward_curve(rows: list[dict], evals: list[tuple[int, float]], path: Path, title: str) -> None:
    """Training reward per step (and its moving average) with held-out accuracy points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows if "reward/mean" in r]
    reward = [r["reward/mean"] for r in rows if "reward/mean" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if steps:
        ax.plot(steps, reward, color="tab:blue", alpha=0.35, linewidth=1, label="training reward (mean per step)")
        window = max(1, len(reward) // 20)
        smooth = [sum(reward[max(0, i - window + 1):i + 1]) / len(reward[max(0, i - window + 1):i + 1])
                  for i in range(len(reward))]
        ax.plot(steps, smooth, color="tab:blue", linewidth=2, label=f"moving average ({window} steps)")
    if evals:
        ax.plot([s for s, _ in evals], [a for _, a in evals], "o-", color="tab:red", label="held-out greedy accuracy")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
