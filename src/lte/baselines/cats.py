"""CATS (Lee et al. 2024, "CATS: Contextually-Aware Thresholding for Sparsity in LLMs").

Neuron ``j`` runs only when ``|act(gate(x))_j| > t``; ``t`` is per layer, the target
quantile of ``|act(gate(x))|`` on calibration data (fitted sequentially in one pass). The
gate projection is always computed (it decides), so a kernel saves the up and down
projections of the skipped neurons: GFLOPs count gate dense + up/down at the measured
sparsity. For plain FFNs (GPT-2) the rule applies to ``act(up(x))`` and saves the down
projection. ``ffn_sparsity`` is the fraction of neurons skipped (the paper's metric);
``block_sparsity`` the fraction of 32-neuron kernel blocks with no neuron above the threshold.

Two variants: training-free, and with a short fine-tune with the thresholds in place
(:func:`lte.baselines.base.adapt`), after which the thresholds are fitted again so the
target holds for the adapted model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..config import LTEConfig
from ..ffn import LTEFFN, Selection, kernel_block_active
from .base import Selector, abs_quantile, attach, calibrate


class CATSSelector(Selector):
    """Threshold on the magnitude of the gate activation (see module docstring)."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = float(target)
        self.register_buffer("t", torch.tensor(0.0))

    def select(self, ffn: LTEFFN, x: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> Selection:
        if self.calibrating:
            self.t = abs_quantile(a, self.target, ffn.state.mask_for(x)).to(self.t)
        keep = a.detach().abs() > self.t.to(a.dtype)
        active = keep.float().mean(-1)
        block = kernel_block_active(keep)
        n_mats = 3 if ffn.gate is not None else 2
        flops = (1.0 + (n_mats - 1) * active) / n_mats  # the deciding projection always runs
        return Selection(neuron=keep, active=active, block_active=block, flops=flops)


def apply_cats(model: nn.Module, target_sparsity: float, calibration: Iterable, *,
               cfg: LTEConfig | None = None) -> nn.Module:
    """Make ``model`` CATS-sparse at ``target_sparsity`` (thresholds fitted on
    ``calibration``). In place; hard mode. Fine-tune afterwards with
    ``lte.baselines.adapt`` and call :func:`recalibrate` for the fine-tuned variant."""
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    attach(model, lambda layer: CATSSelector(target_sparsity), cfg)
    calibrate(model, calibration)
    return model


def recalibrate(model: nn.Module, calibration: Iterable) -> nn.Module:
    """Fit the thresholds again (e.g. after fine-tuning with them in place)."""
    calibrate(model, calibration)
    return model
