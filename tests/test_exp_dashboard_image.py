"""docs/dashboard.svg is the render of today's dashboard: drawn from the panels and PromQL of
dashboards/llm-ledger.json and the sink's histogram buckets as they are now, not as they were."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dashboards import render

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

SVG = "{http://www.w3.org/2000/svg}"
IMAGE = Path(render.OUT)


def test_the_committed_image_was_rendered_from_the_current_dashboard_and_buckets() -> None:
    """The image records what it was drawn from; a change to a drawn panel's PromQL, the panel list or
    a histogram's buckets makes it stale, and this test names the command that re-renders it."""
    root = ET.fromstring(IMAGE.read_text())
    found = root.find(f"{SVG}metadata")
    assert found is not None and found.text, "docs/dashboard.svg says nothing of what it was drawn from"
    drawn = json.loads(found.text)
    assert drawn == render.inputs(), (
        "docs/dashboard.svg is stale: re-render it with `.venv/bin/python -m dashboards.render` (needs the "
        "prometheus binary)"
    )


def test_the_image_draws_each_chosen_panel_under_its_dashboard_title() -> None:
    """Every panel drawn is a panel of the dashboard, under the same title, with its values."""
    root = ET.fromstring(IMAGE.read_text())
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    titles = {panel["title"] for panel in json.loads(render.DASHBOARD.read_text())["panels"]}
    for title in render.STATS + render.CHARTS:
        assert title in titles and title in texts, title
    assert "no data" not in texts
    assert len(list(root.iter(f"{SVG}polyline"))) >= 8
