"""A job's text made inert for a page (orchestrator/web/text.py)."""

from __future__ import annotations

import pytest

from orchestrator.views.textsafe import is_safe
from orchestrator.web.text import as_terminal_lines, inert
from tests.views.test_hostile_jobs import ESCAPES


@pytest.mark.timeout(30)
def test_every_escape_sequence_a_terminal_obeys_is_gone_and_its_text_stays() -> None:
    shown = inert(ESCAPES)
    assert is_safe(shown), [c for c in shown if not is_safe(c)]
    assert "title" in shown and "red" in shown and "clip" in shown and "owned-bel" not in shown
    assert "cm0gLXJmIH4" not in shown  # an OSC 52 clipboard payload is removed whole
    assert "^G" in shown and "^@" in shown and "<U+202E>" in shown  # lone controls are shown, not lost
    assert "succeeded^Mfailed" in shown  # a carriage return hides nothing


@pytest.mark.timeout(30)
def test_a_logs_carriage_returns_keep_what_a_terminal_shows_and_newlines_stay() -> None:
    assert as_terminal_lines(" 10%|#  | 1/10\r 50%|#####| 5/10\r\nnext\n") == " 50%|#####| 5/10\nnext\n"
    assert inert("a\tb\nc") == "a\tb\nc"


@pytest.mark.timeout(30)
def test_an_unterminated_sequence_ends_at_its_line() -> None:
    assert inert("x \x1b]0;no end\nnext line") == "x \nnext line"
