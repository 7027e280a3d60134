"""Sizes and rates written with units, as scenario files and command lines spell them.

Owns: turning "200MB", "4 MiB", "1.5Gbps" or "12.5MB/s" into numbers, and numbers back into
short human-readable text.

Rules kept here:
- Results are in bytes (sizes, `int`) and bytes per second (rates, `float`), whatever the
  input unit. Bits appear only on the way in and, optionally, on the way out.
- Decimal units are powers of 1000 (KB, MB, Mbps), binary units powers of 1024 (KiB, MiB/s).
- Units are spelled exactly as in the tables below. Case carries meaning ('b' is bits,
  'B' is bytes), so a spelling that only differs in case is refused, never guessed; the error
  suggests the right spelling when the bits/bytes reading is not in doubt ("mbps" -> "Mbps").
- A bare integer is a size in bytes. A bare number is never a rate: bits or bytes would be a
  guess.
- A sign is accepted ("-5MB" parses); whether a value is in range is the caller's rule, so the
  caller can say which key is wrong and why.
- Parsing is exact (decimal arithmetic): "4.2MB" is 4,200,000 bytes, not 4,199,999.
  A size must come out as a whole number of bytes.
- Every error is a `ValueError` with a one-line message naming the text and the units.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "SIZE_UNITS", "RATE_UNITS", "parse_size", "parse_rate", "parse_limit", "format_bytes", "format_rate",
]

_K, _KI = 1000, 1024

# unit -> bytes
SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KB": _K, "MB": _K**2, "GB": _K**3, "TB": _K**4,
    "KiB": _KI, "MiB": _KI**2, "GiB": _KI**3, "TiB": _KI**4,
}

# unit -> bytes per second (bit rates divided by 8, exactly, as Decimal)
RATE_UNITS: dict[str, Decimal] = {
    **{bits: Decimal(_K**k) / 8
       for k, bits in enumerate(("bps", "Kbps", "Mbps", "Gbps", "Tbps"))},
    **{f"{size}/s": Decimal(mult) for size, mult in SIZE_UNITS.items()},
}

_SIZE_HELP = "use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB; a bare integer is bytes"
_RATE_HELP = "use bps, Kbps, Mbps, Gbps, Tbps for bits/s, or B/s, KB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s ... for bytes/s"

# an optional sign, a decimal number, optional spaces, an optional unit
_QUANTITY = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([A-Za-z/]*)\s*")


def _split(text: str) -> tuple[Decimal, str] | None:
    """'1.5 Gbps' -> (Decimal('1.5'), 'Gbps'); None if it is not a number and a word."""
    m = _QUANTITY.fullmatch(text)
    if m is None:
        return None
    try:
        return Decimal(m.group(1)), m.group(2)
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid numbers
        return None


def _bits_and_bytes(unit: str) -> str:
    return "".join(c for c in unit if c in "bB")


def _loose(unit: str) -> str:
    """The spelling with case and '/s' vs 'ps' forgotten: 'MBps', 'Mb/s', 'mbps' all -> 'mbps'."""
    return unit.lower().replace("/s", "ps")


def _case_hint(unit: str, table: dict) -> str:
    """Suggest spellings that differ only in case; say so when bits vs bytes is in doubt."""
    near = [known for known in table if _loose(known) == _loose(unit)]
    if not near:
        return ""
    same = [known for known in near if _bits_and_bytes(known) == _bits_and_bytes(unit)]
    if len(same) == 1 and _loose(same[0]) == _loose(unit) and same[0].lower() == unit.lower():
        return f"units are case-sensitive: did you mean '{same[0]}'?"
    options = " or ".join(f"'{known}'" for known in near)
    return f"ambiguous: 'b' is bits and 'B' is bytes; did you mean {options}?"


def parse_size(value: int | float | str) -> int:
    """A size in bytes from an integer (bytes) or a string with a unit ('200MB', '4 MiB')."""
    what = f"{value!r} is not a size"
    if isinstance(value, bool):
        raise ValueError(f"{what} ({_SIZE_HELP})")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise ValueError(f"{what} (a size is a whole number of bytes; {_SIZE_HELP})")
    if not isinstance(value, str):
        raise ValueError(f"{what} ({_SIZE_HELP})")
    parts = _split(value)
    if parts is None:
        raise ValueError(f"{what} ({_SIZE_HELP})")
    number, unit = parts
    if unit == "":
        if number != number.to_integral_value():
            raise ValueError(f"{what} (a bare number is bytes and must be whole; {_SIZE_HELP})")
        return int(number)
    if unit not in SIZE_UNITS:
        if unit in RATE_UNITS:
            raise ValueError(f"{what} ('{unit}' is a rate unit; {_SIZE_HELP})")
        hint = _case_hint(unit, SIZE_UNITS)
        raise ValueError(f"{what} ({hint or _SIZE_HELP})")
    exact = number * SIZE_UNITS[unit]
    if exact != exact.to_integral_value():
        raise ValueError(f"{what} (not a whole number of bytes)")
    return int(exact)


def parse_rate(value: str) -> float:
    """A rate in bytes per second from a string with a unit ('100Mbps', '12.5 MB/s')."""
    what = f"{value!r} is not a rate"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"{what} (a bare number could be bits or bytes; add a unit: {_RATE_HELP})")
    if not isinstance(value, str):
        raise ValueError(f"{what} ({_RATE_HELP})")
    parts = _split(value)
    if parts is None:
        raise ValueError(f"{what} ({_RATE_HELP})")
    number, unit = parts
    if unit == "":
        raise ValueError(f"{what} (a bare number could be bits or bytes; add a unit: {_RATE_HELP})")
    if unit not in RATE_UNITS:
        if unit in SIZE_UNITS:
            raise ValueError(f"{what} ('{unit}' is a size unit; did you mean '{unit}/s'?)")
        hint = _case_hint(unit, RATE_UNITS)
        raise ValueError(f"{what} ({hint or _RATE_HELP})")
    return float(number * RATE_UNITS[unit])


_WGET = {"": 1, "k": 1024, "K": 1024, "m": 1024**2, "M": 1024**2, "g": 1024**3, "G": 1024**3}


def parse_limit(value: str) -> float:
    """A bandwidth limit as wget and dfget spell it: bytes/s with k, M or G (powers of 1024),
    '20M' is 20 MiB/s; any rate `parse_rate` reads ('100Mbps', '12.5MB/s') works too."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([kKmMgG]?)", text)
    rate = float(Decimal(m.group(1)) * _WGET[m.group(2)]) if m else parse_rate(text)
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"{value!r} is not a limit (must be > 0)")
    return rate


