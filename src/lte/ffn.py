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

A layer may carry a ``selector`` (an ``nn.Module``, see ``lte.baselines``): another method's
selection rule (TEAL, CATS, Deja Vu, MoEfication, top-k routers). When set, soft and hard
mode ask it which neurons / blocks run instead of the LTE router, and compute the masked
dense product (the definition, as hard mode with gradients does); dense mode ignores it.
The selector returns a :class:`Selection`; the layer records neuron-level sparsity (what
``lte.stats`` reports as ``ffn_sparsity``), the block-level sparsity a kernel reading whole
``expert_size`` blocks would get, and the fraction of the dense FFN FLOPs that ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .arch import FFNWeights
from .config import MODES, LTEConfig
from .kernels.reference import activation, sparse_ffn_reference
from .router import Router

# Neurons per block of the block kernels that ``block_sparsity`` models (the Triton kernel's
# tiles, LTE's default expert size): a block is skipped only when none of its neurons runs.
KERNEL_BLOCK = 32


def kernel_block_active(active: torch.Tensor, unit: int = 1) -> torch.Tensor:
    """Per token, the fraction of :data:`KERNEL_BLOCK`-neuron blocks that a block kernel must
    read: ``active`` is ``[..., U]`` bool over consecutive units of ``unit`` neurons (1 =
    neurons, ``expert_size`` = experts); units of :data:`KERNEL_BLOCK` or more are blocks."""
    g = max(1, -(-KERNEL_BLOCK // unit))
    if g > 1:
        pad = (-active.shape[-1]) % g
        if pad:
            active = torch.cat([active, active.new_zeros(*active.shape[:-1], pad)], dim=-1)
        active = active.unflatten(-1, (-1, g)).any(-1)
    return active.float().mean(-1)


class LTEState:
    """Per-model state shared by its LTE layers: the real-token mask of the current forward."""

    def __init__(self) -> None:
        self.token_mask: torch.Tensor | None = None  # [B, S] bool, True = real token
        # False skips the selection counters in hard-mode inference: CUDA-graph replay
        # (torch.compile mode="reduce-overhead") must not keep graph outputs alive across steps.
        self.track_stats = True

    def mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """The mask ``[B, T]`` for a layer input ``[B, T, d]`` (the last T positions, as during
        cached generation), or None when every token is real or shapes do not line up."""
        m = self.token_mask
        if m is None or x.dim() != 3 or m.shape[0] != x.shape[0] or m.shape[1] < x.shape[1]:
            return None
        return m[:, -x.shape[1]:].to(x.device)


@dataclass
class Selection:
    """What a ``selector`` decided for each token of one FFN call (``[...]`` = the token dims).

    ``neuron``: ``[..., f]`` multipliers of the intermediate activations (0 = neuron skipped;
    a 0/1 mask, or weights); ``block``: ``[..., E]`` multipliers of whole expert blocks.
    Either may be None. ``active`` / ``block_active`` / ``flops``: per-token fractions of
    neurons run, of blocks touched and of the dense FFN FLOPs spent; when None they are
    derived from the nonzeros of ``neuron`` and ``block`` (``flops`` = ``active``).
    """

    neuron: torch.Tensor | None = None
    block: torch.Tensor | None = None
    active: torch.Tensor | None = None
    block_active: torch.Tensor | None = None
    flops: torch.Tensor | None = None


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
        self.router = Router(d, self.n_experts, cfg.router_init_std, cfg.router_bias_init, generator,
                             form=cfg.router_form)
        self.router.to(device=w.up.device)
        self.selector = None  # optional nn.Module: another method's selection rule (lte.baselines)
        self.reset_stats()
        self.last_scores: torch.Tensor | None = None
        self.last_token_mask: torch.Tensor | None = None

    # ----------------------------------------------------------------- statistics
    def reset_stats(self) -> None:
        """Forget the cumulative selection counts."""
        self.last_selected = self.last_tokens = None
        self.cum_selected = self.cum_tokens = None
        # kernel-block counts (``kernel_block_active``) where they differ from the expert-level
        # counts above (None = the same): finer experts, and the selector path
        self.last_block = self.cum_block = self.cum_flops = None

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
            tok = torch.tensor(n_tokens)  # a CPU scalar: creating it on the GPU would sync the host every layer
        sel, tok = sel.detach(), tok.detach()
        self.last_selected, self.last_tokens = sel, tok
        self.cum_selected = sel if self.cum_selected is None else self.cum_selected + sel.to(self.cum_selected.device)
        self.cum_tokens = tok if self.cum_tokens is None else self.cum_tokens + tok  # CPU scalars mix freely
        fine = self.expert_size < KERNEL_BLOCK  # experts finer than a kernel block
        if fine or self.cum_block is not None:  # kernel-block counts kept apart from the expert counts
            blk = sel  # dense: every block is read
            if selected is not None and fine:
                frac = kernel_block_active(selected.detach(), self.expert_size)
                blk = ((frac * tmask.to(frac.dtype)).sum() if tmask is not None else frac.sum()) * self.n_experts
            self.last_block = blk
            self.cum_block = blk if self.cum_block is None else self.cum_block + blk.to(self.cum_block.device)

    # ----------------------------------------------------------------- forward
    def act_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight [f, d], bias or None)`` of the projection the activation is applied to: the
        gate, or up in a plain FFN (what CATS thresholds and the gate router init copies)."""
        return (self.gate, self.gate_bias) if self.gate is not None else (self.up, self.up_bias)

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
        if self.selector is not None and self.mode in MODES:
            return self._forward_selected(x, tmask, n_tokens)
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
        y, mask = kernels.sparse_ffn_op(
            x2, self.up, self.down, self.router.weight, self.router.bias, self.router.center, self.gate, self.up_bias,
            self.gate_bias, self.down_bias, self.expert_size, self.act, self.logit_threshold, self.backend)
        if self.state.track_stats:
            self._record(mask.reshape(*x.shape[:-1], -1), tmask, n_tokens)
        return y.reshape(x.shape)

    # ----------------------------------------------------------------- pluggable selection
    def _forward_selected(self, x: torch.Tensor, tmask: torch.Tensor | None, n_tokens: int) -> torch.Tensor:
        """Soft/hard forward with ``self.selector`` (masked dense: the definition of skipping)."""
        sel = self.selector
        xin = sel.transform_input(self, x)
        u = F.linear(xin, self.up, self.up_bias)
        if self.gate is not None:
            a = activation(F.linear(xin, self.gate, self.gate_bias), self.act)
            h = a * u
        else:
            a = h = activation(u, self.act)
        s = sel.select(self, x, a, h)
        if s.block is not None:
            h = h * s.block.to(h.dtype).repeat_interleave(self.expert_size, dim=-1)
        if s.neuron is not None:
            h = h * s.neuron.to(h.dtype)
        self._record_selection(s, tmask, n_tokens)
        return self._out(h)

    def _record_selection(self, s: Selection, tmask: torch.Tensor | None, n_tokens: int) -> None:
        active, block_active, flops = s.active, s.block_active, s.flops
        if active is None or block_active is None:
            nz = None
            if s.neuron is not None:
                nz = s.neuron.detach() != 0
            if s.block is not None:
                b = (s.block.detach() != 0).repeat_interleave(self.expert_size, dim=-1)
                nz = b if nz is None else nz & b
            if nz is None:
                raise ValueError("a Selection needs neuron or block multipliers, or explicit fractions")
            if active is None:
                active = nz.float().mean(-1)
            if block_active is None:
                block_active = kernel_block_active(nz)
        if flops is None:
            flops = active

        def total(v: torch.Tensor) -> torch.Tensor:
            v = v.detach().float()
            return (v * tmask.to(v.dtype)).sum() if tmask is not None else v.sum()

        tok = tmask.sum() if tmask is not None else torch.tensor(n_tokens)  # CPU scalar: no host sync
        sel, blk, fl = total(active) * self.n_experts, total(block_active) * self.n_experts, total(flops)
        self.last_selected, self.last_tokens, self.last_block = sel, tok, blk
        if self.cum_selected is None or self.cum_flops is None:  # first selector call since the reset
            self.cum_selected, self.cum_tokens, self.cum_block, self.cum_flops = sel, tok, blk, fl
        else:
            dev = self.cum_selected.device
            self.cum_selected = self.cum_selected + sel.to(dev)
            self.cum_tokens = self.cum_tokens + tok
            self.cum_block = self.cum_block + blk.to(dev)
            self.cum_flops = self.cum_flops + fl.to(dev)

    def reference_hard(self, x: torch.Tensor) -> torch.Tensor:
        """Hard mode by definition (masked dense); used by tests and as documentation."""
        mask = self.router.logits(x) > self.logit_threshold
        return self._masked(x.reshape(-1, x.shape[-1]), mask.reshape(-1, self.n_experts)).reshape(x.shape)

    def _masked(self, x2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The reference masked-dense FFN of tokens ``x2 [N, d]`` under expert mask ``[N, E]``."""
        return sparse_ffn_reference(x2, self.up, self.down, mask, expert_size=self.expert_size, act=self.act,
                                    w_gate=self.gate, b_up=self.up_bias, b_gate=self.gate_bias,
                                    b_down=self.down_bias)

    def extra_repr(self) -> str:
        return (f"d={self.up.shape[1]}, f={self.up.shape[0]}, experts={self.n_experts}x{self.expert_size}, "
                f"act={self.act}, gated={self.gate is not None}, mode={self.mode}")
