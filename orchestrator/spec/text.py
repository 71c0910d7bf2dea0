"""The characters a terminal obeys rather than shows, defined once for the spec and the views.

C0 controls (U+0000-U+001F), DEL (U+007F) and the C1 controls (U+0080-U+009F) start escape sequences
or move the cursor; the invisible direction overrides (U+202A-U+202E, U+2066-U+2069) make text read
backwards. The spec refuses them in every string it takes (tab alone is kept: it is ordinary text);
`orchestrator/views/textsafe.py` makes them visible in what it shows (keeping newline and tab in a
multi-line text).
"""

from __future__ import annotations

import re

BIDI_OVERRIDES = "\u202a-\u202e\u2066-\u2069"


def controls(keep: str = "") -> re.Pattern[str]:
    """One character of the class above, less the characters in `keep` (C0 ones: tab, newline)."""
    c0 = "".join(f"\\x{code:02x}" for code in range(0x20) if chr(code) not in keep)
    return re.compile(f"[{c0}\\x7f-\\x9f{BIDI_OVERRIDES}]")


# What a string of a TrainingJob may not hold: every control but tab, and the direction overrides.
SPEC_UNSAFE = controls(keep="\t")


def first_unsafe(text: str) -> str | None:
    """The first character of `text` a spec string may not hold, as U+XXXX, or None."""
    found = SPEC_UNSAFE.search(text)
    return f"U+{ord(found.group()):04X}" if found else None


__all__ = ["BIDI_OVERRIDES", "SPEC_UNSAFE", "controls", "first_unsafe"]
