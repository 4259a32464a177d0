"""The final answer of a model response (one rule, documented here and in the README), and answer
strings normalised before parsing.

The final-answer rule. Only the response's own prose counts: fenced and inline code and quoted
lines (``> ...``) are set aside. Its final-answer statements, in order, are

  * a ``\\boxed{...}`` / ``\\fbox{...}`` (boxes joined by "and" or commas state one list; joined by
    "or" they offer alternatives);
  * an answer line: "The answer is ...", "The final answer is ...", "Final answer: ...",
    "Answer: ..." at the start of a line (not "this answer is", not a question), up to the end of
    its sentence, or the display math that follows it when the line ends there;
  * a GSM8K ``#### ...`` line at the start of a line whose content is an answer (a markdown
    heading, ``#### Step 1: ...``, is not).

A statement is read as a whole (``read_box``, ``read_line``): an answer line is the value it
starts with, then an explanation, which may hold other numbers ("18 because 9 eggs cost 2
dollars each" is 18); before any explanation, a second value, a bound, a range, a negation, an
uncertainty or a condition that leads to another value ("at least 9", "9 or more", "8 to 10",
"9 (maybe)", "5 if n is odd and 6 if n is even") makes it no committed answer; ruling out another
value does not ("8, not 10"). A box holds one answer: a value with, at most, a unit or a counted
noun after it (``7 \\text{ eggs}``) or a scale word (``1 \\text{ million}``), other words make it
unreadable; a modal or a negation governing it ("possibly \\boxed{4}", "is not \\boxed{9}") or
a qualifier after it ("\\boxed{9} or more") makes it uncommitted. Several statements must agree
(the grader checks their values); one that is uncommitted or unreadable scores 0 (a line that
states no value is a remark, counted only when nothing else states an answer). A response with
no statement is graded by its last math span, its last number, or itself when it is a short
answer (``fallback``).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

from environments.math.normalize import normalize, superscript
from environments.math.units import UNITS, unit_of

# ---------------------------------------------------------------- prose: no code, no quotations

_FENCED_RE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.S)
_INLINE_CODE_RE = re.compile(r"`[^`\n]+`")
_QUOTE_LINE_RE = re.compile(r"^[ \t]*>.*$", re.M)
# A response written with doubled backslashes (JSON-escaped LaTeX): ``\\frac`` -> ``\frac``.
_DOUBLED_COMMAND_RE = re.compile(
    r"(?<!\\)\\\\(?=(?:boxed|frac|dfrac|tfrac|sqrt|left|right|le|leq|ge|geq|lt|gt|ne|neq|text|pi|"
    r"cdot|times|infty|in\b|cup|pm|mathbf|operatorname|begin|end)(?![a-zA-Z]))"
)


# Unicode math in prose as LaTeX, so an answer line reads it as a value ("The answer is 3π", "½").
_UNICODE_MATH = str.maketrans({"π": "\\pi ", "∞": "\\infty ", "×": "\\times ", "·": "\\cdot ", "−": "-",
                               "√": "\\sqrt "})
_VULGAR_RE = re.compile(r"(\d*)([¼½¾⅐⅑⅒⅓⅔⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞])")


def _vulgar(m: re.Match) -> str:
    """``3½`` -> ``$3\\frac{1}{2}$`` (a mixed number), ``½`` -> ``$\\frac{1}{2}$``."""
    numerator, denominator = unicodedata.normalize("NFKC", m.group(2)).split("\u2044")
    return f"${m.group(1)}\\frac{{{numerator}}}{{{denominator}}}$"


def prose(text: str) -> str:
    """``text`` without code (fenced or inline) and quoted lines, each replaced by a line break;
    a power written with superscripts (``7²``) as math."""
    text = _DOUBLED_COMMAND_RE.sub(r"\\", text)
    if not text.isascii():
        text = re.sub(r"(\d+(?:\.\d+)?)([⁰¹²³⁴⁵⁶⁷⁸⁹]+)", lambda m: f"${m.group(1)}{superscript(m.group(2))}$", text)
        text = _VULGAR_RE.sub(_vulgar, text).translate(_UNICODE_MATH)
    text = _FENCED_RE.sub("\n", text)
    text = _INLINE_CODE_RE.sub(" ", text)
    return _QUOTE_LINE_RE.sub("", text)


# ---------------------------------------------------------------- boxes

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == '{'`` and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
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
            tok = re.match(r"[^\s$.,]+", text[pos:])  # \boxed 5 : one token
            if tok:
                found.append((m.start(), pos + tok.end(), tok.group()))
    return found


_BETWEEN_BOXES_RE = re.compile(r"\\text\{([^{}]*)\}|\\(?:quad|qquad|,|;| )|[$()\\\[\]]")


def _joined_by(between: str) -> str | None:
    """How two boxes with ``between`` between them relate: "list" (nothing, or a few words with
    "and" or a comma: "\\boxed{1} papers and \\boxed{2} bins", the parts of a question), "or"
    (alternatives offered), or None (separate statements)."""
    words = _BETWEEN_BOXES_RE.sub(r" \1 ", between).replace(",", " , ").replace(";", " ; ").lower().split()
    if any(w in ("or", "either") for w in words) and len(words) <= 5:
        return "or"
    if not any(c.isalpha() for c in " ".join(words)) or len(words) <= 5 and any(w in (",", ";", "and", "&")
                                                                                  for w in words):
        return "list"
    return None


# ---------------------------------------------------------------- statements

@dataclasses.dataclass(frozen=True)
class Statement:
    kind: str  # "boxed", "answer-is" or "####"
    answer: str  # the answer it states ("" when there is none)
    problem: str | None = None  # why it is no committed answer (a hedge, unreadable, empty)


_ANSWER_MARK_RE = re.compile(
    r"(?:\b(?:the\s+)?final\s+answer(?:\s+is\b|\s*:)|\bthe\s+answer\s+(?:is\b|:)"
    r"|(?:^|(?<=\n))[ \t]*[*_#]*[ \t]*answer[ \t]*[*_]*[ \t]*:|réponse\s*:|答案\s*[:：是])[ \t]*:?[ \t*_]*",
    re.IGNORECASE,
)
# (a "!" after a digit or a bracket is a factorial: "3! \\times 5!"; a "." before "$" ends the math too)
_SENTENCE_END_RE = re.compile(r"\n|(?<!\\)\.(?=\s|$|\$)|(?<![\d)}\]!])!(?=\s|$)|\?(?=\s|$)|[。！？]")
_HASHES_RE = re.compile(r"^[ \t]*####[ \t]*(.+?)[ \t]*$", re.MULTILINE)
_MATH_SPAN_RE = re.compile(
    r"\$\$(?P<a>.+?)\$\$|\\\[(?P<b>.+?)\\\]|\\\((?P<c>[^\n]+?)\\\)"
    r"|(?<![\\$])\$(?P<d>(?:\\\$|[^$\n])+?)(?<!\\)\$",
    re.DOTALL,
)
_DISPLAY_RE = re.compile(r"\s*(?:\$\$(.+?)\$\$|\\\[(.+?)\\\])", re.S)


def box_groups(text: str) -> list[tuple[list[tuple[int, int, str]], str]]:
    """The boxes of ``text`` in groups that state one thing: joined by "and" / commas (a list)
    or by "or" (alternatives) -> [(boxes, "list" or "or")]."""
    boxes, groups, i = find_boxed(text), [], 0
    while i < len(boxes):
        group, how = [boxes[i]], "list"
        while i + 1 < len(boxes) and (joined := _joined_by(text[boxes[i][1]:boxes[i + 1][0]])):
            how = "or" if joined == "or" else how
            i += 1
            group.append(boxes[i])
        i += 1
        groups.append((group, how))
    return groups


def statements(text: str) -> list[Statement]:
    """The response's final-answer statements, in order (see the module docstring)."""
    text = prose(text)
    found: list[tuple[int, Statement]] = []
    boxes = find_boxed(text)
    for group, _ in box_groups(text):  # (boxes joined by "or": a list, which no single value equals)
        answers = [read_box(b[2]) for b in group]
        problem = (next((p for _, p in answers if p), None) or _qualified_before(text, group[0][0])
                   or _qualified_after(text, group[-1][1]))
        found.append((group[0][0], Statement("boxed", ", ".join(a for a, _ in answers), problem)))
    inside_box = [(a, b) for a, b, _ in boxes]
    marks = list(_ANSWER_MARK_RE.finditer(text))
    for k, m in enumerate(marks):
        if any(a <= m.start() < b for a, b in inside_box):
            continue
        rest = text[m.end():]
        first, last = _answer_span(rest)
        start, stop = m.end() + first, m.end() + last
        if k + 1 < len(marks) and marks[k + 1].start() < stop:
            continue  # "Final Answer: The final answer is 5": the inner statement says it
        if any(m.end() <= a < stop for a, _ in inside_box):
            continue  # "the answer is \boxed{7}": the box states it
        content = text[start:stop]
        answer, problem = read_line(content)
        if not problem and text[stop:stop + 1] in ("?", "？"):
            answer, problem = "", f"hedged final answer: {content.strip()[:60]!r} (a question)"
        found.append((m.start(), Statement("answer-is", answer, problem)))
    for m in _HASHES_RE.finditer(text):
        content = m.group(1)
        if _is_heading(content):
            continue
        answer, problem = read_line(content)
        found.append((m.start(), Statement("####", answer, problem)))
    return [s for _, s in sorted(found, key=lambda f: f[0])]


