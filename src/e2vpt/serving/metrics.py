"""What /metrics reports, in the Prometheus text format. Label values stay bounded: a
task label exists only for a task being served (an unknown name creates none, a removed
task's go with it) and a status label only for the statuses the server answers."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


def _buckets_up_to(limit: int) -> list[float]:
    """1, 2, 4, … up to ``limit`` (and ``limit`` itself): batch-size histogram buckets."""
    buckets = [float(2**i) for i in range(limit.bit_length()) if 2**i < limit]
    return [*buckets, float(limit)]


class Metrics:
    """The server's metrics (prometheus_client, one registry per server, so servers in
    one process do not share counts)."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "e2vpt_requests", "Predict requests answered, per task", ["task"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "e2vpt_errors", "Error answers, per HTTP status", ["status"], registry=self.registry
        )
        self.latency = Histogram(
            "e2vpt_request_latency_seconds",
            "Predict latency per task, from the request's arrival to its answer",
            ["task"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "e2vpt_batch_size", "Images per model batch",
            buckets=_buckets_up_to(max_batch_size), registry=self.registry,
        )  # fmt: skip
        self.batch_tasks = Histogram(
            "e2vpt_batch_tasks", "Distinct tasks per model batch",
            buckets=_buckets_up_to(max_batch_size), registry=self.registry,
        )  # fmt: skip
        self.tasks = Gauge("e2vpt_tasks", "Tasks being served", registry=self.registry)

    def answered(self, task: str, seconds: float) -> None:
        """A prediction for ``task`` (a served task: the caller checks) was answered."""
        self.requests.labels(task=task).inc()
        self.latency.labels(task=task).observe(seconds)

    def forget(self, task: str) -> None:
        """``task`` is no longer served: its label values go."""
        for metric in (self.requests, self.latency):
            with contextlib.suppress(KeyError):  # no request for it was answered
                metric.remove(task)

    def requests_for(self, task: str) -> int:
        """Predict requests answered for ``task`` (0 before its first)."""
        value = self.registry.get_sample_value("e2vpt_requests_total", {"task": task})
        return int(value or 0)

    def error_counts(self) -> dict[str, int]:
        """Error answers so far, per HTTP status."""
        return {
            sample.labels["status"]: int(sample.value)
            for family in self.errors.collect()
            for sample in family.samples
            if sample.name == "e2vpt_errors_total"
        }

    def text(self) -> bytes:
        return generate_latest(self.registry)
