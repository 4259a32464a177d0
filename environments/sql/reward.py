"""Execution match: does a query return what the gold query returns?

Results are compared as rows of values: column names are ignored (``COUNT(*)`` and ``AS n`` are
the same column), the column order is not (it is part of what was asked), numbers match within a
relative tolerance (``3`` = ``3.0``; ``0.1 + 0.2`` = ``0.3``), and the rows' order only when the
gold query orders them (a top-level ``ORDER BY``) or the task says ``order_matters``; otherwise
the rows are compared as a multiset (duplicates count).
"""

from __future__ import annotations

import re
from collections import Counter

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


def _cell(value, digits: int):
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(f"{float(value):.{digits}g}")  # a relative tolerance, and 3 == 3.0
    return value


def canonical_rows(rows: list, digits: int = 9) -> list[tuple]:
    return [tuple(_cell(v, digits) for v in row) for row in rows]


def results_match(gold_rows: list, rows: list, ordered: bool, digits: int = 9) -> bool:
    """``rows`` equal ``gold_rows`` (see the module docstring); ``digits``: significant digits
    that must agree."""
    gold, got = canonical_rows(gold_rows, digits), canonical_rows(rows, digits)
    if ordered:
        return gold == got
    return Counter(gold) == Counter(got)