def _answer_span(rest: str) -> tuple[int, int]:
    """Where, in ``rest`` (the text after an answer marker), the statement lies: its sentence;
    when the line ends at the marker, the display math or the line that follows ("Therefore,
    the answer is\\n$657 + 64 = \\boxed{721}$")."""
    end = _SENTENCE_END_RE.search(rest)
    stop = end.start() if end else len(rest)
    if rest[:stop].strip():
        return 0, stop
    display = _DISPLAY_RE.match(rest)
    if display:
        return display.span(1) if display.group(1) is not None else display.span(2)
    start = len(rest) - len(rest.lstrip())
    end = _SENTENCE_END_RE.search(rest, start)
    return start, end.start() if end else len(rest)


def _is_heading(content: str) -> bool:
    """A ``####`` line that is a markdown heading ("#### Step 1: ...": it starts with a word),
    not an answer (which starts with a value)."""
    return bool(re.match(r"[^\W\d_]{2,}", content.strip("*_ ")))


def _qualified_before(text: str, start: int) -> str | None:
    """A box governed by a modal or a negation ("possibly \\boxed{4}", "could be \\boxed{4}", "is
    not \\boxed{9}"; not "could be thinking of \\boxed{4} numbers"). A bound or an approximation
    before a box is the question's own wording ("at most \\boxed{2} pencils", "\\approx
    \\boxed{32348}, to the nearest dollar") and leaves the box one committed value."""
    head = text[:start]
    begin = max((m.end() for m in _SENTENCE_END_RE.finditer(head)), default=0)
    near = [t.lower() for t in _TOKEN_RE.findall(head[begin:]) if t not in ("$", "$$", "\\(", "\\[", "(", "=")][-4:]
    while near and near[-1] in _VERBS | {"be"}:
        near.pop()
    word = near[-1] if near else None
    if word in _MODALS or word in _NEGATIONS:
        return f"hedged final answer: the box follows '{word}'"
    return None


