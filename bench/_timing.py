"""Interleaved timing: variants run A B C, C B A, ... in every round; medians of rounds, paired deltas.

Each batch is timed twice: wall-clock time, and this process's CPU time (all its threads, so the
JSONL writer thread and exporters' threads count). On a shared machine the CPU time is the steadier
figure (it does not count the time other processes hold the cores); both are kept.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Batch = Callable[[int], None]
"""Runs ``n`` calls of one variant (and whatever must finish inside the timing, e.g. a flush)."""

Clock = Literal["cpu", "wall"]

freeze_after_warmup = False
"""Set by ``--quick``: after the warm-up, the heap so far (the SDK's lazily imported types) goes to
``gc.freeze()``, so each round's full collection no longer walks it (the most time of a quick run).
Off for measurements: frozen objects would change what a round's collections cost."""


@dataclass
class Timings:
    """Seconds per call of each variant, one value per round, by clock."""

    cpu: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.cpu)

    def _series(self, name: str, clock: Clock) -> list[float]:
        return (self.cpu if clock == "cpu" else self.wall)[name]

    def median_us(self, name: str, clock: Clock = "cpu") -> float:
        return statistics.median(self._series(name, clock)) * 1e6

    def added_us(self, name: str, base: str, clock: Clock = "cpu") -> float:
        """Median over rounds of (variant - base) per call, in µs: paired within a round."""
        pairs = zip(self._series(name, clock), self._series(base, clock), strict=True)
        return statistics.median(a - b for a, b in pairs) * 1e6

    def added_min_us(self, name: str, base: str, clock: Clock = "cpu") -> float:
        """Fastest round of the variant minus fastest round of the base, in µs (noise only adds time)."""
        return (min(self._series(name, clock)) - min(self._series(base, clock))) * 1e6

    def ratio(self, name: str, base: str, clock: Clock = "cpu") -> float:
        return self.median_us(name, clock) / self.median_us(base, clock)

    def spread_us(self, name: str, clock: Clock = "cpu") -> float:
        """Half the interquartile range of a variant's rounds, in µs (a rough noise figure)."""
        values = sorted(self._series(name, clock))
        if len(values) < 4:
            return 0.0
        q = statistics.quantiles(values, n=4)
        return (q[2] - q[0]) / 2 * 1e6


def interleave(variants: Mapping[str, Batch], *, calls: int, rounds: int, warmup: int = 1) -> Timings:
    """Time ``calls`` calls of each variant per round, alternating the order every round."""
    for batch in variants.values():
        batch(max(warmup, 1))
    if freeze_after_warmup:
        gc.freeze()
    result = Timings({name: [] for name in variants}, {name: [] for name in variants})
    items = list(variants.items())
    for index in range(rounds):
        order = items if index % 2 == 0 else items[::-1]
        for name, batch in order:
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            batch(calls)
            result.wall[name].append((time.perf_counter() - wall) / calls)
            result.cpu[name].append((time.process_time() - cpu) / calls)
    return result
