"""Numbers in answers, parsed exactly (``Fraction``, no sympy): the number/unit reader of
:func:`tgrl.rewards.answers_match`.

Reads thousands commas, decimals, scientific notation (1.5e3, 1.5 \\times 10^{3}), fractions (3/4,
\\frac{3}{4}), currency ($5), degrees (5°, 5^\\circ), percent signs and units ("5 cm", "5cm^2",
"5 square units"). Units are dropped, never converted; a word after a number that changes its meaning
("5 thousand", "2 pi") makes it not a plain number. Bounded: at most ``MAX_NUMBER_DIGITS`` digits,
exponents up to ``MAX_DECIMAL_EXPONENT``, texts up to ``MAX_NUMBER_CHARS``.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_NUMBER_CHARS = 1000  # a longer text is not a number (tgrl.rewards.MAX_ANSWER_CHARS, the answer limit)
MAX_NUMBER_DIGITS = 100  # more digits than this is not a number we compare (and int() would choke)
MAX_DECIMAL_EXPONENT = 1000  # |k| in 1e{k} / 10^{k}
RELATIVE_TOLERANCE = Fraction(1, 10**6)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_DECIMAL = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_SCIENTIFIC = (
    r"(?:\s*[eE](?P<exp>[+-]?\d{1,4})"
    r"|\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*(?P<exp10>[+-]?\d{1,4})\s*\}?)?"
)
_CURRENCY_PREFIX_RE = re.compile(r"^([+-]?)\s*(?:\$|€|£|¥|₹|us\$|usd\s)\s*", re.IGNORECASE)
_NUMBER_FORMS = (
    re.compile(
        rf"^(?P<sign>[+-]?)\s*\\frac\s*\{{\s*(?P<num>[+-]?(?:{_DECIMAL}))\s*\}}\s*\{{\s*(?P<den>[+-]?(?:{_DECIMAL}))\s*\}}(?P<tail>.*)$",
        re.DOTALL,
    ),
    re.compile(r"^(?P<sign>[+-]?)\s*\\frac(?P<num>\d)(?P<den>\d)(?P<tail>.*)$", re.DOTALL),
    re.compile(rf"^(?P<sign>[+-]?)\s*(?P<num>{_DECIMAL})\s*/\s*(?P<den>{_DECIMAL})(?P<tail>.*)$", re.DOTALL),
    re.compile(rf"^(?P<sign>[+-]?)\s*(?P<num>{_DECIMAL}){_SCIENTIFIC}(?P<tail>.*)$", re.DOTALL),
    re.compile(r"^(?P<sign>[+-]?)\s*10\s*\^\s*\{?\s*(?P<exp10>[+-]?\d{1,4})\s*\}?(?P<tail>.*)$", re.DOTALL),
)

_UNITS = _words(
    "mm cm dm m km in inch inches ft feet foot yd yard yards mi mile miles meter meters metre metres "
    "centimeter centimeters centimetre centimetres millimeter millimeters kilometer kilometers "
    "mg g kg gram grams kilogram kilograms lb lbs pound pounds oz ounce ounces ton tons tonne tonnes "
    "ms s sec secs second seconds min mins minute minutes h hr hrs hour hours day days week weeks "
    "month months year years yr yrs ml l liter liters litre litres gal gallon gallons "
    "deg degree degrees rad radian radians unit units mph kph kmh km/h m/s newton newtons joule "
    "joules kj watt watts kw kwh volt volts amp amps ampere amperes ohm ohms hz khz mhz ghz pa "
    "kpa atm kelvin celsius fahrenheit dollar dollars cent cents yuan rmb euro euros usd "
    "percent pct people persons students times"
)
_UNIT_ALTERNATION = "|".join(re.escape(u) for u in sorted(_UNITS, key=lambda unit: (-len(unit), unit)))
_POWER = r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?"
_KNOWN_UNIT_TAIL_RE = re.compile(
    rf"(?i)^\s*(?:(?:square|sq\.?|cubic|cu\.?)\s*)?(?:{_UNIT_ALTERNATION}){_POWER}"
    rf"(?:\s*/\s*(?:{_UNIT_ALTERNATION}){_POWER})?\s*$"
)
_WORDS_TAIL_RE = re.compile(rf"^\s+([A-Za-z]{{2,}}(?:\s+[A-Za-z]{{2,}}){{0,3}}){_POWER}\s*$")
# Words after a number that change its meaning: never drop them as if they were units.
_MEANINGFUL_WORDS = _words(
    "pi sqrt log ln sin cos tan exp times cdot div over plus minus and or to by of not less more than "
    "hundred hundreds thousand thousands million millions billion billions trillion dozen dozens "
    "half halves third thirds quarter quarters squared cubed power"
)
_DEGREE_RE = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree)(?:\s*[CF](?![A-Za-z]))?")
_PERCENT_RE = re.compile(r"\\?%")


def _unit_tail_ok(tail: str) -> bool:
    tail = _DEGREE_RE.sub(" ", tail)
    tail = _PERCENT_RE.sub(" ", tail)
    if not tail.strip():
        return True
    if _KNOWN_UNIT_TAIL_RE.match(tail):
        return True
    words = _WORDS_TAIL_RE.match(tail)
    return bool(words) and not any(w.lower() in _MEANINGFUL_WORDS for w in words.group(1).split())


def _decimal_fraction(text: str) -> Fraction | None:
    text = text.replace(",", "")
    if sum(c.isdigit() for c in text) > MAX_NUMBER_DIGITS:
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def parse_number(text: str) -> Fraction | None:
    """An exact value for a plain number, fraction or scientific number, with currency, degree,
    percent and unit decorations removed (units are dropped, not converted); else ``None``.

    Example:
        >>> parse_number("1,234.5 cm^2"), parse_number("\\\\frac{3}{4}"), parse_number("50%")
        (Fraction(2469, 2), Fraction(3, 4), Fraction(50, 1))
    """
    text = _CURRENCY_PREFIX_RE.sub(r"\1", text.strip())
    if not text or len(text) > MAX_NUMBER_CHARS:
        return None
    for form in _NUMBER_FORMS:
        match = form.match(text)
        if not match or not _unit_tail_ok(match.group("tail")):
            continue
        groups = match.groupdict()
        if groups.get("num") is None:
            value: Fraction | None = Fraction(1)
        else:
            value = _decimal_fraction(groups["num"])
        if value is None:
            return None
        if groups.get("den") is not None:
            denominator = _decimal_fraction(groups["den"])
            if not denominator:
                return None
            value /= denominator
        exponent = groups.get("exp") or groups.get("exp10")
        if exponent is not None:
            power = int(exponent)
            if abs(power) > MAX_DECIMAL_EXPONENT:
                return None
            value *= Fraction(10) ** power
        return -value if groups["sign"] == "-" else value
    return None


def numbers_close(gold: Fraction, pred: Fraction) -> bool:
    """Exact for two integers; otherwise relative tolerance 1e-6."""
    if gold == pred:
        return True
    if gold.denominator == 1 and pred.denominator == 1:
        return False
    return abs(gold - pred) <= RELATIVE_TOLERANCE * max(abs(gold), abs(pred))
