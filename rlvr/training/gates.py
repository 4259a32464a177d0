"""Gates on a run's metrics: a metric whose mean over the last ``window`` steps passes its bound
warns, or stops the run with a one-line reason (a checkpoint is written first, so a relaunch
after the cause is fixed resumes there).

A gate watches a metric only on the steps that log it (a judge's ``reward/judge/fallback_share``
exists only in runs with a judged source), and judges only a full window. The default gate
stops a run whose judge writes no verdict of its own on more than half of its comparisons for 5
steps: such a run would train on neutral rewards, with only a metric to say so.
"""

from __future__ import annotations

import collections
import logging

log = logging.getLogger(__name__)

# What a tripped gate's reason adds for the metrics the project logs.
_MISMATCH = ("the rollout engine and the learner disagree on the sampled tokens' probabilities (precision, "
             "kernels, MoE routing): compare rollout.dtype with the learner's, or train with algorithm=gspo or "
             "algorithm.is_mode=mask")
HINTS = {
    "reward/judge/fallback_share": "the judge's answers hold no verdict of its own (cut off, garbled, or only "
                                   "quoting the candidates): check its endpoint, model, max_tokens and template",
    "train/token_prob_error": _MISMATCH,
    "train/engine_trainer_kl": _MISMATCH,
    "train/logprob_mismatch": _MISMATCH,
    "rollout/prefill_decode_gap": "the engines' decode path (Mamba's recurrence) and one prefill pass (the "
                                  "learner's chunked scan) disagree on the same weights: check the kernels and "
                                  "rollout.dtype, or mask such sequences (algorithm.is_mode=mask, is_level=sequence)",
    "train/routing_agreement": "the learner's MoE routers choose other experts than the engines did for the same "
                               "tokens: train with algorithm.routing_replay=rollout, or compare rollout.dtype with "
                               "the learner's",
}


class GateTripped(RuntimeError):
    """A gate with ``action: stop`` passed its bound: the run stops; ``str()`` is its reason."""


class Gates:
    """The run's gates (``Config.gates``), each with the window of its metric's last values."""

    def __init__(self, gates):
        self.gates = list(gates)
        self.windows = [collections.deque(maxlen=g.window) for g in self.gates]

    def check(self, step: int, metrics: dict[str, float]) -> list[str]:
        """Add a step's metrics -> the reasons of the warning gates that passed their bound;
        ``GateTripped`` for a stopping one."""
        warnings = []
        for gate, window in zip(self.gates, self.windows):
            if gate.metric not in metrics:
                continue
            window.append(float(metrics[gate.metric]))
            mean = sum(window) / len(window)
            if len(window) < gate.window or not (mean > gate.above if gate.above is not None else mean < gate.below):
                continue
            bound = f"above {gate.above:g}" if gate.above is not None else f"below {gate.below:g}"
            reason = (f"{gate.metric} averaged {mean:.3g} over the last {gate.window} steps (to step {step}), "
                      f"{bound}" + (f": {HINTS[gate.metric]}" if gate.metric in HINTS else ""))
            if gate.action == "stop":
                raise GateTripped(reason)
            log.warning("gate: %s", reason)
            warnings.append(reason)
            window.clear()  # warn again only after another full window
        return warnings
