"""Find the final answer in a model response, and normalise answer strings before parsing.

Order of preference (the first that yields something wins):
  1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (several boxes joined by "and", commas or a few
     words, as in ``\\boxed{1} and \\boxed{2}``, form one list answer);
  2. the text after "final answer is" / "the answer is" / "answer:";
  3. the last display or inline math span (``$$..$$``, ``\\[..\\]``, ``\\(..\\)``, ``$..$``);
  4. the whole response, when it is short enough to be an answer itself;
  5. the last number in the text.
``candidates`` returns these in that order. When the response states a final answer (1, 2 or a
GSM8K ``####`` line: ``FINAL_METHODS``), the grader grades that alone: an empty, unparseable or
hedged final answer ("7 or maybe 9") scores 0 rather than falling back to a number elsewhere.
"""

from __future__ import annotations

import functools
import re

# ---------------------------------------------------------------- locating answers

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer(?:\s+is)?|the\s+answer\s+is|answer\s+is|answer\s*:|réponse\s*:|答案\s*[:：是])"
    r"\s*:?\s*",
    re.IGNORECASE,
)
_MATH_SPAN_RE = re.compile(
    r"\$\$(?P<a>.+?)\$\$|\\\[(?P<b>.+?)\\\]|\\\((?P<c>[^\n]+?)\\\)"
    r"|(?<![\\$])\$(?P<d>(?:\\\$|[^$\n])+?)(?<!\\)\$",
    re.DOTALL,
)
# Numbers in prose; ASCII boundaries because CJK characters count as word characters.
_NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9_.\\])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:[.,]\d+)?(?:/\d+)?|\\frac\{\d+\}\{\d+\})"
    r"(?![0-9])(?![.,]\d)"
)
# GSM8K's reference format: the answer on a last line after "####".
_HASHES_RE = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)
# A response written with doubled backslashes (JSON-escaped LaTeX): ``\\frac`` -> ``\frac``.
_DOUBLED_COMMAND_RE = re.compile(
    r"(?<!\\)\\\\(?=(?:boxed|frac|dfrac|tfrac|sqrt|left|right|le|leq|ge|geq|lt|gt|ne|neq|text|pi|"
    r"cdot|times|infty|in\b|cup|pm|mathbf|operatorname|begin|end)(?![a-zA-Z]))"
)
# Candidates that are the response's own statement of its final answer.
FINAL_METHODS = frozenset({"####", "boxed", "answer-is", "hedged"})
# A final-answer line in prose that offers several values is a hedge, not an answer.
_HEDGE_RE = re.compile(r"\b(?:or|either|maybe|perhaps|possibly|probably)\b", re.IGNORECASE)
# Words allowed between two boxed answers for them to count as one list answer.
_JOINERS = {"and", "or", ",", ";", "&"}
_MAX_JOIN_WORDS = 5
_WHOLE_RESPONSE_MAX = 60


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == '{'`` and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\":
            continue
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def find_boxed(text: str) -> list[tuple[int, int, str]]:
    """All ``\\boxed`` groups as (start, end, content)."""
    found = []
    for m in _BOX_RE.finditer(text):
        pos = m.end()
        if pos < len(text) and text[pos] == "{":
            group = _braced(text, pos)
            if group is not None:
                found.append((m.start(), group[1], group[0]))
        elif pos < len(text):
            # \boxed 5 : one token
            tok = re.match(r"[^\s$.,]+", text[pos:])
            if tok:
                found.append((m.start(), pos + tok.end(), tok.group()))
    return found


def find_math_spans(text: str) -> list[tuple[int, int, str]]:
    return [
        (m.start(), m.end(), next(g for g in m.groups() if g is not None))
        for m in _MATH_SPAN_RE.finditer(text)
    ]


def _joinable(separator: str, strict: bool = False) -> bool:
    """Whether the text between two answers makes them one list (``\\boxed{1} and \\boxed{2}``)."""
    sep = re.sub(r"\\text\{([^{}]*)\}|\\(?:quad|qquad|,|;| )|[$()\\\[\]]", r" \1 ", separator)
    sep = sep.replace(",", " , ").replace(";", " ; ")
    words = sep.lower().split()
    if strict:  # math spans: only conjunctions between them ("$1$ and $2$")
        return all(w in _JOINERS for w in words)
    if not any(c.isalpha() for c in sep):
        return True
    return len(words) <= _MAX_JOIN_WORDS and any(w in _JOINERS for w in words)


