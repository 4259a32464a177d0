"""Decide whether a predicted answer equals a gold answer.

The response's final answer comes from ``extract`` (the final-answer rule: its statements must
be committed and agree, else it scores 0). Then, cheap first: units split off and compared
(``units.py``), normalised string equality, exact rational comparison of plain numbers, and only
then parsing into sympy and structural / symbolic comparison.

Exact where the gold is exact: a decimal is the exact rational of its digits (``0.0000004`` is
not 0, ``18446744073709551615.0`` is not 2^64); a tolerance applies only when the gold itself is
a rounded decimal (to its own number of places: ``3.14159`` for a gold of ``3.14``) or when
``Options.precision`` asks for one (the older convention: both rounded to that many places).
Numbers and expressions are compared in ``numeric.py``: exactly through their difference
(``pi + 10^-50`` is not ``pi``), and expressions at many random points seeded per pair (``|x|``
is not ``x``; a polynomial that vanishes at a few fixed points cannot pass).

Structures: the gold's brackets decide: a gold set or bare list is unordered, a tuple or interval
ordered (a bare predicted list is read in its order); a set is never an interval. An equation
with a lone variable on one side (``x = 7``, ``7 = x``) is its value; any other equation is a
relation, compared by both sides; an inequality in one variable and an interval compare both
ways.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from fractions import Fraction

import sympy

from environments.math.extract import REMARK, box_groups, fallback, prose, statements
from environments.math.normalize import normalize
from environments.math.latex import Difference, ParseError, Rel, Seq, Text, Union, parse_answer
from environments.math.numeric import TooLarge, expressions_equal, huge
from environments.math.units import split_unit


@dataclasses.dataclass(frozen=True)
class Verdict:
    equal: bool
    pred: str | None  # the extracted prediction
    gold: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class Options:
    precision: int | None = None  # decimal places two numbers must agree to when one is a decimal (None: exact)
    allow_set_relation: bool = True  # may a predicted relation (x <= 2) match a gold set?
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
def parsed(answer: str, exact: bool = True):
    """Normalised string and parsed value of one extracted answer (None when it does not parse).
    ``exact``: decimals as exact rationals (else as floats, for ``Options.precision``). Cached: a
    gold answer is parsed once however many samples are graded against it."""
    norm = normalize(answer)
    try:
        value = parse_answer(norm, exact_decimals=exact)
    except (ParseError, TypeError, ValueError, AttributeError, sympy.SympifyError, RecursionError):
        value = None
    return norm, value


@functools.lru_cache(maxsize=16384)
def final_answer(text: str, plain_numbers: bool = True) -> tuple[str | None, str, str | None]:
    """The final answer of ``text`` -> (answer, how it was found, None), or (None, how, why it
    scores 0): a statement that is no committed answer, statements that disagree, or nothing."""
    said = statements(text)
    if any(s.answer for s in said):  # (a remark about the answer counts only when nothing states one)
        said = [s for s in said if not (s.problem or "").startswith(REMARK)]
    if said:
        bad = next((s for s in said if s.problem), None)
        if bad is not None:
            return None, bad.kind, bad.problem
        last = said[-1]
        for other in dict.fromkeys(s.answer for s in said[:-1]):
            if other != last.answer and not compare(other, last.answer, Options())[0]:
                return None, last.kind, f"final answers disagree: {other[:40]!r} and {last.answer[:40]!r}"
        return last.answer, last.kind, None
    found, problem = fallback(text)
    if problem:
        return None, "prose", problem
    found = [c for c in found if plain_numbers or c[1] != "last-number"]
    for answer, method in found:
        if parsed(answer)[1] is not None:
            return answer, method, None
    return (found[0][0], found[0][1], None) if found else (None, "none", "no answer found in response")


# A final answer longer than this is not an answer (and would only cost parsing time).
MAX_ANSWER_CHARS = 1000
# ---------------------------------------------------------------- the comparison

@functools.lru_cache(maxsize=16384)
def gold_answer(gold: str) -> str | None:
    """The gold answer, read leniently (it is the dataset's, not the policy's): a reference
    solution's last group of boxes (as one list, "or" included) or its final statement,
    else the gold text itself, its math delimiters dropped and "or" / "and" between values read
    as a list ("$21,16$ or $11$")."""
    text = prose(gold)
    groups = box_groups(text)
    if groups:  # the last group of boxes ("\\boxed{1} papers and \\boxed{2} bins" is one)
        return ", ".join(content for _, _, content in groups[-1][0])
    said = [s for s in statements(text) if not s.problem]
    if said:
        return said[-1].answer
    text = re.sub(r"(?<!\\)\$+", " ", text).strip()
    text = re.sub(r"(?<=[\d)}\]])\s*(?:\bor\b|\band\b)\s*(?=[-\d($\\])", ", ", text)
    return text or None


def grade(response: str, gold: str, options: Options = Options()) -> Verdict:
    """The final answer of ``response`` against the gold answer."""
    g = gold_answer(gold)
    if g is None:
        return Verdict(False, None, None, "no gold answer found")
    p, method, problem = final_answer(response, options.plain_numbers)
    if p is None:
        return Verdict(False, None, g, problem or "no answer found in response")
    if len(p) > MAX_ANSWER_CHARS:
        return Verdict(False, p, g, f"final answer longer than {MAX_ANSWER_CHARS} characters")
    same, reason = compare(p, g, options)
    return Verdict(same, p, g, f"{reason} ({method})" if same else reason)


def compare(pred: str, gold: str, options: Options) -> tuple[bool, str]:
    """One answer against another -> (equal, why). Units first (``units.py``): different known
    units are a wrong answer, degrees and radians are converted, a percent is read as a fraction
    where the other side is one; then the values."""
    pv, pu = split_unit(pred)
    gv, gu = split_unit(gold)
    if pu and gu and pu != gu and {pu, gu} != {"degree", "rad"}:
        return False, f"units differ: {pu} against {gu}"
    readings = _readings(pv, pu, gv, gu)
    for value in readings:
        same, reason = _compare_values(value, gv, options)
        if same:
            return True, reason
    if readings and (pu in ("degree", "rad") or gu in ("degree", "rad")):
        return False, "not equal in the gold's angle unit"
    return _compare_values(pv, gv, options)


def _readings(pv: str, pu: str | None, gv: str, gu: str | None) -> list[str]:
    """The predicted value in the gold's convention: a fraction for a percent gold and a
    percent for a fraction (the value as written is tried too); degrees and radians converted
    where either side says which (radians: the unit, or a multiple of pi against degrees)."""
    if gu == "percent" and pu is None:
        return [f"({pv})\\cdot 100"]
    if pu == "percent" and gu is None:
        return [f"({pv})/100"]
    pred_rad = pu == "rad" or (pu is None and gu == "degree" and "\\pi" in pv)
    gold_rad = gu == "rad" or (gu is None and pu == "degree" and "\\pi" in gv)
    if pred_rad and gu == "degree":
        return [f"({pv})\\cdot 180/\\pi"]
    if pu == "degree" and gold_rad:
        return [f"({pv})\\cdot \\pi/180"]
    return []


def _compare_values(p: str, g: str, options: Options) -> tuple[bool, str]:
    exact = options.precision is None
    p_norm, p_val = parsed(p, exact)
    g_norm, g_val = parsed(g, exact)
    if not p_norm:
        return False, "empty final answer"
    if p_norm == g_norm or _canonical_text(p_norm) == _canonical_text(g_norm):
        return True, "same string"
    pn, gn = simple_number(p_norm), simple_number(g_norm)
    if pn is not None and gn is not None:
        same = pn == gn or _close(pn, gn, p_norm, g_norm, options.precision)
        return same, "equal numbers" if same else "different numbers"
    if p_val is None or g_val is None:
        return False, f"{'final' if p_val is None else 'gold'} answer did not parse; strings differ"
    try:
        if gn is not None and exact and _rounds_to_gold(p_val, gn, g_norm):
            return True, "rounds to the gold's decimals"
        same = bool(equivalent(p_val, g_val, options))
    except TooLarge:
        return False, "too large to compare exactly (a power tower or a huge factorial) and not written the same way"
    except (TypeError, ValueError, AttributeError, NotImplementedError, RecursionError,
            ZeroDivisionError, OverflowError, sympy.SympifyError) as exc:
        return False, f"comparison failed: {type(exc).__name__}"
    return same, "equivalent" if same else "not equivalent"


_TEXT_COMMAND_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|textnormal)\s*\{([^{}]*)\}")
_LETTER_OPTION_RE = re.compile(r"^\(([A-Za-z])\)$")
_SPACE_RE = re.compile(r"\s+")


@functools.lru_cache(maxsize=16384)  # (a gold answer's is asked for every sample graded against it)
def _canonical_text(s: str) -> str:
    s = _TEXT_COMMAND_RE.sub(r"\1", s)
    s = _LETTER_OPTION_RE.sub(r"\1", s.strip())
    return _SPACE_RE.sub("", s).lower() if len(s) > 1 or not s.isalpha() else s


def _gold_places(g_text: str) -> int:
    """The decimal places of a gold written as a decimal (``3.14`` has 2); 0 for any other."""
    return len(g_text.partition(".")[2]) if "." in g_text and "/" not in g_text else 0


def _rounds_to_gold(p, g: Fraction, g_text: str) -> bool:
    """An exact real (``\\sqrt{17}``, ``\\pi``) against a gold that is a rounded decimal
    (``4.123105625617661``, ``3.14``): it rounds to the gold at the gold's own places."""
    places = _gold_places(g_text)
    if not places or not isinstance(p, sympy.Basic) or not p.is_number or p.has(sympy.Float) or huge(p):
        return False
    value = sympy.N(p, places + 20)
    return bool(value.is_real) and abs(value - sympy.Rational(g)) * 2 * 10**places <= 1


