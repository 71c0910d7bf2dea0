"""Byte quantities ("80GiB", "64G", "512Mi") and parameter counts ("7B", "6.7e9").

Users write these the way Kubernetes, Slurm and model cards do; we keep the
original spelling for the targets that pass it on and the number for arithmetic.
"""

from __future__ import annotations

import re

_BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]i?)?b?\s*$", re.IGNORECASE)
_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*([kmbt])?\s*$", re.IGNORECASE)
_COUNT_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_bytes(value: str | int) -> int:
    """Bytes from "80GiB", "80Gi", "80GB", "80G" (G = 10^9, Gi = 2^30), or a plain int."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 80GiB, not a boolean")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a size must be positive")
        return value
    match = _QUANTITY.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size; write it as 80GiB, 64G or 512Mi")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    scale = _BINARY.get(unit) or _DECIMAL.get(unit) or 1
    result = int(number * scale)
    if result <= 0:
        raise ValueError("a size must be positive")
    return result


def parse_count(value: str | int | float) -> float:
    """A parameter count from 6.7e9, "6.7e9" (YAML 1.1 reads that as a string) or "7B"."""
    if isinstance(value, bool):
        raise ValueError("expected a parameter count such as 7e9 or 7B")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _COUNT.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a parameter count; write 6.7e9 or 7B")
        number = float(match.group(1)) * _COUNT_SUFFIX.get((match.group(2) or "").lower(), 1)
    if number <= 0:
        raise ValueError("a parameter count must be positive")
    return number
