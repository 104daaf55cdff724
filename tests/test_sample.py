"""Sample entry point and the shared draw() helper: files, shapes, labels, settings; s = 0 is exactly
unguided; bad inputs fail with one clear line."""

import json
import re
import sys

import numpy as np
import pytest
import torch

from cguide.io.checkpoints import load_net
from cguide.diffusion import SamplerSpec, make_plan, make_schedule, sample
from cguide.guidance import GuidanceSpec
from cguide.runtime.draw import Models, RunOptions, draw
from helpers.config import compose_cfg


def _ckpt_args(tiny_ckpts, classifier="noisy_classifier"):
    return [f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={tiny_ckpts[classifier]}"]


FAST = ["sampler.steps=3", "progress=false"]


def test_sample_writes_class_grids_and_npz(tiny_ckpts, tmp_path):
    from cguide.sample import run_sample

    cfg = compose_cfg("sample", [*_ckpt_args(tiny_ckpts), *FAST, "classes=[1,7]", "n_per_class=3",
                                 "guidance.scale=2", "guidance.variant=seed_literal", "batch_size=4", "seed=5"],
                      tmp_path)
    path = run_sample(cfg)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["grid_class1.png", "grid_class7.png"]
    with np.load(path, allow_pickle=False) as z:
        assert z["samples"].shape == (6, 1, 8, 8) and z["samples"].dtype == np.float32
        assert z["targets"].tolist() == [1, 1, 1, 7, 7, 7]
        assert z["seeds"].tolist() == [5, 6, 7, 8, 9, 10]
        assert z["nonfinite_steps"].shape == (6,)
        settings = json.loads(z["settings"].item())
    assert settings["guidance"]["scale"] == 2.0 and settings["guidance"]["variant"] == "seed_literal"
    assert settings["sampler"]["name"] == "ddim" and settings["sampler"]["steps"] == 3
    assert settings["classes"] == [1, 7] and settings["n_per_class"] == 3
    assert settings["classifier_ckpt"] == str(tiny_ckpts["noisy_classifier"])


def test_s0_draw_equals_unguided_bitwise(tiny_ckpts):
    eps = load_net(tiny_ckpts["eps_model"], "eps_model")
    clf = load_net(tiny_ckpts["noisy_classifier"], "noisy_classifier")
    plan = make_plan(make_schedule(**eps.schedule), 4)
    ref = sample(lambda x, t: eps.net(x, t), eps.image_shape, plan, range(6), sampler="ddpm", progress=False)
    y, guided = torch.arange(6) % 10, Models(eps, classifier=clf)
    kw = dict(sampler=SamplerSpec("ddpm", steps=4), seeds=list(range(6)), run=RunOptions(batch_size=6, progress=False))
    x0, nf = draw(guided, GuidanceSpec.of(y, 0.0), **kw)
    assert torch.equal(x0, ref) and nf.tolist() == [0] * 6
    assert torch.equal(draw(Models(eps), GuidanceSpec.of(y, 0.0), **kw)[0], ref)  # no classifier needed at s = 0
    # per-sample scales in one batch: the s = 0 rows are still exactly unguided, the others are guided
    mixed, _ = draw(guided, GuidanceSpec.of(y, torch.tensor([0.0, 0.0, 0.0, 3.0, 3.0, 3.0])), **kw)
    assert torch.equal(mixed[:3], ref[:3])
    assert not torch.allclose(mixed[3:], ref[3:])


def test_draw_batches_do_not_change_samples(tiny_ckpts):
    eps = load_net(tiny_ckpts["eps_model"], "eps_model")
    clf = load_net(tiny_ckpts["noisy_classifier"], "noisy_classifier")
    spec = GuidanceSpec.of(torch.tensor([0, 1, 2, 3, 4, 5]), [0.0, 1.0, 2.0, 0.0, 1.0, 2.0],
                           ["score", "seed_literal", "unit"] * 2)
    args = (Models(eps, classifier=clf), spec, SamplerSpec("ddim", steps=3), [3, 1, 4, 1, 5, 9])
    whole, _ = draw(*args, RunOptions(batch_size=6, progress=False))
    split, _ = draw(*args, RunOptions(batch_size=4, progress=False))
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)


