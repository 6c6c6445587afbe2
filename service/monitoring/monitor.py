"""The monitor of one running app: takes the explain pipeline's observations."""

from __future__ import annotations

from collections.abc import Sequence

from service.monitoring.observation import Observation


class Monitor:
    def observe(self, observations: Sequence[Observation], source: str = "request") -> None:
        """Hand over the results of one explain run (source: request | sampled); never blocks
        the caller."""
