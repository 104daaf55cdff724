"""The catalogue of bad inputs in README.md ("## Errors you may see"): every row is fed through a real entry
point (the run_* functions in-process, the Hydra mains for the `cli` rows), must fail with that row's one-line
message, and must leave every file already on disk as it was.

The README table is the list: a row without a case here fails, and so does a case without a row.
In a message, … stands for a part that varies (paths, dicts, exception names)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from helpers.adm import COND_FLAGS, write_classifier, write_unet
from helpers.config import TINY, compose_cfg
from helpers.files import snapshot
from helpers.nets import nan_classifier

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Errors you may see"


def catalogue() -> dict[str, str]:
    """id -> message, from the README table (first column `id`, last column `message`)."""
    text = README.read_text()
    assert SECTION in text, f"README.md has no '{SECTION}' section"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0].strip("`")] = cells[-1].strip("`")
    return rows


def pattern(message: str) -> str:
    return ".*?".join(re.escape(part) for part in message.split("…"))


# ---------------------------------------------------------------- what each row needs on disk

def _edited(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt["cguide"])
    torch.save(ckpt, dst)
    return dst


class _Payload:
    """Unpickling this would write a file next to it (the snapshot check would see it)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _code_pickle(dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": torch.zeros(1), "cguide": _Payload(dst.parent / "payload-ran")}, dst)
    return dst


def _truncated(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def _image_folder(root: Path, classes: dict[str, int], empty: str | None = None) -> Path:
    from PIL import Image

    for c, n in classes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (8, 8), color=i * 40).save(root / c / f"{i}.png")
    if empty:
        (root / empty).write_bytes(b"")
    return root


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _copied(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


def _written(path: Path) -> Path:
    path.write_text("not a folder")
    return path


def _weight_removed(src: Path, dst: Path) -> Path:
    ckpt = torch.load(src, weights_only=True)
    prefix = ckpt["cguide"]["weights_prefix"]
    ckpt["state_dict"].pop(next(k for k in ckpt["state_dict"] if k.startswith(prefix)))
    torch.save(ckpt, dst)
    return dst


_HELD = []  # locks held for the rest of the session, as a live run holds its folder's


def _held(folder: Path) -> Path:
    """The run folder's lock held here, as by another run that is training into it."""
    from cguide.io.locks import FolderLock

    _HELD.append(FolderLock(folder, "paths.output_dir"))
    _HELD[-1].acquire()
    return _HELD[-1].path


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _flat_folder(root: Path) -> Path:
    """Images straight in root, without the class subfolders."""
    from PIL import Image

    root.mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "0.png")
    return root


def _odd_folder(root: Path, odd: str) -> Path:
    """Image folder a/, b/ of 8-bit PNGs plus one odd entry (issue #28): a symlink loop, a truncated JPEG, a
    20000x20000 PNG (its header only: PIL refuses it at open), a float TIFF in 0..255."""
    import os
    import struct
    import zlib

    from PIL import Image

    _image_folder(root, {"a": 3, "b": 3})
    if odd == "symlink-loop":
        os.symlink("..", root / "a" / "up")
    elif odd == "truncated":
        Image.effect_noise((64, 64), 60).convert("RGB").save(root / "a" / "cut.jpg")
        data = (root / "a" / "cut.jpg").read_bytes()
        (root / "a" / "cut.jpg").write_bytes(data[: len(data) // 2])
    elif odd == "too-large":
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        (root / "a" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
            ">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    elif odd == "float-range":
        Image.fromarray(np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8), "F").save(root / "a" / "f.tif")
    return root


def _damaged_results(ckpts, out: Path) -> Path:
    """A finished sweep whose results.jsonl line was cut short (edited, or damaged on disk)."""
    _finished_sweep(ckpts, out)
    path = out / "results.jsonl"
    path.write_text(path.read_text()[:40] + "\n")
    return out


def _finished_sweep(ckpts, out: Path) -> Path:
    from cguide.grid.runner import run_sweep

    run_sweep(compose_cfg("sweep", [*_args(SWEEP_BASE, ckpts, out, {})], out))
    return out


# ---------------------------------------------------------------- the cases

SAMPLE_BASE = {"eps_ckpt": "{eps}", "classifier_ckpt": "{clf}", "sampler.steps": "3", "progress": "false",
               "n_per_class": "1", "out_dir": "{out}"}
SWEEP_BASE = {"eps_ckpt": "{eps}", "classifier_ckpt": "{clf}", "judge_ckpt": "{judge}", "data.image_size": "8",
              "sampler.steps": "2", "sweep.n_per_point": "10", "sweep.scales": "[0]", "metrics.names": "[accuracy]",
              "progress": "false", "logger": "none", "out_dir": "{out}"}
TRAIN_BASE = {**dict(o.split("=", 1) for o in TINY), "task": "diffusion", "trainer.fast_dev_run": "true",
              "paths.output_dir": "{out}"}
PIPELINE_BASE = {"debug": "default", "progress": "false", "out_dir": "{out}"}
BASES = {"sample": SAMPLE_BASE, "sweep": SWEEP_BASE, "train": TRAIN_BASE, "pipeline": PIPELINE_BASE}


@dataclass
class Case:
    entry: str  # sample | sweep | train | pipeline; "-cli" = through the Hydra main
    over: dict = field(default_factory=dict)  # key -> value (None drops a base key); {names} filled by setup
    setup: Callable | None = None  # (ckpts, tmp) -> {name: path}
    error: type = ValueError
    hydra: bool = False  # refused by Hydra's composition (its own message and exit code 1)


CASES = {
    "negative-scale": Case("sample-cli", {"guidance.scale": "-1"}),
    "infinite-scale": Case("sweep", {"sweep.scales": "[0,inf]"}),
    "unknown-variant": Case("sample", {"guidance.variant": "scor"}),
    "unknown-sampler": Case("sweep", {"sweep.samplers": "[ddim,eulr]"}),
    "unknown-dataset": Case("train", {"data.name": "mnist6k"}),
    "unknown-metric": Case("sweep", {"metrics.names": "[fid,fidd]"}),
    "unknown-task": Case("train", {"task": "difusion"}),
    "unknown-config-key": Case("train-cli", {"data.colour": "1"}, hydra=True),
    "wrong-type": Case("train-cli", {"diffusion.T": "many"}, hydra=True),
    "missing-setting": Case("sweep", {"judge_ckpt": None}),
    "missing-file": Case("sample", {"eps_ckpt": "{tmp}/nope.ckpt"}, error=FileNotFoundError),
    "corrupted-checkpoint": Case("sweep", {"judge_ckpt": "{bad}"},
                                 lambda c, t: {"bad": _truncated(c["judge"], t / "judge.ckpt")}),
    "corrupted-resume": Case("train-cli", {"resume": "true"},
                             lambda c, t: {"bad": _truncated(c["eps"], t / "out" / "checkpoints" / "last.ckpt")}),
    "resume-other-task": Case("train", {"task": "classifier", "ckpt_path": "{eps}"}),
    "wrong-kind": Case("sample", {"classifier_ckpt": "{judge}"}),
    "schedule-mismatch": Case("sample", {"classifier_ckpt": "{bad}"}, lambda c, t: {"bad": _edited(
        c["clf"], t / "clf.ckpt", lambda m: m["fingerprint"].update(T=50))}),
    "shape-mismatch": Case("sample", {"classifier_ckpt": "{bad}"}, lambda c, t: {"bad": _edited(
        c["clf"], t / "clf.ckpt", lambda m: m.update(image_shape=[1, 16, 16]))}),
    "class-count-mismatch": Case("sample", {"classifier_ckpt": "{bad}"}, lambda c, t: {"bad": _edited(
        c["clf"], t / "clf.ckpt", lambda m: m.update(num_classes=5))}),
    "data-mismatch": Case("sweep", {"data.image_size": "16"}),
    "no-second-judge": Case("sweep", {"metrics.second_judge": "true"}),
    "second-judge-mismatch": Case("sweep", {"judge2_ckpt": "{bad}"}, lambda c, t: {"bad": _edited(
        c["judge2"], t / "j2.ckpt", lambda m: m.update(image_shape=[1, 16, 16]))}),
    "no-classifier": Case("sample", {"classifier_ckpt": None, "guidance.scale": "1"}),
    "class-out-of-range": Case("sample", {"classes": "[3,12]"}),
    "steps-over-T": Case("sample", {"sampler.steps": "500"}),
    "interval-reversed": Case("sample", {"guidance.interval": "[0.8,0.2]"}),
    "interval-malformed": Case("sample-cli", {"guidance.interval": "[0.5]"}),
    "nan-eta": Case("sample", {"sampler.eta": "nan"}),
    "steps-below-order": Case("sample", {"sampler": "heun", "sampler.steps": "1"}),
    "sampler-steps-unknown-sampler": Case("sweep", {"+sweep.sampler_steps.eulr": "[25]"}),
    "sampler-steps-bad": Case("sweep", {"+sweep.sampler_steps.heun": "[0,10]"}),
    "eta-not-taken": Case("sample", {"sampler": "dpmpp_2m", "sampler.eta": "0.5"}),
    "learned-variance-ode": Case("sample", {"sampler": "euler", "sampler.var_type": "learned"}),
    "too-few-samples": Case("sweep", {"sweep.n_per_point": "5"}),
    "points-per-call-zero": Case("sweep", {"sweep.points_per_call": "0"}),
    "net-precision": Case("train", {"model.precision": "64-true"}),
    "workers-zero": Case("pipeline", {"workers": "0"}),
    "workers-not-cpu": Case("pipeline", {"workers": "2", "device": "cuda"}),
    "workers-handover": Case("pipeline", {"workers": "2", "workers_handover": "1.5"}),
    "extend-sweep-not-a-sweep": Case("pipeline", {"extend_sweep": "outputs/nowhere"}),
    "workers-one-call": Case("pipeline", {"workers": "2", "device": "cpu", "sweep.points_per_call": "null"}),
    "learned-variance-eps-only": Case("sweep", {"sampler.var_type": "learned"}),
    "image-size-not-divisible": Case("train", {"data.image_size": "10", "model": "small"}),
    "image-folder-missing": Case("train", {"data": "image_folder", "data.root": "{tmp}/images"},
                                 error=FileNotFoundError),
    "image-folder-flat": Case("train", {"data": "image_folder", "data.root": "{root}"},
                              lambda c, t: {"root": _flat_folder(t / "images")}),
    "image-folder-empty-class": Case("train", {"data": "image_folder", "data.root": "{root}"}, lambda c, t: {
        "root": _image_folder(t / "images", {"a": 3, "b": 0})}),
    "checkpoint-holds-code": Case("sweep", {"judge_ckpt": "{bad}"}, lambda c, t: {"bad": _code_pickle(t / "j.ckpt")}),
    "inception-weights-hold-code": Case("sweep", {"metrics.extractor": "inception", "metrics.names": "[fid]",
                                                  "metrics.inception_weights": "{bad}"},
                                        lambda c, t: {"bad": _code_pickle(t / "inception.pth")}),
    "inception-weights-not-weights": Case("sweep", {"metrics.extractor": "inception", "metrics.names": "[fid]",
                                                    "metrics.inception_weights": "{judge}"}),
    "no-inception-weights": Case("sweep", {"metrics.extractor": "inception", "metrics.names": "[fid]",
                                           "metrics.inception_weights": "/nowhere/w.pth"}, error=FileNotFoundError),
    "sweep-folder-other-settings": Case("sweep-cli", {"sweep.n_per_point": "20"},
                                        lambda c, t: {"sweep": _finished_sweep(c, t / "out")}),
    "run-folder-taken": Case("train", {"trainer.fast_dev_run": "false"}, lambda c, t: {"run": _copied(
        c["eps"], t / "out" / "checkpoints" / "diffusion.ckpt")}),
    "folder-in-use": Case("train", {"trainer.fast_dev_run": "false"}, lambda c, t: {"lock": _held(t / "out")}),
    "resume-changed-settings": Case("train-cli", {"trainer.fast_dev_run": "false", "resume": "true",
                                                  "diffusion.T": "50"},
                                    lambda c, t: {"run": _copied(c["eps"], t / "out" / "checkpoints" / "last.ckpt")}),
    "nothing-to-train": Case("train", {"trainer.fast_dev_run": "false", "model.max_steps": "0"}),
    "nan-lr": Case("train", {"model.lr": "nan"}),
    "gpu-trainer-without-gpu": Case("train", {"trainer": "gpu"}),
    "bad-num-threads": Case("sample-cli", {"num_threads": "-2"}),
    "checkpoint-is-folder": Case("sample", {"eps_ckpt": "{tmp}"}),
    "unknown-checkpoint-kind": Case("sample", {"classifier_ckpt": "{bad}"}, lambda c, t: {"bad": _edited(
        c["clf"], t / "clf.ckpt", lambda m: m.update(kind="noisy_classifier_v2"))}),
    "incomplete-checkpoint": Case("sample", {"eps_ckpt": "{bad}"}, lambda c, t: {"bad": _edited(
        c["eps"], t / "eps.ckpt", lambda m: m.pop("net_config"))}),
    "checkpoint-bad-metadata": Case("sample", {"classifier_ckpt": "{bad}"}, lambda c, t: {"bad": _edited(
        c["clf"], t / "clf.ckpt", lambda m: m.update(num_classes="ten"))}),
    "checkpoint-bad-net-config": Case("sample", {"eps_ckpt": "{bad}"}, lambda c, t: {"bad": _edited(
        c["eps"], t / "eps.ckpt", lambda m: m["net_config"].update(model_channels="many"))}),
    "checkpoint-weights-mismatch": Case("sample", {"eps_ckpt": "{bad}"}, lambda c, t: {
        "bad": _weight_removed(c["eps"], t / "eps.ckpt")}),
    "unreadable-image": Case("train", {"data": "image_folder", "data.root": "{root}"}, lambda c, t: {
        "root": _image_folder(t / "images", {"a": 3, "b": 3}, empty="a/empty.png")}),
    "image-folder-is-file": Case("train", {"data": "image_folder", "data.root": "{tmp}/a_file"}, lambda c, t: {
        "file": _written(t / "a_file")}),
    **{f"image-folder-{odd}": Case("train", {"data": "image_folder", "data.root": "{root}"}, lambda c, t, odd=odd: {
        "root": _odd_folder(t / "images", odd)}) for odd in ("symlink-loop", "truncated", "too-large", "float-range")},
    "output-is-file": Case("sample", {"out_dir": "{tmp}/a_file"}, lambda c, t: {
        "file": _written(t / "a_file")}),
    "interval-resamples": Case("sweep", {"metrics.interval_resamples": "5"}),
    "interval-level": Case("sweep", {"metrics.interval_level": "95"}),
    "match-accuracy-target": Case("sweep", {"metrics.match_accuracy": "[0.9,97.5]"}),
    "output-name-too-long": Case("sweep-cli", {"out_dir": "{tmp}/" + "n" * 300}),
    "pipeline-output-is-file": Case("pipeline-cli", {"out_dir": "{tmp}/a_file"}, lambda c, t: {
        "file": _written(t / "a_file")}),
    "samples-over-memory": Case("sweep", {"sweep.n_per_point": "1000000000000"}),
    "sample-over-memory": Case("sample", {"n_per_class": "100000000000"}),
    "stage-marker-damaged": Case("pipeline", {}, lambda c, t: {"marker": _text(t / "out" / "judge" / "stage.json",
                                                                                 "{not json")}),
    "pipeline-no-inception-weights": Case("pipeline", {"metrics.extractor": "inception",
                                                       "metrics.inception_weights": "/nowhere/w.pth"},
                                          error=FileNotFoundError),
    "too-few-real": Case("sweep", {"metrics.n_real": "1", "metrics.names": "[fid]"}),
    "zero-grid-per-class": Case("sweep", {"sweep.grid_per_class": "0"}),
    "unknown-device": Case("sample-cli", {"device": "tpu7"}),
    "no-cuda-device": Case("sweep", {"device": "cuda"}),
    "damaged-results": Case("sweep-cli", {}, lambda c, t: {"sweep": _damaged_results(c, t / "out")}),
    "no-conditional-model": Case("sample", {"guidance.method": "cfg"}),
    "conditional-as-unconditional": Case("sample", {"eps_ckpt": "{cond}"}),
    "unconditional-as-conditional": Case("sample", {"guidance.method": "cond", "cond_ckpt": "{eps}"}),
    "unknown-method": Case("sample-cli", {"guidance.method": "cgf"}),
    "negative-gamma": Case("sweep", {"sweep.methods": "[cfg]", "sweep.scales": "[-1]"}),
    "unknown-schedule": Case("sample", {"guidance.schedule": "linaer"}),
    "sigma-interval-outside": Case("sweep", {"guidance.sigma_interval": "[500,600]", "sweep.scales": "[1]"}),
    "bad-threshold": Case("sample-cli", {"sampler.dynamic_threshold": "1.5"}),
    "posterior-mean-ddim": Case("sample", {"guidance.grad_at": "posterior_mean"}),
    "no-guide": Case("sample", {"guidance.grad_space": "x0"}),
    "judge-as-guide": Case("sample", {"guidance.grad_space": "x0", "guide_ckpt": "{judge}"}),
    "guide-as-judge": Case("sweep", {"judge_ckpt": "{guide}"}),
    "x0-posterior-mean": Case("sample", {"guidance.grad_space": "x0", "guidance.grad_at": "posterior_mean"}),
    "int-overflow": Case("sample-cli", {"seed": "9223372036854775808"}),
    "classes-not-indices": Case("sample", {"classes": "[[1]]"}),
    "unsupported-precision": Case("train", {"trainer.precision": "64-true"}),
    "zero-val-interval": Case("train", {"trainer.check_val_every_n_epoch": "0"}),
    "zero-grid-steps": Case("train", {"callbacks.sample_grid.steps": "0"}),
    "trainer-refused": Case("train", {"trainer.devices": "0"}),
    "too-many-threads": Case("sweep", {"num_threads": "2147483648"}),
    "adm-file-missing": Case("sample", {"eps_ckpt": "{tmp}/models/256x256_diffusion_uncond.pt",
                                        "eps_preset": "adm256_uncond"}, error=FileNotFoundError),
    "adm-file-without-preset": Case("sample", {"eps_ckpt": "{adm}"}, lambda c, t: {"adm": write_unet(
        t / "models" / "256x256_diffusion_uncond.pt")}),
    "adm-classifier-as-eps": Case("sample", {"eps_ckpt": "{adm}", "eps_preset": "adm256_uncond"}, lambda c, t: {
        "adm": write_classifier(t / "models" / "256x256_classifier.pt")}),
    "adm-eps-as-classifier": Case("sample", {"classifier_ckpt": "{adm}", "classifier_preset": "adm256_classifier"},
                                  lambda c, t: {"adm": write_unet(t / "models" / "256x256_diffusion_uncond.pt")}),
    "adm-preset-mismatch": Case("sample", {"eps_ckpt": "{adm}", "eps_preset": "adm256_uncond"}, lambda c, t: {
        "adm": write_unet(t / "models" / "64x64_stand_in.pt")}),
    "unknown-adm-preset": Case("sample", {"eps_ckpt": "{adm}", "eps_preset": "adm256"}, lambda c, t: {
        "adm": write_unet(t / "models" / "256x256_diffusion_uncond.pt")}),
    "adm-conditional-as-eps": Case("sample", {"eps_ckpt": "{tmp}/models/256x256_diffusion.pt",
                                              "eps_preset": "adm256_cond"}),
    "cfg-adm-conditional": Case("sample", {"guidance.method": "cfg", "cond_ckpt": "{adm}",
                                           "cond_preset": f"'{COND_FLAGS}'"}, lambda c, t: {
        "adm": write_unet(t / "models" / "cond.pt", COND_FLAGS)}),
    "reference-not-found": Case("sweep", {"metrics.reference_npz": "{tmp}/models/VIRTUAL_imagenet256_labeled.npz"},
                                error=FileNotFoundError),
    "malformed-reference": Case("sweep", {"metrics.reference_npz": "{ref}"}, lambda c, t: {
        "ref": _npz(t / "ref.npz", images=np.zeros((2, 8, 8, 3), np.uint8))}),
    "fp16-on-cpu": Case("sample", {"speed.fp16": "true", "device": "cpu"}),
    "no-judge": Case("sweep", {"judge_ckpt": "null"}),
    "nonfinite-raise": Case("sample", {"classifier_ckpt": "{bad}", "guidance.nonfinite": "raise"},
                            lambda c, t: {"bad": nan_classifier(c["clf"], t / "clf.ckpt")},
                            error=FloatingPointError),
    "samples-all-nonfinite": Case("sample", {"guidance.scale": "1e30"}, error=FloatingPointError),
    "samples-nan-weights": Case("sample", {"eps_ckpt": "{bad}"}, lambda c, t: {  # (fills any checkpoint with NaN)
        "bad": nan_classifier(c["eps"], t / "eps.ckpt")}, error=FloatingPointError),
}


def _args(base: dict, ckpts: dict, out: Path, over: dict, names: dict | None = None) -> list[str]:
    kv = {**base, **over}
    fill = {"eps": ckpts["eps"], "clf": ckpts["clf"], "judge": ckpts["judge"], "cond": ckpts["cond"],
            "guide": ckpts["guide"], "judge2": ckpts["judge2"], "out": out,
            "tmp": out.parent,
            **(names or {})}
    return [f"{k}={str(v).format(**fill)}" for k, v in kv.items() if v is not None]


@pytest.fixture(scope="module")
def ckpts(tiny_ckpts, tiny_cond_ckpt, tiny_guide_ckpt, tiny_judge2_ckpt):
    return {"eps": tiny_ckpts["eps_model"], "clf": tiny_ckpts["noisy_classifier"], "judge": tiny_ckpts["judge"],
            "cond": tiny_cond_ckpt, "guide": tiny_guide_ckpt, "judge2": tiny_judge2_ckpt}


def test_readme_table_and_cases_agree():
    rows = catalogue()
    assert len(rows) >= 15
    assert sorted(rows) == sorted(CASES), "README rows and CASES differ: " \
        f"{sorted(set(rows) ^ set(CASES))}"
    assert all("\n" not in m and m for m in rows.values())


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_catalogued_error(case_id, ckpts, tmp_path, monkeypatch, capsys):
    message = catalogue().get(case_id)
    assert message, f"no README row for {case_id}"
    case = CASES[case_id]
    if case_id == "no-cuda-device" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    monkeypatch.chdir(tmp_path)  # Hydra's run folders of the cli cases land here
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier output")
    names = case.setup(ckpts, tmp_path) if case.setup else {}
    entry = case.entry.removesuffix("-cli")
    args = _args(BASES[entry], ckpts, out, case.over, names)
    before = snapshot(tmp_path, *ckpts.values())

    if case.entry.endswith("-cli"):
        main = {"train": "cguide.train", "sample": "cguide.sample", "sweep": "cguide.sweep",
                "pipeline": "cguide.pipeline"}[entry]
        monkeypatch.setattr(sys, "argv", [main, *args])
        with pytest.raises(SystemExit) as e:
            __import__(main, fromlist=["main"]).main()
        err = capsys.readouterr().err
        if case.hydra:  # Hydra's error: several lines, one of them the message
            assert e.value.code == 1 and re.search(pattern(message), err), err
        else:
            lines = err.strip().splitlines()
            assert e.value.code == 2 and len(lines) == 1, err
            assert re.fullmatch("error: " + pattern(message), lines[0]), lines[0]
    else:
        run = {"train": "cguide.train:train", "sample": "cguide.sample:run_sample",
               "sweep": "cguide.sweep:run", "pipeline": "cguide.pipeline:run_pipeline"}[entry].split(":")
        fn = getattr(__import__(run[0], fromlist=[run[1]]), run[1])
        cfg = compose_cfg(entry, args, out)
        with pytest.raises(case.error) as e:
            fn(cfg)
        assert "\n" not in str(e.value) and re.fullmatch(pattern(message), str(e.value)), str(e.value)

    assert snapshot(tmp_path, *ckpts.values()) == before, "a failed run changed files on disk"
