"""The metric suite: one call from final samples to a flat dict of floats.

Which keys each metric gives, and how: its registered entry (registry.py; the built-in ones in definitions.py).
With a second judge (judge2=, unless settings.second_judge is False): 'accuracy_judge2' (its accuracy on the
targets) and, with the judge too, 'judge_agreement' (the share of finite samples on which both judges' argmax
agree, whatever the target).

Samples with any non-finite value count towards 'nonfinite' and are dropped before every other
metric; with none left those metrics are NaN. Images reach the feature extractor the way
torch-fidelity takes them (uint8 RGB, so values are clamped to [-1, 1] and quantised); accuracy and
guide_confidence see the float samples as they are. Feature extraction and the metric routines are
torch-fidelity's own (see feature_metrics.py); features are extracted once per call and shared by
FID, KID, IS, PRC and class-wise FID (`Measure` computes each shared input once, when a metric first reads it).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.utils import get_featuresdict_from_dataset

from .bootstrap import PointSamples, RealSet
from .definitions import classwise_fid  # noqa: F401 (re-exported)
from .extractors import build_extractor, eval_mode, extractor_id, module_device, to_uint8_rgb
from .real_stats import content_id, load_or_compute
from .registry import Metric, selected
from .settings import METRIC_NAMES, NO_JUDGE, NO_JUDGE2, MetricSettings  # noqa: F401 (METRIC_NAMES re-exported)

NAN = float("nan")


class _Uint8Images(Dataset):
    """Tensor-backed Dataset of uint8 RGB images: the input torch-fidelity's extraction loop accepts."""

    def __init__(self, x: torch.Tensor):
        self.x = to_uint8_rgb(x.cpu())

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i]


def _extract(extractor, x: torch.Tensor, layers: list[str], batch_size: int,
             device: torch.device) -> dict[str, torch.Tensor]:
    """Only `layers` of the extractor, e.g. no logits for the real split (a second judge pass)."""
    full = extractor.features_list
    extractor.features_list = [name for name in full if name in layers]  # read by forward and torch-fidelity
    try:
        # save_cpu_ram=True -> num_workers=0: workers only cost start-up time on in-memory tensors.
        return get_featuresdict_from_dataset(_Uint8Images(x), extractor, batch_size, cuda=device.type == "cuda",
                                             save_cpu_ram=True, verbose=False)
    finally:
        extractor.features_list = full


