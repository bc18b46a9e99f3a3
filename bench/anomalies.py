"""The anomaly detector on synthetic lens runs: precision and recall (``python -m bench.anomalies``).

Seeded and reproducible; no network, no file. Each history is two lenses' runs, interleaved, with
noise shaped like real ones: total tokens normal (10% coefficient of variation), cost following the
tokens with a 3% wobble (the prompt/completion mix), wall duration log-normal (sigma 0.3, a long
right tail). Into that are injected:

* **spikes**: one run in 25 (after the first 20), either a *runaway* (tokens and cost times the
  factor, duration times its square root) or a *slow* run (duration times the factor); these runs
  are the positives, every other run a negative;
* **drift**: the same spikes over a level that creeps up 0.5% per run (x3.5 over 250 runs);
  creeping is not an anomaly: the baseline should follow it;
* **step**: the level doubles at run 150 and stays; reported as the alarms it takes to adapt.

docs/ANOMALIES.md shows the tables this prints.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass, field
from typing import Any

from llm_ledger import AnomalyConfig, AnomalyDetector
from llm_ledger._records import LensSummary, lens_record
from llm_ledger._table import NO_FIGURE, markdown_table

LENSES = {"digest": (1500, 0.0009, 1200.0), "classify": (300, 0.00005, 400.0)}  # tokens, USD, ms
PRICE_PER_TOKEN = {name: usd / tokens for name, (tokens, usd, _) in LENSES.items()}
START_EPOCH = 1_767_225_600.0  # 2026-01-01


@dataclass
class History:
    """Lens summary records in time order, and the run ids of the injected spikes (-> their kind)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    spikes: dict[str, str] = field(default_factory=dict)


def _record(lens: str, n: int, tokens: float, cost: float, duration: float) -> dict[str, Any]:
    summary: LensSummary = {
        "total_api_calls": 1,
        "total_tokens": max(1, round(tokens)),
        "prompt_tokens": max(1, round(tokens * 0.8)),
        "completion_tokens": max(0, round(tokens * 0.2)),
        "total_cost_usd": cost,
        "avg_duration_ms": duration,
        "models_used": ["gpt-4o-mini"],
        "errors": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "prompt_audio_tokens": 0,
        "completion_audio_tokens": 0,
        "cached_audio_tokens": 0,
        "prompt_image_tokens": 0,
        "cached_image_tokens": 0,
        "duration_ms": round(duration, 3),
        "open_calls": 0,
        "pending_calls": 0,
        "cost_complete": True,
    }
    context = {"lens_key": lens, "lens_run_id": f"{lens}-{n:05d}", "source_id": None, "service": None}
    return dict(lens_record(context=context, summary=summary, end_epoch=START_EPOCH + n * 60 + len(lens)))


