"""The evidence report of a sweep's points without some of them: what a coarser grid said, e.g. before
`extend_sweep` added points near the target accuracies.

    python experiments/subset_report.py <sweep dir> <out dir> <point>,<point>,...   # the points to leave out

Writes <out dir>/results.csv, evidence.md, matched.csv (and matched_judge2.csv) from the kept rows and their stored
replicates (evidence/<point>.pt): nothing is drawn again, so every kept value is the sweep's own."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from cguide.grid.evidence import DEFAULT_TARGETS, write_report
from cguide.grid.evidence_store import evidence_path
from cguide.grid.results import JSONL, MANIFEST, ResultsFolder, read_rows


def subset_report(sweep: Path, out: Path, leave_out: set[str], targets=DEFAULT_TARGETS) -> list[str]:
    """The kept points' names, in the sweep's order; refuses a name the sweep does not hold."""
    rows = read_rows(sweep / JSONL)
    unknown = sorted(leave_out - {r["point"] for r in rows})
    if unknown:
        raise SystemExit(f"error: {sweep} holds no point {', '.join(unknown)}; name points as its results.csv does")
    keep = [r for r in rows if r["point"] not in leave_out]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / JSONL).write_text("".join(json.dumps(r) + "\n" for r in keep))
        shutil.copy(sweep / MANIFEST, work / MANIFEST)
        for r in keep:
            evidence_path(work, r["point"]).parent.mkdir(exist_ok=True)
            shutil.copy(evidence_path(sweep, r["point"]), evidence_path(work, r["point"]))
        folder = ResultsFolder(work)
        folder.claim(json.loads((sweep / MANIFEST).read_text())["defines"], {})  # writes results.csv from the rows
        write_report(work, targets)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("results.csv", "evidence.md", "matched.csv", "matched_judge2.csv"):
            if (work / name).is_file():
                shutil.copy(work / name, out / name)
    return [r["point"] for r in keep]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        raise SystemExit("usage: python experiments/subset_report.py <sweep dir> <out dir> <point>,<point>,...")
    kept = subset_report(Path(args[0]), Path(args[1]), set(args[2].split(",")))
    print(f"{len(kept)} point(s) kept: {args[1]}/evidence.md")


if __name__ == "__main__":
    main()
