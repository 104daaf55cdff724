"""The results folder of one sweep: sweep.json (the settings that define its results), results.jsonl
(the record: one row per finished point) and results.csv (derived from results.jsonl, rewritten when a
sweep starts and after every append, so a CSV a kill left behind heals on the next run).

Parallel multirun jobs write into the same folder, so every read-modify-write happens under an fcntl
lock, and every file is replaced whole (temp file + os.replace): a reader never sees half a row. A
damaged line therefore comes from outside (an edit, a copy gone wrong): it is refused with the file
and line named, never guessed around."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
from pathlib import Path

from ..io.atomic import atomic_write_text
from ..metrics.intervals import upgrade_row

def options_label(r: dict) -> str:
    """A result row's classifier-term options that differ from their defaults (as its point key names them)."""
    parts = [r["schedule"]] if r.get("schedule", "constant") != "constant" else []
    if r.get("sigma_lo") is not None:
        hi = r.get("sigma_hi")
        parts.append(f"sigma [{r['sigma_lo']:g}, {'inf' if hi is None else f'{hi:g}'}]")
    if r.get("entropy_cap") is not None:
        parts.append(f"entropy (cap {r['entropy_cap']:g})")
    parts += [v for k in ("grad_at", "grad_space") if (v := r.get(k, "x_t")) != "x_t"]
    return ", ".join(parts) or "-"


MANIFEST, JSONL, CSV, LOCK = "sweep.json", "results.jsonl", "results.csv", ".sweep.lock"


def _json_safe(v):
    """NaN/inf -> null: strict JSON that any reader takes."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _parse(text: bytes, what: str, where: str = "line {lineno} column {colno}"):
    """(value, None) or (None, why it is not a `what`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"{e.msg} at {where.format(lineno=e.lineno, colno=e.colno)}"
    except ValueError:
        return None, "not UTF-8 text"
    if not isinstance(value, dict) or (what == "result row" and "point" not in value):
        return None, f"not a {what}"
    return value, None


def read_manifest(path: Path) -> dict:
    record, why = _parse(path.read_bytes(), "sweep record")
    if why:
        raise ValueError(f"{path} is damaged ({why}); it records the settings of the results beside it: restore "
                         "it, or delete the folder (or use another out_dir) to start afresh")
    return record


def read_rows(path: Path) -> list[dict]:
    """The rows of a results.jsonl; a damaged line fails naming the file and its 1-based line number."""
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        row, why = _parse(line, "result row", "column {colno}")
        if why:
            raise ValueError(f"{path} line {i} is damaged ({why}); delete that line (its point is drawn again) "
                             "or the whole folder")
        rows.append(row)
    return rows


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
        """Write sweep.json, or check that the one there records the same settings (refuse to mix);
        then bring results.csv in line with results.jsonl."""
        path = self.root / MANIFEST
        with self.locked():
            rows = read_rows(self.root / JSONL)  # a damaged record fails here, before sweep.json is written
            if path.is_file():
                old = read_manifest(path).get("defines", {})
                if old != defines:
                    keys = sorted(k for k in set(old) | set(defines) if old.get(k) != defines.get(k))
                    raise ValueError(f"output folder {self.root} holds a sweep with different settings "
                                     f"(differs in: {', '.join(keys)}); use another out_dir or sweep.name, "
                                     "or restore those settings to resume it")
            else:
                atomic_write_text(path, json.dumps({"format": 1, "defines": defines, "info": info}, indent=2) + "\n")
            self._sync_csv(rows)

    def rows(self) -> list[dict]:
        """The rows, those written before metric names carried their feature space under today's names."""
        rows = read_rows(self.root / JSONL)
        if any("fid" in r or "kid_mean" in r or "is_mean" in r for r in rows):
            path = self.root / MANIFEST
            space = read_manifest(path).get("defines", {}).get("metrics", {}).get("extractor", "judge") \
                if path.is_file() else "judge"
            rows = [upgrade_row(r, space) for r in rows]
        return rows

    def done(self) -> set[str]:
        return {r["point"] for r in self.rows()}

    def append(self, row: dict) -> bool:
        """Add a finished point's row; False (nothing added) when the point is there already."""
        row = {k: _json_safe(v) for k, v in row.items()}  # NaN -> null in both files, as read back
        with self.locked():
            rows = read_rows(self.root / JSONL)  # as written: the record is never renamed in place
            new = not any(r["point"] == row["point"] for r in rows)
            if new:
                rows.append(row)
                atomic_write_text(self.root / JSONL, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
            self._sync_csv(rows)
        return new

    def _sync_csv(self, rows: list[dict]) -> None:
        """results.csv := the rows of results.jsonl (rewritten only when it differs; none while no rows)."""
        path, text = self.root / CSV, _to_csv(rows)
        if rows and (not path.is_file() or path.read_bytes() != text.encode()):
            atomic_write_text(path, text)


def _to_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))  # union of keys, first-seen order
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