def _last_group(matches: list[tuple[int, int, str]], text: str, strict: bool = False) -> str | None:
    if not matches:
        return None
    group = [matches[-1]]
    for prev in reversed(matches[:-1]):
        if not _joinable(text[prev[1]:group[0][0]], strict):
            break
        group.insert(0, prev)
    return ", ".join(m[2] for m in group)


def _last_positioned(text: str) -> list[tuple[str, str]]:
    """The math span or plain number that ends last in ``text`` (spans joined by "and" etc.
    count as one list answer), then the last span alone as a fallback."""
    spans = find_math_spans(text)
    covered = [(a, b) for a, b, _ in spans]
    numbers = [(m.start(), m.end(), m.group()) for m in _NUMBER_RE.finditer(text)
               if not any(a <= m.start() < b for a, b in covered)]
    out = []
    if numbers and (not spans or numbers[-1][0] > spans[-1][1]):
        out.append((numbers[-1][2], "last-number"))
    if spans:
        out.append((_last_group(spans, text, strict=True), "math-span"))
    if numbers and out[0][1] != "last-number":
        out.append((numbers[-1][2], "last-number"))
    return out


def hedged(line: str) -> bool:
    """Prose that offers several different numbers with "or", "maybe", ... ("7 or maybe 9")."""
    values = {n.replace(",", "") for n in _NUMBER_RE.findall(line)}
    return len(values) > 1 and _HEDGE_RE.search(line) is not None


def looks_like_math(answer: str) -> bool:
    """No prose words: letters outside commands and ``\\text{}`` come in runs of at most two."""
    bare = re.sub(r"\\(?:text\w*|begin|end)\s*\{[^{}]*\}|\\[a-zA-Z]+", " ", answer)
    return re.search(r"[A-Za-z]{3,}|\b[A-Za-z]{2}\b", bare) is None


def candidates(text: str) -> list[tuple[str, str]]:
    """Possible final answers in ``text`` as (answer, method), best first."""
    text = _DOUBLED_COMMAND_RE.sub(r"\\", text)
    out: list[tuple[str, str]] = []
    hashes = _HASHES_RE.search(text)
    if hashes:
        out.append((hashes.group(1), "####"))
    boxes = find_boxed(text)
    said = list(_ANSWER_IS_RE.finditer(text))
    boxed = (_last_group(boxes, text), "boxed") if boxes else None
    if boxed and not (said and said[-1].start() > boxes[-1][1]):
        out.append(boxed)
    if said:
        tail = text[said[-1].end():]
        line = re.split(r"\n|\. I hope|(?<!\d)\.(?:\s|$)", tail, maxsplit=1)[0].strip()
        if line and looks_like_math(normalize(line)):
            out.append((line, "answer-is"))
            out.extend((answer, "answer-is") for answer, _ in _last_positioned(line))
        elif hedged(line):
            out.append((line, "hedged"))
        else:
            out.extend((answer, "answer-is") for answer, _ in _last_positioned(line))
    if boxed and boxed not in out:
        out.append(boxed)
    stripped = text.strip()
    if (stripped and len(stripped) <= _WHOLE_RESPONSE_MAX and "\n" not in stripped
            and looks_like_math(normalize(stripped))):
        out.append((stripped, "whole"))
    out.extend(_last_positioned(text))
    if stripped and not out:
        out.append((stripped, "whole-text"))  # a gold answer such as "Monday"
    return out


# ---------------------------------------------------------------- normalising an answer string

_UNIT_WORDS = (
    r"percent(?:age)?|pct|degrees?|units?|square\s+\w+|cubic\s+\w+|cm|mm|km|m|meters?|metres?|"
    r"inches|inch|feet|foot|ft|miles?|hours?|minutes?|seconds?|days?|years?|dollars?|cents?|"
    r"kg|g|grams?|pounds?|lbs?|liters?|litres?|ml|yuan|euros?|points?|people|students|apples"
)
_TRAILING_UNIT_RE = re.compile(rf"^(.*?[\d}}])\s*(?:\\?[$€£¥%]|m²|m\^2|(?:{_UNIT_WORDS})\b)+[\s.]*$", re.I)
_TEXT_UNIT_RE = re.compile(r"\\(?:text|textbf|textnormal|mbox|mathrm)\s*\{\s*(?:[a-zA-Z]+\s*)+\}(?:\^\{?\d\}?)?\s*$")
def _mixed_number(m: re.Match) -> str:
    """``15\\frac{39}{40}`` is the mixed number 15 + 39/40 when the fraction is proper."""
    whole, num, den = m.groups()
    if int(num) < int(den):
        return f"({whole}+{num}/{den})"
    return m.group()


