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


# ------------------------------------------------------------------ read-only output folders (Hydra's run folder too)

RO = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && cd "$1" && shift && exec "$@"'


def _can_mount_read_only(tmp: Path) -> bool:
    probe = tmp / "probe"
    probe.mkdir()
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c", RO, str(probe), str(tmp), "touch", str(probe / "x")],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode != 0 and "Read-only file system" in r.stderr


def _in_read_only(ro: Path, cwd: Path, module: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m module args`` in cwd, with the folder ro mounted read-only (a user and mount namespace of its
    own: nothing outside the run sees the mount)."""
    if not _can_mount_read_only(ro.parent):
        pytest.skip("no read-only bind mount here (unshare -rm)")
    return subprocess.run(["unshare", "-rm", "sh", "-c", RO, str(ro), str(cwd), sys.executable, "-m", module, *args],
                          env=ENV, capture_output=True, text=True, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("module", ["cguide.sweep", "cguide.pipeline"])
def test_a_read_only_out_dir_is_one_line_before_hydra_makes_its_run_folder(module, tmp_path):
    """Hydra made its run folder (out_dir/hydra/<time>) before any check: a traceback."""
    ro = tmp_path / "ro"
    (ro / "old").mkdir(parents=True)
    (ro / "old" / "keep.txt").write_text("an earlier output")
    args = ["debug=default"] if module == "cguide.pipeline" else ["eps_ckpt=e.ckpt", "judge_ckpt=j.ckpt"]
    line = _one_error_line(_in_read_only(ro, tmp_path, module, [*args, f"out_dir={ro / 'new'}"]))
    assert line == f"error: output folder {ro / 'new'} is not writable (Read-only file system: {ro}); choose " \
        "another out_dir"
    assert sorted(p.name for p in ro.rglob("*")) == ["keep.txt", "old"]


def test_a_read_only_working_directory_is_one_line(tmp_path):
    """cguide.train without hydra.run.dir makes its run folder under the working directory: a Hydra traceback."""
    ro = tmp_path / "ro"
    ro.mkdir()
    line = _one_error_line(_in_read_only(ro, ro, "cguide.train", ["debug=default"]))
    assert line == f"error: output folder outputs is not writable (Read-only file system: {ro}); choose another " \
        f"hydra.run.dir (the default folder is under the working directory {ro})"
    assert list(ro.iterdir()) == []
