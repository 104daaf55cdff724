"""The results folder of one sweep: sweep.json (the settings that define its results), results.jsonl and
results.csv (one row per finished point).

Parallel multirun jobs write into the same folder, so every read-modify-write happens under an fcntl
lock, and every file is replaced whole (temp file + os.replace): a reader never sees half a row."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
from pathlib import Path

from ..io.atomic import atomic_write_text

MANIFEST, JSONL, CSV, LOCK = "sweep.json", "results.jsonl", "results.csv", ".sweep.lock"


def _json_safe(v):
    """NaN/inf -> null: strict JSON that any reader takes."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


class ResultsFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @contextlib.contextmanager
    def locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def claim(self, defines: dict, info: dict) -> None:
        """Write sweep.json, or check that the one there records the same settings; refuse to mix."""
        path = self.root / MANIFEST
        with self.locked():
            if path.is_file():
                old = json.loads(path.read_text()).get("defines", {})
                if old != defines:
                    keys = sorted(k for k in set(old) | set(defines) if old.get(k) != defines.get(k))
                    raise ValueError(f"output folder {self.root} holds a sweep with different settings "
                                     f"(differs in: {', '.join(keys)}); use another out_dir or sweep.name, "
                                     "or restore those settings to resume it")
                return
            atomic_write_text(path, json.dumps({"format": 1, "defines": defines, "info": info}, indent=2) + "\n")

    def rows(self) -> list[dict]:
        path = self.root / JSONL
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def done(self) -> set[str]:
        return {r["point"] for r in self.rows()}

    def append(self, row: dict) -> bool:
        """Add a finished point's row to both files; False (nothing written) when the point is there already."""
        row = {k: _json_safe(v) for k, v in row.items()}  # NaN -> null in both files, as read back
        with self.locked():
            rows = self.rows()
            if any(r["point"] == row["point"] for r in rows):
                return False
            rows.append(row)
            atomic_write_text(self.root / JSONL, "".join(
                json.dumps(r, allow_nan=False) + "\n" for r in rows))
            atomic_write_text(self.root / CSV, _to_csv(rows))
        return True


def _to_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))  # union of keys, first-seen order
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
