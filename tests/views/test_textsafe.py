"""What a job prints reaches the terminal from shardctl's own views only as inert, visible text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.views.textsafe import is_safe, safe

# Each class of sequence a terminal obeys, with other terminators and the 8-bit forms
ATTACKS = {
    "OSC 52 clipboard write, BEL": "\x1b]52;c;cm0gLXJmIH4=\x07",
    "OSC 52, ST": "\x1b]52;c;cm0gLXJmIH4=\x1b\\",
    "OSC 0 title": "\x1b]0;pwned\x07",
    "OSC 8 hyperlink": "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\",
    "RIS reset": "\x1bc",
    "DCS": "\x1bP+q544e\x1b\\",
    "CSI clear screen": "\x1b[2J\x1b[H",
    "8-bit CSI": "\x9b2J",
    "8-bit OSC": "\x9d0;title\x9c",
    "APC": "\x1b_payload\x1b\\",
    "backspace over text": "good\x08\x08\x08\x08evil",
    "carriage return over text": "succeeded\rfailed   ",
    "NUL and BEL": "a\x00b\x07c",
    "bidi override": "gnp.\u202eexe",
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=list(ATTACKS))
def test_every_escape_and_control_is_shown_inert(attack: str) -> None:
    shown = safe(f"job output: {attack}", one_line=True)
    assert is_safe(shown) and "\x1b" not in shown and "\r" not in shown
    assert shown.startswith("job output: ")


def test_printable_text_and_newlines_are_kept_as_they_are() -> None:
    text = "step 3/10 loss 2.5 — ünïcode ok\n\tnext line"
    assert safe(text) == text
    assert safe(text, one_line=True) == "step 3/10 loss 2.5 — ünïcode ok^J^Inext line"


def test_the_payload_stays_readable() -> None:
    assert safe("\x1b]52;c;SECRET\x07") == "^[]52;c;SECRET^G"
    assert safe("\x9b2J") == "<U+009B>2J"


@given(st.text())
def test_any_text_comes_out_safe(text: str) -> None:
    assert is_safe(safe(text))
    assert "\n" not in safe(text, one_line=True)
