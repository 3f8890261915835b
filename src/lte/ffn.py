"""The LTE FFN module: a permuted FFN with a router, run dense, soft or hard.

Weights are kept neuron-contiguous (``gate``, ``up`` and ``down`` all ``[f, d]``; ``down`` is
the transposed down projection) so that expert ``e`` is rows ``[e*s, (e+1)*s)`` of each, the
layout the sparse kernels read. Modes:
- ``dense``: the original FFN, router not run (exactly the permuted original model).
- ``soft`` (stage 1): every expert runs, its output scaled by its sigmoid score (the
  paper's Eq. 3, ``soft_gate="scale"``), or, with ``soft_gate="ste"``, gated by the hard
  mask in the forward pass while gradients reach the router through the score
  (straight-through: ``mask + G - G.detach()``), so stage 1 trains the model that will be
  deployed instead of one whose FFN outputs are scaled by scores near 0.5.
- ``hard`` (stage 2, inference): only experts with score > threshold run, unscaled. With
  gradients on it is a masked dense product (the definition); without, it calls the
  kernel dispatch (``lte.kernels``), which reads only the selected blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .arch import FFNWeights
from .config import MODES, LTEConfig
from .kernels.reference import activation, sparse_ffn_reference
from .router import Router


class LTEState:
    """Per-model state shared by its LTE layers: the real-token mask of the current forward."""

    def __init__(self) -> None:
        self.token_mask: torch.Tensor | None = None  # [B, S] bool, True = real token

    def mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """The mask ``[B, T]`` for a layer input ``[B, T, d]`` (the last T positions, as during
        cached generation), or None when every token is real or shapes do not line up."""
        m = self.token_mask
        if m is None or x.dim() != 3 or m.shape[0] != x.shape[0] or m.shape[1] < x.shape[1]:
            return None
        return m[:, -x.shape[1]:].to(x.device)


class LTEFFN(nn.Module):
    """One routed FFN layer (see module docstring)."""

    def __init__(self, w: FFNWeights, cfg: LTEConfig, layer: int, state: LTEState,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        f, d = w.width, w.hidden
        if f % cfg.expert_size:
            raise ValueError(f"expert_size {cfg.expert_size} does not divide FFN width {f}")
        self.expert_size = cfg.expert_size
        self.n_experts = f // cfg.expert_size
        self.act = w.act
        self.layer = layer
        self.threshold = cfg.threshold
        self.logit_threshold = cfg.logit_threshold
        self.mode = "dense"
        self.soft_gate = "scale"  # stage-1 gating: "scale" (the paper) or "ste" (see forward)
        self.backend = "auto"
        self.state = state

        def param(t):
            return None if t is None else nn.Parameter(t.detach().clone())
        self.up = param(w.up)
        self.down = param(w.down)
        self.gate = param(w.gate)
        self.up_bias = param(w.up_bias)
        self.gate_bias = param(w.gate_bias)
        self.down_bias = param(w.down_bias)
        self.dropout = nn.Dropout(w.dropout) if w.dropout > 0 else None
        self.router = Router(d, self.n_experts, cfg.router_init_std, cfg.router_bias_init, generator)
        self.router.to(device=w.up.device)
        self.reset_stats()
        self.last_scores: torch.Tensor | None = None
        self.last_token_mask: torch.Tensor | None = None

    # ----------------------------------------------------------------- statistics
    def reset_stats(self) -> None:
        """Forget the cumulative selection counts."""
        self.last_selected = self.last_tokens = None
        self.cum_selected = self.cum_tokens = None

    def _record(self, selected: torch.Tensor | None, tmask: torch.Tensor | None, n_tokens: int) -> None:
        # selected: [..., E] bool, or None for dense (all experts run)
        if selected is None:
            tok = tmask.sum() if tmask is not None else torch.tensor(n_tokens)
            sel = tok * self.n_experts
        elif tmask is not None:
            sel = (selected & tmask.unsqueeze(-1)).sum()
            tok = tmask.sum()
        else:
            sel = selected.sum()
            tok = torch.tensor(n_tokens, device=selected.device)
        sel, tok = sel.detach(), tok.detach()
        self.last_selected, self.last_tokens = sel, tok
        self.cum_selected = sel if self.cum_selected is None else self.cum_selected + sel.to(self.cum_selected.device)
        self.cum_tokens = tok if self.cum_tokens is None else self.cum_tokens + tok.to(self.cum_tokens.device)

    # ----------------------------------------------------------------- forward
    def _intermediate(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.up, self.up_bias)
        if self.gate is not None:
            return activation(F.linear(x, self.gate, self.gate_bias), self.act) * h
        return activation(h, self.act)

    def _out(self, h: torch.Tensor) -> torch.Tensor:
        y = h @ self.down
        if self.down_bias is not None:
            y = y + self.down_bias
        return self.dropout(y) if self.dropout is not None else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the FFN in the current mode; records selection statistics."""
        tmask = self.state.mask_for(x)
        n_tokens = x.numel() // x.shape[-1]
        if self.mode == "dense":
            self._record(None, tmask, n_tokens)
            return self._out(self._intermediate(x))
        if self.mode == "soft":
            scores = self.router(x)
            self.last_scores, self.last_token_mask = scores, tmask
            selected = scores.detach() > self.threshold
            self._record(selected, tmask, n_tokens)
            gate = scores
            if self.soft_gate == "ste":
                gate = selected.to(scores.dtype) + scores - scores.detach()
            h = self._intermediate(x) * gate.repeat_interleave(self.expert_size, dim=-1).to(x.dtype)
            return self._out(h)
        if self.mode == "hard":
            self.last_scores = None
            needs_grad = torch.is_grad_enabled() and any(
                p.requires_grad for p in (self.up, self.down, self.gate) if p is not None)
            if needs_grad or self.dropout is not None and self.training:
                mask = self.router.logits(x) > self.logit_threshold
                self._record(mask, tmask, n_tokens)
                h = self._intermediate(x) * mask.to(x.dtype).repeat_interleave(self.expert_size, dim=-1)
                return self._out(h)
            return self._hard_inference(x, tmask, n_tokens)
        raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")

    def _hard_inference(self, x: torch.Tensor, tmask: torch.Tensor | None, n_tokens: int) -> torch.Tensor:
        from . import kernels  # late import: kernels are optional at training time

        x2 = x.reshape(-1, x.shape[-1])
        y, mask = kernels.sparse_ffn(
            x2, self.up, self.down, self.router.weight, self.router.bias,
            expert_size=self.expert_size, act=self.act, w_gate=self.gate, b_up=self.up_bias,
            b_gate=self.gate_bias, b_down=self.down_bias, logit_threshold=self.logit_threshold,
            backend=self.backend,
        )
        self._record(mask.reshape(*x.shape[:-1], -1), tmask, n_tokens)
        return y.reshape(x.shape)

    def reference_hard(self, x: torch.Tensor) -> torch.Tensor:
        """Hard mode by definition (masked dense); used by tests and as documentation."""
        mask = self.router.logits(x) > self.logit_threshold
        return sparse_ffn_reference(
            x.reshape(-1, x.shape[-1]), self.up, self.down, mask.reshape(-1, self.n_experts),
            expert_size=self.expert_size, act=self.act, w_gate=self.gate, b_up=self.up_bias,
            b_gate=self.gate_bias, b_down=self.down_bias).reshape(x.shape)

    def extra_repr(self) -> str:
        return (f"d={self.up.shape[1]}, f={self.up.shape[0]}, experts={self.n_experts}x{self.expert_size}, "
                f"act={self.act}, gated={self.gate is not None}, mode={self.mode}")
