"""Checkpoint I/O without Lightning: loading any of the trained networks
by kind with checks that name the file and the fix.

Every LightningModule of this project stores a plain ``cguide`` dict in its checkpoints:
{kind, net_config, weights_prefix, image_shape, num_classes, schedule (config), fingerprint, extra}
(extra: the eps-model's {cond, p_uncond}, the judges' and the guide's {test_acc}),
so ``torch.load(..., weights_only=True)`` is all it takes to rebuild a net."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..nets import EncoderClassifier, EncoderConfig, JudgeCNN, JudgeCNNConfig, JudgeConfig, JudgeNet, UNet, UNetConfig
from ..nets.adm import RELEASED_FILES
from .safe_load import UnsafeFile, torch_load_plain

KINDS = {
    "eps_model": (UNet, UNetConfig, "an eps-model (task=diffusion)"),
    "noisy_classifier": (EncoderClassifier, EncoderConfig, "a noisy classifier (task=classifier)"),
    "judge": (JudgeNet, JudgeConfig, "a judge classifier (task=judge)"),
    # the judge's architecture, trained apart (its own config and seed): x0-space guidance only, never judging
    "guide_classifier": (JudgeNet, JudgeConfig, "a clean guide classifier (task=guide)"),
    # the second judge: another architecture (a plain CNN) and seed, trained as the judge is (#26 item 6)
    "judge2": (JudgeCNN, JudgeCNNConfig, "a second judge classifier (task=judge2)"),
}
# what each kind's place is called on the command line, for the judge <-> guide refusal
_JUDGE_GUIDE = {"judge": ("judge_ckpt", "judge"), "guide_classifier": ("guide_ckpt", "guide")}


def read_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True, and one clear line for a missing or damaged file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder, not a checkpoint file; point to the .ckpt file in it "
                         "(e.g. <run>/checkpoints/<task>.ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; check the path (train it first with cguide.train)")
    try:
        ckpt = torch_load_plain(path)
    except UnsafeFile as e:
        raise ValueError(f"checkpoint {path} holds Python objects other than tensors ({e}), and unpickling it could "
                         "run code: refused; use a checkpoint that cguide.train wrote") from None
    except Exception as e:  # truncated zip, pickle garbage, wrong format...
        raise ValueError(f"checkpoint {path} is truncated or corrupted ({type(e).__name__}); "
                         "delete it and retrain, or point to another file") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} is not a cguide checkpoint (no 'cguide' metadata)")
    return ckpt


@dataclass
class Loaded:
    """A network rebuilt from a checkpoint, in eval mode, with its metadata."""

    net: nn.Module
    kind: str
    path: Path
    image_shape: tuple[int, int, int]
    num_classes: int
    fingerprint: dict | None
    schedule: dict | None
    extra: dict = field(default_factory=dict)

    @property
    def conditional(self) -> bool:
        """A class-conditional eps-model (its net has a label embedding; model.cond=true or an ADM import)."""
        return self.kind == "eps_model" and getattr(getattr(self.net, "cfg", None), "num_classes", None) is not None

    @property
    def p_uncond(self) -> float | None:
        """The label-dropout probability the eps-model was trained with (0.0 for files from before it); None
        for the classifiers."""
        return float(self.extra.get("p_uncond", 0.0)) if self.kind == "eps_model" else None


def checkpoint_meta(kind: str, weights_prefix: str, net_config: dict, image_shape, num_classes: int,
                    schedule: dict | None = None, fingerprint: dict | None = None, extra: dict | None = None) -> dict:
    """The plain ``cguide`` dict a LightningModule stores in its checkpoints, as load_net reads it."""
    return {"kind": kind, "weights_prefix": weights_prefix, "net_config": dict(net_config),
            "image_shape": list(image_shape), "num_classes": int(num_classes),
            "schedule": None if schedule is None else dict(schedule), "fingerprint": fingerprint,
            "extra": dict(extra or {})}


def load_net(path: str | os.PathLike, kind: str, map_location: str | torch.device = "cpu",
             conditional: bool | None = None) -> Loaded:
    """Rebuild the network of ``kind`` ('eps_model', 'noisy_classifier', 'judge', 'guide_classifier', 'judge2') from
    ``path``.
    conditional (eps-model only): True/False = the place it is used needs a class-conditional /
    unconditional eps-model, and a file holding the other one is refused; None accepts either."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {', '.join(KINDS)}")
    ckpt = read_checkpoint(path)
    meta = ckpt.get("cguide")
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path} has no 'cguide' metadata: it was not written by this project"
                         + _adm_hint(path, ckpt, kind, conditional))
    missing = [k for k in ("kind", "net_config", "weights_prefix", "image_shape", "num_classes") if k not in meta]
    if missing or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"checkpoint {path} is incomplete (no {', '.join(missing) or 'state_dict'} in it); "
                         "delete it and retrain, or point to another file")
    if meta["kind"] not in KINDS:
        raise ValueError(f"checkpoint {path} holds an unknown kind {meta['kind']!r} (known: {', '.join(KINDS)}); "
                         "it was written by another version of cguide")
    if {meta["kind"], kind} == set(_JUDGE_GUIDE):
        key, task = _JUDGE_GUIDE[kind]
        raise ValueError(f"checkpoint {path} holds {KINDS[meta['kind']][2]}, but {KINDS[kind][2]} is expected here "
                         f"({key}); the judge that measures the samples must not guide them: pass a checkpoint of "
                         f"task={task} as {key}=<path> (train one with cguide.train task={task})")
    if meta["kind"] != kind:
        raise ValueError(f"checkpoint {path} holds {KINDS[meta['kind']][2]}, but {KINDS[kind][2]} is expected "
                         f"here; swap the paths")
    if kind == "eps_model" and conditional is not None:
        _check_conditional(path, (meta["net_config"] or {}).get("num_classes") is not None, conditional)
    _check_meta_values(path, meta)
    net_cls, cfg_cls, _ = KINDS[kind]
    try:  # on the meta device first: a net_config edited to a huge size is refused before any memory is taken
        net_cfg = cfg_cls.from_dict(meta["net_config"])
        with torch.device("meta"):
            own = net_cls(net_cfg).state_dict()
    except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError, RuntimeError) as e:
        why = " ".join(str(e).split())[:200]
        raise ValueError(f"checkpoint {path} is damaged or edited: its net_config does not describe a net "
                         f"({type(e).__name__}: {why}); retrain it, or point to another file") from None
    prefix = meta["weights_prefix"]
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    bad = [f"missing {k}" for k in own if k not in state] + [f"unexpected {k}" for k in state if k not in own]
    bad += [f"{k} is {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the net"
            for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise ValueError(f"checkpoint {path}: its weights do not fit its net_config ({bad[0]}; {len(bad)} problem(s)); "
                         "the file is damaged or edited: retrain it, or point to another file")
    net = net_cls(net_cfg)  # the size of the weights in the file, which are in memory already
    net.load_state_dict(state)
    return Loaded(net.eval().to(map_location), kind, Path(path), tuple(meta["image_shape"]), int(meta["num_classes"]),
                  meta.get("fingerprint"), meta.get("schedule"), dict(meta.get("extra") or {}))


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _check_meta_values(path, meta: dict) -> None:
    """The metadata's numbers are numbers (an edited file may say num_classes: 'ten'): one line naming the file."""
    shape, n = meta["image_shape"], meta["num_classes"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(map(_whole, shape))):
        raise ValueError(f"checkpoint {path} is damaged or edited: its image_shape is {shape!r}, not [channels, "
                         "height, width] of positive whole numbers; retrain it, or point to another file")
    if not _whole(n):
        raise ValueError(f"checkpoint {path} is damaged or edited: its num_classes is {n!r}, not a positive whole "
                         "number; retrain it, or point to another file")
    if not isinstance(meta["net_config"], dict):
        kind = type(meta["net_config"]).__name__
        raise ValueError(f"checkpoint {path} is damaged or edited: its net_config is {kind}, not a mapping of the "
                         "net's settings; retrain it, or point to another file")


def _adm_hint(path, ckpt: dict, kind: str, conditional: bool | None) -> str:
    """For a plain state dict (how guided-diffusion saves its models): the preset key that loads it."""
    if kind not in ("eps_model", "noisy_classifier") or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ""
    key = "classifier_preset" if kind == "noisy_classifier" else "cond_preset" if conditional else "eps_preset"
    example = RELEASED_FILES.get(Path(path).name, "adm256_classifier" if kind == "noisy_classifier" else
                                 "adm256_cond" if conditional else "adm256_uncond")
    return f"; a guided-diffusion (ADM) file needs its preset, e.g. {key}={example}"


def _check_conditional(path, has: bool, wanted: bool) -> None:
    if has and not wanted:
        raise ValueError(f"checkpoint {path} holds a class-conditional eps-model (model.cond=true), but an "
                         "unconditional one is expected here (eps_ckpt); pass it as cond_ckpt=..., or train an "
                         "unconditional model")
    if wanted and not has:
        raise ValueError(f"checkpoint {path} holds an unconditional eps-model, but a class-conditional one "
                         "(model.cond=true) is expected here (cond_ckpt); train one with "
                         "cguide.train task=diffusion model.cond=true")


def check_compatible(eps: Loaded, clf: Loaded, same_schedule: bool = True) -> None:
    """The guide must share the eps-model's schedule (a noisy classifier; same_schedule=False for the clean
    guide, which sees no x_t), image shape and (for y) class count."""
    if same_schedule and eps.fingerprint != clf.fingerprint:
        raise ValueError(f"schedule mismatch: {eps.path} was trained with {eps.fingerprint}, {clf.path} with "
                         f"{clf.fingerprint}; train the classifier with the same diffusion config")
    if eps.image_shape != clf.image_shape:
        raise ValueError(f"image shape mismatch: {eps.path} makes {list(eps.image_shape)}, {clf.path} expects "
                         f"{list(clf.image_shape)}; use checkpoints trained on the same data settings")
    if eps.num_classes != clf.num_classes:
        raise ValueError(f"class count mismatch: {eps.path} was trained on {eps.num_classes} classes, {clf.path} "
                         f"on {clf.num_classes}; use checkpoints trained on the same dataset")
