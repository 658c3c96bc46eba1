"""Prometheus metrics of one gateway (its own registry, served at ``GET /metrics``).

=====================================================  ===========================================
``openledger_requests_total{endpoint,status}``         finished HTTP requests by status code
                                                       (``499``: the client went away)
``openledger_prompt_tokens_total{adapter}``            prompt tokens by adapter (base model: its
                                                       name; a mix counts under each adapter)
``openledger_completion_tokens_total{adapter}``        generated tokens, likewise
``openledger_time_to_first_token_seconds``             histogram, per choice
``openledger_inter_token_latency_seconds``             histogram, per generated token after the
                                                       first
``openledger_requests_running`` / ``_waiting``         engine requests running / queued now
                                                       (waiting: in the engine or the fair queue)
``openledger_http_requests_in_flight``                 HTTP requests admitted and not finished
``openledger_receipts_written_total``                  receipts written since start
``openledger_receipts_in_ledger``                      receipts in the ledger file
``openledger_receipts_unsettled``                      receipts no epoch has settled yet
``openledger_receipts_awaiting_attribution``           receipts whose answers wait for the
                                                       attribution worker
=====================================================  ===========================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from openledger.serve import RequestOutput

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["GatewayMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    """The gateway's counters, gauges and histograms.

    Args:
        running: Returns the engine's running request count.
        waiting: Returns the engine's waiting request count.
        receipts_in_ledger: The ledger's receipt count at start.
        books: Returns ``(unsettled, awaiting attribution)`` receipt counts (read at each
            scrape).
    """

    def __init__(
        self,
        running: Callable[[], int],
        waiting: Callable[[], int],
        receipts_in_ledger: int,
        books: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "openledger_requests", "Finished HTTP requests", ["endpoint", "status"], registry=reg
        )
        self.prompt_tokens = Counter(
            "openledger_prompt_tokens", "Prompt tokens by adapter", ["adapter"], registry=reg
        )
        self.completion_tokens = Counter(
            "openledger_completion_tokens", "Generated tokens by adapter", ["adapter"], registry=reg
        )
        self.ttft = Histogram(
            "openledger_time_to_first_token_seconds",
            "Seconds from arrival to first token",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.itl = Histogram(
            "openledger_inter_token_latency_seconds",
            "Seconds between generated tokens",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        Gauge("openledger_requests_running", "Engine requests running", registry=reg).set_function(
            lambda: float(running())
        )
        Gauge("openledger_requests_waiting", "Engine requests queued", registry=reg).set_function(
            lambda: float(waiting())
        )
        self.in_flight = Gauge(
            "openledger_http_requests_in_flight", "HTTP requests admitted", registry=reg
        )
        self.receipts_written = Counter(
            "openledger_receipts_written", "Receipts written since start", registry=reg
        )
        self.receipts_in_ledger = Gauge(
            "openledger_receipts_in_ledger", "Receipts in the ledger", registry=reg
        )
        self.receipts_in_ledger.set(receipts_in_ledger)
        if books is not None:
            Gauge(
                "openledger_receipts_unsettled", "Receipts not settled yet", registry=reg
            ).set_function(lambda: float(books()[0]))
            Gauge(
                "openledger_receipts_awaiting_attribution",
                "Receipts whose answers wait for attribution",
                registry=reg,
            ).set_function(lambda: float(books()[1]))

    def observe_request(
        self,
        adapters: Sequence[str],
        prompt: int,
        completion: int,
        outputs: Sequence[RequestOutput],
    ) -> None:
        """Count a finished request's tokens (as metered) and its choices' latencies.

        Args:
            adapters: The ``adapter`` label values (the base model's name, or the adapters').
            prompt: Prompt tokens metered.
            completion: Generated tokens metered.
            outputs: The choices' last outputs.
        """
        for adapter in adapters:
            self.prompt_tokens.labels(adapter).inc(prompt)
            self.completion_tokens.labels(adapter).inc(completion)
        for out in outputs:
            ttft = out.metrics.time_to_first_token
            if ttft is not None:
                self.ttft.observe(ttft)
            for gap in out.metrics.inter_token_latencies:
                self.itl.observe(gap)

    def receipt_written(self) -> None:
        """Count one receipt written."""
        self.receipts_written.inc()
        self.receipts_in_ledger.inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
