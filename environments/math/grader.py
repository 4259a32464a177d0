"""Decide whether a predicted answer equals a gold answer.

Cheap first: normalised string equality, then exact rational comparison of plain numbers, and
only then parsing into sympy and structural / symbolic comparison. Symbolic equality is tested by
evaluating both sides at random points before any ``simplify`` (a mismatch at one point is proof
of inequality and costs microseconds).

The convention follows Math-Verify where it is mathematically sound: an equation answer
``x = 3`` is compared by its value, comma lists are sets, ``(a, b]`` is an interval, a decimal
prediction matches an exact gold when both round alike to ``precision`` decimal places.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import re
from fractions import Fraction

import sympy

from environments.math.extract import FINAL_METHODS, candidates, normalize
from environments.math.latex import ParseError, Rel, Seq, Text, Union, parse_answer


@dataclasses.dataclass(frozen=True)
class Verdict:
    equal: bool
    pred: str | None  # the extracted prediction
    gold: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class Options:
    precision: int = 6  # decimal places two numbers must agree to when one is inexact
    allow_set_relation: bool = False  # may a predicted relation (x <= 2) match a gold set?
    plain_numbers: bool = True  # may a bare number in prose be the answer (not only LaTeX)?


# ---------------------------------------------------------------- parsing with caches

_SIMPLE_NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?|-?\\frac\{\d+\}\{\d+\}")


@functools.lru_cache(maxsize=16384)
def simple_number(s: str) -> Fraction | None:
    """Exact value of a plain number (``12``, ``-0.5``, ``3/4``, ``\\frac{3}{4}``), else None."""
    if not _SIMPLE_NUMBER_RE.fullmatch(s):
        return None
    neg = s.startswith("-")
    body = s.lstrip("-")
    if body.startswith("\\frac"):
        num, den = re.findall(r"\d+", body)
        body = f"{num}/{den}"
    try:
        value = Fraction(body)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if neg else value


@functools.lru_cache(maxsize=65536)
def parsed(answer: str):
    """Normalised string and parsed value of one extracted answer (None when it does not parse).
    Cached: a gold answer is parsed once however many samples are graded against it."""
    norm = normalize(answer)
    try:
        value = parse_answer(norm)
    except (ParseError, TypeError, ValueError, AttributeError, sympy.SympifyError, RecursionError):
        value = None
    return norm, value


@functools.lru_cache(maxsize=16384)
def extract(text: str, plain_numbers: bool = True) -> tuple[str, str] | None:
    """The first candidate answer of ``text`` that parses, as (answer, method). When ``text``
    states a final answer (a box, "the answer is", ``####``), only that is a candidate: an answer
    elsewhere in the text never stands in for a final answer that is empty or broken."""
    found = [c for c in candidates(text) if plain_numbers or c[1] != "last-number"]
    final = [c for c in found if c[1] in FINAL_METHODS]
    # The statement that comes first is the final answer (a box, or a later "the answer is"
    # line); the other is no fallback for it.
    final = [c for c in final if c[1] == final[0][1]] if final else []
    for answer, method in final or found:
        if method == "hedged" or parsed(answer)[1] is not None:
            return answer, method
    return (final or found)[0] if found else None


# A final answer longer than this is not an answer (and would only cost parsing time).
MAX_ANSWER_CHARS = 1000
# Exact arithmetic on integers and rationals up to this many bits (2^(2^20) has 2^20); beyond,
# a value is "too large" and two of them are equal only in the same form.
EXACT_BITS = 1 << 22
MAX_EXACT_FACTORIAL = 100_000


class TooLarge(ValueError):
    """A value too large to compute exactly (a power tower, a huge factorial)."""


# ---------------------------------------------------------------- the comparison

def grade(response: str, gold: str, options: Options = Options()) -> Verdict:
    """Extract the final answer from ``response`` and ``gold`` and compare them."""
    g = extract(gold, options.plain_numbers)
    if g is None:
        return Verdict(False, None, None, "no gold answer found")
    p = extract(response, options.plain_numbers)
    if p is None:
        return Verdict(False, None, g[0], "no answer found in response")
    refused = _refuse(p)
    if refused:
        return Verdict(False, p[0], g[0], refused)
    p_norm, p_val = parsed(p[0])
    g_norm, g_val = parsed(g[0])
    if p_norm == g_norm or _canonical_text(p_norm) == _canonical_text(g_norm):
        return Verdict(True, p[0], g[0], f"same string ({p[1]})")
    pn, gn = simple_number(p_norm), simple_number(g_norm)
    if pn is not None and gn is not None:
        same = pn == gn or _close(pn, gn, p_norm, g_norm, options.precision)
        return Verdict(same, p[0], g[0], "equal numbers" if same else "different numbers")
    if p_val is None or g_val is None:
        side = ("final" if p[1] in FINAL_METHODS else "response") if p_val is None else "gold"
        return Verdict(False, p[0], g[0], f"{side} answer did not parse; strings differ")
    try:
        same = bool(equivalent(p_val, g_val, options))
    except TooLarge:
        return Verdict(False, p[0], g[0], "too large to compare exactly (a power tower or a huge factorial) "
                                          "and not written the same way")
    except (TypeError, ValueError, AttributeError, NotImplementedError, RecursionError,
            ZeroDivisionError, OverflowError, sympy.SympifyError) as exc:
        return Verdict(False, p[0], g[0], f"comparison failed: {type(exc).__name__}")
    return Verdict(same, p[0], g[0], "equivalent" if same else "not equivalent")


def _refuse(p: tuple[str, str]) -> str | None:
    """Why an extracted answer scores 0 before any comparison, if it does."""
    answer, method = p
    if method == "hedged":
        return "hedged final answer: several values offered"
    if method in FINAL_METHODS and not parsed(answer)[0]:  # (cached: the comparison needs it too)
        return "empty final answer"
    if len(answer) > MAX_ANSWER_CHARS:
        return f"final answer longer than {MAX_ANSWER_CHARS} characters"
    return None


_TEXT_COMMAND_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|textnormal)\s*\{([^{}]*)\}")
_LETTER_OPTION_RE = re.compile(r"^\(([A-Za-z])\)$")
_SPACE_RE = re.compile(r"\s+")


@functools.lru_cache(maxsize=16384)  # (a gold answer's is asked for every sample graded against it)
def _canonical_text(s: str) -> str:
    s = _TEXT_COMMAND_RE.sub(r"\1", s)
    s = _LETTER_OPTION_RE.sub(r"\1", s.strip())
    return _SPACE_RE.sub("", s).lower() if len(s) > 1 or not s.isalpha() else s


def _close(a: Fraction, b: Fraction, a_text: str, b_text: str, precision: int) -> bool:
    if "." not in a_text and "." not in b_text:
        return False  # both exact and unequal
    return round(float(a), precision) == round(float(b), precision) or abs(a - b) <= abs(b) * Fraction(1, 10**9)


def equivalent(pred, gold, options: Options) -> bool:
    """Structural equivalence of two parsed answers."""
    pred, gold = _reduce_relations(pred, gold)
    if isinstance(gold, Rel) and isinstance(pred, Rel):
        return _relations_equal(pred, gold, options)
    if isinstance(gold, Rel):
        as_set = _relation_as_set(gold)
        return as_set is not None and equivalent(pred, as_set, options)
    if isinstance(pred, Rel):
        # A predicted inequality for a gold set: accepted only when the convention allows it.
        as_set = _relation_as_set(pred) if options.allow_set_relation else None
        return as_set is not None and equivalent(as_set, gold, options)
    if isinstance(pred, Text) or isinstance(gold, Text):
        return _text_of(pred) is not None and _text_of(pred) == _text_of(gold)
    if _is_matrix(pred) or _is_matrix(gold):
        return _matrices_equal(pred, gold, options)
    if isinstance(pred, (Union, Seq)) or isinstance(gold, (Union, Seq)):
        return _collections_equal(pred, gold, options)
    return expressions_equal(pred, gold, options)


# -- relations

def _is_name(term) -> bool:
    """A left-hand side that merely names the answer: ``x``, ``f(x)``, ``a_3``, ``|AB|``,
    ``A:B``, ``(p, q)``. Equations with such a side are graded by their value."""
    if isinstance(term, Seq):
        return all(_is_name(t) for t in term.items)
    if not isinstance(term, sympy.Basic):
        return False
    if isinstance(term, (sympy.Add, sympy.core.relational.Relational)):
        return False
    return not any(a.is_Number and a not in (1, -1) for a in sympy.preorder_traversal(term))


def _reduce_relations(pred, gold):
    pred, gold = _reduce_approx(pred), _reduce_approx(gold)
    if isinstance(pred, Rel) and pred.ops and set(pred.ops) == {"in"}:
        pred = pred.terms[-1]
    if isinstance(gold, Rel) and gold.ops and set(gold.ops) == {"in"}:
        gold = gold.terms[-1]
    if _is_equation(pred) and not _is_equation(gold):
        pred = pred.terms[-1]
    if _is_equation(gold) and not _is_equation(pred):
        if len(gold.ops) > 1 or _is_name(gold.terms[0]):
            gold = gold.terms[-1]
    if isinstance(pred, Seq) and isinstance(gold, Seq):
        pred, gold = _group_solutions(pred), _group_solutions(gold)
        pred, gold = _values_of_named(pred, gold), _values_of_named(gold, pred)
    return pred, gold


def _group_solutions(seq: Seq) -> Seq:
    """``p=5, q=2, p=7, q=2`` (names repeating with period k) -> ``{(p=5, q=2), (p=7, q=2)}``."""
    items = seq.items
    if not seq.is_set or len(items) < 4 or not all(_is_equation(t) for t in items):
        return seq
    names = [t.terms[0] for t in items]
    for k in range(2, len(items) // 2 + 1):
        if len(items) % k == 0 and len(set(names[:k])) == k and all(
                names[i] == names[i % k] for i in range(len(items))):
            return Seq(tuple(Seq(items[i:i + k]) for i in range(0, len(items), k)), seq.open, seq.close)
    return seq


def _values_of_named(seq: Seq, other: Seq) -> Seq:
    """``p=5, q=2`` against ``(5, 2)``: the equations' values, in written order, as a tuple."""
    if seq.items and all(_is_equation(t) and _is_name(t.terms[0]) for t in seq.items):
        if not any(_is_equation(t) for t in other.items):
            opener = other.open if other.open in "([" and seq.open == "" else seq.open
            closer = other.close if opener == other.open else seq.close
            return Seq(tuple(t.terms[-1] for t in seq.items), opener, closer)
    return seq


def _reduce_approx(value):
    """``x = 1/3 \\approx 0.33`` is graded as ``x = 1/3``; ``x \\approx 11`` as ``x = 11``."""
    if not isinstance(value, Rel) or "~" not in value.ops:
        return value
    cut = value.ops.index("~")
    terms, ops = value.terms[:cut + 1], value.ops[:cut]
    if not ops:
        if _is_name(terms[0]) and not terms[0].is_number:
            return Rel(("=",), (terms[0], value.terms[cut + 1]))
        return terms[0]
    return Rel(ops, terms)


def _is_equation(value) -> bool:
    return isinstance(value, Rel) and set(value.ops) == {"="}


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "!=": "!="}


