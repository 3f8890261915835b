"""LTE's regularisers on router scores, and the distillation loss.

Both regularisers average over layers, experts and real (non-padding) tokens:
- efficiency (Eq. 4): mean score (``"mean"``) or mean squared score (``"square"``);
  pushes scores down, so fewer experts pass the threshold.
- separability (Eq. 5): mean of ``1 / ((G - tau)^2 + eps)``; pushes scores away from the
  threshold so soft (stage 1) and hard (stage 2) selection agree. Its minimum per score is
  ``1 / (tau^2 + eps)`` for tau = 0.5 at G in {0, 1}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, tmask: torch.Tensor | None) -> torch.Tensor:
    # values [..., E]; tmask [...] bool or None
    if tmask is None:
        return values.mean()
    w = tmask.to(values.dtype).unsqueeze(-1)
    return (values * w).sum() / (w.sum() * values.shape[-1]).clamp_min(1.0)


def efficiency_loss(scores: torch.Tensor, tmask: torch.Tensor | None = None, kind: str = "mean") -> torch.Tensor:
    """Mean (or mean squared) router score of one layer over real tokens and experts."""
    if kind == "mean":
        return _masked_mean(scores, tmask)
    if kind == "square":
        return _masked_mean(scores.square(), tmask)
    raise ValueError(f"efficiency loss kind must be 'mean' or 'square', got {kind!r}")


def separability_loss(scores: torch.Tensor, tmask: torch.Tensor | None = None, threshold: float = 0.5,
                      eps: float = 1e-2) -> torch.Tensor:
    """Mean of ``1/((G - tau)^2 + eps)`` over real tokens and experts."""
    return _masked_mean(1.0 / ((scores - threshold).square() + eps), tmask)


def router_losses(layers, kind: str = "mean", threshold: float = 0.5, eps: float = 1e-2
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(efficiency, separability), each averaged over the given soft-mode LTE layers."""
    eff, sep = [], []
    for layer in layers:
        if layer.last_scores is None:
            raise ValueError("router losses need a soft-mode forward first (lte.set_mode(model, 'soft'))")
        eff.append(efficiency_loss(layer.last_scores, layer.last_token_mask, kind))
        sep.append(separability_loss(layer.last_scores, layer.last_token_mask, threshold, eps))
    return torch.stack(eff).mean(), torch.stack(sep).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per token on softened logits, times T^2, averaged over real tokens."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (p.exp() * (p - s)).sum(-1) * (t * t)
    if mask is None:
        return kl.mean()
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0)