def _close(p: Fraction, g: Fraction, p_text: str, g_text: str, precision: int | None) -> bool:
    """Unequal exact values that still match: the gold is a rounded decimal and the prediction,
    written finer (more places, or a fraction that does not end within them), rounds to it at the
    gold's own places; or ``precision`` asks for a tolerance."""
    if precision is not None:
        if "." not in p_text and "." not in g_text:
            return False  # both exact and unequal
        return round(float(p), precision) == round(float(g), precision) or abs(p - g) <= abs(g) * Fraction(1, 10**9)
    places = _gold_places(g_text)
    finer = len(p_text.partition(".")[2]) > places if "." in p_text else (p * 10**places).denominator != 1
    return places > 0 and finer and abs(p - g) * 2 * 10**places <= 1  # (1/3 is finer than 0.33; 2.4 is not 2.5)


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
    if isinstance(pred, (Union, Difference)) or isinstance(gold, (Union, Difference)):
        a, b = _real_set(pred), _real_set(gold)  # as sets of reals: (-oo, 0) U (0, oo) is R \ {0}
        if a is not None and b is not None:
            return a.symmetric_difference(b) == sympy.EmptySet
    if isinstance(pred, (Union, Seq)) or isinstance(gold, (Union, Seq)):
        return _collections_equal(pred, gold, options)
    return expressions_equal(pred, gold, options.precision)


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


