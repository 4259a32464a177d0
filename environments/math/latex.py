"""A small LaTeX / plain-math parser that builds sympy objects directly.

Why not an ANTLR grammar (latex2sympy): generating a parse tree and walking it costs
milliseconds per answer, most answers are a number or a short expression, and the grammar has
no notion of answer *structure* (sets, tuples, intervals, equations-as-answers). This parser is a
tokenizer plus a Pratt-style recursive descent over the handful of constructs that appear in
final answers. It returns one of the answer types below; anything it does not understand raises
``ParseError`` and the grader falls back to string comparison.

Guarded on purpose: integer powers and factorials whose result would have more than
``MAX_EXACT_BITS`` bits stay unevaluated, so parsing ``10^{10^{10}}`` cannot hang. Anything
slower than that is the job of the scoring pool's wall-clock timeout.
"""

from __future__ import annotations

import dataclasses
import math
import re

import sympy

MAX_EXACT_BITS = 20_000


class ParseError(ValueError):
    pass


# ---------------------------------------------------------------- answer types


@dataclasses.dataclass(frozen=True)
class Seq:
    """A bracketed or bare list. ``open``/``close`` keep the brackets: ``(``/``]`` make intervals,
    ``{`` or ``""`` an unordered set, ``:`` a ratio."""

    items: tuple
    open: str = ""
    close: str = ""

    @property
    def is_set(self) -> bool:
        return self.open in ("{", "")


@dataclasses.dataclass(frozen=True)
class Rel:
    """A relation chain ``terms[0] ops[0] terms[1] ops[1] ...``; ops are ``= < <= > >= != ~ in``."""

    ops: tuple
    terms: tuple


@dataclasses.dataclass(frozen=True)
class Text:
    text: str


@dataclasses.dataclass(frozen=True)
class Union:
    parts: tuple  # Seq intervals/sets


@dataclasses.dataclass(frozen=True)
class Difference:
    """``base \\setminus removed``: compared as a set of reals (``grader._real_set``)."""

    base: object
    removed: object


# ---------------------------------------------------------------- tokenizer

_TOKEN_RE = re.compile(
    r"""
    (?P<begin>\\begin\s*\{(?P<benv>[a-zA-Z*]+)\}(?:\s*\{[lcr|\s]*\})?)
  | (?P<end>\\end\s*\{[a-zA-Z*]+\})
  | (?P<text>\\(?:text|textbf|textit|textnormal|textrm|mbox|mathrm|mathbf|mathit|operatorname|mathsf|mathtt|hbox)\s*\{(?P<tbody>[^{}]*)\})
  | (?P<rowsep>\\\\)
  | (?P<num>\d+(?:\.\d+)?|\.\d+)
  | (?P<cmd>\\[a-zA-Z]+|\\[{}|%$])
  | (?P<rel><=|>=|!=|=|<|>)
  | (?P<ch>[a-zA-Z])
  | (?P<sym>[-+*/^_(){}\[\],;|!:%&'])
  | (?P<ws>\s+|\\[,;:! ]|~)
    """,
    re.VERBOSE,
)

