"""Byte sizes in a manifest, written the way people write them: ``64MiB``, ``1.5 GiB``, ``100MB``, or a plain
integer; rates the same with ``/s`` (``200MB/s``). Showing a size approximately (``1.5 GiB``) is :func:`xfd.formatting.human_size`."""

from __future__ import annotations

import re
from fractions import Fraction

from xfd.formatting import shown

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str) -> int:
    """Bytes in ``value``; raises ``ValueError`` with a message meant for the user."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 64MiB or a number of bytes, not a boolean")
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"must be a size of at most 8EiB (got an integer of {value.bit_length()} bits)")
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a size such as 64MiB or a number of bytes (got {shown(value)})")
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"must be a size such as 64MiB, 1GiB, 500MB or a number of bytes (got {value!r})")
    number = match.group(1)  # bounded below: int() and Fraction() refuse strings of over 4300 digits
    if len(number.split(".")[0].lstrip("0")) > 20:
        raise ValueError(f"must be a size of at most 8EiB (got {value[:40]!r}...)")
    if len(number) > 1000:
        raise ValueError(f"must be a size such as 64MiB, 1GiB, 500MB or a number of bytes (got {value[:40]!r}...)")
    bytes_ = Fraction(number) * _UNITS[unit]  # exact: a float would round sizes above 2**53
    if bytes_ >= 2**63:
        raise ValueError(f"must be a size of at most 8EiB (got {value!r})")
    if bytes_.denominator != 1:
        raise ValueError(f"must be a whole number of bytes (got {value!r})")
    return int(bytes_)


def parse_rate(value: int | str) -> int:
    """Bytes per second in ``value`` (``"200MB/s"``, ``"1 GiB/s"``, ``"200MB"`` or an integer); raises
    ``ValueError`` with a message meant for the user."""
    size = value.strip()[:-2] if isinstance(value, str) and value.strip().lower().endswith("/s") else value
    try:
        return parse_size(size)
    except ValueError as error:
        if "at most" in str(error):
            raise ValueError(f"must be a rate of at most 8EiB/s (got {shown(value):.60})") from None
        raise ValueError(
            f"must be a rate such as 200MB/s, 1GiB/s or a number of bytes per second (got {shown(value):.60})"
        ) from None


def format_rate(rate: int) -> str:
    """The shortest exact form of ``rate`` bytes per second: ``200MB/s``, ``64MiB/s``."""
    for unit in ("TiB", "TB", "GiB", "GB", "MiB", "MB", "KiB", "KB"):  # the largest exact unit
        factor = _UNITS[unit.lower()]
        if rate and rate % factor == 0:
            return f"{rate // factor}{unit}/s"
    return f"{rate}/s"


def format_size(size: int) -> str:
    """The shortest exact binary form of ``size``: ``64MiB`` rather than ``67108864``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = _UNITS[unit.lower()]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
