"""Feature extractors for torch-fidelity: the judge (offline default) and Inception-v3 (local weights only).

torch-fidelity feeds extractors uint8 images [N, 3, H, W] in 0..255. The judge wrapper maps them back
to the judge's [-1, 1] range and channel count. torch-fidelity instantiates registered extractors as
``cls(name, features_list, **calculate_metrics_kwargs)``, so the in-memory judge travels as the
``judge=`` kwarg: ``torch_fidelity.calculate_metrics(..., feature_extractor="cguide-judge", judge=net)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Mapping

import torch
from torch import nn
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.helpers import vassert
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ..io.safe_load import UnsafeFile, torch_load_plain

JUDGE_EXTRACTOR = "cguide-judge"
INCEPTION_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's own registered name
# The file name torch.hub would give the download: found in <hub dir>/checkpoints/ if fetched earlier.
INCEPTION_WEIGHTS_FILE = os.path.basename(URL_INCEPTION_V3)
INCEPTION_CONFIG_KEY = "metrics.inception_weights"
EXTRACTOR_NAMES = ("judge", "inception")


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float [N, C, H, W] -> uint8 [N, 3, H, W], the input format torch-fidelity extractors expect;
    uint8 images (a reference batch's) pass as they are."""
    u8 = x if x.dtype == torch.uint8 else ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1).contiguous() if u8.shape[1] == 1 else u8


def module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Evaluate in eval mode (BatchNorm/dropout) and give the module back in the mode it came in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def infer_in_channels(judge: nn.Module) -> int:
    for owner in (judge, getattr(judge, "cfg", None)):
        c = getattr(owner, "in_channels", None)
        if isinstance(c, int):
            return c
    conv = next((m for m in judge.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def module_fingerprint(module: nn.Module) -> str:
    """Short hash of class name + state_dict: a judge's identity for the real-stats cache key."""
    h = hashlib.sha1(type(module).__name__.encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


class JudgeFeatureExtractor(FeatureExtractorBase):
    """Provides 'features' (judge.features, FID/KID/PRC) and 'logits' (judge.forward, IS)."""

    def __init__(self, name, features_list, judge: nn.Module | None = None,
                 judge_in_channels: int | None = None, **kwargs):
        super().__init__(name, features_list)
        vassert(isinstance(judge, nn.Module), f'Feature extractor "{name}" needs judge=<nn.Module> '
                                              "(a calculate_metrics kwarg)")
        # Tuple, not attribute: a registered submodule would be moved / frozen / eval'ed in place by
        # torch-fidelity's create_feature_extractor (.cuda(), requires_grad_(False)).
        self._judge = (judge,)
        self.in_channels = judge_in_channels or infer_in_channels(judge)

    @property
    def judge(self) -> nn.Module:
        return self._judge[0]

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, x):
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting image as torch.Tensor with dtype=torch.uint8")
        vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {tuple(x.shape)}")
        judge = self.judge
        x = x.to(module_device(judge), torch.float32) / 127.5 - 1.0
        if self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)  # exact: grey images were replicated to 3 channels
        out = {}
        with eval_mode(judge), torch.no_grad():
            if "features" in self.features_list:
                out["features"] = judge.features(x).flatten(1).float()
            if "logits" in self.features_list:
                out["logits"] = judge(x).float()
        return tuple(out[n] for n in self.features_list)


if JUDGE_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:  # module reloads must not re-register
    register_feature_extractor(JUDGE_EXTRACTOR, JudgeFeatureExtractor)


def inception_weights_path(configured: str | None = None) -> str:
    """The local Inception weights file, or FileNotFoundError naming where to put it. Never downloads."""
    path = configured or os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception-v3 weights not found at {path}: put {INCEPTION_WEIGHTS_FILE} there or set "
            f"{INCEPTION_CONFIG_KEY}=<path> (no download is attempted offline), or use the 'judge' extractor")
    return path


def load_inception_state(path: str) -> dict[str, torch.Tensor]:
    """The weights file as a {name: tensor} dict, unpickled with weights_only=True: torch-fidelity's own
    loader uses weights_only=False, so a crafted file would run code; here it is refused with one line."""
    try:
        state = torch_load_plain(path)
    except UnsafeFile as e:
        raise ValueError(
            f"Inception-v3 weights {path} hold Python objects other than tensors, and unpickling them could run "
            f"code: refused ({e}). Use torch-fidelity's published "
            f"{INCEPTION_WEIGHTS_FILE} (a plain state dict), or the 'judge' extractor") from None
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, unreadable: one line naming the file
        detail = ": ".join([type(e).__name__, *str(e).strip().splitlines()[:1]])[:200]
        raise ValueError(f"Inception-v3 weights {path} are not a readable torch weights file ({detail}); put "
                         f"{INCEPTION_WEIGHTS_FILE} at {INCEPTION_CONFIG_KEY}=<path>") from None
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        keys = sorted(map(str, state))[:5] if isinstance(state, Mapping) else []
        what = f"a {type(state).__name__}" + (f" with keys {', '.join(keys)}" if keys else "")
        raise ValueError(f"Inception-v3 weights {path} are {what}, not a state dict of tensors (a training "
                         f"checkpoint, e.g. the judge's, is not Inception weights); put {INCEPTION_WEIGHTS_FILE} "
                         f"at {INCEPTION_CONFIG_KEY}=<path>, or use the 'judge' extractor")
    return dict(state)


_CHECKED: dict[tuple, None] = {}


def check_inception_weights(configured: str | None = None) -> str:
    """The weights path after a safe load (once per file version): missing or unsafe files fail before any work."""
    path = inception_weights_path(configured)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _CHECKED:
        load_inception_state(path)
        _CHECKED[key] = None
    return path


def build_extractor(name: str, judge: nn.Module | None = None, inception_weights: str | None = None, *,
                    in_channels: int | None = None) -> FeatureExtractorBase:
    """'judge' -> JudgeFeatureExtractor over `judge`; 'inception' -> torch-fidelity Inception-v3 from local weights.

    Both request every layer the suite uses (FID/KID/PRC features + IS logits).
    """
    if name == "judge":
        if judge is None:
            raise ValueError("extractor 'judge' needs judge=<nn.Module>")
        return JudgeFeatureExtractor(JUDGE_EXTRACTOR, ["features", "logits"], judge=judge,
                                     judge_in_channels=in_channels)
    if name == "inception":
        path = inception_weights_path(inception_weights)
        # torch-fidelity unpickles its weights path with weights_only=False: it gets tensors we loaded safely,
        # re-serialised in memory (an explicit source also keeps it from calling load_state_dict_from_url)
        buf = io.BytesIO()
        torch.save(load_inception_state(path), buf)
        buf.seek(0)
        try:
            return FeatureExtractorInceptionV3(INCEPTION_EXTRACTOR, ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=buf, verbose=False)
        except RuntimeError as e:  # load_state_dict: other keys or shapes
            raise ValueError(f"{path} is not Inception-v3 weights for torch-fidelity "
                             f"({str(e).splitlines()[0][:200]}); put {INCEPTION_WEIGHTS_FILE} at "
                             f"{INCEPTION_CONFIG_KEY}=<path>, or use the 'judge' extractor") from None
    raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(EXTRACTOR_NAMES)}")


def extractor_id(name: str, judge: nn.Module | None = None) -> str:
    """Cache identity of an extractor: Inception is fixed; a judge is identified by its weights."""
    return INCEPTION_EXTRACTOR if name == "inception" else f"judge-{module_fingerprint(judge)}"