def _relations_equal(a: Rel, b: Rel, options: Options) -> bool:
    if _is_equation(a) and _is_equation(b):
        a, b = Rel(("=",), (a.terms[0], a.terms[-1])), Rel(("=",), (b.terms[0], b.terms[-1]))
    if len(a.ops) != len(b.ops):
        sa, sb = _relation_as_set(a), _relation_as_set(b)
        return sa is not None and sb is not None and _collections_equal(sa, sb, options)
    if len(a.ops) > 1:
        if a.ops == b.ops:
            pairs = zip(a.terms, b.terms)
        elif a.ops == tuple(_FLIP[o] for o in reversed(b.ops)):
            pairs = zip(a.terms, reversed(b.terms))
        else:
            return False
        return all(_exprs_or_text_equal(x, y, options) for x, y in pairs)
    return _single_relations_equal(a, b, options)


def _exprs_or_text_equal(x, y, options: Options) -> bool:
    if isinstance(x, sympy.Basic) and isinstance(y, sympy.Basic):
        return expressions_equal(x, y, options)
    return x == y


def _single_relations_equal(a: Rel, b: Rel, options: Options) -> bool:
    (op_a,), (op_b,) = a.ops, b.ops
    la, ra = a.terms
    lb, rb = b.terms
    if not all(isinstance(t, sympy.Basic) for t in (la, ra, lb, rb)):
        if op_a == op_b == "=":
            return la == lb and _collections_equal(ra, rb, options) if isinstance(ra, Seq) else False
        return False
    if op_a in ("<", "<="):
        op_a, la, ra = _FLIP[op_a], ra, la
    if op_b in ("<", "<="):
        op_b, lb, rb = _FLIP[op_b], rb, lb
    if op_a != op_b:
        return False
    if op_a == "=" and _is_name(la) and _is_name(lb) and la == lb:
        return expressions_equal(ra, rb, options)
    da, db = sympy.expand(la - ra), sympy.expand(lb - rb)
    if da == db:
        return True
    if db == 0 or da == 0:
        return False
    ratio = sympy.simplify(da / db)
    if not ratio.is_number or ratio == 0:
        return False
    # Inequalities survive only multiplication by a positive constant.
    return op_a in ("=", "!=") or bool(ratio.is_positive)


