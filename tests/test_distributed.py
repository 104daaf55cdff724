"""Distributed sampling: contiguous shares, gathered in rank order, are exactly the one-process draw;
errors of a rank reach the parent as one line; and (slow) DDP training on 2 CPU processes and a sweep
on 2 gloo processes whose rows equal the one-process rows."""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers.config import TINY, compose_cfg
from helpers.nets import tiny_pair


def _draw(fn):
    """fn (runtime.draw's draw or draw_sharded) on the tiny nets: 7 samples at mixed scales, DDPM 5 steps, batches
    of 2 on the CPU."""
    from cguide.diffusion import SamplerSpec
    from cguide.guidance import GuidanceSpec
    from cguide.runtime.draw import Models, RunOptions

    eps, clf = tiny_pair()
    spec = GuidanceSpec.of(torch.arange(7) % 10, torch.tensor([0.0, 1.0, 2.0, 0.0, 4.0, 1.0, 3.0]))
    return fn(Models(eps, classifier=clf), spec, SamplerSpec("ddpm", steps=5), list(range(100, 107)),
              RunOptions(batch_size=2, device="cpu", progress=False))


def test_shards_are_contiguous_disjoint_and_cover(monkeypatch):
    import cguide.runtime.distributed as d

    for n, world in [(7, 2), (10, 3), (2, 4)]:
        parts = []
        for rank in range(world):
            monkeypatch.setattr(d, "rank_world", lambda r=rank: (r, world))
            parts.append(d.shard(n))
        idx = [i for sl in parts for i in range(n)[sl]]
        assert idx == list(range(n)), (n, world, parts)
        assert max(len(range(n)[sl]) for sl in parts) - min(len(range(n)[sl]) for sl in parts) <= 1


def _draw_on_ranks():
    from cguide.runtime.distributed import rank_world
    from cguide.runtime.draw import draw_sharded

    torch.set_num_threads(1)
    x, bad = _draw(draw_sharded)
    return x, bad, rank_world()


def _fail_on_rank_1():
    from cguide.runtime.distributed import rank_world

    if rank_world()[0] == 1:
        raise ValueError("sweep.scales is empty on rank 1")
    return "ok"


def test_two_gloo_ranks_draw_exactly_the_one_process_samples():
    from cguide.runtime.distributed import spawn
    from cguide.runtime.draw import draw

    x, bad, (rank, world) = spawn(_draw_on_ranks, 2)
    assert (rank, world) == (0, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: kernels split their work by thread count
    try:
        ref, ref_bad = _draw(draw)
    finally:
        torch.set_num_threads(threads)
    assert x.shape == ref.shape == (7, 1, 8, 8)
    # Bitwise: the same computation. Rank 0 draws samples 0-3 and rank 1 samples 4-6, in batches of 2 (_draw),
    # so each batch holds the same samples as one process's batches [0, 1], [2, 3], [4, 5], [6], on one thread.
    assert torch.equal(x, ref)
    assert torch.equal(bad, ref_bad)
    with pytest.raises(ValueError, match=r"^sweep.scales is empty on rank 1$"):
        spawn(_fail_on_rank_1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("task,kind,precision", [("diffusion", "eps_model", "32-true"),
                                                 ("classifier", "noisy_classifier", "bf16-mixed"),
                                                 ("judge", "judge", "32-true")])
def test_ddp_cpu_training_two_processes(task, kind, precision, tmp_path):
    from cguide.io.checkpoints import load_net
    from cguide.train import train

    cfg = compose_cfg("train", [f"task={task}", *TINY, "trainer=ddp_cpu", "num_threads=1",
                                f"trainer.precision={precision}"], tmp_path)
    ckpt = train(cfg).checkpoint
    loaded = load_net(ckpt, kind)
    assert loaded.image_shape == (1, 8, 8)
    if task == "judge":  # measured after fit, over both ranks' shares of the test split
        assert 0 <= loaded.extra["test_acc"] <= 1
    state = torch.load(ckpt, weights_only=True)
    # the final checkpoint holds the trained state, not the launching process's untrained step count
    assert state["global_step"] == 6 and state["optimizer_states"]


@pytest.mark.slow
def test_sweep_on_two_processes_equals_one_process(tiny_ckpts, tmp_path):
    ckpts = [f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={tiny_ckpts['noisy_classifier']}",
             f"judge_ckpt={tiny_ckpts['judge']}"]
    common = [*ckpts, "data.image_size=8", "sampler.steps=4", "sweep.n_per_point=21", "sweep.batch_size=8",
              "sweep.scales=[0,2]", "sweep.variants=[score,unit]", "metrics.names=[fid,accuracy,guide_confidence]",
              "progress=false", "num_threads=1", "logger=none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = {}
    for name, extra in [("one", []), ("two", ["distributed.devices=2"])]:
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "cguide.sweep", *common, *extra, f"out_dir={out}"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("results:") == 1  # rank 0 alone reports
        rows[name] = {r["point"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(rows["one"]) == set(rows["two"]) and len(rows["one"]) == 4
    for key, one in rows["one"].items():
        two = rows["two"][key]
        for metric in ("fid_judge", "fid_judge_lo", "accuracy", "guide_confidence", "grad_nonfinite_share", "n"):
            assert two[metric] == pytest.approx(one[metric], rel=1e-6, abs=1e-9), (key, metric)
