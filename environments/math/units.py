"""Units in answers: split off and compared as units, never dropped.

``split_unit("7\\text{ cm}") -> ("7", "cm")``. A known unit (length, area, volume, mass, time,
money, angle, percent, speed) is compared: a mismatch is a wrong answer (7 cm is not 7 m; 50
dollars are not 50 cents), a matching unit or one side without a unit compares the values.
Conventions where the gold says which: a gold in degrees takes a value in radians (a multiple of
pi) converted, and the other way round; a gold in percent takes the fraction (0.25 for 25 %).
A counted noun after a value (``7 \\text{ eggs}``) is no unit: it is dropped.
"""

from __future__ import annotations

import functools
import re

# word -> canonical unit
_GROUPS = {
    "mm": "mm millimeter millimeters millimetre millimetres",
    "cm": "cm centimeter centimeters centimetre centimetres",
    "m": "m meter meters metre metres",
    "km": "km kilometer kilometers kilometre kilometres",
    "in": "in inch inches",
    "ft": "ft foot feet",
    "yd": "yd yard yards",
    "mi": "mi mile miles",
    "ml": "ml milliliter milliliters millilitre millilitres",
    "l": "l liter liters litre litres",
    "mg": "mg milligram milligrams",
    "g": "g gram grams",
    "kg": "kg kilogram kilograms kilo kilos",
    "lb": "lb lbs pound pounds",
    "oz": "oz ounce ounces",
    "t": "ton tons tonne tonnes",
    "s": "s sec secs second seconds",
    "min": "min mins minute minutes",
    "h": "h hr hrs hour hours",
    "day": "day days",
    "week": "week weeks",
    "month": "month months",
    "year": "year years yr yrs",
    "dollar": "dollar dollars usd",
    "cent": "cent cents",
    "euro": "euro euros eur",
    "degree": "degree degrees deg",
    "rad": "rad rads radian radians",
    "percent": "percent percents pct percentage",
    "mph": "mph",
    "kmh": "kmh kph",
}
UNITS = {word: unit for unit, words in _GROUPS.items() for word in words.split()}
_POWER_WORDS = {"square": "^2", "sq": "^2", "cubic": "^3", "cu": "^3"}
_TEXT_RE = re.compile(r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm|mathbf|mathit|operatorname)\s*\{([^{}]*)\}")
_TRAILING_RE = re.compile(
    r"^(?P<value>.*?[\d}).\]])\s*(?P<unit>(?:(?:square|sq|cubic|cu)\s+)?[A-Za-z]+(?:\s*/\s*[A-Za-z]+)?"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?)\s*$")


@functools.lru_cache(maxsize=4096)
def unit_of(phrase: str) -> str | None:
    """The canonical unit of a phrase ("cm^2", "square meters", "m/s^2", "km/h"), or None."""
    phrase = " ".join(phrase.replace("{", " ").replace("}", " ").split()).lower()
    phrase = re.sub(r"\s*\^\s*", "^", phrase)
    phrase = re.sub(r"\s+per\s+", "/", phrase)  # "miles per hour" is mi/h
    power = ""
    words = phrase.split()
    if len(words) == 2 and words[0] in _POWER_WORDS:
        power, phrase = _POWER_WORDS[words[0]], words[1]
    m = re.fullmatch(r"([a-z]+)(\^[23])?(?:\s*/\s*([a-z]+)(\^2)?)?", phrase.replace(" ", ""))
    if not m or m.group(1) not in UNITS:
        return None
    unit = UNITS[m.group(1)] + (m.group(2) or power)
    if m.group(3):
        if m.group(3) not in UNITS:
            return None
        unit += "/" + UNITS[m.group(3)] + (m.group(4) or "")
    return {"km/h": "kmh", "mi/h": "mph"}.get(unit, unit)


@functools.lru_cache(maxsize=16384)
def split_unit(answer: str) -> tuple[str, str | None]:
    """``answer`` -> (its value, its canonical unit or None). A counted noun is dropped."""
    s = answer.strip().rstrip(".").strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    if re.match(r"^\\?\$\s*-?\d", s) or s.startswith("\\dollar"):
        return re.sub(r"^\\?\$|^\\dollar", "", s).strip(), "dollar"
    if re.search(r"(?:\\%|%)$", s):
        return re.sub(r"\s*(?:\\%|%)$", "", s), "percent"
    degree = re.search(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\degree)\s*$", s)
    if degree and s[:degree.start()].strip():
        return s[:degree.start()].strip(), "degree"
    texts = list(_TEXT_RE.finditer(s))
    if texts and s[texts[-1].end():].strip() in ("", "^2", "^3", "^{2}", "^{3}") and s[:texts[-1].start()].strip():
        value, phrase = s[:texts[-1].start()].strip(), texts[-1].group(1) + s[texts[-1].end():]
        unit = unit_of(phrase)
        if unit is not None:
            return value, unit
        if re.fullmatch(r"\s*[A-Za-z]+\s*", texts[-1].group(1)):
            return value, None  # a counted noun: 7 \text{ eggs}
        return s, None
    m = _TRAILING_RE.match(s)
    if m and re.search(r"\d", m.group("value")):
        spaced = s[len(m.group("value")):][:1].isspace()
        unit = unit_of(m.group("unit"))
        # (``2m`` without a space is an algebraic product; ``5cm`` is five centimetres)
        if unit is not None and (spaced or len(m.group("unit")) > 1):
            return m.group("value").strip(), unit
    return s, None
