"""MoEfication (Zhang et al. 2022, "MoEfication: Transformer Feed-forward Layers are Mixtures of Experts").

Recipe, as the LTE paper configured it (LTE_SPEC section 5):
1. ReLU-fy: the FFN activation becomes ReLU (``act(gate(x))`` -> ``relu(gate(x))``), then
   the model is fine-tuned so it recovers (:func:`relufy`, then ``lte.baselines.adapt`` in
   dense mode).
2. Experts: balanced k-means on the fine-tuned gate (or up) weights, i.e. parameter
   clustering (``lte.grouping``), applied in place (:func:`regroup`).
3. Router: per layer, MoEfication's MLP router (``x/|x| -> Linear(d, E) -> tanh ->
   Linear(E, E)``, the first layer initialised at the experts' normalised weight centroids,
   the second at the identity) trained to rank the experts by their activation mass (the
   sum of ``|h_j|`` over their neurons; for ReLU FFNs, of the positive activations); the
   top-k experts run (:func:`train_routers`). The reference code fits BCE against the
   mass over its maximum (``loss="bce"``); the default here is the listwise loss of
   ``fit_predictor``, which kept as much or more of the mass in our check.
4. Oracle: the top-k experts by their *true* activation mass (the upper bound the LTE paper
   reports). Knowing the mass needs the gate/up projections of every neuron, so its
   GFLOPs count gate and up dense and only the down projection sparse.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..arch import FFNWeights
from ..config import LTEConfig
from ..ffn import LTEFFN, Selection, kernel_block_active
from ..grouping import group_neurons
from ..sparsify import lte_layers
from .base import Selector, attach, capture_ffn_inputs, ensure_lte, fit_predictor, keep_count, topk_mask
from .dejavu import activation_mass


def relufy(model: nn.Module, cfg: LTEConfig | None = None) -> nn.Module:
    """Replace every FFN activation by ReLU (in place; in dense mode too: this *is* the
    ReLU-fied model, to be fine-tuned)."""
    for layer in ensure_lte(model, cfg):
        layer.act = "relu"
    return model


@torch.no_grad()
def regroup(model: nn.Module, method: str = "kmeans", iters: int = 30, seed: int = 0) -> nn.Module:
    """Group the (fine-tuned) neurons into experts again and permute each layer in place,
    so expert ``e`` is block ``e`` (MoEfication clusters the model it will split)."""
    for layer in lte_layers(model):
        w = FFNWeights(up=layer.up.detach(), down=layer.down.detach(), act=layer.act,
                       gate=None if layer.gate is None else layer.gate.detach())
        perm = group_neurons(w, layer.expert_size, method, iters=iters, seed=seed + layer.layer).to(layer.up.device)
        for name in ("up", "down", "gate", "up_bias", "gate_bias"):
            p = getattr(layer, name)
            if p is not None:
                p.data = p.data[perm].contiguous()
    return model


class MoERouter(nn.Module):
    """MoEfication's MLP router: ``Linear(E, E)(tanh(Linear(d, E)(x / |x|)))``, fp32."""

    def __init__(self, centroids: torch.Tensor) -> None:
        super().__init__()
        n_exp, d = centroids.shape
        self.w1 = nn.Linear(d, n_exp, bias=False)
        self.w2 = nn.Linear(n_exp, n_exp, bias=False)
        with torch.no_grad():
            self.w1.weight.copy_(centroids.float())
            self.w2.weight.copy_(torch.eye(n_exp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.w2(torch.tanh(self.w1(F.normalize(x.float(), dim=-1))))

    @property
    def flops(self) -> float:
        """FLOPs per token."""
        return 2.0 * (self.w1.weight.numel() + self.w2.weight.numel())


def expert_centroids(layer: LTEFFN) -> torch.Tensor:
    """``[E, d]``: mean of each expert's L2-normalised gate (or up) weight rows."""
    w = F.normalize(layer.act_projection()[0].detach().float(), dim=1)
    return w.unflatten(0, (layer.n_experts, layer.expert_size)).mean(1)


def train_routers(model: nn.Module, calibration: Iterable, epochs: int = 20, max_tokens: int = 16384,
                  lr: float = 1e-2, seed: int = 0, progress: bool = False, loss: str = "listwise") -> list[MoERouter]:
    """Train one :class:`MoERouter` per layer on the model's dense-mode FFN inputs."""
    layers = lte_layers(model)
    xs = capture_ffn_inputs(model, calibration, max_tokens=max_tokens, mode="dense")
    routers = []
    for layer, x in tqdm(list(zip(layers, xs)), desc="moefication routers", disable=not progress, leave=False):
        torch.manual_seed(seed + layer.layer)
        r = MoERouter(expert_centroids(layer)).to(layer.up.device)
        fit_predictor(r, x, lambda xb, lay=layer: activation_mass(lay, xb, "block"), epochs=epochs, lr=lr,
                      seed=seed + layer.layer, loss=loss)
        routers.append(r)
    return routers


class MoESelector(Selector):
    """Top-k expert blocks, by a trained router or by the true activation mass (oracle)."""

    def __init__(self, k: int, router: nn.Module | None = None) -> None:
        super().__init__()
        self.k = int(k)
        self.router = router  # None = oracle

    def select(self, ffn: LTEFFN, x: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> Selection:
        with torch.no_grad():
            if self.router is None:
                scores = h.detach().float().abs().unflatten(-1, (ffn.n_experts, ffn.expert_size)).sum(-1)
            else:
                scores = self.router(x)
            mask = topk_mask(scores, self.k)
        if self.router is not None:
            return Selection(block=mask)
        active = mask.float().mean(-1)
        n_in = 2 if ffn.gate is not None else 1  # the oracle computes gate/up for every neuron
        return Selection(block=mask, active=active, block_active=kernel_block_active(mask, ffn.expert_size),
                         flops=(n_in + active) / (n_in + 1))

    def predictor_flops(self, ffn: LTEFFN) -> float:
        return 0.0 if self.router is None else float(self.router.flops)


def apply_moefication(model: nn.Module, target_sparsity: float, routers: list[nn.Module] | None = None, *,
                      cfg: LTEConfig | None = None) -> nn.Module:
    """Keep the top ``(1 - target)`` fraction of experts per token, chosen by ``routers``
    (from :func:`train_routers`, copied onto the model) or, with ``routers=None``, by the
    oracle. The model should already be ReLU-fied, fine-tuned and regrouped. In place; hard mode."""
    layers = ensure_lte(model, cfg)
    if routers is not None and len(routers) != len(layers):
        raise ValueError(f"{len(routers)} routers for {len(layers)} layers")
    by_layer = {} if routers is None else {layer.layer: r for layer, r in zip(layers, routers)}

    def make(layer: LTEFFN) -> MoESelector:
        r = by_layer.get(layer.layer)
        return MoESelector(keep_count(layer.n_experts, target_sparsity), None if r is None else copy.deepcopy(r))

    attach(model, make, cfg)
    return model
