"""Reverse a word: ``reverse abcd =`` -> ``dcba``. A complete rlvr plugin in one file.

* ``ReverseEnvironment``: the reward, 1.0 when the response is the word reversed (surrounding
  white space ignored), else 0.0. Rows need the field ``word`` (``task_fields``: rlvr rejects a
  row without it, naming the field, before any scoring).
* ``reverse_rows(n, seed, length, holdout, mistakes)``: the task generator. A fixed tenth of all
  words is held out (``holdout``: "exclude" for training, "only" for evaluation; rlvr-train
  asks for each split itself when ``data.eval`` is empty). With ``mistakes`` set, every row also
  has a ``response`` from a careless teacher that swaps two neighbouring letters with that
  probability: the SFT warm start's demonstrations.
"""

from __future__ import annotations

import random
import string

from rlvr.env import Environment, Reward, in_split


class ReverseEnvironment(Environment):
    """Reward 1 when the response is the task's word reversed."""

    task_fields = {"word": str}

    def score(self, task, response):
        answer = response.strip()
        return Reward(1.0 if answer == task["word"][::-1] else 0.0, {"answer": answer})


def held_out(word: str) -> bool:
    """A fixed, pseudo-random tenth of all words: never trained on."""
    return random.Random(f"reverse:{word}").random() < 0.1


def reverse_rows(n: int, seed: int = 0, length: int = 4, holdout: str | None = None,
                 mistakes: float | None = None) -> list[dict]:
    """Words to reverse: ``n`` rows ``{"prompt", "word"}`` of ``length`` letters (and a teacher's
    ``response`` with ``mistakes``)."""
    in_split(False, holdout)  # a bad split name is refused before any work
    if not 1 <= length <= 20:
        raise ValueError(f"length must be between 1 and 20, not {length}")
    if mistakes is not None and not 0 <= mistakes <= 1:
        raise ValueError(f"mistakes must be a probability, not {mistakes}")
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
        if not in_split(held_out(word), holdout):
            continue
        row = {"prompt": f"reverse {word} =", "word": word}
        if mistakes is not None:
            row["response"] = _teacher(word, rng, mistakes)
        rows.append(row)
    return rows


def _teacher(word: str, rng: random.Random, mistakes: float) -> str:
    letters = list(word[::-1])
    if len(letters) > 1 and rng.random() < mistakes:
        i = rng.randrange(len(letters) - 1)
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
    return "".join(letters)