_IGNORED_CMDS = {
    "\\left", "\\right", "\\big", "\\Big", "\\bigg", "\\Bigg", "\\bigl", "\\bigr", "\\Bigl",
    "\\Bigr", "\\displaystyle", "\\textstyle", "\\limits", "\\quad", "\\qquad", "\\mathclose",
    "\\mathopen", "\\$", "\\circ", "\\degree", "\\%", "\\boxed", "\\ensuremath", "\\hfill",
}
_RELATIONS = {
    "=": "=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "!=": "!=",
    "\\le": "<=", "\\leq": "<=", "\\leqslant": "<=", "\\ge": ">=", "\\geq": ">=",
    "\\geqslant": ">=", "\\lt": "<", "\\gt": ">", "\\ne": "!=", "\\neq": "!=",
    "\\approx": "~", "\\in": "in", "\\equiv": "=", "\\simeq": "~",
}
_CONSTANTS = {
    "\\pi": sympy.pi, "\\infty": sympy.oo, "\\infin": sympy.oo, "\\emptyset": "empty",
    "\\varnothing": "empty",
}
_FUNCTIONS = {
    "\\sin": sympy.sin, "\\cos": sympy.cos, "\\tan": sympy.tan, "\\cot": sympy.cot,
    "\\sec": sympy.sec, "\\csc": sympy.csc, "\\arcsin": sympy.asin, "\\arccos": sympy.acos,
    "\\arctan": sympy.atan, "\\sinh": sympy.sinh, "\\cosh": sympy.cosh, "\\tanh": sympy.tanh,
    "\\ln": sympy.log, "\\log": sympy.log, "\\exp": sympy.exp, "\\lg": lambda x: sympy.log(x, 10),
}
_MULS = {"*", "\\cdot", "\\times", "\\ast"}
_DIVS = {"/", "\\div"}
_FUNCTION_LETTERS = set("fghFGHPQW")
_PM = sympy.Symbol("_pm")  # marks a \pm so one expression expands into its two values


@dataclasses.dataclass
class Tok:
    kind: str
    value: str
    extra: str = ""


