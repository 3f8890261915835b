"""Top-k routers over the same expert blocks: the two ablations LTE is compared with.

- **Noisy top-k softmax** (Shazeer et al. 2017), trained jointly with the model: logits
  ``x W_g`` plus, in training, Gaussian noise of std ``softplus(x W_n)``; the top k experts
  run, each scaled by its softmax weight over the k (weights sum to 1), plus Shazeer's
  importance loss (squared coefficient of variation of the experts' summed gates) as the
  selector's ``aux_loss``. Both matrices start at zero, as in the paper. This is the
  "softmax routing" failure case that motivates LTE's sigmoid routers (LTE_SPEC section 5).
- **Random frozen routers** with a fixed top-k (the LTE paper's Fig. 12 ablation): a random
  linear router per layer (a buffer, never trained), the top k experts run unscaled, and
  the model adapts to it (``lte.baselines.adapt``).

k = round((1 - target) * E) experts per token and layer: the sparsity is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LTEConfig
from ..ffn import LTEFFN, Selection
from .base import Selector, attach, keep_count, topk_mask


class NoisyTopKSelector(Selector):
    """Shazeer-style noisy top-k softmax gating over expert blocks (trainable)."""

    trainable = True

    def __init__(self, hidden: int, n_experts: int, k: int, noise_eps: float = 1e-2) -> None:
        super().__init__()
        self.k = int(k)
        self.noise_eps = noise_eps
        self.w_gate = nn.Parameter(torch.zeros(n_experts, hidden))
        self.w_noise = nn.Parameter(torch.zeros(n_experts, hidden))
        self.aux_loss: torch.Tensor | None = None

    def select(self, ffn: LTEFFN, x: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> Selection:
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            logits = xf @ self.w_gate.t()
            if self.training:
                std = F.softplus(xf @ self.w_noise.t()) + self.noise_eps
                logits = logits + torch.randn_like(logits) * std
            top_v, top_i = logits.topk(self.k, dim=-1)
            gates = torch.zeros_like(logits).scatter(-1, top_i, torch.softmax(top_v, dim=-1))
        if self.training:
            m = ffn.state.mask_for(x)
            g = gates[m] if m is not None else gates.reshape(-1, gates.shape[-1])
            imp = g.sum(0)
            self.aux_loss = imp.var() / imp.mean().square().clamp_min(1e-10)
        else:
            self.aux_loss = None
        return Selection(block=gates)

    def predictor_flops(self, ffn: LTEFFN) -> float:
        return 2.0 * self.w_gate.numel()  # the noise branch runs only in training


class RandomRouterSelector(Selector):
    """A frozen random linear router; top-k experts, unscaled."""

    def __init__(self, hidden: int, n_experts: int, k: int, seed: int = 0) -> None:
        super().__init__()
        self.k = int(k)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(n_experts, hidden, generator=g) / math.sqrt(hidden))

    def select(self, ffn: LTEFFN, x: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> Selection:
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = x.detach().float() @ self.weight.t()
        return Selection(block=topk_mask(logits, self.k))

    def predictor_flops(self, ffn: LTEFFN) -> float:
        return 2.0 * self.weight.numel()


def apply_noisy_topk(model: nn.Module, target_sparsity: float, *, cfg: LTEConfig | None = None) -> nn.Module:
    """Attach noisy top-k softmax routers (to be trained jointly with the model by
    ``lte.baselines.adapt(..., aux_weight=...)``). In place; hard mode."""
    return _attach_topk(model, target_sparsity, cfg,
                        lambda layer, k: NoisyTopKSelector(layer.up.shape[1], layer.n_experts, k))


def apply_random_router(model: nn.Module, target_sparsity: float, *, seed: int = 0,
                        cfg: LTEConfig | None = None) -> nn.Module:
    """Attach frozen random top-k routers (the model is then adapted with ``adapt``)."""
    return _attach_topk(model, target_sparsity, cfg,
                        lambda layer, k: RandomRouterSelector(layer.up.shape[1], layer.n_experts, k,
                                                              seed=seed * 1000 + layer.layer))


def _attach_topk(model, target_sparsity, cfg, make):
    attach(model, lambda layer: make(layer, keep_count(layer.n_experts, target_sparsity)), cfg)
    return model


__all__ = ["NoisyTopKSelector", "RandomRouterSelector", "apply_noisy_topk", "apply_random_router", "topk_mask"]
