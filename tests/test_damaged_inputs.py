"""Damaged inputs refused before the work they would spoil (issue #28): a checkpoint whose net_config was edited to
a huge net is refused before any of it is allocated (the catalogue in README.md holds the one-line cases)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_a_net_config_edited_to_a_huge_net_is_refused_before_allocating_it(tiny_ckpts, tmp_path):
    """model_channels=65536 in the metadata described a 68 GB net, built before its weights were compared (under an
    address-space limit: a MemoryError traceback; without one, the machine's memory). Now the net is laid out on the
    meta device first, and the weights that do not fit it are one line."""
    ckpt = torch.load(tiny_ckpts["eps_model"], weights_only=True)
    ckpt["cguide"]["net_config"]["model_channels"] = 65536
    bad = tmp_path / "eps.ckpt"
    torch.save(ckpt, bad)
    limit = 8 << 30  # torch itself maps ~4 GB of address space; any layer of the huge net is more than the rest
    proc = subprocess.run([sys.executable, "-m", "cguide.sample", f"eps_ckpt={bad}", "sampler.steps=2",
                           "n_per_class=1", "progress=false", f"out_dir={tmp_path / 'out'}"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith(f"error: checkpoint {bad}: its weights do not fit its net_config (") and \
        lines[-1].endswith("the file is damaged or edited: retrain it, or point to another file"), lines[-1]