def tokenize(s: str) -> list[Tok]:
    toks: list[Tok] = []
    pos = 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            raise ParseError(f"unexpected character {s[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("ws", "benv", "tbody"):
            continue
        if kind == "begin":
            toks.append(Tok("begin", m.group("benv")))
        elif kind == "text":
            toks.append(Tok("text", m.group("tbody").strip()))
        elif kind == "cmd" and m.group() in _IGNORED_CMDS:
            continue
        else:
            toks.append(Tok(kind, m.group()))
    return toks


# ---------------------------------------------------------------- parser

_SEPARATORS = {",", ";"}
_CONJUNCTIONS = {"and", "or", ",", ";", "", "as well as"}


def _name_of(sub: object) -> str:
    return str(sub).replace(" ", "")


class Parser:
    """Recursive descent; one instance per string. Entry point: ``parse_answer``."""

    def __init__(self, text: str):
        self.toks = tokenize(text)
        self.i = 0
        self.exact_decimals = True

    # -- helpers
    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def at(self, *values: str) -> bool:
        t = self.peek()
        return t is not None and t.value in values and t.kind in ("sym", "cmd", "rel", "rowsep")

    def take(self) -> Tok:
        t = self.peek()
        if t is None:
            raise ParseError("unexpected end of input")
        self.i += 1
        return t

    def expect(self, value: str) -> None:
        t = self.take()
        if t.value != value:
            raise ParseError(f"expected {value!r}, got {t.value!r}")

    def at_separator_text(self) -> bool:
        t = self.peek()
        return t is not None and t.kind == "text" and t.value.lower().strip(" ,.") in _CONJUNCTIONS

    # -- grammar
    def parse(self):
        value = self.parse_list(top=True)
        # Units or words after a complete answer ("5 \text{ cm}") are ignored.
        while self.peek() is not None and self.peek().kind == "text":
            self.take()
        if self.peek() is not None:
            raise ParseError(f"trailing input at {self.peek().value!r}")
        return value

    def parse_list(self, top: bool = False, closers: tuple = ()):
        """Items separated by ``;`` (outer) and ``,`` (inner). ``;`` lists are solutions: each
        ``p=5, q=2`` inside becomes one item."""
        groups = [self.parse_comma_list(closers)]
        while self.at(";"):
            self.take()
            if self.peek() is None or self.at(*closers):
                break
            groups.append(self.parse_comma_list(closers))
        if len(groups) == 1:
            return groups[0]
        return Seq(tuple(groups), "", "")

    def parse_comma_list(self, closers: tuple):
        items = []
        while True:
            if self.peek() is None or self.at(*closers) or self.at(";"):
                break
            if self.at(",") or self.at_separator_text():
                self.take()
                continue
            items.append(self.parse_relation())
            if not (self.at(",") or self.at_separator_text()):
                break
        if not items:
            raise ParseError("empty list")
        return items[0] if len(items) == 1 else Seq(tuple(items), "", "")

    def parse_relation(self):
        terms = [self.parse_union()]
        ops = []
        while self.peek() is not None and (self.peek().kind == "rel" or self.at(*_RELATIONS)):
            op = self.take().value
            ops.append(_RELATIONS[op])
            terms.append(self.parse_union())
        return terms[0] if not ops else Rel(tuple(ops), tuple(terms))

    def parse_union(self):
        value = self.parse_expr()
        while self.at("\\cup", "\\sqcup", "\\setminus"):
            op = self.take().value
            right = self.parse_expr()
            if op == "\\setminus":
                value = Difference(value, right)
            else:
                value = Union((*(value.parts if isinstance(value, Union) else (value,)), right))
        return value

    def parse_expr(self):
        """Sum of terms; structured values (sets, tuples, matrices, text) pass through alone."""
        if self.peek() is not None and self.peek().kind == "text":
            return self.parse_text()
        first = self.parse_term(allow_sign=True)
        if not isinstance(first, sympy.Basic):
            return first
        total, guarded = first, _guarded(first)
        while self.at("+", "-", "\\pm", "\\mp"):
            op = self.take().value
            term = _expr(self.parse_term(allow_sign=False))
            guarded = guarded or _guarded(term)
            if op == "-":
                term = _mul(-1, term, guarded)
            elif op in ("\\pm", "\\mp"):
                term = _mul(_PM if op == "\\pm" else -_PM, term, guarded)
            total = sympy.Add(total, term, evaluate=False) if guarded else total + term
        return total

    def parse_text(self):
        words = [self.take().value]
        while self.peek() is not None and self.peek().kind == "text" and not self.at_separator_text():
            words.append(self.take().value)
        return Text(" ".join(w for w in words if w))

    def parse_term(self, allow_sign: bool):
        sign = 1
        while allow_sign and self.at("+", "-", "\\pm", "\\mp"):
            op = self.take().value
            sign = sign * {"+": 1, "-": -1, "\\pm": _PM, "\\mp": -_PM}[op]
        value = self.parse_factor()
        if not isinstance(value, sympy.Basic):
            if sign != 1:
                raise ParseError("sign before a structured value")
            return value
        guarded = _guarded(value)
        value = value if sign == 1 else _mul(sign, value, guarded)
        while True:
            if self.at(*_MULS):
                self.take()
                factor = _expr(self.parse_signed_factor())
                guarded = guarded or _guarded(factor)
                value = _mul(value, factor, guarded)
            elif self.at(*_DIVS):
                self.take()
                factor = _expr(self.parse_signed_factor())
                guarded = guarded or _guarded(factor)
                value = _mul(value, sympy.Pow(factor, -1, evaluate=False) if guarded else 1 / factor, guarded)
            elif self.at(":") and self.peek(1) is not None and self.peek(1).value != "=":
                self.take()
                return Seq((value, _expr(self.parse_term(allow_sign=True))), ":", ":")
            elif self.starts_factor():
                factor = _expr(self.parse_factor())
                guarded = guarded or _guarded(factor)
                value = _mul(value, factor, guarded)
            else:
                return value

    def parse_signed_factor(self):
        if self.at("-"):
            self.take()
            value = _expr(self.parse_factor())
            return _mul(-1, value, _guarded(value))
        return self.parse_factor()

    def starts_factor(self) -> bool:
        t = self.peek()
        if t is None:
            return False
        if t.kind in ("num", "ch", "begin"):
            return True
        if t.kind == "cmd":
            return t.value in _FUNCTIONS or t.value in _CONSTANTS or t.value in (
                "\\frac", "\\dfrac", "\\tfrac", "\\cfrac", "\\sqrt", "\\binom", "\\dbinom",
                "\\sum", "\\prod", "\\{") or _is_name_command(t.value)
        return t.value in ("(", "{")

    def parse_factor(self):
        base = self.parse_atom()
        while True:
            if self.at("^"):
                self.take()
                if self.at("\\circ") or self.at("\\prime"):
                    self.take()
                    continue
                exponent = self.parse_exponent()
                base = _power(_expr(base), exponent)
            elif self.at("!"):  # ("5!=120" is tokenized as 5 != 120; "5! = 120" is a factorial)
                self.take()
                base = _factorial(_expr(base))
            elif self.at("%", "\\%") or self.at("'"):
                self.take()  # percent and primes are notation, not value: 28\% is graded as 28
            else:
                return base

    def parse_exponent(self):
        if self.at("{"):
            self.take()
            if self.at("}"):
                self.take()
                return sympy.Integer(1)
            value = self.parse_expr()
            while self.at("\\circ", "\\prime"):
                self.take()
            self.expect("}")
            return _expr(value)
        if self.at("-"):
            self.take()
            return -_expr(self.parse_atom())
        return _expr(self.parse_atom())

    def parse_atom(self):
        t = self.take()
        if t.kind == "num":
            value = _number(t.value, self.exact_decimals)
            if self.at("_"):
                self.take()
                return sympy.Symbol(f"{t.value}_{_name_of(self.parse_subscript())}")
            return value
        if t.kind == "ch":
            return self.parse_letter(t.value)
        if t.kind == "text":
            return Text(t.value)
        if t.kind == "begin":
            return self.parse_environment(t.value)
        v = t.value
        if v in ("(", "["):
            return self.parse_bracketed(v)
        if v == "{":  # TeX grouping, not a set (that is \{ ... \}): {1,3} is the list 1, 3
            inner = self.parse_list(closers=("}",))
            self.expect("}")
            return inner
        if v == "\\{":
            if self.at("\\}"):
                self.take()
                return Seq((), "{", "}")
            inner = self.parse_list(closers=("\\}",))
            self.expect("\\}")
            items = inner.items if isinstance(inner, Seq) and inner.open == "" else (inner,)
            return Seq(items, "{", "}")
        if v == "|":
            inner = self.parse_expr()
            self.expect("|")
            return sympy.Abs(_expr(inner))
        if v in ("\\frac", "\\dfrac", "\\tfrac", "\\cfrac"):
            num = _expr(self.parse_arg())
            den = _expr(self.parse_arg())
            return num / den
        if v in ("\\binom", "\\dbinom", "\\tbinom"):
            n, k = _expr(self.parse_arg()), _expr(self.parse_arg())
            # (a huge one stays unevaluated, as factorials do: sympy would compute it for minutes)
            return sympy.binomial(n, k, evaluate=not (_guarded(n) or n.is_Integer and int(n) > 2000))
        if v == "\\sqrt":
            index = None
            if self.at("["):
                self.take()
                index = _expr(self.parse_expr())
                self.expect("]")
            radicand = _expr(self.parse_arg())
            if _guarded(radicand):
                return sympy.Pow(radicand, sympy.Rational(1, index or 2), evaluate=False)
            return sympy.sqrt(radicand) if index is None else sympy.root(radicand, index)
        if v in _FUNCTIONS:
            return self.parse_function(v)
        if v in ("\\sum", "\\prod"):
            return self.parse_big_operator(v)
        if v in _CONSTANTS:
            c = _CONSTANTS[v]
            return Seq((), "{", "}") if c == "empty" else c
        if v == "\\mathbb":  # the reals as an interval; other number sets have no value to compare
            name = _name_of(self.parse_arg())
            if name != "R":
                raise ParseError(f"unsupported set \\mathbb{{{name}}}")
            return Seq((-sympy.oo, sympy.oo), "(", ")")
        if t.kind == "cmd" and _is_name_command(v):
            # Greek letters and unknown macros (\alpha, \zzz) are names.
            return self.parse_subscripted(sympy.Symbol(v[1:]))
        raise ParseError(f"unsupported token {v!r}")

    def parse_arg(self):
        """One TeX argument: a braced group, or a single character (``\\frac13`` is 1/3)."""
        t = self.peek()
        if t is None:
            raise ParseError("missing argument")
        if t.kind == "num" and len(t.value) > 1 and "." not in t.value:
            digit, t.value = t.value[0], t.value[1:]
            return sympy.Integer(int(digit))
        if t.value == "{":
            self.take()
            value = self.parse_list(closers=("}",))
            self.expect("}")
            return value
        return self.parse_atom()

    def parse_letter(self, letter: str):
        if letter in _FUNCTION_LETTERS and self.at("("):
            self.take()
            args = self.parse_list(closers=(")",))
            self.expect(")")
            items = args.items if isinstance(args, Seq) and args.open == "" else (args,)
            return sympy.Function(letter)(*[_expr(a) for a in items])
        if letter == "e" and not self.at("_"):
            return sympy.E
        return self.parse_subscripted(sympy.Symbol(letter))

    def parse_subscripted(self, base):
        if not self.at("_"):
            return base
        self.take()
        sub = self.parse_subscript()
        return sympy.Symbol(f"{base}_{_name_of(sub)}")

    def parse_subscript(self):
        if self.at("{"):
            self.take()
            start = self.i
            depth = 0
            while self.peek() is not None and not (depth == 0 and self.at("}")):
                depth += {"{": 1, "}": -1}.get(self.take().value, 0)
            text = "".join(t.value for t in self.toks[start:self.i])
            self.expect("}")
            return text
        return self.take().value

    def parse_function(self, name: str):
        power = None
        base = None
        if self.at("_") and name == "\\log":
            self.take()
            base = _expr(self.parse_arg())
        if self.at("^"):
            self.take()
            power = self.parse_exponent()
        if self.at("("):
            self.take()
            arg = _expr(self.parse_expr())
            self.expect(")")
        else:
            # \sin 2x is sin(2x): a number and the letters right after it (a product without a
            # sign, up to the next function or operator) are the argument
            arg = _expr(self.parse_factor())
            while (t := self.peek()) is not None and t.kind in ("ch", "num") and t.value not in ("e",):
                arg = arg * _expr(self.parse_factor())
        value = sympy.log(arg, base) if base is not None else _FUNCTIONS[name](arg)
        if power is not None:
            value = value ** -1 if power == -1 and name in ("\\sin", "\\cos", "\\tan") else value ** power
        return value

    def parse_big_operator(self, name: str):
        if not self.at("_"):
            raise ParseError(f"{name} without limits")
        self.take()
        self.expect("{")
        var = self.parse_subscripted(sympy.Symbol(self.take().value))
        self.expect("=")
        lower = _expr(self.parse_expr())
        self.expect("}")
        self.expect("^")
        upper = self.parse_exponent()
        body = self.parse_term(allow_sign=False)
        cls = sympy.Sum if name == "\\sum" else sympy.Product
        return cls(_expr(body), (var, lower, upper))

    def parse_bracketed(self, opener: str):
        inner = self.parse_list(closers=(")", "]"))
        closer = self.take().value
        if closer not in (")", "]"):
            raise ParseError(f"unbalanced {opener}")
        if isinstance(inner, Seq) and inner.open == "":
            return Seq(inner.items, opener, closer)
        if opener == "(" and closer == ")":
            return inner  # grouping parentheses
        return Seq((inner,), opener, closer)

    def parse_environment(self, env: str):
        rows, row = [], []
        while not (self.peek() is not None and self.peek().kind == "end"):
            if self.peek() is None:
                raise ParseError(f"unterminated {env}")
            if self.at("&"):
                self.take()
                continue
            if self.peek().kind == "rowsep":
                self.take()
                if row:
                    rows.append(tuple(row))
                row = []
                continue
            row.append(_expr(self.parse_expr()))
        self.take()
        if row:
            rows.append(tuple(row))
        if not rows or len({len(r) for r in rows}) != 1:
            raise ParseError(f"ragged {env}")
        return sympy.ImmutableMatrix(rows)


# ---------------------------------------------------------------- value helpers


def _expr(value):
    if isinstance(value, sympy.Basic):
        return value
    if isinstance(value, Seq) and len(value.items) == 1 and value.open in ("(", ""):
        return _expr(value.items[0])
    raise ParseError(f"expected an expression, got {type(value).__name__}")


def _number(text: str, exact: bool = True):
    if "." in text and exact:
        return sympy.Rational(text)
    if "." in text:
        whole, _, frac = text.partition(".")
        # Keep decimals exact (0.1 is 1/10) but remember they were written as decimals.
        return sympy.Float(text, max(15, len(whole) + len(frac) + 2))
    return sympy.Integer(int(text))


def _guarded(value) -> bool:
    """Holds a power or factorial left unevaluated because its value is too large. sympy's
    arithmetic would evaluate it again (``10^{10^{10}} + 1`` computes ``10^{10^{10}}``), so
    whatever contains one is built with ``evaluate=False``."""
    if not isinstance(value, sympy.Basic):
        return False
    for node in sympy.preorder_traversal(value):
        if isinstance(node, (sympy.factorial, sympy.binomial)) and node.args[0].is_Integer:
            return True  # (a small one would have been evaluated)
        if isinstance(node, sympy.Pow) and node.base.is_Integer and (
                (node.exp.is_Integer and node.exp > 0) or isinstance(node.exp, sympy.Pow)):
            return True
    return False


def _mul(a, b, guarded: bool):
    return sympy.Mul(a, b, evaluate=False) if guarded else a * b


def _power(base, exponent):
    if _guarded(base) or _guarded(exponent):
        return sympy.Pow(base, exponent, evaluate=False)
    if base.is_Integer and exponent.is_Integer and exponent > 0:
        bits = abs(int(base)).bit_length() * int(exponent) if int(exponent) < 10**9 else math.inf
        if bits > MAX_EXACT_BITS:
            return sympy.Pow(base, exponent, evaluate=False)
    if not exponent.is_number or not base.is_number:
        return base ** exponent
    if exponent.is_Pow and exponent.args[0].is_Integer and not exponent.is_Integer:
        return sympy.Pow(base, exponent, evaluate=False)
    return base ** exponent


def _factorial(value):
    if _guarded(value) or value.is_Integer and int(value) > 2000:
        return sympy.factorial(value, evaluate=False)
    return sympy.factorial(value)


_STRUCTURAL_CMDS = {"\\cup", "\\cap", "\\sqcup", "\\pm", "\\mp", "\\cdot", "\\times", "\\div", "\\ast",
                    "\\prime", "\\to", "\\setminus", "\\colon", "\\mid"}


def _is_name_command(cmd: str) -> bool:
    """Greek letters and unknown macros (``\\alpha``, ``\\zzz``) are names."""
    return cmd[1:].isalpha() and cmd not in _STRUCTURAL_CMDS and cmd not in _RELATIONS


def expand_pm(value):
    """Replace the ``\\pm`` marker by its two signs: ``1 \\pm \\sqrt 2`` -> ``{1+sqrt2, 1-sqrt2}``."""
    if isinstance(value, sympy.Basic):
        if value.has(_PM):
            return Seq((value.subs(_PM, 1), value.subs(_PM, -1)), "{", "}")
        return value
    if isinstance(value, Seq):
        items = []
        for item in value.items:
            expanded = expand_pm(item)
            if value.is_set and isinstance(expanded, Seq) and expanded.open == "{" and item is not expanded:
                items.extend(expanded.items)
            else:
                items.append(expanded)
        return Seq(tuple(items), value.open, value.close)
    if isinstance(value, Rel):
        return Rel(value.ops, tuple(expand_pm(t) for t in value.terms))
    if isinstance(value, Union):
        return Union(tuple(expand_pm(p) for p in value.parts))
    if isinstance(value, Difference):
        return Difference(expand_pm(value.base), expand_pm(value.removed))
    return value


def parse_answer(text: str, exact_decimals: bool = True):
    """Parse one answer string (LaTeX or plain) into sympy/answer types; raises ``ParseError``.
    ``exact_decimals``: a decimal is the exact rational of its digits (else a float that
    remembers it was written as a decimal, for a grader that rounds)."""
    parser = Parser(text)
    parser.exact_decimals = exact_decimals
    return expand_pm(parser.parse())
