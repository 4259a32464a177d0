"""Answer strings normalised before parsing: what never changes an answer's value is stripped,
unicode digits and signs read as ASCII, mixed numbers, repeating decimals, scientific notation
and number words written out. (Units are not stripped: ``units.py`` splits them off, to be
compared.)"""

from __future__ import annotations

import functools
import re
import unicodedata
from fractions import Fraction


def _mixed_number(m: re.Match) -> str:
    """``15\\frac{39}{40}`` (or ``3 1/2``) is the mixed number 15 + 39/40 when the fraction is proper."""
    whole, num, den = m.groups()
    if int(num) < int(den):
        return f"({whole}+{num}/{den})"
    return m.group()


def _repeating(m: re.Match) -> str:
    """A repeating decimal ``a.b\\overline{c}`` as its exact fraction."""
    whole, fixed, period = m.group(1) or "0", m.group(2), m.group(3)
    value = Fraction(int(whole + fixed + period) - int(whole + fixed), (10 ** len(period) - 1) * 10 ** len(fixed))
    return f"({value.numerator}/{value.denominator})"


def superscript(m: re.Match | str) -> str:
    if isinstance(m, str):
        return "^{" + m.translate(_SUPERSCRIPTS) + "}"
    return "^{" + m.group().translate(_SUPERSCRIPTS) + "}"


_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")

# (pattern, replacement, literals one of which any match contains): a pattern is only run on a
# string holding one of its literals (most hold none: a plain number, prose), which leaves the
# result as it was and skips most of the scans per candidate answer.
_SUPERSCRIPT_RE = re.compile(r"[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+")
_REPLACEMENTS = [
    (re.compile(r"\\[dtc]frac"), r"\\frac", ("\\",)),
    (re.compile(r"\\left\s*\\?\{"), r"\\{", ("\\",)),
    (re.compile(r"\\right\s*\\?\}"), r"\\}", ("\\",)),
    (re.compile(r"\\(?:left|right)\s*\.?"), "", ("\\",)),
    (re.compile(r"(\d)\{,\}(\d{1,2}|\d{4,})(?!\d)"), r"\1.\2", ("{",)),  # 7{,}9 is 7.9 (a decimal comma)
    (re.compile(r"\{,\s?\}"), "", ("{",)),  # 1{,}000
    (re.compile(r"\\(?:color|textcolor)\s*\{[a-zA-Z]+\}|\\(?:displaystyle|textstyle)"), "", ("\\",)),
    (re.compile(r"\\(?:textbf|mathbf|boldsymbol|bf)\s*\{([^{}]*)\}"), r"\1", ("\\",)),  # emphasis, not text
    (re.compile(r"(?<![\d.])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}"), _mixed_number, ("\\",)),
    (re.compile(r"(?<![\d.])(\d+)\s*\\frac(\d)(\d)(?!\d)"), _mixed_number, ("\\",)),  # 4\frac23
    (re.compile(r"(?<![\d./])(\d+) (\d+)/(\d+)(?![\d/])"), _mixed_number, ("/",)),  # 3 1/2
    (re.compile(r"(\d),\\!\s*(?=\d{3})"), r"\1", ("\\",)),  # 11,\! 111
    (re.compile(r"\\(?:dollar|\$)"), "", ("\\",)),
    (re.compile(r"\\(?:!|,|;|:)"), "", ("\\",)),
    (re.compile(r"\\(?:quad|qquad)"), " ", ("\\",)),
    (re.compile(r"−|–|－"), "-", ("−", "–", "－")),
    (re.compile(r"×|·"), r"\\cdot ", ("×", "·")),
    (re.compile(r"÷"), "/", ("÷",)),
    (re.compile(r"≤"), r"\\le ", ("≤",)),
    (re.compile(r"≥"), r"\\ge ", ("≥",)),
    (re.compile(r"≠"), r"\\ne ", ("≠",)),
    (re.compile(r"π"), r"\\pi ", ("π",)),
    (re.compile(r"√"), r"\\sqrt ", ("√",)),
    (re.compile(r"∞"), r"\\infty ", ("∞",)),
    (re.compile(r"\\text\s*\{\s*(?:and|or)\s*\}"), ",", ("\\",)),
    (re.compile(r"(\d*)\.(\d*)\\overline\s*\{(\d+)\}"), _repeating, ("\\overline",)),  # 0.1\overline{6} = 1/6
    (re.compile(r"(?<![a-zA-Z\\])and(?![a-zA-Z])"), ",", ("and",)),
    (re.compile(r"\\(?:mathrm|text)\{e\}"), "e", ("\\",)),
    (re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([-+]?\d+)(?![\w.])"), r"(\1\\cdot 10^{\2})", ("e", "E")),  # 7e3
]
_GATES = [re.compile("|".join(map(re.escape, literals))) for _, _, literals in _REPLACEMENTS]
_ANY_GATE = re.compile("|".join(re.escape(lit) for _, _, literals in _REPLACEMENTS for lit in literals))
_DOLLARS_RE = re.compile(r"^\$+|\$+$")
_DELIMITERS_RE = re.compile(r"^\\\(|\\\)$|^\\\[|\\\]$")
_BOXED_WHOLE_RE = re.compile(r"^\\boxed\s*\{(.*)\}$", re.DOTALL)


@functools.lru_cache(maxsize=1024)
def normalize(answer: str) -> str:
    """Strip what never changes an answer's value: delimiters, spacing commands, thousands
    separators, colour and font wrappers, a trailing period; unicode digits and signs as ASCII;
    mixed numbers and scientific notation written out. (Units are not stripped: ``units.py``
    splits them off, to be compared.)"""
    s = answer.strip()
    if not s.isascii():  # full-width digits and signs as ASCII; 7² as 7^{2} (NFKC alone reads it as 72)
        s = unicodedata.normalize("NFKC", _SUPERSCRIPT_RE.sub(superscript, s))
    s = _DOLLARS_RE.sub("", s).strip()
    decimal = _decimal_comma(s)
    if decimal is not None:
        return decimal
    s = _DELIMITERS_RE.sub("", s).strip()
    s = _BOXED_WHOLE_RE.sub(r"\1", s).strip()
    if _ANY_GATE.search(s):
        for (pattern, repl, _), gate in zip(_REPLACEMENTS, _GATES):
            if gate.search(s):
                s = pattern.sub(repl, s)
    s = s.strip().rstrip(".").strip()
    words = _NUMBER_WORDS_RE.fullmatch(s)
    if words:  # "twelve", \text{eight}: the number
        value = number_from_words(words.group(1))
        if value is not None:
            return str(value)
    return _fix_number_separators(s)


_NUMBER_WORDS_RE = re.compile(r"(?:\\text\{)?\s*([A-Za-z][A-Za-z -]*?)\s*\}?")
_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}


