"""What the Hydra entry points share: where conf/ is, the config tree printed and saved at start,
mandatory keys, and bad input reported as one line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from .io.atomic import atomic_write_text
from .io.folders import check_creatable, write_error_line
from .io.signals import stop_on_signals
from .runtime.distributed import ERRORS, is_main
from .runtime.speed import apply_num_threads, check_num_threads  # noqa: F401 (entry points import them from here)

# Absolute: entry points also work when imported (tests), not only under `python -m`.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
TREE_FILE = "config_tree.log"


def run_or_exit(fn: Callable, *args):
    """Call fn; a bad input becomes `error: <one line>` on stderr and exit code 2, not a traceback. SIGINT and
    SIGTERM stop it (training at the end of a step, after saving last.ckpt) with one line and exit code 128 +
    the signal (130, 143): what was finished is kept, and the same command goes on from there."""
    try:
        with stop_on_signals():
            return fn(*args)
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a write that failed: disk full, read-only, a name too long ...
        line = write_error_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # Stopped too (SIGTERM)
        sys.stdout.flush()
        signum = getattr(e, "signum", signal.SIGINT)
        note = getattr(e, "note", "") or "what was finished is kept (every file is written whole); run the same " \
            "command again to go on from there"
        print(f"interrupted by {signal.Signals(signum).name}: {note}", file=sys.stderr)
        sys.exit(128 + signum)


OUTPUT_KEYS = ("out_dir", "paths.output_dir", "hydra.run.dir", "hydra.sweep.dir")


def check_output_args(argv: Sequence[str], default_key: str) -> None:
    """Before Hydra makes its run folder (a traceback when it cannot): every output folder given on the command
    line, and when the run folder would be the default under the working directory (no ``default_key`` given:
    out_dir for sweep and pipeline, hydra.run.dir for train), that directory: not a file, not read-only, no name
    over 255 bytes. One line (exit 2) instead; nothing is created."""
    given = dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    checks = [(given[k], k) for k in OUTPUT_KEYS if given.get(k) and "${" not in given[k]]
    if not any(given.get(k) for k in (default_key, "hydra.run.dir")):
        checks.append(("outputs", f"{default_key} (the default folder is under the working directory {Path.cwd()})"))
    for folder, key in checks:
        run_or_exit(check_creatable, folder, key)


def require(cfg, *keys: str) -> None:
    """One line naming each unset mandatory key (OmegaConf's own error is a multi-line traceback)."""
    missing = [k for k in keys if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ValueError(f"missing setting(s): {', '.join(missing)}; pass them, e.g. "
                         + " ".join(f"{k}=<path>" for k in missing))


INT64 = (-(2**63), 2**63 - 1)


def check_int64(cfg) -> None:
    """Every integer in the config fits torch's int64 (seeds, counts, class indices): a larger one would stop
    deep inside torch (an overflow traceback, or after the results folder is claimed), so it is refused first."""
    def walk(node, key):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, int) and not isinstance(node, bool) and not INT64[0] <= node <= INT64[1]:
            raise ValueError(f"{key}: {node} does not fit a 64-bit integer; use a value in [-2**63, 2**63 - 1]")

    walk(OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg, "")


def print_config_tree(cfg: DictConfig, first: Sequence[str] = ()) -> None:
    """The composed config as a rich tree on stdout (sections in `first` on top), and resolved as YAML
    in Hydra's folder of this run (<run dir>/config_tree.log). A value that cannot resolve yet (a
    missing mandatory key) is shown as written; the run then stops with its own one-line error."""
    if not is_main():
        return
    from hydra.core.hydra_config import HydraConfig
    from rich import print as rprint
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    keys = [k for k in first if k in cfg] + [k for k in cfg if k not in first]
    text = []
    for key in keys:
        node = cfg[key] if not OmegaConf.is_missing(cfg, key) else "???"
        try:
            body = OmegaConf.to_yaml(node, resolve=True) if OmegaConf.is_config(node) else f"{node}\n"
        except Exception:  # noqa: BLE001 -- unresolvable interpolation: show it unresolved
            body = OmegaConf.to_yaml(node) if OmegaConf.is_config(node) else f"{node}\n"
        tree.add(str(key), style="bold").add(Syntax(body, "yaml", theme="ansi_dark"))
        text.append(f"{key}:\n" + "".join(f"  {line}\n" for line in body.splitlines()))
    rprint(tree)
    if HydraConfig.initialized():
        atomic_write_text(Path(HydraConfig.get().runtime.output_dir) / TREE_FILE, "".join(text))