@torch.no_grad()
def _batched_logits(fn, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.cat([fn(xb.to(device)).float().cpu() for xb in x.split(batch_size)])


class Measure:
    """What a point's metrics read (definitions.py), each computed once, when a metric first reads it: the finite
    samples `x` and their targets `y` (`n` of them), the judges' argmax (`pred`, `pred2`), the guide's logits, the
    extractor's features and logits of the samples, the real side's statistics (`real_stats`, `real_set`). `per`
    (the caller's keep only) collects the per-sample values behind the numbers."""

    def __init__(self, samples: torch.Tensor, targets: torch.Tensor, settings: MetricSettings, metrics: list[Metric],
                 *, judge, judge2, guide, device, real, real_labels, real_id, fid_stats, keep):
        self.s, self.judge, self.judge2, self.guide, self.keep = settings, judge, judge2, guide, keep
        self.device = torch.device(device) if device is not None else module_device(judge) if judge is not None \
            else torch.device("cpu")
        self.feat_ext = None
        if any(m.features for m in metrics):  # built early: weights gone since settings were checked fail here
            self.feat_ext = build_extractor(settings.extractor, judge, settings.inception_weights,
                                            in_channels=samples.shape[1]).to(self.device)
        self.logits_wanted = any(m.logits for m in metrics)
        self.finite = torch.isfinite(samples.flatten(1)).all(dim=1).cpu()
        self.x, self.y = samples.detach().cpu()[self.finite], targets.detach().cpu().long()[self.finite]
        self.n = self.x.shape[0]
        self.per = PointSamples(targets.detach().cpu().long(), self.finite) if keep is not None else None
        self.real_images, self.real_id, self.fid_stats = real, real_id, fid_stats
        self.real_labels = None if real_labels is None else real_labels.detach().cpu().long()

    def measure(self, metric: Metric) -> dict[str, float]:
        """The metric's keys; a feature metric is NaN when no sample is finite."""
        if metric.features and not self.n:
            return {k: NAN for k in metric.keys}
        return metric.point(self)

    def keep_values(self, name: str, values: torch.Tensor) -> None:
        """Keep a metric's per-sample values of the finite samples (for its replicates: bootstrap.Draws.values),
        when the caller asked for them."""
        if self.per is not None:
            self.per.values[name] = self.full(values)

    def full(self, values: torch.Tensor) -> torch.Tensor:
        """Per-sample values of the finite rows, put back at their rows (zeros at non-finite ones)."""
        out = torch.zeros((self.finite.shape[0], *values.shape[1:]), dtype=values.dtype)
        out[self.finite] = values.cpu()
        return out

    def _argmax(self, net: nn.Module, device: torch.device) -> torch.Tensor:
        if not self.n:
            return torch.zeros(0, dtype=torch.long)
        with eval_mode(net):
            return _batched_logits(net, self.x, self.s.batch_size, device).argmax(1)

    @functools.cached_property
    def pred(self) -> torch.Tensor:
        """The judge's argmax per finite sample."""
        return self._argmax(self.judge, self.device)

    @functools.cached_property
    def pred2(self) -> torch.Tensor:
        """The second judge's argmax per finite sample."""
        return self._argmax(self.judge2, module_device(self.judge2))

    def guide_logits(self) -> torch.Tensor:
        """The guiding classifier's logits at t = 0."""
        gdev = module_device(self.guide)
        with eval_mode(self.guide):
            return _batched_logits(lambda xb: self.guide(xb, torch.zeros(xb.shape[0], dtype=torch.long, device=gdev)),
                                   self.x, self.s.batch_size, gdev)

    @functools.cached_property
    def _layers(self) -> tuple[str, str]:
        """(the layer of FID, KID and PRC, the logits layer of IS)."""
        return (self.feat_ext.get_default_feature_layer_for_metric("fid"),
                self.feat_ext.get_default_feature_layer_for_metric("isc"))

    @functools.cached_property
    def _generated(self) -> dict[str, torch.Tensor]:
        layer, logits_layer = self._layers
        gen = _extract(self.feat_ext, self.x, [layer, logits_layer] if self.logits_wanted else [layer],
                       self.s.batch_size, self.device)
        if self.per is not None:
            self.per.features = self.full(gen[layer])
        return gen

    @property
    def features(self) -> torch.Tensor:
        """The extractor's features of the finite samples [n, D]."""
        return self._generated[self._layers[0]]

    @property
    def logits(self) -> torch.Tensor:
        """The extractor's logits of the finite samples [n, K]."""
        return self._generated[self._layers[1]]

    @functools.cached_property
    def real_stats(self):
        """The real side's features and statistics (cached on disk under settings.real_stats_cache)."""
        layer, s, real, rl = self._layers[0], self.s, self.real_images, self.real_labels
        rs = load_or_compute(lambda: _extract(self.feat_ext, real, [layer], s.batch_size, self.device)[layer], rl,
                             n=real.shape[0], cache_dir=s.real_stats_cache,
                             dataset_id=self.real_id or content_id(real, rl),
                             extractor_id=extractor_id(s.extractor, self.judge), layer=layer)
        self._real_set = RealSet(rs.features, rs.labels, self.fid_stats)
        if self.keep is not None:
            self.keep["real"] = self._real_set
        return rs

    @property
    def real_set(self) -> RealSet:
        """The real side as the bootstrap takes it (its features, labels and a reference batch's statistics)."""
        return self._real_set if self.real_stats is not None else None


def _check_inputs(samples, targets, metrics: list[Metric], s: MetricSettings, judge, judge2, real_labels):
    """The one-line errors before any work: real labels, lengths, the judges the settings need."""
    for metric in metrics:
        if metric.real_labels and real_labels is None:
            raise ValueError(f"{metric.name} needs the real images' labels: real=(images, labels) or real_labels=")
    if samples.shape[0] != targets.shape[0]:
        raise ValueError(f"samples ({samples.shape[0]}) and targets ({targets.shape[0]}) differ in length")
    if judge is None and s.needs_judge:
        raise ValueError(NO_JUDGE)
    if judge2 is None and s.second_judge:
        raise ValueError(NO_JUDGE2)


def compute_metrics(
    samples: torch.Tensor,
    targets: torch.Tensor,
    real: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    *,
    judge: nn.Module | None,
    guide: nn.Module | None = None,
    settings: MetricSettings = MetricSettings(),
    real_labels: torch.Tensor | None = None,
    real_id: str | None = None,
    device: torch.device | str | None = None,
    real_fid_stats: dict | None = None,
    keep: dict | None = None,
    judge2: nn.Module | None = None,
) -> dict[str, float]:
    """Sample-quality metrics of `samples` [N,C,H,W] in [-1,1] with target labels `targets` [N].

    real: held-out real images [M,C,H,W] in [-1,1] (or uint8 [M,3,H,W], as in a reference batch), or
        (images, labels); labels (also `real_labels`) are needed for classwise_fid.
    judge: clean classifier (forward -> logits, features -> [N,D]); accuracy always uses it, and the
        'judge' extractor. None: neither can be asked for.
    real_fid_stats: {'mu', 'sigma'} of the real side for FID instead of the real images' own (a reference
        batch's whole-dataset statistics, as guided-diffusion's evaluator uses them); KID, PRC and
        class-wise FID still use the real images.
    guide: noisy classifier forward(x, t); guide_confidence = mean p(y | x, t=0), NaN without a guide.
    judge2: the second judge (forward -> logits): 'accuracy_judge2', and 'judge_agreement' with the judge; None (or
        settings.second_judge False): neither (settings.second_judge True without it: an error).
    keep: a dict to fill with the per-sample values behind the numbers ('samples': bootstrap.PointSamples,
        'real': bootstrap.RealSet, 'prc_real_rows'), for intervals (intervals.py) without a second extraction.
    settings: which metrics (settings.names) and how; checked when built (settings.MetricSettings: its knobs).
    """
    if isinstance(real, (tuple, list)):
        real, real_labels = real
    if settings.second_judge is False:
        judge2 = None
    metrics = selected(settings.names, judge is not None, judge2 is not None)
    _check_inputs(samples, targets, metrics, settings, judge, judge2, real_labels)
    m = Measure(samples, targets, settings, metrics, judge=judge, judge2=judge2, guide=guide, device=device,
                real=real, real_labels=real_labels, real_id=real_id, fid_stats=real_fid_stats, keep=keep)
    out: dict[str, float] = {}
    for metric in metrics:
        out.update(m.measure(metric))
    if keep is not None:
        keep["samples"] = m.per
    return {k: float(v) for k, v in out.items()}
