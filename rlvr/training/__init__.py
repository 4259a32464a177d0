"""GRPO training (``rlvr-train``): the driver loop and what it drives.

    app.py        the Hydra app (``rlvr-train``) and ``train(overrides)``, the same job from Python
    command_line.py  a command line read as Hydra reads it, every job of it composed and checked
    preflight.py  the checks of a composed config against the world, before Ray
    plan.py       ``rlvr plan``: a job's memory per device, from the config and the model's shape
    trainer.py    the single-controller loop: prompts -> rollouts -> rewards -> update -> sync
    learner.py    DeepSpeed ranks in Ray actors: logprobs, the GRPO loss, optimizer steps
    packing.py    sequences packed into token-budget micro-batches
    sft.py        the supervised warm start
    tracking.py   metrics (JSONL, TensorBoard, W&B) and the reward-curve plot
    interrupt.py  SIGINT/SIGTERM -> stop at a step boundary, with a checkpoint
    precision.py  the SSM tensors kept fp32 while DeepSpeed trains the rest in bf16
"""

from rlvr.training.app import RunStopped, train

__all__ = ["RunStopped", "train"]
