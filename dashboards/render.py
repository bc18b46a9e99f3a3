"""``python -m dashboards.render``: panels of the Grafana dashboard drawn from real data, as one SVG.

The demo's lenses run against the loopback OpenAI-compatible server (``llm_ledger.testing.FakeOpenAI``,
answering after a delay that changes from round to round, with a streamed call and now and then a
failed one) with the Prometheus exporter on; a real ``prometheus`` (Debian's package) scrapes it
every second. After ``--seconds`` of traffic, a few panels' own PromQL (from
``dashboards/llm-ledger.json``, Grafana's variables filled in) is read over the range through
Prometheus' HTTP API and drawn by hand: no plotting library, no Grafana. Writes ``docs/dashboard.svg``
(``--out``), whose ``<metadata>`` records what it was drawn from (:func:`inputs`), so that a test
tells when it is stale. Needs the ``prometheus`` binary and the prometheus extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .local_prometheus import LocalPrometheus

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "dashboards" / "llm-ledger.json"
OUT = REPO / "docs" / "dashboard.svg"
# the panels drawn, by title, in reading order; the stat row comes first
STATS = ("Spend over the range", "Calls over the range", "Error rate", "Unpriced calls over the range")
CHARTS = ("Spend rate by lens", "Tokens by type", "Call duration p50 / p95", "Top lenses by cost")
RATE_INTERVAL = "20s"  # what $__rate_interval would be for a 1 s scrape in a small range
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a")
WIDTH, PANEL_H, STAT_H, GAP = 1200, 300, 92, 12


def panel_queries(range_s: int, job: str = ".*") -> dict[str, list[tuple[str, str]]]:
    """Panel title -> [(PromQL, legend format)], Grafana's variables filled in as Grafana would."""
    variables = {"$__rate_interval": RATE_INTERVAL, "$__range": f"{range_s}s", "$job": job,
                 "$lens": ".*", "$model": ".*"}  # fmt: skip
    found: dict[str, list[tuple[str, str]]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["title"] not in STATS + CHARTS:
            continue
        targets = []
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, value)
            targets.append((expr, target.get("legendFormat", "")))
        found[panel["title"]] = targets
    missing = set(STATS + CHARTS) - set(found)
    if missing:
        raise SystemExit(f"dashboards/llm-ledger.json has no panel titled {sorted(missing)}")
    return found


