"""The second judge's network (#26 item 6): a plain VGG-style CNN with the judge's interface, and unlike it."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from cguide.nets import JudgeCNN, JudgeCNNConfig, build_judge, build_judge_cnn


def test_shapes_and_features():
    net = build_judge_cnn("tiny", 3, 16, 7).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert net(x).shape == (4, 7)
    assert net.features(x).shape == (4, net.feature_dim) and net.feature_dim == 32
    assert build_judge_cnn("small", 1, 16, 10).feature_dim == 128
    assert build_judge_cnn("small", 1, 8, 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_another_architecture_than_the_judge():
    """No BatchNorm and no residual path: max pools, GroupNorm, SiLU (the judge is a BatchNorm ResNet)."""
    net, judge = build_judge_cnn("small", 1, 16, 10), build_judge("small", 1, 16, 10)
    kinds = {type(m) for m in net.modules()}
    assert nn.BatchNorm2d not in kinds and {nn.MaxPool2d, nn.GroupNorm, nn.SiLU} <= kinds
    assert nn.BatchNorm2d in {type(m) for m in judge.modules()}
    # comparable in size: a few hundred thousand parameters, within a factor of 3 of the judge's small
    n, nj = (sum(p.numel() for p in m.parameters()) for m in (net, judge))
    assert nj / 3 < n < nj * 3


def test_bad_input_is_one_clear_error():
    net = build_judge_cnn("tiny", 1, 8, 10)
    with pytest.raises(ValueError, match=r"JudgeCNN: expected x of shape \[B, 1, 8, 8\], got \[2, 3, 8, 8\]"):
        net(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"JudgeCNN: expected x of shape \[B, 1, 8, 8\], got \[1, 8, 8\]"):
        net.features(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="image_size=10 is not divisible by the downsampling factor 4"):
        JudgeCNNConfig(image_size=10, in_channels=1, num_classes=10)
    with pytest.raises(ValueError, match="num_classes=1"):
        JudgeCNNConfig(image_size=8, in_channels=1, num_classes=1)
    with pytest.raises(ValueError, match="unknown keys"):
        JudgeCNNConfig.from_dict({**JudgeCNNConfig(8, 1, 10).to_dict(), "blocks_per_stage": 2})


def test_round_trip_through_weights_only_checkpoint():
    torch.manual_seed(0)
    net = build_judge_cnn("tiny", 1, 8, 4).eval()
    buf = io.BytesIO()
    torch.save({"config": net.cfg.to_dict(), "state_dict": net.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    torch.manual_seed(1)
    net2 = JudgeCNN(JudgeCNNConfig.from_dict(ckpt["config"])).eval()
    net2.load_state_dict(ckpt["state_dict"])
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(net2(x), net(x), atol=0, rtol=0)
