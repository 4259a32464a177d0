"""Execution match: does a query return what the gold query returns?

Results are compared as rows of values: column names are ignored (``COUNT(*)`` and ``AS n`` are
the same column), the column order is not (it is part of what was asked). Integers and text
compare exactly (another customer's phone number one digit off is another number); an integer
equals a float only when they are the same number (``3`` = ``3.0``); two floats match within a
relative tolerance of ``REL_TOL`` (or ``ABS_TOL`` near zero: ``0.1 + 0.2`` = ``0.3``). The rows'
order counts only when the gold query orders them (a top-level ``ORDER BY``) or the task says
``order_matters``; otherwise the rows are compared as a multiset (duplicates count).

A gold result that a query matching nothing would also give (no rows, only NULLs, or one row of
0 / NULL / empty text: a count or an aggregate over nothing) cannot tell an answer from a guess or
from a filter that matched nothing by mistake: ``degenerate`` names it, generators never make
one, and the environment refuses such a row unless told to score it.
"""

from __future__ import annotations

import math
import re

REL_TOL, ABS_TOL = 1e-9, 1e-12
_STRINGS_AND_COMMENTS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.S)


def has_top_level_order_by(sql: str) -> bool:
    """An ORDER BY of the outer query (not one inside a subquery or a string)."""
    text = _STRINGS_AND_COMMENTS.sub(" ", sql)
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and ch in "oO" and re.match(r"order\s+by\b", text[i:], re.I) and (i == 0 or not text[i - 1].isalnum()):
            return True
    return False


def same_value(a, b) -> bool:
    """One cell against another (see the module docstring)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return a == b  # int against int or float: exact (Python compares them without rounding)
    return type(a) is type(b) and a == b


def _sort_key(row: tuple) -> tuple:
    """Orders rows whose values may differ within the float tolerance the same way: by type,
    then by value, floats rounded to 9 digits."""
    key = []
    for v in row:
        if v is None:
            key.append((0, 0))
        elif isinstance(v, (int, float)):
            key.append((1, float(f"{v:.9g}") if isinstance(v, float) else v))
        else:
            key.append((2 if isinstance(v, str) else 3, v))
    return tuple(key)


def results_match(gold_rows: list, rows: list, ordered: bool) -> bool:
    """``rows`` equal ``gold_rows`` (see the module docstring)."""
    if len(gold_rows) != len(rows):
        return False
    if not ordered:
        gold_rows, rows = sorted(gold_rows, key=_sort_key), sorted(rows, key=_sort_key)
    return all(len(g) == len(r) and all(map(same_value, g, r)) for g, r in zip(gold_rows, rows))


def degenerate(gold_rows: list) -> str | None:
    """Why a gold result cannot tell an answer from a guess, or None."""
    if not gold_rows:
        return "the gold query returns no rows"
    if all(v is None for row in gold_rows for v in row):
        return "the gold query returns only NULLs"
    if len(gold_rows) == 1 and all(v is None or v == 0 or v == "" for v in gold_rows[0]):
        return "the gold query returns one row of 0 / NULL / empty text (what an aggregate over nothing gives)"
    return None