def _inequalities_as_union(value):
    """``x < -2, x > 2`` (solutions listed as inequalities, "or" read as a list) -> the union of
    their intervals."""
    if not (isinstance(value, Seq) and value.is_set and len(value.items) > 1 and all(
            isinstance(t, Rel) and set(t.ops) <= {"<", "<=", ">", ">="} for t in value.items)):
        return value
    parts = [_relation_as_set(t) for t in value.items]
    if any(p is None for p in parts):
        return value
    return Union(tuple(q for p in parts for q in (p.parts if isinstance(p, Union) else (p,))))


def _reduce_relations(pred, gold):
    pred, gold = _reduce_approx(pred), _reduce_approx(gold)
    pred, gold = _inequalities_as_union(pred), _inequalities_as_union(gold)
    if isinstance(pred, Rel) and pred.ops and set(pred.ops) == {"in"}:
        pred = pred.terms[-1]
    if isinstance(gold, Rel) and gold.ops and set(gold.ops) == {"in"}:
        gold = gold.terms[-1]
    if _is_equation(pred) and not _is_equation(gold):
        pred = _assigned_value(pred)
    if _is_equation(gold) and not _is_equation(pred):
        gold = _assigned_value(gold, trusted=True)
    if isinstance(pred, Seq) and isinstance(gold, Seq):
        pred, gold = _group_solutions(pred), _group_solutions(gold)
        pred, gold = _values_of_named(pred, gold), _values_of_named(gold, pred)
    return pred, gold


