"""Pure-PyTorch definition of the hard-mode sparse FFN: the semantics every kernel must match.

Weights are stored neuron-contiguous: ``w_gate``, ``w_up`` and ``w_down`` are all ``[f, d]``
(``w_down`` is the transpose of a ``nn.Linear`` down projection), so expert ``e`` owns rows
``[e*s, (e+1)*s)`` of each.  A token computes only the experts its router selected; tokens
of one batch never share each other's experts (the union is an implementation detail of
the fast kernels, never a change in the result).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply the named FFN activation (the four families LTE supports)."""
    if name == "silu":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def router_mask(
    x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None, logit_threshold: float = 0.0,
    router_center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Expert selection ``[N, E]`` (bool): ``x @ router_w.T + router_b > logit_threshold`` in fp32,
    or ``|x @ router_w.T + router_center| + router_b > logit_threshold`` for a folded router
    (``lte.router``).

    ``sigmoid(z) > tau`` is the same as ``z > logit(tau)``, so the sigmoid is never computed.
    """
    logits = x.float() @ router_w.float().t()
    if router_center is not None:
        logits = (logits + router_center.float()).abs()
    if router_b is not None:
        logits = logits + router_b.float()
    return logits > logit_threshold


def sparse_ffn_reference(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    mask: torch.Tensor,
    *,
    expert_size: int,
    act: str,
    w_gate: torch.Tensor | None = None,
    b_up: torch.Tensor | None = None,
    b_gate: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked dense FFN: ``y = (act(x Wg^T + bg) * (x Wu^T + bu) * m) Wd + bd`` (gated) or
    ``y = (act(x Wu^T + bu) * m) Wd + bd`` (plain), with ``m`` the per-token expert mask
    expanded to neurons.  ``x`` is ``[N, d]``; returns ``[N, d]`` in ``x``'s dtype.
    """
    f = w_up.shape[0]
    n_exp = mask.shape[-1]
    if n_exp * expert_size != f:
        raise ValueError(f"mask has {n_exp} experts of {expert_size} but the FFN has {f} neurons")
    h = F.linear(x, w_up, b_up)
    if w_gate is not None:
        h = activation(F.linear(x, w_gate, b_gate), act) * h
    else:
        h = activation(h, act)
    h = h * mask.to(h.dtype).repeat_interleave(expert_size, dim=-1)
    y = h @ w_down
    if b_down is not None:
        y = y + b_down
    return y
