"""Persistence with stdlib sqlite3, in the shape of the application's models.

* ``artifacts``: what a lens produced for a source; ``usage`` (JSON text) holds its token usage,
  cost and duration (the application used to store only ``duration_ms`` there).
* ``source_logs``: one row per lens run, with the user it ran for; ``extra_data`` (JSON text, JSONB
  in the application's Postgres) holds the lens summary exactly as ``llm_ledger`` computed it.

:meth:`Store.costs` sums ``source_logs`` by source, user or lens with the engine behind
``llm-ledger report`` (:func:`llm_ledger.report.summarise_records`), so the application's own
table and the ledger's log give their costs the same way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from llm_ledger.report import CostReport, summarise_records

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
    user_id TEXT,
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
    user_id: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """The application database; ``":memory:"`` for a throwaway one."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        try:
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(source_logs)")}
            if "user_id" not in columns:  # a database made before source_logs had users
                with self._db:
                    self._db.execute("ALTER TABLE source_logs ADD COLUMN user_id TEXT")
        except BaseException:  # a file that is no database: closed, not left to the collector
            self._db.close()
            raise

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
        self,
        source_id: str,
        lens_key: str,
        level: str,
        message: str,
        extra_data: Mapping[str, Any],
        user_id: str | None = None,
    ) -> SourceLog:
        created = _now()
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO source_logs (source_id, lens_key, user_id, level, message, extra_data, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (source_id, lens_key, user_id, level, message, json.dumps(extra_data), created),
            )
        assert cursor.lastrowid is not None
        return SourceLog(
            cursor.lastrowid, source_id, lens_key, level, message, dict(extra_data), created, user_id
        )

    def artifacts(self) -> list[Artifact]:
        rows = self._db.execute(
            "SELECT id, source_id, lens_key, content, usage, created_at FROM artifacts ORDER BY id"
        )
        return [Artifact(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    def source_logs(self) -> list[SourceLog]:
        rows = self._db.execute(
            "SELECT id, source_id, lens_key, level, message, extra_data, created_at, user_id "
            "FROM source_logs ORDER BY id"
        )
        return [SourceLog(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    def lens_summaries(self) -> Iterator[dict[str, Any]]:
        """Each source log as the ``lens_summary`` record the ledger wrote for that run."""
        for log in self.source_logs():
            context = {"lens_key": log.lens_key, "source_id": log.source_id, "user_id": log.user_id}
            yield {
                "event": "lens_summary",
                "timestamp": log.created_at,
                "context": context,
                "summary": log.extra_data,
            }

    def costs(
        self,
        by: str | Sequence[str] = "source_id",
        where: Mapping[str, str | Sequence[str]] | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> CostReport:
        """Lens runs, calls, tokens and cost per source, user or lens (``by``), from ``source_logs``."""
        return summarise_records(self.lens_summaries(), by, where, since, until, from_summaries=True)