def _qualified_after(text: str, end: int) -> str | None:
    """A qualifier right after a box, before its sentence ends ("\\boxed{12} (maybe)",
    "\\boxed{12}, probably", "\\boxed{9} or more"): the box is no committed answer."""
    rest = text[end:]
    stop = _SENTENCE_END_RE.search(rest)
    tokens = _TOKEN_RE.findall(rest[:stop.start() if stop else len(rest)])
    zone = _answer_zone([t for t in tokens if t not in ("$", "$$")])
    qualifier = None if _rules_out_another(zone) else _qualifier(zone[:4], after=True) or _condition(tokens)
    return f"hedged final answer: the box is followed by '{qualifier}'" if qualifier else None


# ---------------------------------------------------------------- reading a statement whole

# What makes an answer line or a box no committed answer, by meaning: a negation, an
# alternative, an uncertainty, a bound or a range (a second value is another sign).
_NEGATIONS = frozenset("not no never nor wrong incorrect false except isn't isnt".split())
_ALTERNATIVES = frozenset("or either alternatively otherwise vs versus instead".split())
_UNCERTAIN = frozenset("maybe perhaps possibly probably likely unlikely roughly approximately approx about around "
                       "nearly almost guess unsure uncertain estimate estimated somewhere ish might could may "
                       "tentatively tentative".split())
