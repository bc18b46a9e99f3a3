"""Persistence with stdlib sqlite3, in the shape of the application's models.

* ``artifacts``: what a lens produced for a source; ``usage`` (JSON text) holds its token usage,
  cost and duration (the application used to store only ``duration_ms`` there).
* ``source_logs``: one row per lens run; ``extra_data`` (JSON text, JSONB in the application's
  Postgres) holds the lens summary exactly as ``llm_ledger`` computed it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Artifact", "SourceLog", "Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id TEXT NOT NULL,
    lens_key TEXT NOT NULL,
    content TEXT NOT NULL,
    usage TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS source_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id TEXT NOT NULL,
    lens_key TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    extra_data TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS source_logs_source ON source_logs (source_id, lens_key);
"""


@dataclass(frozen=True, slots=True)
class Artifact:
    """A row of ``artifacts``, with ``usage`` decoded."""

    id: int
    source_id: str
    lens_key: str
    content: str
    usage: dict[str, Any]
    created_at: str


@dataclass(frozen=True, slots=True)
class SourceLog:
    """A row of ``source_logs``, with ``extra_data`` decoded."""

    id: int
    source_id: str
    lens_key: str
    level: str
    message: str
    extra_data: dict[str, Any]
    created_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """The application database; ``":memory:"`` for a throwaway one."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add_artifact(self, source_id: str, lens_key: str, content: str, usage: Mapping[str, Any]) -> Artifact:
        created = _now()
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO artifacts (source_id, lens_key, content, usage, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (source_id, lens_key, content, json.dumps(usage), created),
            )
        assert cursor.lastrowid is not None
        return Artifact(cursor.lastrowid, source_id, lens_key, content, dict(usage), created)

    def add_source_log(
        self, source_id: str, lens_key: str, level: str, message: str, extra_data: Mapping[str, Any]
    ) -> SourceLog:
        created = _now()
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO source_logs (source_id, lens_key, level, message, extra_data, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (source_id, lens_key, level, message, json.dumps(extra_data), created),
            )
        assert cursor.lastrowid is not None
        return SourceLog(cursor.lastrowid, source_id, lens_key, level, message, dict(extra_data), created)

    def artifacts(self) -> list[Artifact]:
        rows = self._db.execute(
            "SELECT id, source_id, lens_key, content, usage, created_at FROM artifacts ORDER BY id"
        )
        return [Artifact(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    def source_logs(self) -> list[SourceLog]:
        rows = self._db.execute(
            "SELECT id, source_id, lens_key, level, message, extra_data, created_at "
            "FROM source_logs ORDER BY id"
        )
        return [SourceLog(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]
