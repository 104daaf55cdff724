"""benchmarks/gpu_suite.py (issue #29): the GPU suite cannot rot between GPU runs.

Its --smoke mode runs every part at toy sizes on the CPU and must measure rows in each of them (every guidance
method x every registered sampler x both options, counted evaluations per step, the ADM pair against
guided-diffusion's own step, training, the pipeline's stages, the bf16 sweep point), each row stamped with its
machine, date, commit and torch; without a GPU the real mode stops with one `error:` line; a part that fails or
hangs keeps the rows it wrote; the targets are judged against the card they name.

The smoke run takes about 35 s of CPU on a quiet 2-core machine (two lanes of parts side by side), longer on a
busy one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(SUITE.parent))

import gpu_suite  # noqa: E402

STAMP = {"device", "date", "commit", "torch"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_suite")
    out = tmp / "out"
    r = subprocess.run([sys.executable, str(SUITE), "--smoke", "--out", str(out), "--work", str(tmp / "work")],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    log = (out / "gpu_suite.log").read_text() if (out / "gpu_suite.log").is_file() else ""
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:] + log[-4000:]
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text()


def test_smoke_measures_every_part_and_stamps_every_row(smoke):
    result, _ = smoke
    assert result["mode"] == "smoke" and set(result["parts"]) == set(gpu_suite.PARTS)
    assert STAMP <= set(result["where"]) and result["where"]["device"].startswith("CPU: ")
    # the commit from git (or $CGUIDE_COMMIT); 'unknown' only in a tree without either
    assert re.fullmatch(r"[0-9a-f]{7}|unknown", result["where"]["commit"])
    for name, part in result["parts"].items():
        assert part["status"] == "ok", (name, part.get("log_tail"))
        assert part["rows"], name
        assert STAMP <= set(part["where"]), name
        for row in part["rows"]:
            assert row["status"] == "ok", (name, row)
            assert set(row["measured"]) == STAMP and all(row["measured"].values()), (name, row)


def test_guided_step_covers_every_method_sampler_and_option_with_counted_evaluations(smoke):
    rows = smoke[0]["parts"]["guided_step"]["rows"]
    samplers, _ = gpu_suite.sampler_names()
    got = {(r["method"], r["sampler"], r["option"]) for r in rows}
    want = {(m, s, o) for m in gpu_suite.METHODS for s in samplers for o in ("eager", "bf16+channels_last")}
    assert want <= got
    for r in rows:
        assert r["ms_per_step"] > 0 and r["img_s_250"] > 0
        assert r["max_abs_diff"] >= r["mean_abs_diff"] >= 0
        if r["option"] == "eager":
            assert r["max_abs_diff"] == 0
        if r["precision"] == "fp32":  # eager, channels_last: rounding only, within guided_step.py's tolerance
            assert r["check"] == "ok", r
    # counted by hooks on the nets, per sample and DDIM step: the methods' known costs
    ddim = {r["method"]: (r["eps_evals_per_step"], r["clf_evals_per_step"]) for r in rows
            if r["sampler"] == "ddim" and r["option"] == "eager"}
    assert ddim == {"classifier": (1, 1), "cond": (1, 0), "cfg": (2, 0), "cond_classifier": (1, 1)}
    # bf16 moves samples, channels_last alone (fp32) only by rounding
    bf16 = [r for r in rows if r["option"] == "bf16+channels_last" and r["method"] == "classifier"]
    assert all(r["mean_abs_diff"] > 0 for r in bf16)


def test_adm_train_e2e_and_bf16_rows(smoke):
    parts = smoke[0]["parts"]
    adm = parts["adm"]["rows"]
    assert {r["impl"] for r in adm} == {"guided-diffusion", "cguide"}
    assert all(r["ms_per_step"] > 0 for r in adm)
    train = {(r["net"], r["precision"]) for r in parts["train"]["rows"] if r["img_s"] > 0}
    assert train == {(n, p) for n in ("eps-model", "classifier") for p in ("32-true", "bf16-mixed")}
    stages = [r["stage"] for r in parts["e2e"]["rows"]]
    assert stages[1:6] == ["diffusion", "classifier", "judge", "judge2", "sweep"], stages
    assert all(r["wall_s"] > 0 for r in parts["e2e"]["rows"])
    bf16 = parts["bf16_point"]["rows"]
    assert [r["sampling"] for r in bf16] == ["eager fp32", "bf16 autocast"]
    assert bf16[0]["point"] == bf16[1]["point"] and bf16[0]["n"] == bf16[1]["n"]
    assert all(r["fid"] is not None and r["accuracy"] is not None for r in bf16)
    assert any("identical but for speed.bf16" in n for n in parts["bf16_point"]["notes"])


def test_targets_and_tables(smoke):
    result, md = smoke
    assert len(result["targets"]) == 2
    assert all(t["verdict"].startswith("not judged (smoke") for t in result["targets"])
    for name in gpu_suite.PARTS:
        assert f"## {name}: ok" in md
    assert md.count("measured on CPU: ") >= 1 + len(gpu_suite.PARTS)
    assert "| measured |" in md


def test_without_a_gpu_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, str(SUITE), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU"), r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ending", ["fails", "hangs"])
def test_a_part_that_fails_or_hangs_keeps_its_rows(tmp_path, monkeypatch, ending):
    monkeypatch.setattr(gpu_suite, "GRACE_S", 0.5)
    rows = tmp_path / "rows.jsonl"
    code = ("import json, sys, time; f = open(sys.argv[1], 'a'); "
            "f.write(json.dumps({'kind': 'row', 'x': 1, 'status': 'ok'}) + '\\n'); f.close(); "
            + ("sys.exit(3)" if ending == "fails" else "time.sleep(60)"))
    got = gpu_suite.run_part("p", [sys.executable, "-c", code, str(rows)], 1.0, rows, tmp_path / "p.log")
    assert got["rows"] == [{"x": 1, "status": "ok"}]
    assert got["status"] == ("failed: exit code 3" if ending == "fails" else "timed out: stopped after 2 s")
    assert got["wall_s"] < 30


def _result(card: str, ms: float, gd_ms: float, ours_ms: float) -> dict:
    g = [{"batch": 256, "method": "classifier", "sampler": "ddim", "option": o, "ms_per_step": v, "status": "ok"}
         for o, v in (("eager", 50.0), ("all", ms))]
    a = [{"batch": 16, "impl": "guided-diffusion", "option": "guided-diffusion: UNet fp16", "ms_per_step": gd_ms,
          "status": "ok"}, {"batch": 16, "impl": "cguide", "option": "fp16_graph", "ms_per_step": ours_ms,
                            "status": "ok"}]
    return {"mode": "gpu", "where": {"device": card}, "parts": {"guided_step": {"rows": g}, "adm": {"rows": a}}}


def test_targets_pass_or_miss_on_the_card_they_name():
    step, adm = gpu_suite.targets(_result("NVIDIA H200 (143771 MiB)", 15.2, 100.0, 40.0))
    assert (step["verdict"], round(step["margin_ms"], 2)) == ("pass", 0.8)
    assert (adm["verdict"], adm["ratio"], round(adm["margin_ratio"], 2)) == ("pass", 2.5, 0.5)
    step, adm = gpu_suite.targets(_result("NVIDIA H200 (143771 MiB)", 16.5, 100.0, 60.0))
    assert (step["verdict"], step["margin_ms"], adm["verdict"]) == ("miss", -0.5, "miss")
    step, _ = gpu_suite.targets(_result("NVIDIA H100 80GB HBM3 (81559 MiB)", 15.0, 100.0, 40.0))
    assert step["verdict"].startswith("not judged: the 16 ms target is for an H200")


def test_adm_reference_nets_are_guided_diffusions_at_the_released_shapes():
    """The adm part builds guided-diffusion's UNetModel / EncoderUNetModel from their classes (create_model takes
    released sizes only): at adm256's flags they are create_model / create_classifier's nets, weight for weight
    (shapes, on the meta device), with the UNet in fp16 and the classifier in fp32 as those flags say."""
    gd_script = pytest.importorskip("guided_diffusion.script_util")
    import torch
    from cguide.io.adm_checkpoints import preset_flags

    u, _ = preset_flags("adm256_uncond", "eps")
    c, _ = preset_flags("adm256_classifier", "classifier")
    with torch.device("meta"):
        unet, clf, uf, cf = gpu_suite.gd_nets(u, c)
        ref_u = gd_script.create_model(**{k: uf[k] for k in gd_script.create_model.__code__.co_varnames[
            :gd_script.create_model.__code__.co_argcount]})
        ref_c = gd_script.create_classifier(**{k: cf[k] for k in gd_script.create_classifier.__code__.co_varnames[
            :gd_script.create_classifier.__code__.co_argcount]})

    def shapes(m):
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes(unet) == shapes(ref_u) and shapes(clf) == shapes(ref_c)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == 553
    assert (uf["use_fp16"], cf["classifier_use_fp16"]) == (True, False)


def test_where_names_the_commit_without_git(monkeypatch):
    """On a GPU machine the working tree is a copy without .git: the commit comes from $CGUIDE_COMMIT, which
    gpu_suite.sh sets from .whl/SOURCE (the hash and the files changed since, written by `prepare`)."""
    import where

    monkeypatch.setattr(where, "_git", lambda *args: None)
    monkeypatch.setenv("CGUIDE_COMMIT", "abc1234def src/cguide/x.py ")
    assert where.source() == {"commit": "abc1234", "dirty": ["src/cguide/x.py"]}
    info = where.where("cpu")
    assert where.where_line(info).endswith(f"commit abc1234 + 1 uncommitted file(s), torch {info['torch']}")
    monkeypatch.delenv("CGUIDE_COMMIT")
    assert where.source() == {"commit": "unknown", "dirty": []}
