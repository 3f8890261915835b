"""The LTE router: one linear layer and a sigmoid per FFN, one score per expert.

``form="folded"`` takes the magnitude of the linear map first, ``sigmoid(|x W^T + c| + b)``: an
expert can then be selected on both sides of a fold point, as CATS keeps a neuron on both sides
of its activation's zero (``|silu(g)| > t``), which a sigmoid of a linear score cannot express.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ROUTER_FORMS


class Router(nn.Module):
    """``r(x) = sigmoid(x W^T + b)``; expert ``e`` is selected when ``r_e(x) > threshold``.

    Logits are computed in fp32 whatever the autocast state, so the hard selection of
    training, evaluation and every kernel backend agree on which side of the threshold a
    score lies. The weight starts small and random (std ``init_std / sqrt(d)``) and the bias
    at ``bias_init``, so training neither starts exactly at the threshold (where the
    separability loss is infinite) nor with half the experts cut at once. ``form="folded"``
    adds a per-expert ``center`` inside the magnitude (start 0); ``bias`` stays the outer
    offset, so the target controller moves the same parameter for both forms.
    """

    def __init__(self, hidden: int, n_experts: int, init_std: float = 1.0, bias_init: float = 3.0,
                 generator: torch.Generator | None = None, form: str = "linear") -> None:
        super().__init__()
        if form not in ROUTER_FORMS:
            raise ValueError(f"router form must be one of {ROUTER_FORMS}, got {form!r}")
        self.form = form
        self.weight = nn.Parameter(torch.randn(n_experts, hidden, generator=generator)
                                   * (init_std / math.sqrt(hidden)))
        self.bias = nn.Parameter(torch.full((n_experts,), float(bias_init)))
        self.center = nn.Parameter(torch.zeros(n_experts)) if form == "folded" else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits ``[..., E]`` in fp32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.center is None:
                return F.linear(x.float(), self.weight.float(), self.bias.float())
            return F.linear(x.float(), self.weight.float(), self.center.float()).abs() + self.bias.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores in (0, 1), ``[..., E]``, fp32."""
        return torch.sigmoid(self.logits(x))

    def extra_repr(self) -> str:
        return f"d={self.weight.shape[1]}, experts={self.weight.shape[0]}, form={self.form}"