# (pattern, replacement, literals one of which any match contains): a pattern is only run on a
# string holding one of its literals (most hold none: a plain number, prose), which leaves the
# result as it was and skips most of the 25 scans per candidate answer.
_REPLACEMENTS = [
    (re.compile(r"\\[dtc]frac"), r"\\frac", ("\\",)),
    (re.compile(r"\\left\s*\\?\{"), r"\\{", ("\\",)),
    (re.compile(r"\\right\s*\\?\}"), r"\\}", ("\\",)),
    (re.compile(r"\\(?:left|right)\s*\.?"), "", ("\\",)),
    (re.compile(r"\{,\s?\}"), "", ("{",)),  # 1{,}000
    (re.compile(r"\\(?:textbf|mathbf|boldsymbol|bf)\s*\{([^{}]*)\}"), r"\1", ("\\",)),  # emphasis, not text
    (re.compile(r"(?<![\d.])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}"), _mixed_number, ("\\",)),
    (re.compile(r"(\d),\\!\s*(?=\d{3})"), r"\1", ("\\",)),  # 11,\! 111
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°"), "", ("^", "°")),
    (re.compile(r"\\(?:dollar|\$)"), "", ("\\",)),
    (re.compile(r"\\%|%"), "", ("%",)),
    (re.compile(r"\\(?:!|,|;|:)"), "", ("\\",)),
    (re.compile(r"\\(?:quad|qquad)"), " ", ("\\",)),
    (re.compile(r"−|–"), "-", ("−", "–")),
    (re.compile(r"×|·"), r"\\cdot ", ("×", "·")),
    (re.compile(r"÷"), "/", ("÷",)),
    (re.compile(r"≤"), r"\\le ", ("≤",)),
    (re.compile(r"≥"), r"\\ge ", ("≥",)),
    (re.compile(r"≠"), r"\\ne ", ("≠",)),
    (re.compile(r"π"), r"\\pi ", ("π",)),
    (re.compile(r"√"), r"\\sqrt ", ("√",)),
    (re.compile(r"∞"), r"\\infty ", ("∞",)),
    (re.compile(r"\\text\s*\{\s*(?:and|or)\s*\}"), ",", ("\\",)),
    (re.compile(r"(?<![a-zA-Z\\])(?:and|or)(?![a-zA-Z])"), ",", ("and", "or")),
    (re.compile(r"\\(?:mathrm|text)\{e\}"), "e", ("\\",)),
]
# Each pattern's literals as one search, and all of them: a string holding none is left as it is
# by every replacement (one holding some is changed only by the patterns whose literals it holds
# when they come: a replacement may bring a literal for a later one, so those are checked in turn).
_GATES = [re.compile("|".join(map(re.escape, literals))) for _, _, literals in _REPLACEMENTS]
_ANY_GATE = re.compile("|".join(re.escape(lit) for _, _, literals in _REPLACEMENTS for lit in literals))
_DOLLARS_RE = re.compile(r"^\$+|\$+$")
_DELIMITERS_RE = re.compile(r"^\\\(|\\\)$|^\\\[|\\\]$")
_BOXED_WHOLE_RE = re.compile(r"^\\boxed\s*\{(.*)\}$", re.DOTALL)
_DIGIT_RE = re.compile(r"\d")


@functools.lru_cache(maxsize=1024)
def normalize(answer: str) -> str:
    """Strip what never changes an answer's value: delimiters, spacing commands, units,
    degree signs, percent signs, thousands separators, a trailing period. Cached (the last
    few): a response that is its own answer is normalised to be recognised as math, then again
    to be parsed."""
    s = answer.strip()
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
    for _ in range(2):
        s = _TEXT_UNIT_RE.sub("", s).strip() if _DIGIT_RE.search(s) else s
        m = _TRAILING_UNIT_RE.match(s)
        if m:
            s = m.group(1).strip()
    return _fix_number_separators(s)


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
    """``7,425,000`` -> ``7425000``; ``1 000`` -> ``1000``. A comma followed by a space is a
    list separator (``32, 349`` is two numbers)."""
    if re.fullmatch(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?", s):
        return s.replace(" ", "")
    return _THOUSANDS_RE.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
