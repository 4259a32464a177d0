"""rlvr: reinforcement learning with verifiable rewards for hybrid Mamba-Transformer MoE models."""

__version__ = "0.1.0"