_STATING = frozenset("otherwise else is it's be are equals then".split())
_MODALS = frozenset("maybe perhaps possibly probably likely might could may tentatively".split())
# A condition makes the answer depend on something the grader cannot check ("5 if n is odd",
# "4, unless the endpoints are excluded").
_CONDITIONS = frozenset("if when whenever unless provided assuming depending whether".split())
_BOUNDS = frozenset("least most more less fewer greater smaller larger higher lower minimum maximum min max "
                    "exceed exceeds exceeding".split())
# After a value, prepositions start a phrase of their own ("saved 2.5 thousand dollars over the
# year", "reaches 7 m up the wall"): only right after "or" / "and" do they bound it ("9 or over").
_PREPOSITIONS = frozenset("over under above below up through within between".split())
QUALIFIERS = _NEGATIONS | _ALTERNATIVES | _UNCERTAIN | _CONDITIONS | _BOUNDS | _PREPOSITIONS
# Words that end the part of an answer line that is the answer: an explanation follows.
CONNECTIVES = frozenset("because since as which that so thus hence therefore where given for with "
                        "due".split())
SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12,
          "dozen": 12}
_MATH_WORDS = frozenset("sin cos tan cot sec csc log ln exp sqrt pi infinity inf arcsin arccos arctan "
                        "sinh cosh tanh mod gcd lcm".split())
_TOKEN_RE = re.compile(r"\$[^$]*\$|\\\(.*?\\\)|\\[a-zA-Z]+(?:\s*\{[^{}]*\})*|\d[\d,.]*(?:[eE][-+]?\d+)?|[A-Za-z]+(?:'[a-z]+)?|\S")


# A quoted answer is its content: 'The final answer is "42".' (single quotes only where no prime can be
# meant: after a space, before a space or a mark).
_QUOTED_RE = re.compile(r"(?:\\?\"|“|”)(.{0,200}?)(?:\\?\"|”|“)|(?<![^\s(])['‘]([^'’\n]{1,200})['’](?=[\s.,;:!?)]|$)")
# An answer line without any value ("Note that the answer is equivalent to the number of ways to
# choose ...") says something about the answer: it counts only when nothing else states one.
REMARK = "no value stated"
_VERBS = frozenset("is are was were equals equal equivalent be = 是 est ist".split())
_RESTATING = _VERBS | CONNECTIVES | {"it's", "that's", "which's"}
_BOUND_SIGNS = frozenset(["~", "≈", "<", ">", "≤", "≥", "\\approx", "\\sim", "\\le", "\\ge", "\\leq", "\\geq", "\\lt",
                          "\\gt", "\\lesssim", "\\gtrsim"])


