"""Where and when a benchmark row was measured: the card or CPU model, the date (UTC), the commit and torch's
version. Every benchmark script prints ``where_line()`` above its tables and gpu_suite.py stores ``where()`` in
its result file, so a row never stands without its machine and its code.

    from where import where, where_line          # benchmarks/ is the script's own folder
    print(where_line(where(device)))             # measured on NVIDIA H200 (143771 MiB), 2026-12-06 04:50 UTC, ...

The commit comes from git; where the working tree has no .git (a copy on a GPU machine), from $CGUIDE_COMMIT
(benchmarks/gpu_suite.sh sets it from the file its `prepare` step writes). Uncommitted changes to tracked files
are named: numbers from a dirty tree belong to no commit."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), e.g. 'AMD EPYC 9B14' or 'Intel(R) Xeon(R) Processor'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device | str | None = None) -> str:
    """'NVIDIA H200 (143771 MiB)' for a CUDA device; 'CPU: <model>, N threads' for the CPU."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        i = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(i)
        return f"{props.name} ({props.total_memory // 2**20} MiB)"
    n = torch.get_num_threads()
    return f"CPU: {cpu_model()}, {n} thread{'' if n == 1 else 's'}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source() -> dict:
    """{'commit': short hash or 'unknown', 'dirty': [tracked files changed since it]}."""
    head = _git("rev-parse", "--short=7", "HEAD")
    if head is not None:
        status = _git("status", "--porcelain", "--untracked-files=no") or ""
        return {"commit": head, "dirty": sorted(line[3:] for line in status.splitlines() if line.strip())}
    given = os.environ.get("CGUIDE_COMMIT", "").split()  # "<hash> [changed files...]" (gpu_suite.sh prepare)
    return {"commit": given[0][:7] if given else "unknown", "dirty": given[1:]}


def where(device: torch.device | str | None = None) -> dict:
    """The machine, date, code and library versions of a measurement made now on ``device``."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    info = {"device": device_name(device), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            **source(), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cpu"] = cpu_model()  # the host's, for the CPU-bound parts (compilation, Python overhead)
        # what "fp32" means on this card: torch's defaults run cuDNN convolutions in TF32
        info["tf32"] = (f"cudnn convolutions {torch.backends.cudnn.allow_tf32}, "
                        f"matmul {torch.backends.cuda.matmul.allow_tf32}")
    return info


def commit_label(info: dict) -> str:
    dirty = info.get("dirty") or []
    return info["commit"] + (f" + {len(dirty)} uncommitted file(s)" if dirty else "")


def where_line(info: dict) -> str:
    """One line: 'measured on <device>, <date>, commit <hash>[ + N uncommitted file(s)], torch <version>'."""
    return f"measured on {info['device']}, {info['date']}, commit {commit_label(info)}, torch {info['torch']}"


if __name__ == "__main__":
    print(where_line(where("cuda" if torch.cuda.is_available() else "cpu")))
