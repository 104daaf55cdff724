"""The guidance signal g = grad_{x_t} log p_phi(y | x_t, t)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classifier_log_prob_grad(classifier, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
    """Return (g, log p(y | x_t, t)) for each sample.

    x_t is detached, so no graph reaches the sampler or the eps-model; summing the per-sample
    log-probs gives each sample its own gradient because the classifier treats samples independently
    (eval mode, per-sample normalisation)."""
    x = x_t.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = classifier(x, t)
        if logits.dtype in (torch.float16, torch.bfloat16):  # softmax in fp32 under autocast
            logits = logits.float()
        logp = F.log_softmax(logits, dim=-1).gather(1, y.view(-1, 1)).squeeze(1)
        (g,) = torch.autograd.grad(logp.sum(), x)
    return g, logp.detach()
