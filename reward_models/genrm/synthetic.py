"""Open-ended tasks the project generates itself, for the ``judge`` environment (no third-party
data needed): short writing requests with no single right answer, each with a reference answer
(what a lone response is judged against in an evaluation with n = 1).

These exist so that a judged source can sit in a training mixture on any machine; what the
rewards mean depends entirely on the judge behind the environment.
"""

from __future__ import annotations

import random

_NAMES = ["Ada", "Bo", "Cleo", "Dev", "Emi", "Finn", "Gus", "Hale"]
_TOPICS = ["the sea", "a rainy day", "bread", "a small robot", "autumn", "a lost key", "the moon", "tea"]
_FORMS = [
    ("Write a one-sentence greeting for {name}, who likes {topic}.", "Hello {name}, I hope {topic} brings you joy!"),
    ("Describe {topic} in five words.", "Quiet, familiar, simple, warm, {topic}."),
    ("Give {name} one tip about {topic}.", "{name}, take a moment to enjoy {topic} slowly."),
    ("Write a short title for a story about {topic}.", "The Day of {topic}"),
]


def open_ended_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of ``prompt`` (a writing request) and ``reference`` (one acceptable answer)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, reference = rng.choice(_FORMS)
        fields = {"name": rng.choice(_NAMES), "topic": rng.choice(_TOPICS)}
        rows.append({"prompt": prompt.format(**fields), "reference": reference.format(**fields)})
    return rows
