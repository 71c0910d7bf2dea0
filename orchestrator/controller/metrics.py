"""The controller's Prometheus metrics, on a registry of its own.

Each Controller owns one `Metrics` (and so one CollectorRegistry), so several controllers in one
process (the tests) never clash on the global default registry. The reconciler calls
`attempt_ended` and `fell_back`; the loop calls the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

PREFIX = "shardctl_controller"


class Metrics:
    """Counters and histograms for one controller; `render()` is what /metrics serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(f"{PREFIX}_reconciles", "Reconciles run, by result (ok or error).",
                                  ["result"], registry=r)
        self.reconcile_seconds = Histogram(f"{PREFIX}_reconcile_duration_seconds", "Time spent in one reconcile.",
                                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                           registry=r)
        self.attempts = Counter(f"{PREFIX}_attempts_ended", "Training attempts that ended, by outcome "
                                "(succeeded or the failure kind).", ["outcome"], registry=r)
        self.fallbacks = Counter(f"{PREFIX}_fallbacks", "Fallbacks to a new attempt, by rung "
                                 "(retry when the same config is retried).", ["rung"], registry=r)
        self.queue_depth = Gauge(f"{PREFIX}_workqueue_depth", "Keys waiting in or being processed from the "
                                 "work queue.", registry=r)
        self.watch_events = Counter(f"{PREFIX}_watch_events", "Watch events received, by resource.",
                                    ["resource"], registry=r)
        self.leading = Gauge(f"{PREFIX}_leader", "1 while this replica holds the leader Lease (or runs "
                             "without leader election).", registry=r)

    # -- called by the reconciler ----------------------------------------------------------
    def attempt_ended(self, outcome: str) -> None:
        self.attempts.labels(outcome=outcome).inc()

    def fell_back(self, rung: str) -> None:
        self.fallbacks.labels(rung=rung).inc()

    # -- called by the loop ----------------------------------------------------------------
    @contextmanager
    def reconcile(self) -> Iterator[None]:
        """Times one reconcile and counts it as ok, or as error when it raises."""
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.reconciles.labels(result="error").inc()
            raise
        else:
            self.reconciles.labels(result="ok").inc()
        finally:
            self.reconcile_seconds.observe(time.perf_counter() - start)

    def watch_event(self, resource: str) -> None:
        self.watch_events.labels(resource=resource).inc()

    def track_queue(self, depth: Callable[[], int]) -> None:
        """The queue depth is read when scraped, never stale."""
        self.queue_depth.set_function(lambda: float(depth()))

    def set_leading(self, leading: bool) -> None:
        self.leading.set(1.0 if leading else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent): for tests and the benchmark."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v