def read_line(content: str) -> tuple[str, str | None]:
    """An answer line -> (the value it states, None) or ("", why it is no committed answer). The
    value is what the line starts with; else, in "the volume of ABCD is 120", what follows the
    last "is" (the words before it name the quantity); else the line's only value ("Jane started
    3 hours ago")."""
    content = _QUOTED_RE.sub(lambda m: m.group(1) or m.group(2), content.strip().strip("*_").strip())
    if not content:
        return "", "empty final answer"
    tokens = _TOKEN_RE.findall(content)
    if tokens[0] in _BOUND_SIGNS:
        return "", f"hedged final answer: {content[:60]!r} ('{tokens[0]}')"
    value, k = _leading_value(tokens)
    if not value:
        verb = max((i for i, t in enumerate(tokens) if t.lower() in _VERBS), default=None)
        if verb is not None:
            verb += 1 if tokens[verb + 1:verb + 2] == ["to"] else 0  # "is equal to 5"
            value, k = _leading_value(tokens[verb + 1:])
            k += verb + 1
            if not value and _qualifier(tokens[verb + 1:]):
                return "", f"hedged final answer: {content[:60]!r} ('{_qualifier(tokens[verb + 1:])}')"
        else:
            values = [i for i, t in enumerate(tokens) if _is_value(t)]
            if len(values) == 1 and not _qualifier(tokens):
                value, k = _leading_value(tokens[values[0]:])
                k += values[0]
    zone = _answer_zone(tokens[k:])
    if value and _rules_out_another(zone):  # "8, not 10": the answer is 8
        zone = []
    listed = _alternatives(zone)
    if value and listed:  # "x = 2 or x = -3": a list (the set of solutions), which no single value equals
        return ", ".join([value, *listed]), None
    qualifier = _qualifier(zone, after=True) or _condition(tokens[k:])
    words = [t.lower() for t in zone if t[0].isalpha()]
    if not value:
        if qualifier:
            return "", f"hedged final answer: {content[:60]!r} ('{qualifier}')"
        if 0 < len(words) <= 3 and len(words) == len(tokens):  # a text answer: "Monday", "Evelyn"
            return content.rstrip(".").strip(), None
        if not any(_is_value(t) for t in tokens):
            return "", f"{REMARK}: {content[:60]!r}"
        return "", f"unreadable final answer: {content[:60]!r}"
    if qualifier:
        return "", f"hedged final answer: {content[:60]!r} ('{qualifier}')"
    if any(_is_value(t) for t in zone) or any(t in ("|", "/", "≈", "~", "±", "≤", "≥", "<", ">") for t in zone):
        return "", f"hedged final answer: {content[:60]!r} (another value)"
    unit = _unit_after(words)  # "7 cm." is 7 cm
    scale = zone[0].lower() if zone and zone[0].lower() in SCALES else None
    if scale:
        return f"({value})\\cdot {SCALES[scale]}", None
    return (f"{value} \\text{{ {unit}}}" if unit else value), None


def _rules_out_another(zone: list[str]) -> bool:
    """A zone that only rules out one other value: ", not 10"."""
    zone = [t for t in zone if t not in (".", ",")]
    if len(zone) < 2 or zone[0].lower() != "not":
        return False
    value, used = _leading_value(zone[1:])
    return bool(value) and 1 + used == len(zone)


def _alternatives(zone: list[str]) -> list[str]:
    """The values of a zone that is only "or <value>" / ", <value>" (several solutions)."""
    values, k = [], 0
    zone = [t for t in zone if t not in (".",)]
    while k < len(zone):
        if zone[k].lower() not in ("or", ",", "and"):
            return []
        value, used = _leading_value(zone[k + 1:])
        if not value or k + 1 + used > len(zone):
            return []
        values.append(value)
        k += 1 + used
    return values


def _qualifier(tokens: list[str], after: bool = False) -> str | None:
    """The first qualifier among ``tokens``. ``after`` a value, read by what the words do there:
    an alternative or an uncertainty always qualifies it ("9 or so", "12, probably"); a condition
    only when it leads to another value (``_condition``); a negation
    only at once ("\\boxed{9} is wrong", not "\\boxed{4} works and no other n does"); a bound
    after "or" / "and" / "at" / "no" ("9 or more", "9 at most", "9 or over"), and a bound word
    (not a preposition) also as the first word, units aside, when no "than" follows ("9
    minimum", not "10 more than Susan", "\\boxed{72} degrees is the minimum angle")."""
    words = [(t.lower(), k) for k, t in enumerate(tokens) if t[0].isalpha()]
    for i, (w, k) in enumerate(words):
        if w not in QUALIFIERS or (w == "may" and words[i + 1:i + 2] and words[i + 1][0] != "be"):
            continue  # ("may" alone may be the month)
        if w == "may" and not words[i + 1:i + 2]:
            continue
        if w in _CONDITIONS and after:
            continue  # (see _condition)
        if not after or w in _ALTERNATIVES | _UNCERTAIN or (w in _NEGATIONS and i <= 1):
            return w
        if w in _NEGATIONS:
            continue
        before = [b for b, _ in words[:i]]
        if before and before[-1] in ("or", "and", "at", "no", "not"):
            return w
        than = tokens[k + 1:k + 2] == ["than"]
        if w in _BOUNDS and all(is_unit_word(b) for b in before) and (
                not than or any(_is_value(t) for t in tokens[k + 2:k + 4])):
            return w  # ("9 minimum"; "3 more than 5" says 8)
    return None


