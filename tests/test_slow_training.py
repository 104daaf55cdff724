"""Slow (minutes): real training runs on mnist5k at 16x16 that check what the logs must show.

    make test-slow
"""

import csv

import pytest

from helpers.config import compose_cfg

pytestmark = pytest.mark.slow

BASE = ["logger=csv", "trainer.enable_progress_bar=false", "callbacks.sample_grid.every_n_steps=0", "callbacks.sample_grid.n=0"]


def _last_epoch_metrics(out_dir):
    rows = list(csv.DictReader(open(next(out_dir.rglob("metrics.csv")))))
    merged = {}
    for row in rows:  # later rows win; each row holds some of the keys
        merged.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return merged


def test_noisy_classifier_accuracy_decays_with_noise(tmp_path):
    """Clean-end quartile far above chance (0.1), noisy-end quartile near chance."""
    from cguide.train import train

    train(compose_cfg("train", ["task=classifier", *BASE, "classifier.max_steps=400"], tmp_path))
    m = _last_epoch_metrics(tmp_path)
    assert m["val/acc_q1"] > 0.8, m
    assert m["val/acc_q4"] < 0.25, m
    assert m["val/acc_q1"] > m["val/acc_q2"] > m["val/acc_q4"]


def test_judge_reaches_97_percent_on_mnist5k_test_split(tmp_path):
    from cguide.io.checkpoints import load_net
    from cguide.train import train

    path = train(compose_cfg("train", ["task=judge", *BASE], tmp_path)).checkpoint
    acc = load_net(path, "judge").extra["test_acc"]
    assert acc >= 0.97, acc