def _is_variable(term) -> bool:
    return isinstance(term, (sympy.Symbol, sympy.core.function.AppliedUndef))


def _relation_as_set(rel: Rel):
    """``a < x <= b`` as the interval ``(a, b]``; one-variable inequalities via sympy."""
    if len(rel.ops) == 2 and set(rel.ops) <= {"<", "<="} and _is_variable(rel.terms[1]):
        lo, hi = rel.terms[0], rel.terms[2]
        return Seq((lo, hi), "(" if rel.ops[0] == "<" else "[", ")" if rel.ops[1] == "<" else "]")
    if len(rel.ops) == 2 and set(rel.ops) <= {">", ">="} and _is_variable(rel.terms[1]):
        return _relation_as_set(Rel(tuple(_FLIP[o] for o in reversed(rel.ops)), rel.terms[::-1]))
    try:
        parts = [sympy.Rel(rel.terms[i], rel.terms[i + 1], rel.ops[i])
                 for i in range(len(rel.ops)) if rel.ops[i] in ("<", "<=", ">", ">=")]
        if len(parts) != len(rel.ops):
            return None
        free = set().union(*(p.free_symbols for p in parts))
        if len(free) != 1:
            return None
        var = free.pop()
        solved = sympy.Intersection(*[sympy.solveset(p, var, sympy.S.Reals) for p in parts])
        return _sympy_set_to_answer(solved)
    except (TypeError, ValueError, NotImplementedError, AttributeError):
        return None