def _condition(tokens: list[str]) -> str | None:
    """A condition after a value that leads to another value: "5 if n is odd and 6 if n is
    even", "4, unless ..., in which case it is 2", "4 when ..., otherwise 9" (not "a remainder
    of 1 when divided by 2, 3, 4, or 6")."""
    words = [t.lower() for t in tokens]
    for i, w in enumerate(words):
        if w not in _CONDITIONS:
            continue
        for j in range(i + 1, len(words)):
            if _is_value(tokens[j]) and (words[j - 1] in _STATING or _CONDITIONS & set(words[j + 1:j + 3])):
                return w
    return None


def _answer_zone(tokens: list[str]) -> list[str]:
    """What follows the value up to an explanation: the words that may qualify it. A parenthesis
    of prose explains ("(6 times 7 is 42)"); one of values alone, or with a qualifier, offers more."""
    zone, depth, group = [], 0, []
    for t in tokens:
        if depth == 0 and (t.lower() in CONNECTIVES or t in (";", ":", "—", "=>")):
            break
        if t == "(":
            depth += 1
        elif t == ")" and depth:
            depth -= 1
            if depth == 0:
                prose_words = [w for w in group if w[0].isalpha() and len(w) > 1 and w.lower() not in QUALIFIERS]
                zone += [] if prose_words and not _qualifier(group) else group
                group = []
            continue
        (group if depth else zone).append(t)
    return zone + group


def _is_value(token: str) -> bool:
    return token[0].isdigit() or token.startswith(("$", "\\(")) or token.startswith("\\frac")


def _leading_value(tokens: list[str]) -> tuple[str, int]:
    """The math at the start of an answer line: tokens up to the first prose word (a comma
    continues it only before more math: "15, -29"; a parenthesis that holds prose is no part
    of it: "42 (6 times 7)")."""
    out, k, opened = [], 0, []
    while k < len(tokens):
        t = tokens[k]
        low = t.lower()
        if t[0].isalpha() and (len(t) > 1 or not t.isascii()) and low not in _MATH_WORDS:
            break  # a prose word (a single ASCII letter is a variable)
        if t in (",", ";") and not (k + 1 < len(tokens) and _starts_math(tokens[k + 1])):
            break
        if t in (".", "?") or (t == "!" and not (out and (out[-1][-1].isdigit() or out[-1] in (")", "}")))):
            break  # (not a factorial: "5! = 120")
        if t in ("(", "["):
            opened.append(len(out))
        elif t in (")", "]") and opened:
            opened.pop()
        out.append(t[1:-1] if t.startswith("$") and t.endswith("$") and len(t) > 1 else t)
        k += 1
    if opened:  # stopped inside a parenthesis: it was prose
        k -= len(out) - opened[0]
        out = out[:opened[0]]
    while out and out[-1] in (",", "(", "["):
        out.pop()
        k -= 1
    text = " ".join(out).strip()
    return (text if any(c.isalnum() for c in text) else ""), k


def _starts_math(token: str) -> bool:
    return token[0].isdigit() or token[0] in "-+$\\(" or (len(token) == 1 and token.isalpha())


