"""Calibrated router initialisation: start each router as a predictor of its experts' importance.

A randomly initialised router ranks experts arbitrarily, so while the target controller lowers
the biases in stage 1 experts switch off in an order that carries no information until the
router weights have learnt one. Calibration fits each router, before training, to the dense
model's own ranking: on calibration tokens it measures every expert's contribution to the FFN
output (the L2 norm of ``h_e @ W_down[e]``, ``h_e`` the expert's block of intermediate
activations), centres ``log`` of it across the experts of each token, and fits the
router's linear map to that target by ridge regression (closed form, one small solve per
layer). The fitted logits are rescaled to a spread (std across experts) of ``spread`` and
centred on ``bias_init``, so training still starts with almost every expert on, but lowering
the common bias now removes the least important experts first.

``source="gate"`` (experts of one neuron): each router is instead its neuron's own gate
pre-activation (the up projection's, for FFNs without a gate), scaled to the same spread. CATS
keeps a neuron when ``|act(gate(x))|`` clears a threshold; for thresholds above the
activation's negative dip that is ``gate(x)`` above a constant. So these routers start out
choosing what CATS chooses, and training moves them from there.

Folded routers (``sigmoid(|x W^T + c| + b)``, ``LTEConfig.router_form="folded"``): the gate init
folds at the pre-activation's zero, so lowering the bias switches neurons off in the order of
``|gate(x)|``, which matches CATS's two-sided rule below the dip too (the thresholds of low
sparsity). The importance fit is placed on the unfolded side of every calibration token
(``c`` shifted above the fit's lowest value), so it starts as the linear fit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from .ffn import LTEFFN


@torch.no_grad()
def expert_importance(layer: LTEFFN, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``[N, E]`` L2 norm of each expert's contribution to the FFN output for tokens ``x [N, d]``."""
    s, e = layer.expert_size, layer.n_experts
    down = layer.down.float().reshape(e, s, -1)  # [E, s, d]
    out = []
    for i in range(0, x.shape[0], chunk):
        h = layer._intermediate(x[i:i + chunk].to(layer.up.dtype)).float()
        contrib = torch.einsum("nes,esd->ned", h.reshape(h.shape[0], e, s), down)
        out.append(contrib.norm(dim=-1))
    return torch.cat(out)


def fit_router(x: torch.Tensor, importance: torch.Tensor, spread: float, bias_init: float,
               ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Ridge fit of ``x [N, d] -> log importance [N, E]`` (centred per token); returns the router
    ``(weight [E, d], bias [E], r2)`` with logits of std ``spread`` across experts centred on
    ``bias_init``, and the fit's R^2 on its own tokens (how predictable the ranking is)."""
    x = x.double()
    y = importance.double().clamp_min(1e-12).log()
    y = y - y.mean(-1, keepdim=True)  # only the ranking within a token matters; the bias sets the level
    mu_x, mu_y = x.mean(0), y.mean(0)
    xc, yc = x - mu_x, y - mu_y
    n, d = xc.shape
    cov = xc.T @ xc / n
    cov = cov + ridge * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(d, dtype=cov.dtype, device=cov.device)
    w = torch.linalg.solve(cov, xc.T @ yc / n)  # [d, E]
    c = mu_y - mu_x @ w
    pred = x @ w + c
    r2 = float(1 - ((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum().clamp_min(1e-12))
    per_token = pred - pred.mean(-1, keepdim=True)
    scale = spread / float(per_token.std().clamp_min(1e-12))
    weight = (w.T * scale).float()
    bias = (c * scale).float()
    bias = bias - bias.mean() + bias_init
    return weight, bias, r2


def gate_router(layer: LTEFFN, x: torch.Tensor, spread: float, bias_init: float,
                folded: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Router ``(weight [f, d], bias [f], center [f] or None)`` of a layer with experts of one neuron:
    the neuron's gate pre-activation (up, without a gate), or its magnitude when ``folded``, scaled
    to logits of std ``spread`` across neurons and centred on ``bias_init`` over the tokens ``x [N, d]``."""
    if layer.expert_size != 1:
        raise ValueError(f"gate-initialised routers need experts of one neuron, got expert_size={layer.expert_size}")
    src, src_b = layer.act_projection()
    w = src.detach().float()
    b = src_b.detach().float() if src_b is not None else torch.zeros(w.shape[0], device=w.device)
    z = x.float() @ w.T + b
    z = z.abs() if folded else z
    scale = spread / float((z - z.mean(-1, keepdim=True)).std().clamp_min(1e-12))
    level = bias_init - float(z.mean()) * scale
    if folded:
        return w * scale, torch.full_like(b, level), b * scale
    return w * scale, b * scale + level, None


def unfold_fit(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bias, center)`` of a folded router equal to the linear router ``(weight, bias)`` on the
    tokens ``x``: the fold sits ``margin`` below each expert's lowest logit there."""
    z = x.float() @ weight.T + bias
    shift = (-z.min(0).values).clamp_min(0) + margin
    return -shift, bias + shift


def calibrate_routers(model: torch.nn.Module, calibration: Iterable, *, spread: float = 1.0,
                      bias_init: float = 3.0, max_tokens: int = 8192, progress: bool = True,
                      source: str = "importance") -> list[float]:
    """Set every LTE router of ``model`` from ``calibration`` batches (see the module docstring):
    ``source="importance"``: its ridge fit of the experts' importance (returns each layer's fit
    R^2); ``"gate"``: its neuron's gate pre-activation (returns 1.0 per layer: exact, no fit)."""
    if source not in ("importance", "gate"):
        raise ValueError(f"source must be 'importance' or 'gate', got {source!r}")
    from .baselines.base import capture_ffn_inputs
    from .sparsify import lte_layers

    xs = capture_ffn_inputs(model, calibration, max_tokens=max_tokens, mode="dense")
    r2s = []
    for layer, x in tqdm(list(zip(lte_layers(model), xs)), desc="calibrate routers", disable=not progress,
                         leave=False):
        with torch.no_grad():
            x = x.to(layer.up.device)
            folded = layer.router.center is not None
            if source == "gate":
                (w, b, c), r2 = gate_router(layer, x, spread, bias_init, folded), 1.0
            else:
                w, b, r2 = fit_router(x, expert_importance(layer, x), spread, bias_init)
                b, c = unfold_fit(x, w, b, spread) if folded else (b, None)
            layer.router.weight.copy_(w.to(layer.router.weight.device))
            layer.router.bias.copy_(b.to(layer.router.bias.device))
            if c is not None:
                layer.router.center.copy_(c.to(layer.router.center.device))
        r2s.append(r2)
    return r2s
