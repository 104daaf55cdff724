"""Fuzzing the entry points (issue #12): Hypothesis draws command lines for cguide.train, cguide.sample and
cguide.sweep from a grammar of bad and odd values, runs the real Hydra main on each, and checks one property.

The property, for every draw: the run finishes (exit code 0); or it refuses with exit code 2 and exactly one
stderr line `error: ...`; or Hydra refuses the override at composition (exit code 1, Hydra's own message,
ending with its `Set the environment variable HYDRA_FULL_ERROR=1` line). Never a traceback, and a run that did
not finish leaves every file already on disk (the output folder's marker file, the checkpoints, the damaged
files it was given) byte for byte as it was.

The grammar (GRAMMAR): per entry point, config keys with values of their kind and the bad ones of it: NaN, inf,
negative, zero and int64-overflowing numbers, strings for numbers, empty / short / long / non-numeric lists,
misspelt names, missing, truncated, zero-byte, text and folder "checkpoints", a checkpoint with NaN weights,
settings that make every sample NaN (guidance.scale / sampler.eta = 1e30, with and without allow_nonfinite), output
folders that are an existing file or lie under one (tests run as root: chmod cannot make a folder unwritable), and
image folders for training (IMAGE_ROOTS: 8-bit, 16-bit, float, 32-bit integer and mixed image modes, hidden entries,
a symlink loop and a link out of the folder, truncated, damaged and 20000x20000 images, a root that is a file). A draw is one to
three such overrides on top of a fast base command on the tiny checkpoints. Counts that only scale the work
(samples per class, training steps, image size in training, threads) get no huge values: those would just run
(or allocate) for hours, which is what they ask for.

Runs are in-process through each entry point's Hydra main with sys.argv set (measured on the 2-core machine:
~10 s per subprocess, python + torch + Lightning start-up, against ~1 s in-process once imported);
test_fuzz_subprocess_agrees runs a few draws both ways and checks the verdicts agree."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import struct
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers.config import TINY
from helpers.files import snapshot

# ---------------------------------------------------------------- the grammar

# Files made fresh in each draw's folder (see materialise); {eps}/{clf}/{judge} are the tiny checkpoints.
MISSING, TRUNCATED, EMPTY, TEXT, FOLDER = "{work}/nope.ckpt", "{work}/trunc.ckpt", "{work}/empty.ckpt", \
    "{work}/text.ckpt", "{work}/a_folder"
A_FILE, UNDER_FILE = "{work}/a_file", "{work}/a_file/sub"
BAD_PATHS = [MISSING, TRUNCATED, EMPTY, TEXT, FOLDER, A_FILE, "''"]
NAN_EPS = "{work}/nan_eps.ckpt"  # the tiny eps-model with NaN weights: every sample NaN
LONG_NAME = "{work}/" + "n" * 300  # a name over the 255 bytes a file system takes
BAD_OUT = [A_FILE, UNDER_FILE, LONG_NAME]
BAD_META = "{work}/bad_meta.ckpt"  # the tiny judge with num_classes: 'ten' in its metadata
HUGE_NET = "{work}/huge_net.ckpt"  # the tiny eps-model whose net_config says model_channels=65536 (a 68 GB net)

FLOAT = ["nan", "inf", "-inf", "-1", "-1e-30", "0", "-0.0", "1e30", "abc", "''", "null", "[0.5]", "true"]
INT = ["-1", "0", "1.5", "abc", "nan", "inf", "null", "''", "[1]", "true", "9223372036854775808"]
INT_SMALL = ["-1", "0", "1.5", "abc", "nan", "null", "''", "[1]", "true"]  # no huge value: see the docstring
NAME = ["''", "nope", "null", "1", "[a]"]
NUM_LIST = ["[]", "[0.5]", "[1,2,3]", "[a]", "[nan]", "[0,inf]", "[-1]", "null", "0.5", "[[0,1]]", "['']",
            "[1e30]", "[0,-inf]"]
INTERVAL = ["[0,1]", "[0.2,0.8]", "[0.8,0.2]", "[0,0]", "[1,1]", "[-0.1,0.5]", "[0.5,1.5]", "[0.5,nan]", "[]",
            "[0.5]", "[1,2,3]", "[a]", "[a,b]", "null", "0.5", "[inf,inf]", "[[0,1]]"]
BOOL = ["true", "false", "maybe", "2", "null"]
DEVICE = ["auto", "cpu", "cuda", "cuda:1", "cuda:-1", "tpu7", "''", "meta", "mps", "cpu:0", "null", "1"]
SEED = ["0", "-1", "9223372036854775807", "9223372036854775808", "-9223372036854775809", "abc", "1.5"]
THREADS = ["1", "2", *INT_SMALL, "2147483648"]

GUIDANCE = {
    "guidance.scale": ["0", "1", "2", "1e6", *FLOAT],
    "guidance.variant": ["score", "seed_literal", "mean_shift", "mean_shift_large", "unit", "scor", *NAME],
    "guidance.interval": INTERVAL,
    "guidance.method": ["classifier", "cond", "cfg", "cfg_w", "cond_classifier", "guided", *NAME],
    "guidance.nonfinite": ["zero", "clamp", "raise", "ignore", *NAME],
    "guidance.schedule": ["constant", "linear", "cosine_rev", "quadratic", *NAME],
    "guidance.sigma_interval": ["[0,1]", "[0,inf]", "[1,0]", "[-1,1]", "[nan,1]", "[0.5]", "[]", "[a,b]", "null"],
    "guidance.entropy_scale": BOOL,
    "guidance.entropy_cap": ["1", "10", "0.5", *FLOAT],
    "guidance.grad_at": ["x_t", "posterior_mean", "x0", *NAME],
}
SAMPLER = {
    "sampler.eta": ["0", "0.5", "1", *FLOAT],
    "sampler.steps": ["1", "2", "99", "100", "101", "1000000", *INT],
    "sampler.name": ["ddim", "ddpm", "euler", "DDIM", *NAME],
    "sampler.spacing": ["uniform", "leading", "trailing", *NAME],
    "sampler.var_type": ["fixed_small", "fixed_large", "learned", *NAME],
    "sampler.clip_x0": BOOL,
    "sampler.dynamic_threshold": ["0.5", "1", "2", *FLOAT],
}
SPEED = {"speed.bf16": BOOL, "speed.channels_last": BOOL, "speed.cuda_graph": BOOL}
DATA = {
    "data.image_size": ["8", "16", "7", "10", "1", *INT],
    "data.batch_size": ["1", "4000", *INT],
    "data.val_fraction": ["0", "0.5", "0.95", "1", *FLOAT],
    "data.test_fraction": ["0", "0.001", "0.5", "0.99", *FLOAT],
    "data.channels": ["1", "3", "2", *INT_SMALL],
    "data.resize": ["resize", "pad", "crop", *NAME],
    "data.name": ["mnist5k", "mnist6k", "image_folder", "cifar10", *NAME],
}

GRAMMAR = {
    "sample": {
        **GUIDANCE, **SAMPLER, **SPEED,
        "n_per_class": ["1", "2", *INT_SMALL, "9223372036854775808"],
        "classes": ["[0]", "[9]", "[0,9]", "[1,1]", "[10]", "[-1]", "[3,12]", "[]", "[a]", "[1.5]", "[nan]", "3",
                    "null", "[9223372036854775808]", "[[1]]"],
        "batch_size": ["1", "3", "1000000000", *INT],
        "num_threads": THREADS,
        "device": DEVICE,
        "seed": SEED,
        "eps_ckpt": [*BAD_PATHS, "{clf}", "{judge}", "null", NAN_EPS, HUGE_NET],
        "classifier_ckpt": [*BAD_PATHS, "{eps}", "{judge}", "null"],
        "cond_ckpt": [*BAD_PATHS, "{eps}", "{clf}"],
        "out_dir": BAD_OUT,
        "allow_nonfinite": BOOL,
    },
    "sweep": {
        **GUIDANCE, **SAMPLER, **SPEED,
        **{k: v for k, v in DATA.items() if k != "data.batch_size"},
        "sweep.scales": ["[0]", "[0,1]", "[0,0]", "[1e30]", *NUM_LIST],
        "sweep.variants": ["[score]", "[score,unit]", "[score,score]", "[scor]", "[]", "null", "score", "[1]",
                           "[[score]]"],
        "sweep.samplers": ["[ddim]", "[ddim,ddpm]", "[euler]", "[]", "null", "ddim", "[1]"],
        "sweep.steps": ["[2]", "[1,2]", "[null]", "[0]", "[-1]", "[101]", "[]", "[a]", "null", "2", "[1.5]"],
        "sweep.intervals": ["[[0,1]]", "[[0.5,1],[0,1]]", "[[0.8,0.2]]", "[[0.5]]", "[0.5,1]", "[]", "[[]]",
                            "[[a,b]]", "null", "[[nan,1]]"],
        "sweep.methods": ["[classifier]", "[cfg]", "[cond]", "[]", "[nope]", "null", "classifier"],
        "sweep.method_scales": ["{}", "{cfg:[1]}", "{classifier:[0,1]}", "{classifier:[]}", "{classifier:[a]}",
                                "{classifier:[nan]}", "null"],
        "sweep.n_per_point": ["10", "11", "20", "9", *INT_SMALL, "9223372036854775808", "1000000000000"],
        "sweep.batch_size": ["1", "7", *INT],
        "sweep.grid_per_class": ["1", "1000000", *INT],
        "sweep.points_per_call": ["1", "1000000", *INT],
        "sweep.seed": SEED,
        "sweep.name": ["x", "''", "a/b", "..", "null"],
        "metrics.names": ["[accuracy]", "[accuracy,accuracy]", "[nonfinite]", "[guide_confidence]", "[fid]",
                          "[kid]", "[is]", "[prc]", "[classwise_fid]", "[]", "[fidd]", "fid", "null", "[1]"],
        "metrics.n_real": ["2", "3", "1000000", *INT],
        "metrics.batch_size": ["1", *INT],
        "metrics.kid_subset_size": ["1", "2", *INT],
        "metrics.extractor": ["judge", "inception", *NAME],
        "metrics.seed": SEED,
        "metrics.real_stats_cache": ["null", A_FILE, UNDER_FILE],
        "objective.metrics": ["[fid]", "[accuracy]", "[]", "[nope]", "fid", "null"],
        "objective.min_accuracy": ["0.5", "2", *FLOAT],
        "objective.penalty": ["0", *FLOAT],
        "distributed.devices": ["1", *INT_SMALL],
        "num_threads": THREADS,
        "device": DEVICE,
        "eps_ckpt": [*BAD_PATHS, "{clf}", "{judge}", "null"],
        "classifier_ckpt": [*BAD_PATHS, "{eps}", "{judge}", "null"],
        "judge_ckpt": [*BAD_PATHS, "{eps}", "{clf}", "null", BAD_META],
        "out_dir": BAD_OUT,
    },
    "train": {
        "task": ["diffusion", "classifier", "judge", "difusion", *NAME],
        **{f"{net}.{k}": v for net in ("model", "classifier", "judge") for k, v in {
            "max_steps": ["1", "2", *INT_SMALL],
            "lr": ["1e-3", "1e30", *FLOAT],
            "weight_decay": ["0.1", *FLOAT],
            "warmup_steps": ["0", "1", *INT],
            "batch_size": ["1", "2", "4000", *INT],
            "size": ["tiny", "huge", *NAME],
        }.items()},
        "model.ema_decay": ["0", "0.5", "1", *FLOAT],
        "model.p_uncond": ["0", "0.5", "1", "2", *FLOAT],
        "model.cond": BOOL,
        **{k: v for k, v in DATA.items() if k != "data.image_size"},
        "data.image_size": ["4", "8", "12", "7", "10", "1", *INT_SMALL],
        "data.num_workers": ["0", "-1", "abc"],
        "diffusion.T": ["1", "2", "3", "1000000", *INT],
        "diffusion.kind": ["linear", "cosine", "quadratic", *NAME],
        "diffusion.beta_start": ["1e-4", "0.5", "1", "2", *FLOAT],
        "diffusion.beta_end": ["0.02", "0.9999", "1", "2", *FLOAT],
        "diffusion.cosine_s": ["0.008", "-1", *FLOAT],
        "diffusion.max_beta": ["0.999", "1", "2", *FLOAT],
        "trainer.gradient_clip_val": ["0", "1", "1e30", *FLOAT],
        "trainer.limit_val_batches": ["0", "1", "0.5", "2", *FLOAT],
        "trainer.log_every_n_steps": ["1", *INT],
        "trainer.check_val_every_n_epoch": ["1", *INT],
        "trainer.precision": ["32-true", "64-true", "bf16-mixed", "16-mixed", "8-true", *NAME],
        "trainer.accelerator": ["cpu", "auto", "gpu", "cuda", "tpu", "mps", *NAME],
        "trainer.devices": ["1", "0", "-1", "auto", "abc", "[0]", "''", "null"],
        "trainer.deterministic": BOOL,
        "num_threads": THREADS,
        "seed": SEED,
        "resume": BOOL,
        "overwrite": BOOL,
        "ckpt_path": [*BAD_PATHS, "{eps}", "{clf}", "{judge}", "{work}/out/checkpoints/last.ckpt"],
        "callbacks.model_checkpoint.every_n_train_steps": ["1", *INT],
        "callbacks.model_checkpoint.save_top_k": ["-1", "0", "2", "-2", "abc", "nan"],
        "callbacks.sample_grid.n": ["0", "1", "3", *INT_SMALL],
        "callbacks.sample_grid.steps": ["1", "1000", *INT_SMALL],
        "callbacks.sample_grid.every_n_steps": ["1", *INT_SMALL],
        "paths.output_dir": BAD_OUT,
        "paths.ckpt_dir": [*BAD_OUT, "''"],
    },
}

# data.root for train draws with data=image_folder (see draws): folders of two classes a, b of 20 8x8 images each,
# built by materialise when drawn (make_image_folder), and roots that are no image folder
IMAGE_KINDS = ["ok", "bit16", "float01", "modes", "hidden", "float255", "float_nan", "int32", "loop", "link_out",
               "truncated", "damaged", "huge", "empty_class"]
IMAGE_ROOTS = [*(f"{{work}}/img/{k}" for k in IMAGE_KINDS), "{work}/img/ok/a", "{work}/nope", A_FILE, "''"]

BASES = {
    "sample": ["eps_ckpt={eps}", "classifier_ckpt={clf}", "sampler.steps=3", "progress=false", "n_per_class=1",
               "out_dir={work}/out"],
    "sweep": ["eps_ckpt={eps}", "classifier_ckpt={clf}", "judge_ckpt={judge}", "data.image_size=8", "sampler.steps=2",
              "sweep.n_per_point=10", "metrics.names=[accuracy]", "progress=false", "logger=none",
              "out_dir={work}/out"],
    # a full (not fast_dev_run) training run: 2 steps of each net, a checkpoint every step
    "train": [*(o for o in TINY if not o.split("=")[0].endswith("max_steps")), "model.max_steps=2",
              "classifier.max_steps=2", "judge.max_steps=2", "callbacks.model_checkpoint.every_n_train_steps=1",
              "paths.output_dir={work}/out"],
}
MAINS = {"sample": "cguide.sample", "sweep": "cguide.sweep", "train": "cguide.train"}


def fill(text: str, names: dict) -> str:
    """{work}, {eps}, ... replaced by their paths (other braces, e.g. a dict value, stay)."""
    for name, path in names.items():
        text = text.replace("{" + name + "}", str(path))
    return text


@dataclass(frozen=True)
class Draw:
    entry: str
    over: tuple[tuple[str, str], ...]

    def args(self, names: dict) -> list[str]:
        over = dict(self.over)
        base = [a for a in BASES[self.entry] if a.split("=", 1)[0] not in over]
        return [fill(a, names) for a in base] + [f"{k}={fill(v, names)}" for k, v in over.items()]

    def __str__(self) -> str:
        return f"{MAINS[self.entry]} " + " ".join(f"{k}={v}" for k, v in self.over)


@st.composite
def draws(draw, entries=tuple(MAINS)):
    entry = draw(st.sampled_from(entries))
    keys = draw(st.lists(st.sampled_from(sorted(GRAMMAR[entry])), min_size=1, max_size=3, unique=True))
    over = [(k, draw(st.sampled_from(GRAMMAR[entry][k]))) for k in keys]
    if entry == "train" and not {"data.name", "data.root"} & set(keys) and draw(st.integers(0, 2)) == 0:
        over += [("data", "image_folder"), ("data.root", draw(st.sampled_from(IMAGE_ROOTS)))]
    if entry == "train" and draw(st.integers(0, 4)) > 0:  # mostly a smoke run (1 batch, no checkpoint)
        over.append(("trainer.fast_dev_run", "true"))
    return Draw(entry, tuple(over))


# ---------------------------------------------------------------- running one draw

def _save_image(stem: Path, mode: str, rng) -> None:
    """An 8x8 image of random pixels in PIL mode `mode`, in a file format that keeps it."""
    from PIL import Image

    u8 = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    if mode == "I;16":
        Image.fromarray(u8.astype(np.uint16) * 257).save(stem.with_suffix(".png"))
    elif mode == "F":
        Image.fromarray(u8.astype(np.float32) / 255, "F").save(stem.with_suffix(".tif"))
    elif mode == "CMYK":
        Image.fromarray(u8).convert("CMYK").save(stem.with_suffix(".jpg"))
    else:
        Image.fromarray(u8).convert(mode).save(stem.with_suffix(".png"))


def make_image_folder(root: Path, kind: str) -> None:
    """IMAGE_KINDS: classes a and b of 20 images each (8-bit grey unless the kind says otherwise), and the odd
    entries of the kind."""
    from PIL import Image

    rng = np.random.default_rng(0)
    modes = {"bit16": ["I;16"], "float01": ["F"],
             "modes": ["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "F", "CMYK"]}.get(kind, ["L"])
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(20):
            _save_image(root / c / str(i), modes[i % len(modes)], rng)
    odd = root / "a"
    if kind == "hidden":  # all ignored: the run trains on a and b
        (root / ".thumbnails").mkdir()
        _save_image(root / ".thumbnails" / "0", "L", rng)
        (root / ".ipynb_checkpoints").mkdir()
        (odd / ".cache").mkdir()
        _save_image(odd / ".cache" / "0", "L", rng)
        (odd / "._0.png").write_bytes(b"not an image")
    elif kind == "float255":
        Image.fromarray(np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8), "F").save(odd / "odd.tif")
    elif kind == "float_nan":
        Image.fromarray(np.full((8, 8), np.nan, np.float32), "F").save(odd / "odd.tif")
    elif kind == "int32":
        Image.fromarray(np.full((8, 8), 70000, np.int32), "I").save(odd / "odd.tif")
    elif kind == "loop":
        os.symlink("..", odd / "up")
    elif kind == "link_out":
        _save_image(root.parent / "outside", "L", rng)
        os.symlink(root.parent / "outside.png", odd / "linked.png")
    elif kind == "truncated":
        Image.effect_noise((64, 64), 60).save(odd / "cut.jpg")
        (odd / "cut.jpg").write_bytes((odd / "cut.jpg").read_bytes()[:400])
    elif kind == "damaged":
        data = bytearray((odd / "0.png").read_bytes())
        data[45:60] = b"\xff" * 15  # inside IDAT: the header reads, decoding fails
        (odd / "0.png").write_bytes(bytes(data))
    elif kind == "huge":  # a 20000x20000 PNG's header: over PIL's decompression-bomb limit
        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
        (odd / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0,
                                                                                         0, 0, 0))
                                       + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    elif kind == "empty_class":
        (root / "c").mkdir()
        (root / "c" / "notes.txt").write_text("no images here")


def materialise(work: Path, ckpts: dict, d: Draw | None = None) -> dict:
    """The draw's folder: the output folder with a marker file, and the damaged inputs the grammar names (the
    NaN-weight checkpoint and the image folders only when the draw names them)."""
    (work / "out").mkdir(parents=True)
    (work / "out" / "keep.txt").write_text("an earlier output")
    eps = ckpts["eps_model"].read_bytes()
    (work / "trunc.ckpt").write_bytes(eps[: len(eps) // 2])
    (work / "empty.ckpt").write_bytes(b"")
    (work / "text.ckpt").write_text("not a checkpoint\n")
    (work / "a_folder").mkdir()
    (work / "a_folder" / "inside.txt").write_text("a file in a folder")
    (work / "a_file").write_text("a file where a folder is expected")
    values = [v for _, v in d.over] if d else []
    if NAN_EPS in values:
        ckpt = torch.load(ckpts["eps_model"], weights_only=True)
        for v in ckpt["state_dict"].values():
            if v.is_floating_point():
                v.fill_(float("nan"))
        torch.save(ckpt, work / "nan_eps.ckpt")
    if BAD_META in values:
        ckpt = torch.load(ckpts["judge"], weights_only=True)
        ckpt["cguide"]["num_classes"] = "ten"
        torch.save(ckpt, work / "bad_meta.ckpt")
    if HUGE_NET in values:
        ckpt = torch.load(ckpts["eps_model"], weights_only=True)
        ckpt["cguide"]["net_config"]["model_channels"] = 65536
        torch.save(ckpt, work / "huge_net.ckpt")
    for kind in IMAGE_KINDS:
        if f"{{work}}/img/{kind}" in values or (kind == "ok" and "{work}/img/ok/a" in values):
            make_image_folder(work / "img" / kind, kind)
    return {"work": work, "eps": ckpts["eps_model"], "clf": ckpts["noisy_classifier"], "judge": ckpts["judge"]}


@dataclass
class Outcome:
    code: int | str
    out: str
    err: str
    seconds: float


def run_in_process(module: str, args: list[str], cwd: Path) -> Outcome:
    """module's Hydra main with sys.argv = args in cwd, as `python -m module args` would run it; an exception
    that escapes it is printed as the interpreter would (a traceback, exit code 1)."""
    from hydra.core.global_hydra import GlobalHydra

    mod = importlib.import_module(module)
    GlobalHydra.instance().clear()
    saved = sys.argv, os.getcwd(), torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    env = os.environ.pop("HYDRA_FULL_ERROR", None)
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [module, *args]
    os.chdir(cwd)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mod.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 -- what `python -m` would print
        code = 1
        err.write(traceback.format_exc())
    finally:
        seconds = time.perf_counter() - t0
        sys.argv = saved[0]
        os.chdir(saved[1])
        torch.set_num_threads(saved[2])
        torch.use_deterministic_algorithms(saved[3])
        if env is not None:
            os.environ["HYDRA_FULL_ERROR"] = env
    return Outcome(code, out.getvalue(), err.getvalue(), seconds)


ENV = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
ENV.update(WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_subprocess(module: str, args: list[str], cwd: Path) -> Outcome:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                       timeout=600)
    return Outcome(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


# stderr lines that are neither errors nor tracebacks: Python/Lightning warnings (`file.py:line: [Category: ]
# message`, then the quoted source line, indented) and Lightning's info lines
WARNING = re.compile(r"^\S+\.py:\d+: .*$")
INFO = re.compile(r"^((GPU|TPU|HPU|IPU) available: .*|💡 Tip: .*|Running in `fast_dev_run` mode.*"
                  r"|`Trainer\.\w+` stopped: .*|Seed set to -?\d+|\s*)$")


def messages(err: str) -> list[str]:
    """stderr without warnings and info lines."""
    kept, after_warning = [], False
    for line in err.splitlines():
        quoted = after_warning and line.startswith(" ")
        after_warning = bool(WARNING.match(line))
        if not (after_warning or quoted or INFO.match(line)):
            kept.append(line)
    return kept


HYDRA_TAIL = "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."


def verdict(o: Outcome) -> str:
    """'ok', 'error' (one-line refusal), 'hydra' (composition error), or why the property fails."""
    text = o.out + o.err
    if "Traceback (most recent call last)" in text or "Error executing job" in text:
        return "traceback"
    if o.code == 0:
        return "ok"
    if o.code == 2:
        lines = messages(o.err)
        return "error" if len(lines) == 1 and lines[0].startswith("error: ") else "not one error line"
    if o.code == 1:
        lines = o.err.strip().splitlines()
        return "hydra" if lines and lines[-1] == HYDRA_TAIL and len(lines) >= 3 else "exit 1 without Hydra's message"
    return f"exit code {o.code}"


def check_draw(d: Draw, ckpts: dict, base: Path, run=run_in_process, stats: Counter | None = None) -> Outcome:
    work = Path(tempfile.mkdtemp(dir=base))
    try:
        names = materialise(work, ckpts, d)
        before = snapshot(work, *ckpts.values())
        o = run(MAINS[d.entry], d.args(names), work)
        v = verdict(o)
        if stats is not None:
            stats[v] += 1
            stats["seconds"] += o.seconds
        assert v in ("ok", "error", "hydra"), f"{d}: {v} (exit {o.code})\n{o.err[-4000:]}\n{o.out[-1500:]}"
        if v == "hydra":  # Hydra's message names the override it refused
            assert any(k in o.err for k, _ in d.over), f"{d}: Hydra's message names none of the keys\n{o.err}"
        if v != "ok":
            after = snapshot(work, *ckpts.values())
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            assert not changed, f"{d}: refused ({v}) but changed files: {changed}\n{o.err[-2000:]}"
        return o
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _report(name: str, stats: Counter) -> None:
    n = sum(v for k, v in stats.items() if k != "seconds")
    print(f"\n{name}: {n} draws, {dict((k, v) for k, v in stats.items() if k != 'seconds')}, "
          f"{stats['seconds']:.1f} s in the entry points")


SETTINGS = dict(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


def test_fuzz_entry_points(tiny_ckpts, base):
    stats = Counter()

    @settings(max_examples=25, **SETTINGS)
    @given(draws())
    def fuzz(d):
        check_draw(d, tiny_ckpts, base, stats=stats)

    fuzz()
    _report("fast", stats)


@pytest.mark.slow
def test_fuzz_entry_points_many(tiny_ckpts, base):
    stats = Counter()

    @settings(max_examples=300, **{**SETTINGS, "derandomize": False})
    @given(draws())
    def fuzz(d):
        check_draw(d, tiny_ckpts, base, stats=stats)

    fuzz()
    _report("slow", stats)


@pytest.mark.slow
def test_fuzz_subprocess_agrees(tiny_ckpts, base):
    """The in-process runs are faithful: a few draws through `python -m` give the same verdicts."""
    stats = Counter()

    @settings(max_examples=8, **SETTINGS)
    @given(draws())
    def fuzz(d):
        inside = verdict(check_draw(d, tiny_ckpts, base))
        outside = verdict(check_draw(d, tiny_ckpts, base, run=run_subprocess, stats=stats))
        assert inside == outside, f"{d}: in-process {inside}, subprocess {outside}"

    fuzz()
    _report("subprocess", stats)


# The input classes of issue #28, each drawn once (the random draws above meet them only now and then): every image
# folder kind through cguide.train, and the settings that make every sample NaN through cguide.sample, with the
# verdict each must get (the property itself is checked by check_draw as for any draw).
ISSUE_28 = [
    *(Draw("train", (("data", "image_folder"), ("data.root", f"{{work}}/img/{kind}"), ("trainer.fast_dev_run", "true")))
      for kind in IMAGE_KINDS),
    *(Draw("train", (("data", "image_folder"), ("data.root", root), ("trainer.fast_dev_run", "true")))
      for root in IMAGE_ROOTS[len(IMAGE_KINDS):]),
    *(Draw("sample", over) for over in [(("guidance.scale", "1e30"),), (("sampler.eta", "1e30"),),
                                        (("eps_ckpt", NAN_EPS),), (("guidance.scale", "1e30"), ("allow_nonfinite", "true")),
                                        (("eps_ckpt", NAN_EPS), ("allow_nonfinite", "true"))]),
]
ISSUE_28_OK = {"ok", "bit16", "float01", "modes", "hidden"}


@pytest.mark.parametrize("d", ISSUE_28, ids=str)
def test_fuzz_issue_28_classes(d, tiny_ckpts, base):
    o = check_draw(d, tiny_ckpts, base)
    over = dict(d.over)
    ok = over.get("data.root", "").rsplit("/", 1)[-1] in ISSUE_28_OK or over.get("allow_nonfinite") == "true"
    assert verdict(o) == ("ok" if ok else "error"), f"{d}: {verdict(o)}\n{o.err[-2000:]}"
    if not ok:
        line = messages(o.err)[0]
        assert "image folder" in line or "non-finite" in line, line


# The write and size classes of issue #28, each drawn once: output folders with a name over 255 bytes (refused before
# Hydra makes its run folder), a sweep too large for the machine's memory, checkpoint metadata that is not numbers and
# a net_config edited to a 68 GB net (refused before it is allocated). Each must be one error line.
ISSUE_28_WRITES = [Draw("sweep", (("out_dir", LONG_NAME),)), Draw("train", (("paths.output_dir", LONG_NAME),)),
                   Draw("sample", (("out_dir", LONG_NAME),)), Draw("sweep", (("sweep.n_per_point", "1000000000000"),)),
                   Draw("sweep", (("judge_ckpt", BAD_META),)), Draw("sample", (("eps_ckpt", HUGE_NET),))]


@pytest.mark.parametrize("d", ISSUE_28_WRITES, ids=lambda d: str(d).replace("n" * 300, "<300 n>"))
def test_fuzz_issue_28_write_and_size_classes(d, tiny_ckpts, base):
    o = check_draw(d, tiny_ckpts, base)
    assert verdict(o) == "error", f"{d}: {verdict(o)}\n{o.err[-2000:]}"
