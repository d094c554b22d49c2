"""Job history and an index of every saved image, in SQLite under the outputs folder.

Survives restarts: jobs that were queued or running when the server stopped are marked
"interrupted" at the next start, never silently lost.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS images (
    path TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seed INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    infotext TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_created ON images(created_at);
"""
STOPPED_MESSAGE = "the server stopped before this job finished"


class JobHistory:
    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def close(self):
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, parameters=()):
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    def mark_unfinished_interrupted(self) -> int:
        """Called once at start: whatever was queued or running belonged to the previous process."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status='interrupted', error=?, finished_at=? WHERE status IN ('queued','running')",
                (STOPPED_MESSAGE, time.time()))
            return cursor.rowcount

    def next_sequence(self) -> int:
        return (self._execute("SELECT COALESCE(MAX(sequence), 0) FROM jobs")[0][0]) + 1

    def record_job(self, job) -> None:
        self._execute(
            "INSERT INTO jobs (id, sequence, kind, request, status, error, created_at, started_at, finished_at) "
            "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status=excluded.status, "
            "error=excluded.error, started_at=excluded.started_at, finished_at=excluded.finished_at",
            (job.id, job.sequence, type(job.request).__name__,
             job.request.model_dump_json(exclude=getattr(job.request, "HISTORY_EXCLUDE", None)), job.status, job.error,
             job.created_at, job.started_at, job.finished_at))

    def record_images(self, job_id: str, images) -> None:
        """Index saved images (those with a path); an image already indexed keeps its row."""
        now = time.time()
        rows = [(image.path, job_id, image.seed, image.prompt, image.negative_prompt, image.infotext, now)
                for image in images if image.path]
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO images VALUES (?,?,?,?,?,?,?)", rows)

    def forget_images(self, job_id: str) -> None:
        """Drop a job's images from the index (their files were removed: a failed attempt that is retried)."""
        self._execute("DELETE FROM images WHERE job_id=?", (job_id,))

    def jobs(self, limit: int = 100) -> list[dict]:
        """Newest first, each with `images`: how many of its images are indexed."""
        rows = self._execute(
            "SELECT jobs.*, (SELECT COUNT(*) FROM images WHERE images.job_id = jobs.id) AS images FROM jobs "
            "ORDER BY sequence DESC LIMIT ?", (limit,))
        return [dict(row) | {"request": json.loads(row["request"])} for row in rows]

    def job(self, job_id: str) -> dict | None:
        rows = self._execute("SELECT * FROM jobs WHERE id=?", (job_id,))
        return dict(rows[0]) | {"request": json.loads(rows[0]["request"])} if rows else None

    def images(self, search: str = "", limit: int = 100, offset: int = 0) -> list[dict]:
        """Newest first, each with its job's `job_status`; `search` matches prompt or negative prompt,
        case-insensitively."""
        pattern = f"%{search.strip()}%"
        rows = self._execute(
            "SELECT images.*, jobs.status AS job_status FROM images LEFT JOIN jobs ON jobs.id = images.job_id "
            "WHERE images.prompt LIKE ? OR images.negative_prompt LIKE ? "
            "ORDER BY images.created_at DESC, images.path DESC LIMIT ? OFFSET ?", (pattern, pattern, limit, offset))
        return [dict(row) for row in rows]
