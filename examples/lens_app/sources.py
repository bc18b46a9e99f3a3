"""The sample sources: short Markdown articles in ``sources/``, each with optional PNG charts.

``<slug>.md`` is the article (``# Title``, then ``## Section`` blocks); ``<slug>.png`` and
``<slug>-<n>.png`` beside it are its images. A source's id is a UUID derived from its slug, so the
same article keeps the same id across runs, databases and log files.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["SOURCES_DIR", "Source", "load_source", "load_sources"]

SOURCES_DIR: Final = Path(__file__).parent / "sources"
_NAMESPACE: Final = uuid.UUID("5f0c1d6e-1b9e-4c43-9a7e-8d7f3f0e2a11")


@dataclass(frozen=True, slots=True)
class Source:
    """One article: its id, slug, title, full text, sections and images (as ``data:`` URLs)."""

    id: str
    slug: str
    title: str
    text: str
    sections: tuple[tuple[str, str], ...]
    images: tuple[str, ...]


def _sections(text: str) -> tuple[tuple[str, str], ...]:
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif sections:
            sections[-1][1].append(line)
    return tuple((heading, "\n".join(body).strip()) for heading, body in sections)


def load_source(path: Path) -> Source:
    """Read one ``<slug>.md`` and the images beside it."""
    text = path.read_text(encoding="utf-8").strip()
    first, _, _ = text.partition("\n")
    title = first.removeprefix("# ").strip() if first.startswith("# ") else path.stem
    images = sorted([*path.parent.glob(f"{path.stem}.png"), *path.parent.glob(f"{path.stem}-*.png")])
    return Source(
        id=str(uuid.uuid5(_NAMESPACE, path.stem)),
        slug=path.stem,
        title=title,
        text=text,
        sections=_sections(text),
        images=tuple("data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() for p in images),
    )


def load_sources(directory: Path = SOURCES_DIR) -> list[Source]:
    """Every ``*.md`` article in ``directory``, in slug order."""
    return [load_source(path) for path in sorted(directory.glob("*.md"))]
