"""Writes that fail (issue #28): a full disk, a file size limit, a read-only or over-long output path end in one
`error:` line naming the file and the fix (exit 2), not a traceback, and what was written before is intact."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from cguide.io.checkpoints import read_checkpoint
from helpers.config import TINY, compose_cfg

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true",
       "WANDB_MODE": "disabled"}


def _train_args(out: Path, max_steps: int) -> list[str]:
    tiny = [o for o in TINY if not o.startswith("model.max_steps=")]
    return ["task=diffusion", *tiny, f"model.max_steps={max_steps}", "num_threads=1",
            "callbacks.model_checkpoint.every_n_train_steps=3", f"paths.output_dir={out}"]


def _limited(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_checkpoint_write_over_the_file_size_limit_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """ulimit -f below a checkpoint's size: torch's writer failed with 'enforce fail at inline_container.cc'
    (a traceback). Now one line naming the file and the limit; last.ckpt of the run before is whole, no temp file."""
    from cguide.train import train

    out = tmp_path / "run"
    train(compose_cfg("train", _train_args(out, 3), out))
    last = out / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    args = [*_train_args(out, 9), "resume=true", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run([sys.executable, "-m", "cguide.train", *args], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=600, preexec_fn=_limited(last.stat().st_size // 2))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith(f"error: cannot write {out / 'checkpoints'}/") and lines[-1].endswith(
        ": File too large; the file size limit (ulimit -f) is below what this run writes: raise it, then run the same "
        "command again (what was finished before is kept: every file is written whole)"), lines[-1]
    assert last.read_bytes() == before and read_checkpoint(last)["global_step"] == 3
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.parametrize("free,limit,code", [(1 << 20, resource.RLIM_INFINITY, errno.ENOSPC),
                                             (1 << 40, 1 << 20, errno.EFBIG), (1 << 40, resource.RLIM_INFINITY,
                                                                                errno.EIO)])
def test_a_failed_torch_save_is_named_by_its_cause(free, limit, code, tmp_path, monkeypatch):
    """torch.save says only 'unexpected pos' when the disk is full: the free space and the size limit tell which."""
    import shutil
    from collections import namedtuple

    import torch

    from cguide.io import atomic

    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("u", "total used free")(0, 0, free))
    monkeypatch.setattr(resource, "getrlimit", lambda r: (limit, limit))

    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full)
    (tmp_path / "x.ckpt").write_text("before")
    with pytest.raises(OSError) as e:
        atomic.atomic_torch_save({}, tmp_path / "x.ckpt")
    assert e.value.errno == code and e.value.filename == str(tmp_path / "x.ckpt")
    assert (tmp_path / "x.ckpt").read_text() == "before" and sorted(p.name for p in tmp_path.iterdir()) == ["x.ckpt"]
