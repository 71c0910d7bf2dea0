"""Text from a job (names, log lines, failure evidence, progress) made safe to show on a terminal.

A training script's output is untrusted: an escape sequence it prints and shardctl passes on would be
obeyed by the user's terminal (OSC 52 writes the clipboard, OSC 8 plants links, `ESC c` resets the
terminal, DCS and C1 controls reach the emulator's parsers). Every view of shardctl's own (status,
history, list, `submit --wait`, the live panel, error lines, plan) shows such text through `safe`:
each C0 and C1 control and DEL becomes visible, inert text, as `cat -v` shows it (`^[`, `^G`,
`<U+009B>`). That is enough for every escape sequence (CSI, OSC, DCS, SOS, PM, APC, `ESC c`): without
its ESC (or its 8-bit C1 introducer) a sequence is plain text, and its payload stays readable.
Unicode's invisible direction overrides (U+202A-U+202E, U+2066-U+2069) are shown too, so a name cannot
read backwards. `shardctl logs` alone passes a job's output through as it is, as `kubectl logs` does.
"""

from __future__ import annotations

from orchestrator.spec.text import controls

_CONTROL = controls(keep="\t\n")  # the class the spec refuses too (orchestrator/spec/text.py)
_CONTROL_OR_NEWLINE = controls()


def _visible(char: str) -> str:
    code = ord(char)
    if char == "\x1b":
        return "^["
    if code < 0x20:
        return "^" + chr(code + 0x40)  # as `cat -v` shows them: ^G, ^H, ^@
    if code == 0x7f:
        return "^?"
    return f"<U+{code:04X}>"


def safe(text: str, *, one_line: bool = False) -> str:
    """`text` with every escape sequence and control character made visible and inert. With `one_line`,
    newlines and tabs too (a field shown on one line: a name, a reason, a failure's evidence); otherwise
    newlines and tabs stay."""
    pattern = _CONTROL_OR_NEWLINE if one_line else _CONTROL
    return pattern.sub(lambda m: _visible(m.group()), text)


def is_safe(text: str) -> bool:
    """Whether a terminal would show `text` as it is (no control but newline and tab, no escape)."""
    return _CONTROL.search(text) is None


__all__ = ["is_safe", "safe"]
