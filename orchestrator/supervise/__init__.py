"""How a run ended (classify), what to try next (fallback, pure), and the loop that applies them."""