def _sympy_set_to_answer(s):
    if isinstance(s, sympy.Interval):
        return Seq((s.start, s.end), "(" if s.left_open else "[", ")" if s.right_open else "]")
    if isinstance(s, sympy.Union):
        parts = [_sympy_set_to_answer(a) for a in s.args]
        return None if any(p is None for p in parts) else Union(tuple(parts))
    if isinstance(s, sympy.FiniteSet):
        return Seq(tuple(s.args), "{", "}")
    return None


# -- text, matrices, collections

def _text_of(value) -> str | None:
    if isinstance(value, Text):
        return _canonical_text(value.text)
    if isinstance(value, sympy.Symbol):
        return _canonical_text(value.name)
    if value is sympy.E:
        return "e"
    return None


def _is_matrix(value) -> bool:
    return isinstance(value, sympy.MatrixBase)


def _matrices_equal(a, b, options: Options) -> bool:
    if isinstance(a, Seq) and len(a.items) == 1:
        a = a.items[0]
    if isinstance(b, Seq) and len(b.items) == 1:
        b = b.items[0]
    if not (_is_matrix(a) and _is_matrix(b)) or a.shape != b.shape:
        return False
    return all(expressions_equal(x, y, options) for x, y in zip(a, b))


def _as_parts(value) -> list:
    if isinstance(value, Union):
        return list(value.parts)
    return [value]