_TEXT_GROUP_RE = re.compile(r"\\(?:text|textrm|textnormal|mbox|mathrm|textit|textbf|mathbf)\s*\{([^{}]*)\}")
_WORDS_ONLY_RE = re.compile(r"\s*[A-Za-z][A-Za-z\s,.]*$")
_WRAPPERS_RE = re.compile(r"\\(?:color|textcolor)\s*\{[a-zA-Z]+\}|\\(?:displaystyle|textstyle|bf|rm)\b")


def read_box(content: str) -> tuple[str, str | None]:
    """A box's content -> (its answer, None) or ("", why it is no committed answer). Words are
    read: a unit or a counted noun after the value stays (the unit is compared), a scale word
    multiplies, "or"/"not"/"at least" and the like hedge, any other words make it unreadable."""
    content = _WRAPPERS_RE.sub(" ", content).strip()
    if not content:
        return "", "empty final answer"
    if content.count("$") % 2 == 0 and "$" in content:  # "\\boxed{12 $ and $13}": the box opened in math
        parts = content.split("$")                        # mode, so words between $...$ are text
        text = 0 if not parts[0].strip() else 1           # (unless it starts with $: "{$x$ or $y$}")
        content = "".join(f"\\text{{{p}}}" if i % 2 == text and _WORDS_ONLY_RE.match(p) else p
                          for i, p in enumerate(parts))
    texts = [t for t in _TEXT_GROUP_RE.findall(content) if t.strip().lower() not in ("and", "or", ",", "")]
    words = [w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t)]
    if not texts or not words:
        return content, None  # (\text{ and } between values: a list)
    qualifier = next((w for w in words if w in QUALIFIERS), None)
    if qualifier:
        return "", f"hedged final answer: {content[:60]!r} ('{qualifier}')"
    bare = _TEXT_GROUP_RE.sub("", content).strip()
    if not bare and len(texts) == 1 and re.match(r"\s*-?\d", texts[0]):
        return read_line(texts[0])  # \text{8 people}: read as a line is
    if not bare:
        return content, None  # a text answer: \text{Monday}, \text{(B)}
    if any(re.search(r"\d|[()\[\]]", t) for t in texts):
        return "", f"unreadable final answer: words and values inside the box {content[:60]!r}"
    if len(words) == 1 and words[0] in SCALES:
        return f"({bare})\\cdot {SCALES[words[0]]}", None
    last = [g for g in _TEXT_GROUP_RE.finditer(content) if g.group(1) in texts][-1]
    after = content[last.end():].strip()
    if after in ("", "^2", "^3", "^{2}", "^{3}") and (len(words) == 1 or is_unit_phrase(last.group(1) + after)):
        return content, None  # a value and its unit (compared as a unit) or a counted noun
    if not bare or not re.search(r"\d", bare):
        return content, None  # a text answer: \text{Monday}, \text{(B)}
    return "", f"unreadable final answer: words inside the box {content[:60]!r}"


def is_unit_word(word: str) -> bool:
    return word.lower() in UNITS


def is_unit_phrase(phrase: str) -> bool:
    return unit_of(phrase) is not None


# ---------------------------------------------------------------- no statement: a fallback

_NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9_.\\])-?(?:\d+ \d+/\d+(?![\d/])|\d{1,3}(?:\.\d{3}){2,}(?!\d|\.\d)"
    r"|(?:\d{1,3}(?:,\d{3})+|\d+)(?:[.,]\d+)?(?:[eE][-+]?\d+|/\d+)?|\\frac\{\d+\}\{\d+\})"
    r"(?![0-9])(?![.,]\d)"
)
_WHOLE_RESPONSE_MAX = 60
_BEFORE_WORDS = 4  # words before a value that may qualify it ("no more than 12", "my best guess is 24")


def find_math_spans(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), next(g for g in m.groups() if g is not None)) for m in _MATH_SPAN_RE.finditer(text)]


def looks_like_math(answer: str) -> bool:
    """No prose words: letters outside commands and ``\\text{}`` come in runs of at most two."""
    bare = re.sub(r"\\(?:text\w*|begin|end)\s*\{[^{}]*\}|\\[a-zA-Z]+", " ", answer)
    return re.search(r"[A-Za-z]{3,}|\b[A-Za-z]{2}\b", bare) is None


