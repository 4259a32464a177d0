"""Reward models: GenRM-style generative judges (``reward_models.genrm``)."""
