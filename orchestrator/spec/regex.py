"""Regular expressions from a spec (resilience rules' `log`): untrusted input, so matched by RE2.

Python's `re` backtracks: `(a+)+$` against a line of forty a's and a b takes longer than the run it
judges, and a spec's author is not the only one who writes what it is matched against (the job's
own output is). RE2 (google-re2, Google's library) matches in time linear in the text and refuses
what it cannot match so (backreferences, lookarounds) at validation, in one line naming the rule. A
pattern is at most MAX_LENGTH characters and RE2 may use at most MAX_MEM bytes to compile it; the
text searched is bounded by the caller (the end of the attempt's log).
"""

from __future__ import annotations

import functools
from typing import Any

MAX_LENGTH = 256
MAX_MEM = 1 << 20  # RE2's budget for the compiled program: a pattern over it is refused, not slowed


@functools.cache
def _options() -> Any:
    import re2  # type: ignore[import-untyped]  # only where a spec has a rule with a pattern

    options = re2.Options()
    options.log_errors = False  # the refusal is ours to say, in one line
    options.max_mem = MAX_MEM
    return options


def check(pattern: str) -> str:
    """`pattern` if RE2 can match it in linear time within the budget; ValueError saying why not."""
    if not pattern:
        raise ValueError("an empty pattern matches every log")
    if len(pattern) > MAX_LENGTH:
        raise ValueError(f"a pattern of {len(pattern)} characters; at most {MAX_LENGTH}")
    compiled(pattern)
    return pattern


@functools.lru_cache(maxsize=128)
def compiled(pattern: str) -> Any:
    """The RE2 program for `pattern` (ValueError when RE2 refuses it: backreferences, lookarounds, a
    repetition over 1000, a program over the memory budget)."""
    import re2

    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"not a pattern RE2 accepts ({detail}); RE2 matches in linear time, so it has no "
                         "backreferences or lookarounds") from None


def search(pattern: str, text: str) -> bool:
    return compiled(pattern).search(text) is not None
