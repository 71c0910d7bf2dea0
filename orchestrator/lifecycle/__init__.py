"""The job lifecycle, pure and shared by every target: how a run ended (classify), what to try next
(fallback) and the transition function both executors call (moves.next_move). It knows no target,
no store and no cluster."""