def inputs() -> dict[str, Any]:
    """What the image is drawn from, written into it (``<metadata>``) so that a test can tell a stale
    image: each drawn panel's targets as the dashboard has them, and the sink's histogram buckets."""
    from llm_ledger.exporters._prometheus import DURATION_BUCKETS, LENS_COST_BUCKETS

    panels = {p["title"]: p["targets"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    return {
        "panels": {title: panels.get(title) for title in STATS + CHARTS},
        "buckets": {"duration_seconds": list(DURATION_BUCKETS), "lens_cost_usd": list(LENS_COST_BUCKETS)},
    }


def legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


# -- traffic ---------------------------------------------------------------------------------------


async def _round(base_url: str, delay_ms: int, db: Path, fail: bool) -> None:
    import openai

    import llm_ledger
    from examples.lens_app.app import run_lenses
    from examples.lens_app.lenses import LENSES
    from examples.lens_app.services import RunnerService
    from examples.lens_app.sources import load_sources
    from examples.lens_app.store import Store

    headers = {"x-fake-delay-ms": str(delay_ms)}
    client = llm_ledger.instrument(
        openai.AsyncOpenAI(api_key="sk-render", base_url=base_url, max_retries=0, default_headers=headers)
    )
    async with client:
        with Store(db) as store:
            await run_lenses(RunnerService(client, store), list(LENSES), load_sources(), {})
        messages: Any = [{"role": "user", "content": "one line on metrics"}]
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, extra_headers={"x-fake-chunks": "12"}
        )
        async for _ in stream:
            pass
        if fail:
            try:
                await client.chat.completions.create(
                    model="gpt-4o", messages=messages, extra_headers={"x-fake-status": "500"}
                )
            except openai.InternalServerError:
                pass


def traffic(base_url: str, seconds: float, db: Path) -> None:
    """Rounds of the demo's lenses for ``seconds``: the server slows down and speeds up, a failure
    every few rounds, a pause of its own after each round (so rates move), none past the end."""
    rng = random.Random(17)
    end = time.monotonic() + seconds
    index = 0
    while time.monotonic() < end:
        phase = math.sin(index / 6)
        delay = int(120 + 90 * phase + rng.uniform(0, 60))
        asyncio.run(_round(base_url, delay, db, fail=index % 4 == 0))
        pause = max(0.0, 1.5 - phase + rng.uniform(0, 1.5))
        time.sleep(max(0.0, min(pause, end - time.monotonic())))
        index += 1


# -- drawing ---------------------------------------------------------------------------------------


def _nice(value: float) -> float:
    """A round number at or above ``value`` (1, 2, 2.5, 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value))


def _number(value: float, unit: str) -> str:
    if unit == "USD":
        return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.3g}"


UNITS = {
    "Spend over the range": "USD", "Calls over the range": "", "Error rate": "%",
    "Unpriced calls over the range": "", "Spend rate by lens": "USD/h", "Tokens by type": "tokens/s",
    "Call duration p50 / p95": "s", "Top lenses by cost": "USD",
}  # fmt: skip


def _frame(x: float, y: float, w: float, h: float, title: str) -> list[str]:
    return [
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="4" fill="#181b1f" stroke="#2c3235"/>',
        f'<text x="{x + 10}" y="{y + 20}" class="title">{escape(title)}</text>',
    ]


def stat(x: float, y: float, w: float, title: str, value: float | None) -> list[str]:
    if value is None:
        shown = "no data"
    elif UNITS[title]:
        shown = _number(value, UNITS[title])
    else:
        shown = f"{value:,.0f}"  # a count: increase() extrapolates to fractions
    return [
        *_frame(x, y, w, STAT_H, title),
        f'<text x="{x + w / 2}" y="{y + 66}" class="stat" text-anchor="middle">{escape(shown)}</text>',
    ]


def chart(
    x: float, y: float, w: float, h: float, title: str, series: list[tuple[str, list[tuple[float, float]]]]
) -> list[str]:
    """A time series panel: lines over a time axis, y axis from 0 to a round number, legend below."""
    out = _frame(x, y, w, h, title)
    left, right, top, bottom = x + 62, x + w - 14, y + 34, y + h - 58
    points = [p for _, values in series for p in values]
    if not points:
        return [*out, f'<text x="{x + w / 2}" y="{y + h / 2}" class="axis">no data</text>']
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    top_value = _nice(max(v for _, v in points) * 1.05)
    unit = UNITS[title]

    def px(t: float) -> float:
        return left + (t - t0) / ((t1 - t0) or 1) * (right - left)

    def py(v: float) -> float:
        return bottom - v / top_value * (bottom - top)

    for i in range(5):
        value = top_value * i / 4
        level = f"{py(value):.1f}"
        out.append(f'<line x1="{left}" y1="{level}" x2="{right}" y2="{level}" class="grid"/>')
        label = _number(value, "s" if unit == "s" else "")
        where = f'x="{left - 6}" y="{py(value) + 4:.1f}"'
        out.append(f'<text {where} class="axis" text-anchor="end">{label}</text>')
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        clock = datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")
        anchor = ("start", "middle", "middle", "middle", "end")[i]
        where = f'x="{px(t):.1f}" y="{bottom + 16}"'
        out.append(f'<text {where} class="axis" text-anchor="{anchor}">{clock}</text>')
    if unit and unit != "s":
        out.append(f'<text x="{right}" y="{y + 20}" class="axis" text-anchor="end">{escape(unit)}</text>')
    legend_x, legend_y = left, bottom + 36
    for index, (name, values) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        path = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v in values)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        label_w = 14 + 6.6 * len(name) + 18
        if legend_x + label_w > right:
            legend_x, legend_y = left, legend_y + 16
        out.append(f'<rect x="{legend_x:.1f}" y="{legend_y - 8}" width="10" height="3" fill="{color}"/>')
        out.append(f'<text x="{legend_x + 14:.1f}" y="{legend_y}" class="legend">{escape(name)}</text>')
        legend_x += label_w
    return out


def bars(x: float, y: float, w: float, h: float, title: str, rows: list[tuple[str, float]]) -> list[str]:
    """A bar gauge panel: one horizontal bar per series, largest first."""
    out = _frame(x, y, w, h, title)
    rows = sorted(rows, key=lambda r: -r[1])[:8]
    if not rows:
        return out
    biggest = max(v for _, v in rows) or 1
    row_h = min(32.0, (h - 44) / len(rows))
    for index, (name, value) in enumerate(rows):
        top = y + 34 + index * row_h
        length = (w - 250) * value / biggest
        color = PALETTE[index % len(PALETTE)]
        out.append(f'<text x="{x + 10}" y="{top + row_h / 2 + 4:.1f}" class="legend">{escape(name)}</text>')
        out.append(
            f'<rect x="{x + 150}" y="{top + 4:.1f}" width="{max(length, 1):.1f}" height="{row_h - 8:.1f}" '
            f'rx="2" fill="{color}"/>'
        )
        out.append(
            f'<text x="{x + 156 + length:.1f}" y="{top + row_h / 2 + 4:.1f}" class="legend">'
            f"{escape(_number(value, 'USD'))}</text>"
        )
    return out


STYLE = (
    "text{font-family:Inter,Helvetica,Arial,sans-serif}"
    ".title{fill:#ccccdc;font-size:13px;font-weight:600}.axis{fill:#8e8e9e;font-size:10px}"
    ".legend{fill:#ccccdc;font-size:11px}.stat{fill:#73bf69;font-size:30px;font-weight:600}"
    ".grid{stroke:#2c3235;stroke-width:1}.caption{fill:#8e8e9e;font-size:11px}"
)


def svg(
    stats: dict[str, float | None],
    charts: dict[str, list[tuple[str, list[tuple[float, float]]]]],
    top_lenses: list[tuple[str, float]],
    caption: str,
) -> str:
    height = GAP + STAT_H + GAP + 2 * (PANEL_H + GAP) + 22
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}"><style>{STYLE}</style>',
        f"<metadata>{escape(json.dumps(inputs(), sort_keys=True))}</metadata>",
        f'<rect width="{WIDTH}" height="{height}" fill="#111217"/>',
    ]
    stat_w = (WIDTH - GAP * 5) / 4
    for index, title in enumerate(STATS):
        out += stat(GAP + index * (stat_w + GAP), GAP, stat_w, title, stats[title])
    half = (WIDTH - GAP * 3) / 2
    y = GAP + STAT_H + GAP
    for index, title in enumerate(CHARTS):
        px, py = GAP + (index % 2) * (half + GAP), y + (index // 2) * (PANEL_H + GAP)
        if title == "Top lenses by cost":
            out += bars(px, py, half, PANEL_H, title, top_lenses)
        else:
            out += chart(px, py, half, PANEL_H, title, charts[title])
    out.append(f'<text x="{GAP}" y="{height - 8}" class="caption">{escape(caption)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- main ------------------------------------------------------------------------------------------


def render(binary: str, seconds: float, step: float, workdir: Path) -> str:
    """The image: a Prometheus of its own (it scrapes its first target about five seconds after it
    starts) scraping the demo's traffic, drawn by :func:`draw`."""
    from .local_prometheus import LocalPrometheus, free_port

    port = free_port()
    with LocalPrometheus(binary, [f"127.0.0.1:{port}"], workdir, job="lens_app") as prometheus:
        return draw(prometheus, port, "lens_app", seconds, step, workdir)


def draw(prometheus: LocalPrometheus, port: int, job: str, seconds: float, step: float, workdir: Path) -> str:
    """``seconds`` of the demo's traffic with its metrics served on ``port``, which ``prometheus``
    scrapes as ``job`` (every second, or more often): the panels over the range, as SVG."""
    import llm_ledger
    from llm_ledger.testing import FakeOpenAI

    from .local_prometheus import wait

    def scraped_since(t: float) -> bool:  # a successful scrape that began at or after t
        found = prometheus.query(f'max(timestamp(llm_ledger_calls_total{{job="{job}"}}))')
        return bool(found) and float(found[0]["value"][1]) >= t

    llm_ledger.configure(log_dir=None, exporters=[f"prometheus:127.0.0.1:{port}"])
    with FakeOpenAI() as server:
        wait("the first scrape", lambda: bool(prometheus.query(f'up{{job="{job}"}} == 1')))
        start = time.time()
        traffic(server.base_url, seconds, workdir / "app.sqlite3")
        traffic_end = time.time()
        wait("a scrape after the last call", lambda: scraped_since(traffic_end))
        end = time.time()
        errors = prometheus.errors()
        if errors:
            raise SystemExit("prometheus logged errors:\n" + "\n".join(errors))
        queries = panel_queries(int(end - start), job)
        stats: dict[str, float | None] = {}
        for title in STATS:
            result = prometheus.query(queries[title][0][0])
            stats[title] = float(result[0]["value"][1]) if result else None
        charts: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
        for title in CHARTS:
            charts[title] = [
                (
                    legend(fmt, found["metric"]),
                    [(float(t), float(v)) for t, v in found["values"] if math.isfinite(float(v))],
                )
                for expr, fmt in queries[title]
                for found in prometheus.query_range(expr, start, end, step)
            ]
        top = [
            (legend(fmt, found["metric"]), float(found["value"][1]))
            for expr, fmt in queries["Top lenses by cost"]
            for found in prometheus.query(expr)
        ]
    llm_ledger.configure(exporters=[])
    calls = stats["Calls over the range"] or 0
    caption = (
        f"python -m dashboards.render: a real Prometheus scraping the demo for {end - start:.0f} s "
        f"({calls:.0f} calls to the loopback FakeOpenAI); panels and PromQL of dashboards/llm-ledger.json"
    )
    return svg(stats, charts, top, caption)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.render", description=__doc__)
    parser.add_argument("--seconds", type=float, default=150, help="seconds of traffic (default 150)")
    parser.add_argument("--step", type=float, default=3, help="query_range step, seconds (default 3)")
    parser.add_argument("--out", type=Path, default=OUT, help="SVG to write (default docs/dashboard.svg)")
    parser.add_argument("--prometheus", default="prometheus", help="the prometheus binary (default: on PATH)")
    args = parser.parse_args(argv)
    binary = shutil.which(args.prometheus)
    if binary is None:
        parser.error(f"no {args.prometheus!r} binary: apt-get install prometheus (or --prometheus PATH)")
    with tempfile.TemporaryDirectory(prefix="llm-ledger-render-") as workdir:
        args.out.write_text(render(binary, args.seconds, args.step, Path(workdir)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
