"""The Trainer's checkpoint writer: atomic, so a crash mid-write leaves the previous checkpoint intact
(Lightning's own save stages in the system temp dir and may fall back to a non-atomic copy)."""

from __future__ import annotations

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ..io.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint the Trainer writes (last.ckpt, top-k, the final one) goes to a temp file beside
    its target and is renamed over it."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
