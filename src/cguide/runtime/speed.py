"""Speed options of the guided sampling step (plain torch): bf16 or fp16 autocast, channels_last, torch.compile,
and CUDA-graph capture of the whole step (cguide.cuda_graph). Every option is off by default; with all
off the networks run exactly as before (eager fp32)."""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SpeedOptions:
    bf16: bool = False  # autocast the networks to bfloat16 (samples move beyond fp32 rounding)
    fp16: bool = False  # autocast to float16 on a GPU: guided-diffusion's use_fp16 / classifier_use_fp16
    channels_last: bool = False  # NHWC layout for the convolutions (same numbers up to fp32 rounding)
    compile: bool = False  # torch.compile the networks (first call compiles: tens of seconds)
    cuda_graph: bool = False  # capture the whole guided step once per batch and replay it (CUDA only)

    @classmethod
    def from_config(cls, cfg) -> "SpeedOptions":
        """From a config node / dict / None (None: all off)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, SpeedOptions):
            return cfg
        d = dict(cfg)
        unknown = set(d) - set(asdict(cls()))
        if unknown:
            raise ValueError(f"unknown speed option(s) {sorted(unknown)}; known: {', '.join(asdict(cls()))}")
        return cls(**{k: bool(v) for k, v in d.items()})

    def check(self, device: torch.device) -> None:
        if self.fp16 and self.bf16:
            raise ValueError("speed.fp16 and speed.bf16 are both on; pick one half precision")
        if self.fp16 and device.type != "cuda":
            raise ValueError(f"speed.fp16 needs a CUDA device (fp16 autocast is a GPU path), the sampler runs on "
                             f"{device.type}; use speed.bf16=true here, or device=cuda on a GPU machine")
        if self.cuda_graph and device.type != "cuda":
            raise ValueError(f"speed.cuda_graph needs a CUDA device, the sampler runs on {device.type}; "
                             "drop speed.cuda_graph (or set device=cuda on a GPU machine)")

    @property
    def label(self) -> str:
        on = [k for k, v in asdict(self).items() if v]
        return "+".join(on) or "eager"


def check_num_threads(n) -> None:
    """torch's intra-op thread count on CPU: >= 1, or None for torch's default."""
    if n is not None and n < 1:
        raise ValueError(f"num_threads must be >= 1 or null (torch's default), got {n}")
    if n is not None and n > 2**31 - 1:  # torch's own refusal would be "Overflow when unpacking long"
        raise ValueError(f"num_threads={n} is more than torch takes (2**31 - 1); use about the number of CPU cores")


def apply_num_threads(n) -> None:
    """torch's intra-op threads on CPU (None keeps torch's default), checked first."""
    check_num_threads(n)
    if n:
        torch.set_num_threads(n)


class FastNet(nn.Module):
    """net(x, *args) (eps-model and noisy classifier: x, t[, y]; the clean guide: x alone) under the layout
    and autocast options; returns x's dtype (fp32 eps and logits).

    Autocast's weight cache is off: a cached cast made during a CUDA-graph capture would be freed
    memory at replay (PyTorch's documented rule for autocast + graphs)."""

    def __init__(self, net: nn.Module, device_type: str, bf16: bool, channels_last: bool, fp16: bool = False):
        super().__init__()
        self.net, self.device_type, self.bf16, self.channels_last = net, device_type, bf16, channels_last
        self.half = torch.float16 if fp16 else torch.bfloat16 if bf16 else None
        self.num_classes = getattr(net, "num_classes", None) or getattr(getattr(net, "cfg", None), "num_classes", None)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=self.half or torch.bfloat16, enabled=self.half is not None,
                            cache_enabled=False):
            out = self.net(x, *args)
        return out.to(x.dtype)


# One wrapper per (network, options, device): torch.compile guards on the module object, so a new
# wrapper per sweep call would compile again.
_FAST: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def fast_net(net: nn.Module, opts: SpeedOptions, device: torch.device) -> nn.Module:
    """``net`` on ``device`` with the options applied; the plain net when all options are off."""
    opts.check(device)
    net = net.to(device)
    if not (opts.bf16 or opts.fp16 or opts.channels_last or opts.compile):
        return net
    key = (opts.bf16, opts.fp16, opts.channels_last, opts.compile, str(device))
    cache = _FAST.setdefault(net, {})
    if key not in cache:
        if opts.channels_last:
            net.to(memory_format=torch.channels_last)
        wrapped = FastNet(net, device.type, opts.bf16, opts.channels_last, opts.fp16)
        cache[key] = torch.compile(wrapped) if opts.compile else wrapped
    return cache[key]