def _collections_equal(pred, gold, options: Options) -> bool:
    if isinstance(pred, Union) or isinstance(gold, Union):
        pp, gp = _as_parts(pred), _as_parts(gold)
        return len(pp) == len(gp) and _match_unordered(pp, gp, options)
    if not isinstance(pred, Seq):
        pred = Seq((pred,), "{", "}")
    if not isinstance(gold, Seq):
        gold = Seq((gold,), "{", "}")
    if pred.is_set and gold.is_set:
        return _match_unordered(list(pred.items), list(gold.items), options)
    if len(pred.items) != len(gold.items):
        return False
    if pred.is_set != gold.is_set:
        ordered = gold if pred.is_set else pred
        unordered = pred if pred.is_set else gold
        if len(ordered.items) == 1:
            return equivalent(ordered.items[0], unordered.items[0], options)
        # Math-Verify compares a set with a tuple in the set's sorted order.
        items = _sorted_items(unordered.items)
        pairs = zip(items, ordered.items) if unordered is pred else zip(ordered.items, items)
        return all(equivalent(x, y, options) for x, y in pairs)
    if (pred.open, pred.close) != (gold.open, gold.close):
        return False
    return all(equivalent(x, y, options) for x, y in zip(pred.items, gold.items))


def _sorted_items(items: tuple) -> list:
    try:
        return sorted(items, key=lambda v: float(v))
    except (TypeError, ValueError):
        return list(items)


def _match_unordered(pred: list, gold: list, options: Options) -> bool:
    """Set equality: every pred item equals some gold item and vice versa (duplicates allowed,
    as in ``{1, 1, 2} = {1, 2}``)."""
    matched_gold = [False] * len(gold)
    for item in pred:
        hits = [j for j, candidate in enumerate(gold) if equivalent(item, candidate, options)]
        if not hits:
            return False
        for j in hits:
            matched_gold[j] = True
    return all(matched_gold)


# -- expressions

_SAMPLE_POINTS = 4


def expressions_equal(a, b, options: Options) -> bool:
    if not (isinstance(a, sympy.Basic) and isinstance(b, sympy.Basic)):
        return False
    if a == b:
        return True
    if a.is_number and b.is_number:
        return _numbers_equal(a, b, options)
    if _huge(a) or _huge(b):
        raise TooLarge  # numeric evaluation at sample points could take hours
    verdict = _sampled_equal(a, b)
    if verdict is not None:
        return verdict
    try:
        return sympy.simplify(a - b) == 0
    except (TypeError, ValueError, NotImplementedError, AttributeError):
        return False


def _numbers_equal(a, b, options: Options) -> bool:
    if a.has(sympy.oo, sympy.zoo, -sympy.oo) or b.has(sympy.oo, sympy.zoo, -sympy.oo):
        return a == b
    if not (a.has(sympy.Float) or b.has(sympy.Float)):
        # Integers, rationals, their powers and factorials: decided exactly (a tolerance would
        # take 100! + 1 for 100!), or raise TooLarge before any slow evaluation.
        ea, eb = exact_value(a), exact_value(b)
        if ea is not None and eb is not None:
            return ea == eb
    if _huge(a) or _huge(b):
        raise TooLarge
    try:
        va, vb = sympy.N(a, 60), sympy.N(b, 60)
    except (TypeError, ValueError, OverflowError):
        return False
    if not (va.is_real and vb.is_real):
        try:
            return abs(complex(va) - complex(vb)) <= 1e-9 * max(1.0, abs(complex(vb)))
        except TypeError:
            return False
    inexact = a.has(sympy.Float) or b.has(sympy.Float)
    if not inexact:
        # Exact irrationals (roots, pi): equal values differ by rounding noise only, relative to
        # their size (an absolute tolerance would take sin(1)^(9^9) for sin(2)^(9^9): both tiny).
        return bool(va == vb or abs(va - vb) <= sympy.Float(10) ** -45 * max(abs(va), abs(vb)))
    return round(float(va), options.precision) == round(float(vb), options.precision) or \
        bool(abs(va - vb) <= 1e-9 * max(1, abs(vb)))


