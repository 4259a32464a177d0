"""Built-in rlvr environments. Each registers through the ``rlvr.environments`` entry points."""