def fallback(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """For a response with no final-answer statement: possible answers as (answer, method), best
    first (the response itself when it is a short answer; the value that ends last, read in its
    sentence as an answer line is: a unit or scale word after it kept, math spans joined by
    "and"/"or" as one list; the last span alone; a gold-like text such as "Monday" as a last
    resort), and why there is none when the last value is qualified ("about 9", "no more than
    12", "x \\approx 15")."""
    text = prose(text)
    stripped = text.strip()
    out = []
    if stripped and len(stripped) <= _WHOLE_RESPONSE_MAX and "\n" not in stripped and looks_like_math(normalize(stripped)):
        out.append((stripped, "whole"))
    spans = find_math_spans(text)
    covered = [(a, b) for a, b, _ in spans]
    numbers = [(m.start(), m.end(), m.group()) for m in _NUMBER_RE.finditer(text)
               if not any(a <= m.start() < b for a, b in covered)]
    last = max([*numbers, *spans], key=lambda v: v[1], default=None)
    if last is not None:
        answer, problem = _read_in_sentence(text, last, spans)
        if problem and not out:
            return [], problem
        out.append((answer, "last-number" if last in numbers else "math-span"))
    if spans:
        out.append((spans[-1][2], "math-span"))
    if stripped and not out:
        out.append((stripped, "whole-text"))
    return out, None


def _read_in_sentence(text: str, value: tuple[int, int, str], spans: list) -> tuple[str, str | None]:
    """The last value of a response, as its sentence states it (see ``fallback``)."""
    start, end, content = value
    if content.strip().startswith(("\\approx", "\\sim")) or re.search(r"\\approx|\\sim|≈|~", content):
        return "", f"hedged answer: {content.strip()[:40]!r} (approximately)"
    group = [v for v in spans if v[1] <= start or v == value]  # "x = 2 or x = -3": one list
    joined = [value]
    for prev in reversed(group[:-1] if group and group[-1] == value else []):
        between = text[prev[1]:joined[0][0]].strip(" ,").lower()
        if between not in ("", "and", "or", ", and", ", or"):
            break
        joined.insert(0, prev)
    head = text[:joined[0][0]]
    sentence_start = max((m.end() for m in _SENTENCE_END_RE.finditer(head)), default=0)
    before = _TOKEN_RE.findall(head[sentence_start:])[-_BEFORE_WORDS:]
    values = [i for i, t in enumerate(before) if _is_value(t)]
    if values and any(t.lower() in _RESTATING for t in before[values[-1] + 1:]):
        before = before[values[-1] + 1:]  # "not 10, which is 1,000.99": the "not" was about 10
    rest = text[end:]
    stop = _SENTENCE_END_RE.search(rest)
    zone = _answer_zone(_TOKEN_RE.findall(rest[:stop.start() if stop else len(rest)]))
    qualifier = _qualifier(before) or _qualifier(zone[:3], after=True) or (before[-1] if before and before[-1] in
                                                                           _BOUND_SIGNS else None)
    if qualifier:
        return "", f"hedged answer: {head[sentence_start:][-40:] + content + rest[:20]!r} ('{qualifier}')"
    answer = ", ".join(v[2] for v in joined)
    words = [t.lower() for t in zone if t[0].isalpha()]
    if words and words[0] in SCALES:
        return f"({answer})\\cdot {SCALES[words[0]]}", None
    unit = _unit_after(words)
    return (f"{answer} \\text{{ {unit}}}" if unit and len(joined) == 1 else answer), None


def _unit_after(words: list[str]) -> str | None:
    """The unit the words after a value start with ("miles per hour", "square centimeters",
    "cm", "hours")."""
    if len(words) >= 3 and words[1] == "per" and is_unit_phrase(" ".join(words[:3])):
        return " ".join(words[:3])
    if len(words) >= 2 and is_unit_phrase(" ".join(words[:2])):
        return " ".join(words[:2])
    return words[0] if words and is_unit_word(words[0]) else None