def exact_value(expr) -> Fraction | None:
    """The exact rational value of an expression built from integers and rationals with +, *,
    integer powers and factorials; None if it is not one (sqrt 2, pi); ``TooLarge`` if it would
    need more than ``EXACT_BITS`` bits. Never slow: sizes are checked before anything is computed."""
    if expr.is_Rational:
        return Fraction(int(expr.p), int(expr.q))
    if isinstance(expr, (sympy.Add, sympy.Mul)):
        parts = [exact_value(arg) for arg in expr.args]
        if any(p is None for p in parts):
            return None
        total = parts[0]
        for p in parts[1:]:
            if isinstance(expr, sympy.Add):
                total += p
            else:
                _check_bits(_bits(total) + _bits(p))
                total *= p
        return total
    if isinstance(expr, sympy.Pow):
        base, exp = exact_value(expr.base), exact_value(expr.exp)
        if base is None or exp is None or exp.denominator != 1:
            return None
        if base == 0:
            return None if exp < 0 else Fraction(int(exp == 0))
        if abs(base) == 1:  # no growth, whatever the exponent
            return base ** (int(exp) % 2)
        _check_bits(_bits(base) * abs(exp))
        return base ** int(exp)
    if isinstance(expr, sympy.binomial):
        n, k = (exact_value(a) for a in expr.args)
        if n is None or k is None or n.denominator != 1 or k.denominator != 1 or n < 0:
            return None
        if n > MAX_EXACT_FACTORIAL:
            raise TooLarge
        return Fraction(math.comb(int(n), int(k))) if 0 <= k <= n else Fraction(0)
    if isinstance(expr, sympy.factorial):
        n = exact_value(expr.args[0])
        if n is None or n.denominator != 1 or n < 0:
            return None
        if n > MAX_EXACT_FACTORIAL:
            raise TooLarge
        return Fraction(math.factorial(int(n)))
    return None


def _bits(x: Fraction) -> int:
    return max(abs(x.numerator).bit_length(), x.denominator.bit_length(), 1)


def _check_bits(bits) -> None:
    if bits > EXACT_BITS:
        raise TooLarge


def _huge(expr) -> bool:
    """Holds a power or factorial whose value is too large to evaluate (``TooLarge``)."""
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, (sympy.Pow, sympy.factorial, sympy.binomial)) and node.is_number:
            try:
                exact_value(node)
            except TooLarge:
                return True
        elif isinstance(node, sympy.Pow) and node.exp.is_number:
            try:
                e = exact_value(node.exp)
            except TooLarge:
                return True
            if e is not None and abs(e) > 10**9:
                return True
    return False


def _sampled_equal(a, b) -> bool | None:
    """Compare at random points: False on a clear mismatch, True when all points agree, None
    when the expressions cannot be evaluated numerically (functions, sums)."""
    symbols = sorted(a.free_symbols | b.free_symbols, key=lambda s: s.name)
    rng = random.Random(0)
    agreed = 0
    for _ in range(_SAMPLE_POINTS):
        point = {s: sympy.Float(rng.uniform(0.3, 2.7), 30) for s in symbols}
        try:
            va, vb = complex(a.evalf(30, subs=point)), complex(b.evalf(30, subs=point))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None
        if va != va or vb != vb:  # NaN
            continue
        if abs(va - vb) > 1e-9 * max(1.0, abs(va), abs(vb)):
            return False
        agreed += 1
    return True if agreed else None

