"""Sweep folder reliability (issue #12): results.csv derived from results.jsonl, every check before the
folder is claimed, damaged files named with the fix, stale temp files removed, plain-open file modes, and
per-point claims so two sweeps into one folder never draw a point twice."""

import csv
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.config import compose_cfg

SCALES = "sweep.scales=[0,1]"


def _cfg(tiny_ckpts, out: Path, *over):
    base = [f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={tiny_ckpts['noisy_classifier']}",
            f"judge_ckpt={tiny_ckpts['judge']}", "data.image_size=8", "sampler.steps=2", "sweep.n_per_point=10",
            "progress=false", "logger=none", f"out_dir={out}", SCALES]
    return compose_cfg("sweep", [*base, *over], out)


def _sweep(tiny_ckpts, out: Path, *over):
    from cguide.grid.runner import run_sweep

    return run_sweep(_cfg(tiny_ckpts, out, *over))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _keys(tiny_ckpts, out, *over) -> list[str]:
    from cguide.grid.points import build_grid

    cfg = _cfg(tiny_ckpts, out, *over)
    return [p.key for p in build_grid(cfg.sweep, cfg.sampler, cfg.guidance)]


@pytest.fixture(scope="module")
def finished(tiny_ckpts, tmp_path_factory):
    """A finished two-point sweep; tests work on copies of it."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reliability") / "done"
    _sweep(tiny_ckpts, out)
    return out


@pytest.fixture
def copy(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    return out


def _no_drawing(monkeypatch):
    from cguide.grid import runner

    monkeypatch.setattr(runner, "draw_sharded", lambda *a, **k: pytest.fail("drew samples"))


# ------------------------------------------------------------------ 1: results.csv follows results.jsonl

def test_csv_one_row_short_after_a_kill_is_rewritten_from_jsonl(copy, tiny_ckpts, monkeypatch):
    rows = _rows(copy)
    lines = (copy / "results.csv").read_text().splitlines(keepends=True)
    (copy / "results.csv").write_text("".join(lines[:-1]))  # killed between the jsonl and the csv write
    _no_drawing(monkeypatch)
    _sweep(tiny_ckpts, copy)  # nothing left to draw
    with open(copy / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["point"] for r in table] == [r["point"] for r in rows] and len(rows) == 2
    for r, t in zip(rows, table):
        assert t == {k: "" if v is None else str(v) for k, v in r.items()}


# ------------------------------------------------------------------ 2, 3: every check before the claim

BAD = [
    ("metrics.n_real=0", r"^metrics.n_real=0 is too few real images: FID, KID and precision/recall need at least 2; "
                         r"set metrics.n_real >= 2, or null"),
    ("metrics.n_real=1", r"^metrics.n_real=1 is too few real images"),  # issue #10: silently null FID/KID/PRC
    ("sweep.batch_size=0", r"^sweep.batch_size must be >= 1 \(samples per network call\), got 0; set sweep.batch_size"),
    ("sweep.n_per_point=0", r"^sweep.n_per_point must be >= 1 \(samples per point\), got 0; set sweep.n_per_point"),
    ("sweep.grid_per_class=0", r"^sweep.grid_per_class must be >= 1 .*got 0; set sweep.grid_per_class"),
    ("device=tpu7", r"^unknown device 'tpu7'; use auto, cpu, cuda or cuda:N$"),
    pytest.param("device=cuda", r"^device 'cuda' is not available here \(no CUDA GPU\); use device=cpu or auto$",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")),
]


@pytest.mark.parametrize("override,match", BAD)
def test_bad_setting_fails_before_the_claim_and_the_fixed_command_runs(tiny_ckpts, tmp_path, override, match,
                                                                      monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _no_drawing(m)
        with pytest.raises(ValueError, match=match) as e:
            _sweep(tiny_ckpts, out, "sweep.scales=[0]", override)
    assert "\n" not in str(e.value)
    assert not (out / "sweep.json").exists()
    _sweep(tiny_ckpts, out, "sweep.scales=[0]")  # the corrected command is not refused
    assert len(_rows(out)) == 1


def test_n_real_one_is_one_line_with_exit_code_2(tiny_ckpts, tmp_path, monkeypatch, capsys):
    from cguide.sweep import main

    monkeypatch.chdir(tmp_path)
    argv = [f"eps_ckpt={tiny_ckpts['eps_model']}", f"judge_ckpt={tiny_ckpts['judge']}", "metrics.n_real=1",
            "logger=none", f"out_dir={tmp_path / 'out'}"]
    monkeypatch.setattr(sys, "argv", ["cguide.sweep", *argv])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: metrics.n_real=1 is too few"), err


def _file_out(tmp_path):
    (tmp_path / "taken").write_text("a file")
    return tmp_path / "taken"


def _under_file(tmp_path):
    (tmp_path / "afile").write_text("a file")
    return tmp_path / "afile" / "sweep"


def _read_only(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("runs as root: chmod does not stop root's writes (the file cases cover the check)")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    return out


@pytest.mark.parametrize("make", [_file_out, _under_file, _read_only], ids=["is-a-file", "under-a-file", "read-only"])
def test_unwritable_out_dir_fails_before_drawing(tiny_ckpts, tmp_path, make, monkeypatch):
    out = make(tmp_path)
    _no_drawing(monkeypatch)
    try:
        message = rf"^output folder {out} (is not writable \(.+\)|is a file, not a folder); choose another out_dir$"
        with pytest.raises(ValueError, match=message):
            _sweep(tiny_ckpts, out)
    finally:
        if out.is_dir():
            out.chmod(0o700)
    assert not (out / "sweep.json").exists()


# ------------------------------------------------------------------ 4: damaged files named, with the fix

def test_damaged_results_line_is_named_and_deleting_it_redraws_the_point(copy, tiny_ckpts):
    text = (copy / "results.jsonl").read_text()
    (copy / "results.jsonl").write_text(text[:-40])  # the last line cut short
    before = {p: (copy / p).read_bytes() for p in ("sweep.json", "results.csv")}
    with pytest.raises(ValueError, match=r"results.jsonl line 2 is damaged \(Unterminated string .*\); delete that "
                                         r"line \(its point is drawn again\) or the whole folder$"):
        _sweep(tiny_ckpts, copy)
    assert {p: (copy / p).read_bytes() for p in before} == before
    (copy / "results.jsonl").write_text(text.splitlines(keepends=True)[0])  # as the message says
    _sweep(tiny_ckpts, copy)
    assert [r["point"] for r in _rows(copy)] == _keys(tiny_ckpts, copy)


def test_damaged_sweep_json_is_named_with_the_fix(copy, tiny_ckpts, monkeypatch):
    text = (copy / "sweep.json").read_text()
    (copy / "sweep.json").write_text(text[:len(text) // 2])
    _no_drawing(monkeypatch)
    with pytest.raises(ValueError, match=r"sweep.json is damaged \(.* at line \d+ column \d+\); it records the "
                                         r"settings of the results beside it: restore it, or delete the folder"):
        _sweep(tiny_ckpts, copy)


# ------------------------------------------------------------------ 5: housekeeping

def test_stale_temp_files_of_killed_writes_are_removed_fresh_ones_kept(copy, tiny_ckpts, monkeypatch):
    old = [copy / ".results.jsonl.k1ll3d00.tmp", copy / "grids" / ".x.png.k1ll3d01.tmp",
           copy / "plots" / ".fid_vs_scale.png.k1ll3d02.tmp"]
    fresh = copy / ".results.csv.wr1t1ng0.tmp"  # a parallel job writing right now
    for p in [*old, fresh]:
        p.write_text("partial")
    hour_ago = time.time() - 3600
    for p in old:
        os.utime(p, (hour_ago, hour_ago))
    _no_drawing(monkeypatch)
    _sweep(tiny_ckpts, copy)
    assert not any(p.exists() for p in old) and fresh.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"])
def test_atomic_files_get_the_mode_plain_open_gives(tmp_path, umask, mode):
    from cguide.grid.results import ResultsFolder
    from cguide.io.atomic import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        ResultsFolder(tmp_path).append({"point": "p", "fid": 1.0})
    finally:
        os.umask(old)
    for name in ("a.txt", "results.jsonl", "results.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


HOLD = """
import fcntl, os, sys, time
lock, results, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(os.path.dirname(lock), exist_ok=True)
fd = os.open(lock, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
t0 = time.time()  # hold until the other points have landed (60 s at most), then a little longer
while time.time() - t0 < 60 and (not os.path.exists(results) or len(open(results).readlines()) < n):
    time.sleep(0.1)
time.sleep(1.5)
"""


def test_point_held_by_a_live_process_is_left_for_later(tiny_ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    keys = _keys(tiny_ckpts, out)  # [s=0, s=1]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / ".running" / f"{keys[1]}.lock"),
                               str(out / "results.jsonl"), "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _sweep(tiny_ckpts, out, "sweep.points_per_call=1")
    finally:
        holder.kill()
        holder.wait()
    log = capsys.readouterr().out
    assert f"sweep {out}: 1 point(s) being drawn by another process right now; waiting" in log
    assert [r["point"] for r in _rows(out)] == keys  # drawn here once the holder was gone, after the free one


def _counted_sweep(tiny_ckpts, out, marks, go):
    from cguide.grid import runner

    draw = runner._run_call

    def counted(cfg, call, *args):
        with open(marks, "a") as f:
            f.write("".join(f"{os.getpid()} {p.key}\n" for p in call))
        time.sleep(0.3)  # long enough that the two runs overlap
        yield from draw(cfg, call, *args)

    runner._run_call = counted
    go.wait(60)
    _sweep(tiny_ckpts, out, "sweep.scales=[0,1,2,3]", "sweep.points_per_call=1")


def test_two_identical_sweeps_in_one_folder_draw_each_point_once(tiny_ckpts, tmp_path):
    out, marks = tmp_path / "out", tmp_path / "marks"
    ctx = mp.get_context("spawn")  # fork after torch used 2 threads hangs the child (CGUIDE_TEST_THREADS=2)
    go = ctx.Event()
    procs = [ctx.Process(target=_counted_sweep, args=(tiny_ckpts, out, marks, go)) for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    drawn = [line.split()[1] for line in marks.read_text().splitlines()]
    keys = _keys(tiny_ckpts, out, "sweep.scales=[0,1,2,3]")
    assert sorted(drawn) == sorted(keys)  # every point drawn, none twice
    assert sorted(r["point"] for r in _rows(out)) == sorted(keys)
