"""Kernel dispatch for the hard-mode sparse FFN (reference backend; fast backends plug in here)."""

from __future__ import annotations

import torch

from .reference import router_mask, sparse_ffn_reference


def available_backends() -> list[str]:
    """Backends usable in this process."""
    return ["reference"]


def sparse_ffn(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, router_w: torch.Tensor,
               router_b: torch.Tensor | None, *, expert_size: int, act: str, w_gate: torch.Tensor | None = None,
               b_up: torch.Tensor | None = None, b_gate: torch.Tensor | None = None,
               b_down: torch.Tensor | None = None, logit_threshold: float = 0.0,
               backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Hard-mode FFN over ``x`` ``[N, d]``: returns ``(y [N, d], mask [N, E])``."""
    if backend not in ("auto", "reference"):
        raise ValueError(f"kernel backend {backend!r} is not available; available: {available_backends()}")
    mask = router_mask(x, router_w, router_b, logit_threshold)
    y = sparse_ffn_reference(x, w_up, w_down, mask, expert_size=expert_size, act=act, w_gate=w_gate, b_up=b_up,
                             b_gate=b_gate, b_down=b_down)
    return y, mask
