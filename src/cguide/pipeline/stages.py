"""The pipeline's training stages: which networks an experiment needs, the settings that define each
stage's checkpoint, and training one stage (reused when its settings are unchanged, resumed when
interrupted, retrained with the old folder kept aside when they changed)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..config import TrainConfig, net_precision, plain
from ..grid.points import build_grid
from ..guidance import METHODS, check_method
from ..io.atomic import atomic_write_text
from ..io.folders import move_aside

# stage -> (training task, its config section, trained on the schedule); cond_diffusion is the class-conditional
# eps-model (model.cond=true: same size and step budget as the unconditional one), trained when a method needs it;
# guide is the clean guide classifier, trained when a sweep point guides in x0 space (guidance.grad_space=x0);
# judge2 is the second judge (another architecture and seed), trained unless metrics.second_judge=false
STAGES = {"diffusion": ("diffusion", "model", True), "cond_diffusion": ("diffusion", "model", True),
          "classifier": ("classifier", "classifier", True), "judge": ("judge", "judge", False),
          "judge2": ("judge2", "judge2", False), "guide": ("guide", "guide", False)}


STAGE_LOCK_WAIT_S = 30.0


def stages(cfg: DictConfig) -> list[str]:
    """The stages the sweep's methods need (the classifier always: it also measures guide_confidence), the
    guide when a point of the grid guides in x0 space, and the second judge unless metrics.second_judge=false."""
    needs = set().union(*(METHODS[check_method(m).name].needs for m in cfg.sweep.methods))
    x0 = any(p.guidance.grad_space == "x0" and p.guidance.scale > 0 and p.method.classifier
             for p in build_grid(cfg.sweep, cfg.sampler, cfg.guidance))
    return [s for s in STAGES if (s != "diffusion" or "u" in needs)
            and (s != "cond_diffusion" or needs & {"c", "null"}) and (s != "guide" or x0)
            and (s != "judge2" or cfg.metrics.get("second_judge") is not False)]


def _net(cfg: DictConfig, stage: str) -> dict:
    """The stage's net section; conditioning only where it defines the net (so unconditional stages keep
    the keys they had before conditional models existed)."""
    # the net's precision is the key's own "precision" entry (the one it trains under)
    net = {k: v for k, v in plain(cfg[STAGES[stage][1]]).items() if k != "precision"}
    if stage == "cond_diffusion":
        return {**net, "cond": True}
    # seed_offset only where set (the guide), so the other stages keep the keys they had before it existed
    # likewise lr_decay only when not constant
    return {k: v for k, v in net.items() if k not in ("cond", "p_uncond") and not (k == "seed_offset" and v == 0)
            and not (k == "lr_decay" and v == "constant")}


def stage_key(cfg: DictConfig, stage: str) -> dict:
    """The settings that define a stage's checkpoint; anything else (logging, progress) may change freely."""
    task, _, uses_schedule = STAGES[stage]
    key = {"task": task, "seed": cfg.seed, "data": plain(cfg.data), "net": _net(cfg, stage),
           "precision": net_precision(cfg[STAGES[stage][1]], cfg.trainer)}
    if uses_schedule:
        key["diffusion"] = plain(cfg.diffusion)
    return key


def stage_config(cfg: DictConfig, stage: str, folder: Path) -> DictConfig:
    parts = {k: plain(cfg[k]) for k in ("seed", "tags", "num_threads", "data", "diffusion", "model", "classifier",
                                        "judge", "guide", "judge2", "trainer", "logger", "callbacks")}
    parts["model"]["cond"] = stage == "cond_diffusion"
    parts.update(task=STAGES[stage][0], resume=True,
                 paths={"output_dir": str(folder), "ckpt_dir": str(folder / "checkpoints")})
    parts["logger"]["group"] = parts["logger"]["group"] or f"pipeline-{cfg.name}"
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), parts)


def check_stages(cfg: DictConfig, out: Path) -> None:
    """Every stage's settings, before any stage trains: a bad value never leaves a half-made stage."""
    from ..train import check_train

    if cfg.trainer.fast_dev_run:
        raise ValueError("trainer.fast_dev_run=true trains one batch and writes no checkpoint, so the pipeline "
                         "cannot go on; for a quick whole run use debug=default (or cguide.train for a smoke test)")
    for stage in stages(cfg):
        check_train(stage_config(cfg, stage, out / stage))
        read_marker(out, stage)  # a damaged marker stops the run here, not after the stages before it trained


def _files(out: Path, stage: str) -> tuple[Path, Path]:
    """(the stage's final checkpoint, its marker: the settings it was trained with)."""
    return out / stage / "checkpoints" / f"{STAGES[stage][0]}.ckpt", out / stage / "stage.json"


def read_marker(out: Path, stage: str) -> dict | None:
    """The settings the stage's folder was trained with (None: no marker yet); a damaged marker is one line
    naming the file."""
    marker = _files(out, stage)[1]
    if not marker.is_file():
        return None
    try:
        old = json.loads(marker.read_bytes())
        why = None if isinstance(old, dict) else f"a JSON {type(old).__name__}, not a mapping of settings"
    except ValueError as e:  # JSONDecodeError, or not UTF-8
        why = " ".join(str(e).split())[:120]
    if why:
        raise ValueError(f"{marker} is damaged ({why}); it records the settings the {stage} stage was trained with: "
                         "delete it and run the same command again (the stage resumes from its checkpoints, or is "
                         "trained again)")
    return old


def stage_done(cfg: DictConfig, stage: str, out: Path) -> bool:
    """A finished checkpoint with the same defining settings is there, so run_stage will reuse it."""
    final = _files(out, stage)[0]
    try:
        return final.is_file() and read_marker(out, stage) == stage_key(cfg, stage)
    except (OSError, ValueError):  # an unreadable marker: run_stage says what it finds
        return False


def run_stage(cfg: DictConfig, stage: str, out: Path, callbacks=()) -> Path:
    """Train one network unless a finished checkpoint with the same defining settings exists."""
    from ..train import train

    folder = out / stage
    final, marker = _files(out, stage)
    key = stage_key(cfg, stage)
    old = read_marker(out, stage)
    if old is not None and old != key:
        changed = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
        print(f"[{stage}] settings changed ({', '.join(changed)}): retraining; previous run kept in "
              f"{move_aside(folder)}")
    elif old is not None and final.is_file():
        print(f"[{stage}] settings unchanged: reusing {final}")
        return final
    elif old is not None:
        print(f"[{stage}] unfinished run found: resuming from {folder / 'checkpoints' / 'last.ckpt'}")
    else:
        print(f"[{stage}] no checkpoint yet: training")
    atomic_write_text(marker, json.dumps(key, indent=1, sort_keys=True))
    t0 = time.perf_counter()
    # the stage folder's lock: a killed run's helper may hold it for the rest of its step (it ends with its run)
    path = train(stage_config(cfg, stage, folder), callbacks, lock_wait_s=STAGE_LOCK_WAIT_S).checkpoint
    print(f"[{stage}] trained in {time.perf_counter() - t0:.0f} s: {path}")
    return path
