"""GRPO training (``rlvr-train``): the driver loop and what it drives.

    app.py        the Hydra app: command-line checks, then the trainer (``rlvr-train``)
    preflight.py  every job of a command line composed and checked against the world before Ray
    trainer.py    the single-controller loop: prompts -> rollouts -> rewards -> update -> sync
    learner.py    DeepSpeed ranks in Ray actors: logprobs, the GRPO loss, optimizer steps
    packing.py    sequences packed into token-budget micro-batches
    sft.py        the supervised warm start
    tracking.py   metrics (JSONL, TensorBoard, W&B) and the reward-curve plot
    interrupt.py  SIGINT/SIGTERM -> stop at a step boundary, with a checkpoint
"""
