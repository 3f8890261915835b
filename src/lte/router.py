"""The LTE router: one linear layer and a sigmoid per FFN, one score per expert."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Router(nn.Module):
    """``r(x) = sigmoid(x W^T + b)``; expert ``e`` is selected when ``r_e(x) > threshold``.

    Logits are computed in fp32 whatever the autocast state, so the hard selection of
    training, evaluation and every kernel backend agree on which side of the threshold a
    score lies. The weight starts small and random (std ``init_std / sqrt(d)``) and the bias
    at ``bias_init``, so training neither starts exactly at the threshold (where the
    separability loss is infinite) nor with half the experts cut at once.
    """

    def __init__(self, hidden: int, n_experts: int, init_std: float = 1.0, bias_init: float = 3.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_experts, hidden, generator=generator)
                                   * (init_std / math.sqrt(hidden)))
        self.bias = nn.Parameter(torch.full((n_experts,), float(bias_init)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits ``[..., E]`` in fp32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float(), self.bias.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores in (0, 1), ``[..., E]``, fp32."""
        return torch.sigmoid(self.logits(x))
