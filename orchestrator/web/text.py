"""A job's text made inert for a page: what a terminal would obey is gone before Jinja2 escapes what is left.

Escaping (the templates' autoescape) keeps a job's `<script>` from being markup; this keeps its terminal control
sequences from reaching the page at all. Colour and cursor sequences (CSI), titles, clipboard writes and links
(OSC), and the DCS, SOS, PM and APC strings are removed whole; any control character left over is made visible
by `views.textsafe.safe`, as every CLI view shows it (`^[`, `^G`, `^M`, `<U+009B>`). Every value a template
prints goes through `inert` (the environment's `finalize`), so a template cannot forget it. A log's tail is
first shown as a terminal would show it after its carriage returns (`as_terminal_lines`: a tqdm bar's last
redraw, not every one); anywhere else a carriage return stays visible, so `succeeded\rfailed` in a failure's
evidence reads as both words.
"""

from __future__ import annotations

import re

from orchestrator.views.textsafe import safe

# ESC [ ... final byte; ESC ] ... BEL or ST; ESC P/X/^/_ ... ST; the 8-bit introducers (U+009B CSI, U+009D OSC,
# U+0090 DCS, U+0098 SOS, U+009E PM, U+009F APC) likewise. An unterminated string runs to the end of its line.
SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]")


def strip_sequences(text: str) -> str:
    """`text` less every terminal escape sequence."""
    return SEQUENCE.sub("", text)


def as_terminal_lines(text: str) -> str:
    """Each line of a log as a terminal leaves it after its carriage returns: the text after the last one."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def inert(text: str) -> str:
    """Job text for a page: sequences removed, every other control made visible (newlines and tabs kept)."""
    return safe(strip_sequences(text))


__all__ = ["SEQUENCE", "as_terminal_lines", "inert", "strip_sequences"]
