"""GenRM-style generative reward models (judges). Empty until the judge issue lands."""