# ---------------------------------------------------------------------------------------------
# Output. Three significant digits, no exponent; the text parses back with parse_size/parse_rate
# (to within the rounding).

_DECIMAL_LADDER = (("TB", _K**4), ("GB", _K**3), ("MB", _K**2), ("KB", _K), ("B", 1))
_BINARY_LADDER = (("TiB", _KI**4), ("GiB", _KI**3), ("MiB", _KI**2), ("KiB", _KI), ("B", 1))
_BIT_LADDER = (("Tbps", _K**4), ("Gbps", _K**3), ("Mbps", _K**2), ("Kbps", _K), ("bps", 1))


def _three_digits(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _format(x: float, ladder: tuple[tuple[str, int], ...], suffix: str = "") -> str:
    if not math.isfinite(x):
        return f"{x} {ladder[-1][0]}{suffix}"
    for unit, mult in ladder:
        # pick the largest unit in which the rounded value is at least 1
        if abs(float(_three_digits(x / mult))) >= 1 or mult == 1:
            return f"{_three_digits(x / mult)} {unit}{suffix}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_bytes(n: float, binary: bool = False) -> str:
    """200_000_000 -> '200 MB'; with binary=True, 4_194_304 -> '4 MiB'."""
    return _format(float(n), _BINARY_LADDER if binary else _DECIMAL_LADDER)


def format_rate(bytes_per_s: float, bits: bool = True) -> str:
    """12_500_000 -> '100 Mbps' (NICs are named in bits); with bits=False -> '12.5 MB/s'."""
    if bits:
        return _format(float(bytes_per_s) * 8, _BIT_LADDER)
    return _format(float(bytes_per_s), _DECIMAL_LADDER, "/s")
