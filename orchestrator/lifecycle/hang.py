"""When a running attempt is hung: the limit, and the decision. Pure: the times are given, nothing is read.

A run is hung when it shows no progress AND no output for the limit: its log has not grown and the step it
prints has not changed. Before the first step is seen (start-up: imports, compilation, loading a model, a
first checkpoint load) the limit is `spec.resilience.first_step_within`, 20 minutes unless set, as
nvidia-resiliency-ext keeps an initial heartbeat timeout apart from the one between heartbeats. Then it is
`spec.resilience.hang_after`; unset, it follows the run: 20 minutes until two steps are timed, then 10 times the
slowest interval seen between two steps (an interval that holds a checkpoint save counts:
it is how long a step can really take), never under 5 minutes. The executor that watches (the supervisor,
for the local target) feeds `Watch` what it sees and asks `hung`; what it then does (record, capture the
ranks' stacks, stop, restart from the last checkpoint) is the fallback policy's and the target's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

BEFORE_FIRST_STEP_S = 20 * 60  # default limit until a step is seen
STEP_FACTOR = 10  # default limit once steps are seen: this many times the slowest interval between two steps
FLOOR_S = 5 * 60  # the default limit is never shorter


def limit_s(hang_after: int | None, slowest_step_s: float | None, first_step_within: int | None = None,
            stepping: bool = True) -> float:
    """The limit in seconds. Before the first step (`stepping` False: start-up, imports, loading, compilation)
    `first_step_within`, else 20 minutes. Then `hang_after` when set; else 20 minutes while no interval between
    two steps is known, then STEP_FACTOR x the slowest one, at least FLOOR_S."""
    if not stepping:
        return float(first_step_within if first_step_within is not None else BEFORE_FIRST_STEP_S)
    if hang_after is not None:
        return float(hang_after)
    if slowest_step_s is None:
        return float(BEFORE_FIRST_STEP_S)
    return max(float(FLOOR_S), STEP_FACTOR * slowest_step_s)


def hung(limit: float, since_output_s: float, since_progress_s: float) -> bool:
    """No progress and no output for `limit` seconds."""
    return since_output_s >= limit and since_progress_s >= limit


@dataclass(frozen=True)
class Watch:
    """What the watchdog has seen of one attempt: when its output last grew, the step it last showed and when
    that changed, and the slowest interval between two step changes. Times are wall-clock seconds (a log's
    mtime is one: a supervisor that restarts sees the same last output)."""

    output_at: float  # the last time the log grew (its mtime), or the attempt's start while it has none
    progress_at: float  # the last time the step changed (or the watch began)
    step: int | None = None
    slowest_step_s: float | None = None

    @staticmethod
    def begin(now: float, output_at: float | None, started_at: float | None, step: int | None) -> Watch:
        """A new watch (a new attempt, or a supervisor that just started): the progress is taken to have changed
        at the last output at the latest (it is read from the output), never before the attempt started."""
        output = output_at if output_at is not None else (started_at if started_at is not None else now)
        return Watch(output_at=output, progress_at=min(now, output), step=step)

    def seen(self, now: float, output_at: float | None, step: int | None) -> Watch:
        """The watch after a look: the log's mtime (None: no log yet) and the step it shows (None: none)."""
        out = self
        if output_at is not None and output_at > out.output_at:
            out = replace(out, output_at=output_at)
        if step is not None and step != out.step:
            if out.step is not None and step > out.step:
                # the interval since the last change, per step advanced (a look may see several steps at once)
                interval = (now - out.progress_at) / (step - out.step)
                slowest = interval if out.slowest_step_s is None else max(out.slowest_step_s, interval)
                out = replace(out, slowest_step_s=slowest)
            out = replace(out, step=step, progress_at=now)
        return out

    def limit(self, hang_after: int | None, first_step_within: int | None = None) -> float:
        return limit_s(hang_after, self.slowest_step_s, first_step_within, self.step is not None)

    def is_hung(self, now: float, hang_after: int | None, first_step_within: int | None = None) -> bool:
        return hung(self.limit(hang_after, first_step_within), now - self.output_at, now - self.progress_at)

    def reason(self, now: float, hang_after: int | None, first_step_within: int | None = None) -> str:
        """What the watchdog saw, for the record and the history: how long it was quiet, the limit, the last step."""
        limit = self.limit(hang_after, first_step_within)
        quiet = min(now - self.output_at, now - self.progress_at)
        if self.step is None:
            why = "spec.resilience.first_step_within" if first_step_within is not None else \
                "the default before the first step"
        elif hang_after is not None:
            why = "spec.resilience.hang_after"
        elif self.slowest_step_s is None:
            why = "the default before steps are timed"
        else:
            why = f"the default: {STEP_FACTOR} x the slowest step, {self.slowest_step_s:.3g} s, at least {FLOOR_S} s"
        last = f"last step seen: {self.step}" if self.step is not None else "no step seen"
        return f"no output and no progress for {quiet:.0f} s (limit {limit:.0f} s, {why}); {last}"
