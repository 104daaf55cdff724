"""torch.load for files from anywhere: weights_only=True always, and a file that holds code told apart from a
damaged one (torch raises UnpicklingError for both)."""

from __future__ import annotations

import os
import pickle

import torch


class UnsafeFile(ValueError):
    """The file names Python globals (functions, classes) to call when unpickled: it could run code."""


def torch_load_plain(path: str | os.PathLike):
    """The file's tensors and containers; UnsafeFile when it would call code; other errors as torch raises them."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), None)
        if why is None:
            raise
        raise UnsafeFile(why.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")) from None