def _assigned_value(rel: Rel, trusted: bool = False):
    """An assignment's value: one side names the quantity (``x = 7`` and ``7 = x`` are 7;
    ``|AB| = 1``), or a true chain of equalities ends in it (``x = 2 + 3 = 5``, ``3! \\cdot 5! =
    720``: its numbers all equal); any other equation (``9 = 7``, ``x = 1 = 2``) stays a relation.
    A ``trusted`` (gold) chain is its last term however it reads."""
    numbers = [t for t in rel.terms if isinstance(t, sympy.Basic) and t.is_number]
    if len(numbers) > 1 and not trusted and not all(expressions_equal(t, numbers[-1]) for t in numbers[:-1]):
        return rel  # a false statement states no value
    if len(rel.ops) > 1 or len(numbers) == 2:
        return rel.terms[-1]
    left, right = rel.terms
    if _is_name(left) and not _is_name(right):
        return right
    if _is_name(right) and not _is_name(left):
        return left
    if _is_name(left):
        return right
    return rel


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
        return expressions_equal(x, y, options.precision)
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
        return expressions_equal(ra, rb, options.precision)
    da, db = sympy.expand(la - ra), sympy.expand(lb - rb)
    if da == db:
        return True
    if db == 0 or da == 0:
        return False
    ratio = sympy.cancel(da / db)  # (decides rational functions at once: (x+1)/(x-1) is no constant)
    if not ratio.is_number and not ratio.is_rational_function():
        ratio = sympy.simplify(ratio)
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


def _real_set(value):
    """An interval, a set of numbers, or their unions and differences, as a sympy set of reals;
    None for anything else (a tuple of three, a set holding a variable)."""
    try:
        if isinstance(value, Union):
            parts = [_real_set(p) for p in value.parts]
            return None if any(p is None for p in parts) else sympy.Union(*parts)
        if isinstance(value, Difference):
            base, removed = _real_set(value.base), _real_set(value.removed)
            return None if base is None or removed is None else sympy.Complement(base, removed)
        if not isinstance(value, Seq) or not all(
                isinstance(x, sympy.Basic) and x.is_number and x.is_extended_real for x in value.items):
            return None
        if value.open == "{":
            return sympy.FiniteSet(*value.items)
        if len(value.items) == 2 and value.open in "([" and value.close in ")]" and value.open:
            lo, hi = value.items
            return sympy.Interval(lo, hi, value.open == "(", value.close == ")") if lo < hi else None
    except TypeError:  # (an undecidable comparison of endpoints)
        return None
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
    return all(expressions_equal(x, y, options.precision) for x, y in zip(a, b))


def _as_parts(value) -> list:
    if isinstance(value, Union):
        return list(value.parts)
    return [value]


def _collections_equal(pred, gold, options: Options) -> bool:
    """The gold's brackets decide: a set or a bare list is unordered, a tuple or an interval
    ordered (a bare predicted list is read in its order); a set is never a tuple or interval."""
    if isinstance(pred, Union) or isinstance(gold, Union):
        pp, gp = _as_parts(pred), _as_parts(gold)
        return len(pp) == len(gp) and _match_unordered(pp, gp, options)
    if not isinstance(pred, Seq):
        pred = Seq((pred,), "", "")
    if not isinstance(gold, Seq):
        gold = Seq((gold,), "", "")
    if gold.is_set:
        if not pred.is_set:
            return len(pred.items) == len(gold.items) == 1 and equivalent(pred.items[0], gold.items[0], options)
        return _match_unordered(list(pred.items), list(gold.items), options)
    if len(pred.items) != len(gold.items):
        return False
    if pred.open == "{" or (pred.open != "" and (pred.open, pred.close) != (gold.open, gold.close)):
        return False
    return all(equivalent(x, y, options) for x, y in zip(pred.items, gold.items))


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
