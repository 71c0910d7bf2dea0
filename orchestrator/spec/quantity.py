"""Byte quantities ("80GiB", "64G", "512Mi") and parameter counts ("7B", "6.7e9").

Users write these the way Kubernetes, Slurm and model cards do; we keep the
original spelling for the targets that pass it on and the number for arithmetic.

Each grammar is one regular expression, and the regular expression *is* the rule: the JSON
Schema and the CRD carry the same pattern, so what the API server admits is exactly what the
model accepts. The grammars are bounded, so every accepted value is finite, positive and far
below 2^63 (a kernel's memory limit, Slurm's --mem and a Kubernetes quantity all read 64-bit
integers; a value past that wraps around to a tiny limit). The patterns are written in the
subset that Python, RE2 (the API server) and ECMA-262 (JSON Schema) read alike: `[0-9]`, not
`\\d` (which is Unicode in Python), no whitespace classes, `^...$` matched in full.
"""

from __future__ import annotations

import math
import re

_BINARY = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_FRACTION = r"(?:\.[0-9]{1,6})?"
# A size needs a unit, M or larger: a bare number would be bytes, and a memory of a few bytes or
# kilobytes is never what a training node or a GPU has (`memory_per_node: 24` is a typo for 24GiB,
# not 24 bytes). Digits per unit keep every size under 10 PiB (< 2^54 bytes).
BYTES_PATTERN = (r"^(?:[1-9][0-9]{0,8}" + _FRACTION + r" ?[mM]|[1-9][0-9]{0,5}" + _FRACTION + r" ?[gG]"
                 r"|[1-9][0-9]{0,2}" + _FRACTION + r" ?[tT]|[1-9]" + _FRACTION + r" ?[pP])[iI]?[bB]?$")
# A parameter count: at least 1, below 10^16 (no model comes near; a float of that size is exact
# enough and far from overflowing): 6738415616, 6.7e9, 7B, 1.5T. Numbers are checked by value.
COUNT_PATTERN = (r"^(?:[1-9][0-9]{0,15}" + _FRACTION + r"|[1-9]" + _FRACTION + r"[eE]\+?(?:0?[0-9]|1[0-5])"
                 r"|[1-9][0-9]{0,3}" + _FRACTION + r" ?[kKmMbBtT])$")
MAX_COUNT = 10**16
_BYTES = re.compile(BYTES_PATTERN)
_COUNT = re.compile(COUNT_PATTERN)
_COUNT_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
_SHOWN = 60  # characters of a refused value quoted back in a message


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def parse_bytes(value: str) -> int:
    """Bytes from "80GiB", "80Gi", "80GB", "80G" (G = 10^9, Gi = 2^30); the unit is required."""
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(f"{_shown(value)} has no unit: write it with one, e.g. {value}GiB or {value}Mi "
                             "(a bare number would be bytes)")
        raise ValueError("expected a size such as 80GiB")
    match = _BYTES.fullmatch(value)
    if not match:
        if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", value):
            raise ValueError(f"{_shown(value)} has no unit: write it with one, e.g. {value}GiB or {value}Mi "
                             "(a bare number would be bytes)")
        raise ValueError(f"{_shown(value)} is not a size: write a number and a unit of M, G, T or P "
                         "(Mi, Gi, Ti, Pi: powers of 2), e.g. 80GiB, 64G or 512Mi, below 10 PiB")
    number = re.match(r"[0-9.]+", value)
    assert number is not None, "the pattern starts with a digit"
    unit = value[number.end():].strip().lower()
    scale = (_BINARY if unit[1:2] == "i" else _DECIMAL)[unit[0]]
    return int(float(number.group()) * scale)


def parse_count(value: str | int | float) -> float:
    """A parameter count from 6.7e9, "6.7e9" (YAML 1.1 reads that as a string) or "7B"."""
    if isinstance(value, bool):
        raise ValueError("expected a parameter count such as 7e9 or 7B")
    if isinstance(value, int):
        if not 1 <= value < MAX_COUNT:
            raise ValueError(f"{_shown(value)}: a parameter count is at least 1 and below 10^16")
        return float(value)
    if isinstance(value, float):
        if not math.isfinite(value) or not 1 <= value < MAX_COUNT or not value.is_integer():
            raise ValueError(f"{_shown(value)}: a parameter count is a whole number, at least 1 and below 10^16")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a parameter count such as 7e9 or 7B")
    if not _COUNT.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a parameter count: write 6.7e9 or 7B (at least 1, below 10^16)")
    suffix = value[-1].lower()
    if suffix in _COUNT_SUFFIX:
        return float(value[:-1].strip()) * _COUNT_SUFFIX[suffix]
    return float(value)