def _edited_ckpt(src, dst, edit):
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt["cguide"])
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize("override,match", [
    ("guidance.scale=-1", r"guidance scale must be finite and >= 0"),
    ("guidance.variant=scor", r"unknown guidance variant 'scor'; known: score, seed_literal"),
    ("classes=[3,12]", r"target class out of range: got \[3, 12\].*classes 0\.\.9"),
    ("guidance.interval=[0.8,0.2]", r"needs \[t_lo, t_hi\] with 0 <= t_lo <= t_hi <= 1, got \[0.8, 0.2\]"),
    ("guidance.interval=[0.5]", r"needs \[t_lo, t_hi\] .* got \[0.5\]; fix guidance.interval"),
    ("sampler.name=eulr", r"unknown sampler 'eulr' in sampler.name; registered: .*ddim.*ddpm"),
    ("sampler.eta=nan", r"sampler.eta must be finite and >= 0, got nan"),
    ("sampler.steps=500", r"sampling steps must be in \[1, T=100\]"),
    ("classes=[]", r"classes is empty"),
])
def test_sample_bad_settings_raise_clear_errors(tiny_ckpts, tmp_path, override, match):
    from cguide.sample import run_sample

    with pytest.raises(ValueError, match=match):
        run_sample(compose_cfg("sample", [*_ckpt_args(tiny_ckpts), *FAST, override], tmp_path))
    assert not (tmp_path / "samples.npz").exists()


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["fingerprint"].update(T=50), r"schedule mismatch: .* train the classifier with the same diffusion"),
    (lambda m: m.update(image_shape=[1, 16, 16]), r"image shape mismatch: .* makes \[1, 8, 8\]"),
    (lambda m: m.update(num_classes=5), r"class count mismatch: .* 10 classes"),
])
def test_sample_incompatible_checkpoints(tiny_ckpts, tmp_path, edit, match):
    from cguide.sample import run_sample

    bad = _edited_ckpt(tiny_ckpts["noisy_classifier"], tmp_path / "clf.ckpt", edit)
    cfg = compose_cfg("sample", [f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={bad}", *FAST], tmp_path)
    with pytest.raises(ValueError, match=match):
        run_sample(cfg)


def test_sample_wrong_kind_and_missing_classifier(tiny_ckpts, tmp_path):
    from cguide.sample import run_sample

    with pytest.raises(ValueError, match=r"holds a judge classifier .* noisy classifier .* expected here; swap"):
        run_sample(compose_cfg("sample", [*_ckpt_args(tiny_ckpts, "judge"), *FAST], tmp_path))
    with pytest.raises(ValueError, match=r"guidance scale > 0 needs a noisy classifier: set classifier_ckpt"):
        run_sample(compose_cfg("sample", [f"eps_ckpt={tiny_ckpts['eps_model']}", *FAST], tmp_path))
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope.ckpt"):
        run_sample(compose_cfg("sample", ["eps_ckpt=nope.ckpt", *FAST], tmp_path))


def test_sample_cli_reports_one_line_and_exit_code_2(tiny_ckpts, tmp_path, monkeypatch, capsys):
    from cguide.sample import main

    monkeypatch.chdir(tmp_path)  # Hydra's run folder lands here
    monkeypatch.setattr(sys, "argv", ["cguide.sample", *_ckpt_args(tiny_ckpts), "guidance.scale=-2",
                                      f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: guidance scale must be finite and >= 0"), err


# ---------------------------------------------------------------- non-finite samples (issue #28)


def _nan_weights(src, dst, rows=None):
    """A copy of an eps-model checkpoint with NaN weights: all of them, or only the label embedding's rows `rows`
    (a conditional model: the samples of those target classes alone turn NaN)."""
    ckpt = torch.load(src, weights_only=True)
    for k, v in ckpt["state_dict"].items():
        if rows is None and v.is_floating_point():
            v.fill_(float("nan"))
        elif rows is not None and k.endswith("label_emb.weight"):
            v[rows] = float("nan")
    torch.save(ckpt, dst)
    return dst


def _run_cli(args, tmp_path, monkeypatch, capsys):
    from cguide.sample import main
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.chdir(tmp_path)  # Hydra's run folder lands here
    monkeypatch.setattr(sys, "argv", ["cguide.sample", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


@pytest.mark.parametrize("override,why", [
    ("guidance.scale=1e30", r"at guidance\.scale=1e\+30, sampler\.eta=0\.0; nothing was written; lower guidance"
                            r"\.scale or sampler\.eta"),
    ("sampler.eta=1e30", r"at guidance\.scale=1\.0, sampler\.eta=1e\+30; nothing was written; lower"),
    ("eps_ckpt={nan}", r"because the eps-model .*nan\.ckpt hold\(s\) NaN or inf weights; nothing was written; "
                       r"retrain it or use another checkpoint"),
])
def test_sample_all_nonfinite_exits_2_and_keeps_earlier_files(tiny_ckpts, tmp_path, monkeypatch, capsys, override,
                                                              why):
    """100 % NaN samples used to exit 0 without a word: now one error line naming the cause, exit 2, and the
    out_dir's earlier samples.npz and grids stay as they were; allow_nonfinite=true writes them, with a warning."""
    nan = _nan_weights(tiny_ckpts["eps_model"], tmp_path / "nan.ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "samples.npz").write_bytes(b"an earlier run's samples")
    (out / "grid_class0.png").write_bytes(b"an earlier run's grid")
    args = [*_ckpt_args(tiny_ckpts), *FAST, "n_per_class=1", "classes=[0,5]", f"out_dir={out}",
            override.format(nan=nan)]
    code, io = _run_cli(args, tmp_path, monkeypatch, capsys)
    err = io.err.strip().splitlines()
    assert code == 2 and len(err) == 1, io.err
    assert re.fullmatch(r"error: all 2 samples are non-finite \(NaN or inf\) " + why + r".*, or pass "
                        r"allow_nonfinite=true to write them anyway", err[0]), err[0]
    assert sorted(p.name for p in out.iterdir()) == ["grid_class0.png", "samples.npz"]
    assert (out / "samples.npz").read_bytes() == b"an earlier run's samples"
    with pytest.warns(UserWarning, match=r"^2 of 2 samples \(100\.0%\) are non-finite \(NaN or inf\)"):
        code, io = _run_cli([*args, "allow_nonfinite=true"], tmp_path, monkeypatch, capsys)
    assert code == 0 and "samples: " in io.out
    with np.load(out / "samples.npz") as z:
        assert z["samples"].shape == (2, 1, 8, 8) and not np.isfinite(z["samples"]).reshape(2, -1).all(1).any()


def test_sample_some_nonfinite_warns_with_the_share(tiny_cond_ckpt, tmp_path, monkeypatch, capsys):
    """A conditional eps-model whose label embedding for class 3 is NaN: its samples are NaN, class 1's are not;
    the run writes everything (exit 0) and warns with the share."""
    bad = _nan_weights(tiny_cond_ckpt, tmp_path / "cond.ckpt", rows=[3])
    out = tmp_path / "out"
    args = [f"cond_ckpt={bad}", "guidance.method=cond", *FAST, "classes=[1,3]", "n_per_class=2", f"out_dir={out}"]
    with pytest.warns(UserWarning, match=r"^2 of 4 samples \(50\.0%\) are non-finite \(NaN or inf\); they are "
                                         r"written as they are"):
        code, io = _run_cli(args, tmp_path, monkeypatch, capsys)
    assert code == 0, io.err
    with np.load(out / "samples.npz") as z:
        finite = np.isfinite(z["samples"]).reshape(4, -1).all(1)
        assert finite.tolist() == [True, True, False, False] and z["targets"].tolist() == [1, 1, 3, 3]
    assert (out / "grid_class1.png").exists() and (out / "grid_class3.png").exists()
    # every sample finite: no warning at all
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*non-finite")
        code, _ = _run_cli([f"cond_ckpt={tiny_cond_ckpt}", "guidance.method=cond", *FAST, "classes=[1,3]",
                            f"out_dir={tmp_path / 'fine'}"], tmp_path, monkeypatch, capsys)
    assert code == 0
