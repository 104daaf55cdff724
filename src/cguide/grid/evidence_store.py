"""Per-point bootstrap replicates on disk (<sweep>/evidence/<point>.pt): what the paired differences and the
matched-accuracy tables (grid/evidence.py) are computed from, without drawing or extracting again."""

from __future__ import annotations

from pathlib import Path

import torch

from ..io.atomic import atomic_torch_save
from ..io.safe_load import torch_load_plain
from ..metrics import MetricSettings
from ..metrics.bootstrap import PointSamples, resample_id

EVIDENCE = "evidence"
FORMAT = 1


def evidence_path(out: Path, point: str) -> Path:
    return Path(out) / EVIDENCE / f"{point}.pt"


# per-sample values kept beside the replicates (bool [N], row i = seed i of every point): the judges' verdicts
PER_SAMPLE = ("finite", "correct", "correct_judge2", "agree")


def write_evidence(out: Path, point: str, reps: dict[str, torch.Tensor], targets: torch.Tensor,
                   settings: MetricSettings, samples: PointSamples | None = None) -> Path:
    """Replicates of one point; resample_id says which points share replicates (same seed and targets).
    samples: the point's per-sample values; its judges' verdicts (PER_SAMPLE) are stored as 'per_sample' (a few
    bytes per sample), so both judges' accuracies and their agreement can be recomputed for any subset of rows."""
    path = evidence_path(out, point)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "replicates": {k: v.detach().cpu().float() for k, v in reps.items()},
              "resample_id": resample_id(targets, settings.interval_resamples, settings.seed),
              "level": float(settings.interval_level)}
    if samples is not None:
        record["per_sample"] = {k: getattr(samples, k).detach().cpu().bool() for k in PER_SAMPLE
                                if getattr(samples, k) is not None}
    return atomic_torch_save(record, path)


def read_evidence(out: Path, point: str) -> dict | None:
    """The record, or None when the point has none (rows written before intervals existed)."""
    path = evidence_path(out, point)
    if not path.is_file():
        return None
    try:
        record = torch_load_plain(path)
    except Exception as e:  # noqa: BLE001 - damaged file: one line naming it and the fix
        raise ValueError(f"{path} is damaged ({type(e).__name__}); delete it and the row of point {point} in "
                         "results.jsonl to draw the point again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a replicate record of this version; delete it and its row to redraw")
    return record