def number_from_words(text: str) -> int | None:
    """``"twenty-one"`` -> 21, ``"three hundred and five"`` -> 305, ``"two thousand"`` -> 2000;
    None when ``text`` is not a number written in English words (below a million)."""
    total, group = 0, None
    for word in text.lower().replace("-", " ").split():
        if word in _SMALL or word in _TENS:
            value = _SMALL.get(word, _TENS.get(word))
            if group is not None and (group % 10 or value >= 10 and group % 100):
                return None  # "five six", "twenty thirty"
            group = (group or 0) + value
        elif word == "hundred" and group is not None and group < 10:
            group *= 100
        elif word == "thousand" and group is not None and total == 0:
            total, group = group * 1000, None
        elif word != "and" or group is None:
            return None
    if group is None and total == 0:
        return None
    return total + (group or 0)


_THOUSANDS_RE = re.compile(r"(?<![\d.,(\[{])(\d{1,3})((?:,\d{3})+)(?![\d,)\]}])")


def _decimal_comma(s: str) -> str | None:
    """A whole answer ``1,22`` or ``0,111`` is a decimal comma (European style); ``1,000`` is a
    thousands separator and ``1,2`` a list of two numbers."""
    m = re.fullmatch(r"(-?)(\d+),(\d+)", s)
    if m and len(m.group(3)) >= 2 and (
            len(m.group(3)) != 3 or m.group(2).startswith("0") or len(m.group(2)) > 3):
        return f"{m.group(1)}{m.group(2)}.{m.group(3)}"
    return None


def _fix_number_separators(s: str) -> str:
    """``7,425,000`` -> ``7425000``; ``1 000`` -> ``1000``; ``1.000.000`` -> ``1000000`` (two or
    more dot groups of three digits: European thousands). A comma followed by a space is a list
    separator (``32, 349`` is two numbers)."""
    if re.fullmatch(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?", s):
        return s.replace(" ", "")
    if re.fullmatch(r"-?\d{1,3}(?:\.\d{3}){2,}", s):
        return s.replace(".", "")
    return _THOUSANDS_RE.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
