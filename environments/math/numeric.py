"""Equality of numbers and expressions, exact where it can be and never slow.

Integers, rationals, their powers and factorials are compared exactly, through their difference
(``100! + 1`` is not ``100!``; ``pi + 10^-50`` is not ``pi``); a value too large to compute (a
power tower, a huge factorial) is recognised from its size before anything is evaluated
(``TooLarge``). Expressions with free symbols are compared through their difference at many
random points seeded per pair, from both signs (``|x|`` is not ``x``; a polynomial that vanishes
at a few fixed points cannot pass), compiled once per pair; where no point can be evaluated,
sympy's ``simplify`` decides.
"""

from __future__ import annotations

import hashlib
import math
import random
from fractions import Fraction

import mpmath
import sympy

# Exact arithmetic on integers and rationals up to this many bits (2^(2^20) has 2^20); beyond,
# a value is "too large" and two of them are equal only in the same form.
EXACT_BITS = 1 << 22
MAX_EXACT_FACTORIAL = 100_000


class TooLarge(ValueError):
    """A value too large to compute exactly (a power tower, a huge factorial)."""


_SAMPLE_POINTS = 16
_I = sympy.Symbol("i")


def expressions_equal(a, b, precision: int | None = None) -> bool:
    """Are two sympy values equal (see the module docstring)? ``TooLarge`` when one is too large
    to compare but not written alike."""
    if not (isinstance(a, sympy.Basic) and isinstance(b, sympy.Basic)):
        return False
    if a.has(sympy.I) or b.has(sympy.I) or (a.free_symbols | b.free_symbols) == {_I} and (a.is_number or b.is_number):
        a, b = a.subs(_I, sympy.I), b.subs(_I, sympy.I)  # i is the imaginary unit against a complex or a number
    if a == b:
        return True
    if a.is_number and b.is_number:
        return _numbers_equal(a, b, precision)
    if huge(a) or huge(b):
        raise TooLarge  # numeric evaluation at sample points could take hours
    difference = a - b  # (sympy cancels what the two share: 100! + x - 100! is x)
    if difference == 0:
        return True
    verdict = _sampled_zero(difference, seed=f"{a}|{b}")
    if verdict is not None:
        return verdict
    try:  # (the points could not be evaluated: a proof decides)
        return sympy.simplify(difference) == 0
    except (TypeError, ValueError, NotImplementedError, AttributeError, RecursionError):
        return False


def _numbers_equal(a, b, precision: int | None) -> bool:
    if a.has(sympy.oo, sympy.zoo, -sympy.oo) or b.has(sympy.oo, sympy.zoo, -sympy.oo):
        return a == b
    if not (a.has(sympy.Float) or b.has(sympy.Float)):
        # Integers, rationals, their powers and factorials: decided exactly (a tolerance would
        # take 100! + 1 for 100!), or raise TooLarge before any slow evaluation. Others (roots,
        # pi) through their difference, which sympy cancels where it can (pi + 10^-50 - pi).
        ea, eb = exact_value(a), exact_value(b)
        if ea is not None and eb is not None:
            return ea == eb
        if huge(a) or huge(b):
            raise TooLarge
        difference = a - b
        exact = exact_value(difference) if difference.is_number else None
        if exact is not None:
            return exact == 0
        return _numerically_zero(difference, max(_magnitude(a), _magnitude(b)))
    if huge(a) or huge(b):
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
    places = 6 if precision is None else precision
    return round(float(va), places) == round(float(vb), places) or \
        bool(abs(va - vb) <= 1e-9 * max(1, abs(vb)))


def _magnitude(x):
    """|x| at 30 digits, a sympy number (a float would underflow: e^-1000 is not 0)."""
    try:
        return abs(sympy.N(x, 30))
    except (TypeError, ValueError, OverflowError):
        return sympy.Integer(1)


def _numerically_zero(difference, scale) -> bool:
    """An exact irrational difference is zero when it vanishes at 100 digits relative to the
    values compared (equal values differ by rounding noise only; 10^-50 does not). In sympy
    numbers throughout: tiny values (sin(1)^(9^9)) stay themselves."""
    try:
        value = abs(sympy.N(difference, 100))
        return bool(value == 0 or value <= sympy.Float(10, 100) ** -90 * scale)
    except (TypeError, ValueError, OverflowError):
        return False


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


def huge(expr) -> bool:
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


def _sampled_zero(difference, seed: str) -> bool | None:
    """Is ``difference`` zero at random points (``_SAMPLE_POINTS``, drawn per pair from both
    signs, so |x| is not x)? False on a clear non-zero, True when every point agrees, None when it
    cannot be evaluated. A value counts as zero relative to the size of its own terms, so a
    difference hidden beside a huge shared term (cancelled first) is still seen. Evaluated at 30
    digits, compiled once for all points (``lambdify`` to mpmath; sympy's ``evalf`` where the
    expression has no mpmath form)."""
    symbols = sorted(difference.free_symbols, key=lambda s: s.name)
    terms = difference.args if isinstance(difference, sympy.Add) else (difference,)
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    evaluate = _compiled(symbols, (difference, *terms))
    agreed = 0
    with mpmath.workdps(30):
        for _ in range(_SAMPLE_POINTS):
            point = [rng.choice((-1, 1)) * rng.uniform(0.2, 3.0) for _ in symbols]
            try:
                value, *parts = (complex(v) for v in evaluate(point))
            except (TypeError, ValueError, ZeroDivisionError, OverflowError, ArithmeticError, NameError):
                continue
            scale = max([1.0] + [abs(p) for p in parts])
            if value != value or scale != scale or math.isinf(scale):  # NaN, a pole
                continue
            if abs(value) > 1e-12 * scale:
                return False
            agreed += 1
    return True if agreed >= 4 else None


def _compiled(symbols: list, exprs: tuple):
    """``point -> values of exprs``: mpmath code when sympy can write it, else ``evalf``."""
    try:
        fn = sympy.lambdify(symbols, list(exprs), modules="mpmath")
        return lambda point: fn(*(mpmath.mpf(x) for x in point))
    except Exception:  # noqa: BLE001 - any expression lambdify cannot print (undefined functions, sums)
        return lambda point: [e.evalf(30, subs={s: sympy.Float(x, 30) for s, x in zip(symbols, point)})
                              for e in exprs]
