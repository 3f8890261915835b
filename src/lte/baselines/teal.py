"""TEAL (Liu et al. 2024, "Training-Free Activation Sparsity in Large Language Models").

Training-free magnitude sparsity of the hidden states that *enter* each projection: an
entry of the input with ``|x_i| <= t`` is zeroed, so column ``i`` of the weight need not be
read. In the FFN that is the input of gate/up (``d`` channels) and the input of down (the
``f`` intermediate activations); the whole-model variant does the same to the attention
projections (q, k, v read the normed hidden state, o reads the attention output).

Thresholds are per layer and per projection, fitted to the target on calibration data
(the ``target`` quantile of ``|input|``; TEAL's uniform-sparsity variant) in one
sequential pass (``lte.baselines.base.calibrate``).

Measured quantities (what ``lte.stats``/``lte.evaluate`` report for TEAL):
- ``ffn_sparsity``: the fraction of FFN weight columns skipped, i.e. input-channel sparsity
  averaged over the FFN's projections weighted by their size (= the target when every
  projection is at the target). It is also the fraction of FFN FLOPs skipped.
- ``block_sparsity``: the same with columns in contiguous 32-wide kernel blocks
  (``lte.ffn.KERNEL_BLOCK``): a block is skipped only when all its inputs are zero (for the
  down projection the columns are the layer's neurons, after LTE's grouping).
- GFLOPs count the attention projections at their measured input sparsity (whole-model).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import _layer_index
from ..config import LTEConfig
from ..ffn import LTEFFN, Selection, kernel_block_active
from ..sparsify import lte_layers
from .base import Selector, abs_quantile, attach, calibrate


class TEALSelector(Selector):
    """TEAL in one FFN: thresholds on the gate/up input and on the down input."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = float(target)
        self.register_buffer("t_in", torch.tensor(0.0))
        self.register_buffer("t_h", torch.tensor(0.0))
        self._in: tuple[torch.Tensor, torch.Tensor] | None = None

    def transform_input(self, ffn: LTEFFN, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.t_in = abs_quantile(x, self.target, ffn.state.mask_for(x)).to(self.t_in)
        keep = x.abs() > self.t_in.to(x.dtype)
        self._in = (keep.float().mean(-1), kernel_block_active(keep))
        return x * keep.to(x.dtype)

    def select(self, ffn: LTEFFN, x: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> Selection:
        if self.calibrating:
            self.t_h = abs_quantile(h, self.target, ffn.state.mask_for(x)).to(self.t_h)
        keep = h.abs() > self.t_h.to(h.dtype)
        in_act, in_blk = self._in
        self._in = None
        n_in = 2 if ffn.gate is not None else 1  # gate and up read x; down reads h (equal sizes)
        h_act = keep.float().mean(-1)
        h_blk = kernel_block_active(keep)
        active = (n_in * in_act + h_act) / (n_in + 1)
        block = (n_in * in_blk + h_blk) / (n_in + 1)
        return Selection(neuron=keep, active=active, block_active=block, flops=active)


class TEALLinear(nn.Module):
    """An attention projection whose input is magnitude-sparsified (whole-model TEAL).

    Wraps the original module (``nn.Linear`` or GPT-2's ``Conv1D``); runs dense while the
    model's LTE layers are in dense mode (``lte.set_mode(model, "dense")`` turns all of
    TEAL off). ``unwrap()`` returns the original module.
    """

    def __init__(self, inner: nn.Module, target: float, ffn: LTEFFN) -> None:
        super().__init__()
        self.inner = inner
        self.target = float(target)
        self.calibrating = False
        self._ffn = [ffn]  # a reference, not a submodule: the mode switch
        self.register_buffer("t", torch.tensor(0.0, device=inner.weight.device))
        self.reset_stats()

    def reset_stats(self) -> None:
        self.cum_kept = 0.0
        self.cum_tokens = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ffn = self._ffn[0]
        if ffn.mode == "dense":
            return self.inner(x)
        if self.calibrating:
            self.t = abs_quantile(x, self.target, ffn.state.mask_for(x)).to(self.t)
        keep = x.abs() > self.t.to(x.dtype)
        self.cum_kept += float(keep.float().mean(-1).sum())
        self.cum_tokens += x.numel() // x.shape[-1]
        return self.inner(x * keep.to(x.dtype))

    def flops_saved_per_token(self) -> float:
        """FLOPs per token not spent thanks to the zeroed inputs (measured since reset)."""
        if not self.cum_tokens:
            return 0.0
        return 2.0 * self.inner.weight.numel() * (1.0 - self.cum_kept / self.cum_tokens)

    def unwrap(self) -> nn.Module:
        return self.inner

    def extra_repr(self) -> str:
        return f"target={self.target}"


_ATTN_NAMES = ("self_attn", "attn", "attention")


def wrap_attention(model: nn.Module, target: float) -> list[TEALLinear]:
    """Wrap every linear projection of every attention block with :class:`TEALLinear`."""
    layers = lte_layers(model)
    by_index = {layer.layer: layer for layer in layers}
    wrapped = []
    for name, mod in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] not in _ATTN_NAMES:
            continue
        try:
            ffn = by_index.get(_layer_index(name), layers[0])
        except ValueError:
            ffn = layers[0]
        for attr, child in list(mod.named_children()):
            is_proj = isinstance(child, nn.Linear) or type(child).__name__ == "Conv1D"
            if is_proj and not isinstance(child, TEALLinear):
                w = TEALLinear(child, target, ffn)
                setattr(mod, attr, w)
                wrapped.append(w)
    if not wrapped:
        raise ValueError(f"found no attention projections in {type(model).__name__} for whole-model TEAL")
    return wrapped


def apply_teal(model: nn.Module, target_sparsity: float, calibration: Iterable, *, attention: bool = False,
               cfg: LTEConfig | None = None) -> nn.Module:
    """Make ``model`` TEAL-sparse at ``target_sparsity`` (FFN only, or ``attention=True`` for
    the whole model), thresholds fitted on ``calibration`` (batches of token ids). In place;
    leaves the model in hard mode. Sparsifies (groups) the model first if needed."""
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    attach(model, lambda layer: TEALSelector(target_sparsity), cfg)
    if attention:
        wrap_attention(model, target_sparsity)
    calibrate(model, calibration)
    return model
