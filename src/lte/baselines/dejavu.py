"""Deja Vu (Liu et al. 2023, "Deja Vu: Contextual Sparsity for Efficient LLMs at Inference Time").

Per layer, a small low-rank predictor (``d -> rank -> out``, no nonlinearity, as Deja Vu's
MLP predictors) is trained *after the fact* on the frozen model's activations to predict
which neurons matter for the current token; the top-k by predicted score run.

Choices (Deja Vu was built for ReLU OPT models, where "matters" means "is nonzero"):
- The predictor reads the FFN's own input (the state LTE's router sees), not the previous
  attention block's input (Deja Vu's look-ahead, which only matters for asynchrony).
- Gated FFNs have no exact zeros, so the target is each neuron's activation magnitude
  ``|h_j|``, fitted as a ranking: cross-entropy between the token's magnitude distribution
  and the softmax of the scores (``fit_predictor``'s listwise loss, which kept more of the
  activation mass at top-k than a BCE on normalised magnitudes). The target does not depend
  on the sparsity, so one set of predictors serves every sparsity: k is a deployment knob.
- ``granularity="block"`` predicts each expert block's activation mass (sum of ``|h_j|``
  over its neurons) instead, and keeps the top-k blocks: what a 32-wide kernel can use.
- Inputs are L2-normalised per token (as MoEfication's router does).

GFLOPs include the predictor (``2 * (d * rank + rank * out)`` per token and layer).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import LTEConfig
from ..ffn import LTEFFN, Selection
from .base import Selector, attach, capture_ffn_inputs, ensure_lte, fit_predictor, keep_count, topk_mask

GRANULARITIES = ("neuron", "block")


class LowRankPredictor(nn.Module):
    """``x -> W2 (W1 x / |x|) + b``: scores ``[..., out]`` in fp32."""

    def __init__(self, hidden: int, out: int, rank: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, rank, bias=False)
        self.out = nn.Linear(rank, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.normalize(x.float(), dim=-1)
            return self.out(self.proj(x))

    @property
    def flops(self) -> float:
        """FLOPs per token."""
        return 2.0 * (self.proj.weight.numel() + self.out.weight.numel())


def activation_mass(ffn: LTEFFN, x: torch.Tensor, granularity: str) -> torch.Tensor:
    """Per-token importance: ``|h_j|`` per neuron, or summed over each expert block."""
    h = ffn._intermediate(x.to(ffn.up.dtype)).float().abs()
    if granularity == "block":
        h = h.unflatten(-1, (ffn.n_experts, ffn.expert_size)).sum(-1)
    return h


def default_rank(hidden: int) -> int:
    """Predictor rank: ``d / 8`` (at least 16): about 6% of a SwiGLU FFN's FLOPs at
    f = 8d/3, in line with Deja Vu's predictors on OPT."""
    return max(16, hidden // 8)


def train_predictors(model: nn.Module, calibration: Iterable, granularity: str = "neuron", rank: int | None = None,
                     epochs: int = 20, max_tokens: int = 16384, lr: float = 3e-3, seed: int = 0,
                     cfg: LTEConfig | None = None, progress: bool = False, loss: str = "listwise"
                     ) -> list[LowRankPredictor]:
    """Train one predictor per LTE layer on the *dense* model's FFN inputs from
    ``calibration`` (the model's own training text, never evaluation text)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    layers = ensure_lte(model, cfg)
    xs = capture_ffn_inputs(model, calibration, max_tokens=max_tokens, mode="dense")
    nets = []
    for layer, x in tqdm(list(zip(layers, xs)), desc=f"deja vu predictors ({granularity})", disable=not progress,
                         leave=False):
        d = layer.up.shape[1]
        out = layer.up.shape[0] if granularity == "neuron" else layer.n_experts
        torch.manual_seed(seed + layer.layer)
        net = LowRankPredictor(d, out, rank or default_rank(d)).to(layer.up.device)
        fit_predictor(net, x, lambda xb, lay=layer: activation_mass(lay, xb, granularity), epochs=epochs, lr=lr,
                      seed=seed + layer.layer, loss=loss)
        nets.append(net)
    return nets


class DejaVuSelector(Selector):
    """Top-k neurons (or blocks) by a predictor's scores."""

    def __init__(self, predictor: nn.Module, k: int, granularity: str) -> None:
        super().__init__()
        self.predictor = predictor
        self.k = int(k)
        self.granularity = granularity

    def select(self, ffn: LTEFFN, x: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> Selection:
        with torch.no_grad():
            mask = topk_mask(self.predictor(x), self.k)
        return Selection(neuron=mask) if self.granularity == "neuron" else Selection(block=mask)

    def predictor_flops(self, ffn: LTEFFN) -> float:
        return float(self.predictor.flops)


def apply_dejavu(model: nn.Module, target_sparsity: float, predictors: list[nn.Module], granularity: str = "neuron",
                 *, cfg: LTEConfig | None = None) -> nn.Module:
    """Keep the top ``(1 - target)`` fraction of neurons (or blocks) by the predictors'
    scores (from :func:`train_predictors`, copied onto the model). In place; hard mode."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    layers = ensure_lte(model, cfg)
    if len(predictors) != len(layers):
        raise ValueError(f"{len(predictors)} predictors for {len(layers)} layers")
    preds = {layer.layer: p for layer, p in zip(layers, predictors)}

    def make(layer: LTEFFN) -> DejaVuSelector:
        n = layer.up.shape[0] if granularity == "neuron" else layer.n_experts
        return DejaVuSelector(copy.deepcopy(preds[layer.layer]), keep_count(n, target_sparsity), granularity)

    attach(model, make, cfg)
    return model