def history(
    seed: int,
    runs: int = 500,
    *,
    factor: float = 0.0,
    every: int = 25,
    drift: float = 0.0,
    step_at: int | None = None,
    step: float = 2.0,
) -> History:
    """``runs`` runs of each lens; spikes of ``factor`` (0: none) every ``every`` runs after the first 20."""
    rng = random.Random(seed)
    out = History()
    for n in range(runs):
        level = (1 + drift) ** n * (step if step_at is not None and n >= step_at else 1.0)
        for lens, (tokens0, _, duration0) in LENSES.items():
            tokens = rng.gauss(tokens0, tokens0 * 0.10) * level
            duration = duration0 * math.exp(rng.gauss(0, 0.3)) * level**0.5
            spike = ""
            if factor > 0 and n >= 20 and (n + len(lens)) % every == 0:
                if (n // every) % 2 == 0:  # a runaway: more tokens, and the time they take
                    spike = "runaway"
                    tokens *= factor
                    duration *= factor**0.5
                else:  # a slow run: a provider having a bad minute
                    spike = "slow"
                    duration *= factor
            cost = tokens * PRICE_PER_TOKEN[lens] * rng.gauss(1, 0.03)
            record = _record(lens, n, tokens, cost, duration)
            if spike:
                out.spikes[record["context"]["lens_run_id"]] = spike
            out.records.append(record)
    return out


def flagged(records: list[dict[str, Any]], config: AnomalyConfig) -> set[str]:
    """The run ids the detector calls anomalous, replaying ``records`` in order."""
    detector = AnomalyDetector(config)
    return {a["context"]["lens_run_id"] for r in records for a in detector.observe(r)}


def score(histories: list[History], config: AnomalyConfig) -> dict[str, Any]:
    """True alarms, false alarms, precision, and recall per spike kind over ``histories``."""
    tp = fp = 0
    caught = {"runaway": 0, "slow": 0}
    injected = {"runaway": 0, "slow": 0}
    for h in histories:
        alarms = flagged(h.records, config)
        tp += len(alarms & h.spikes.keys())
        fp += len(alarms - h.spikes.keys())
        for run, kind in h.spikes.items():
            injected[kind] += 1
            caught[kind] += run in alarms
    spikes = sum(injected.values())
    return {
        "spikes": spikes,
        "caught": tp,
        "false": fp,
        "precision": tp / (tp + fp) if tp + fp and spikes else None,
        "recall": tp / spikes if spikes else None,
        **{f"recall_{kind}": caught[kind] / injected[kind] if injected[kind] else None for kind in caught},
    }


def _ratio(value: float | None) -> str:
    return NO_FIGURE if value is None else f"{value:.3f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    return "\n".join(markdown_table(headers, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Precision and recall of the anomaly detector")
    parser.add_argument("--seeds", type=int, default=10, help="histories per row (default: %(default)s)")
    parser.add_argument(
        "--runs", type=int, default=500, help="runs per lens per history (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    seeds = range(args.seeds)
    default = AnomalyConfig()
    print(f"defaults: window={default.window}, k={default.k:g}, min_runs={default.min_runs}, "
          f"min_mad_ratio={default.min_mad_ratio:g}, scale={default.scale}; {args.seeds} seeds x "
          f"{args.runs} runs x {len(LENSES)} lenses per row\n")  # fmt: skip

    rows = []
    for name, drift in (("steady", 0.0), ("drift +0.5%/run", 0.005)):
        for factor in (0.0, 2.0, 3.0, 5.0, 10.0):
            if factor == 0 and drift:
                continue
            s = score([history(seed, args.runs, factor=factor, drift=drift) for seed in seeds], default)
            rows.append([
                name, "none" if factor == 0 else f"x{factor:g}", f"{s['spikes']:,}", f"{s['caught']:,}",
                f"{s['false']:,}", _ratio(s["precision"]), _ratio(s["recall"]), _ratio(s["recall_runaway"]),
                _ratio(s["recall_slow"]),
            ])  # fmt: skip
    print("Defaults, spikes of each size:\n")
    print(_table(["history", "spike", "spikes", "caught", "false alarms", "precision", "recall",
                  "recall runaway", "recall slow"], rows))  # fmt: skip

    rows = []
    for scale in ("log", "linear"):
        for window, k in ((50, 6.0), (100, 4.0), (100, 5.0), (100, 6.0), (100, 8.0)):
            config = AnomalyConfig(window=window, k=k, scale=scale)
            steady = score([history(seed, args.runs) for seed in seeds], config)
            cells = [scale, str(window), f"{k:g}", f"{steady['false']:,}"]
            for factor in (2.0, 5.0):
                s = score([history(seed, args.runs, factor=factor) for seed in seeds], config)
                cells += [_ratio(s["precision"]), _ratio(s["recall_runaway"]), _ratio(s["recall_slow"])]
            rows.append(cells)
    print(f"\nScale, window and k: false alarms over {args.seeds * args.runs * len(LENSES):,} steady runs, "
          "then precision and recall (runaway, slow) with x2 and x5 spikes:\n")  # fmt: skip
    print(_table(["scale", "window", "k", "false alarms", "x2 precision", "x2 runaway", "x2 slow",
                  "x5 precision", "x5 runaway", "x5 slow"], rows))  # fmt: skip

    rows = []
    for seed in seeds:
        h = history(seed, args.runs, step_at=150)
        at = sorted(int(run.split("-")[1]) - 150 for run in flagged(h.records, default))
        soon = [n for n in at if 0 <= n < 100]
        late = sum(1 for n in at if n >= 100)
        rows.append(
            [
                str(seed),
                str(sum(1 for n in at if n < 0)),
                str(len(soon)),
                str(max(soon, default=NO_FIGURE)),
                str(late),
            ]
        )
    print("\nStep: the level of both lenses doubles at run 150 and stays:\n")
    print(_table(["seed", "alarms before", "alarms in the 100 runs after", "last of them at run +",
                  "alarms later"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
