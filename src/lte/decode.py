"""Lean greedy decoding: a static KV cache, one compiled decode step, no host sync per token.

Hugging Face ``generate`` runs Python bookkeeping between decode steps (input preparation,
logits processors, stopping criteria with a host sync per token), so at batch 1 the GPU idles
between CUDA-graph replays. ``greedy_decode`` keeps only what greedy decoding of a fixed
number of tokens needs: a prefill, then a compiled step ``(token, position) -> next token``
replayed back to back (CUDA graphs on GPUs); the host reads the tokens once at the end. It runs
any Hugging Face decoder the same way, so dense and LTE models are compared on equal terms
(``lte bench --setups static+loop``). Greedy only: no sampling, no early stop at EOS.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _params(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _static_cache(model: nn.Module, max_len: int, device: torch.device, dtype: torch.dtype):
    """A ``transformers.StaticCache`` of ``max_len`` positions for batch 1 (the constructor's
    arguments differ between transformers releases)."""
    from transformers import StaticCache
    accepted = _params(StaticCache.__init__)
    kw: dict[str, Any] = {"config": model.config, "max_cache_len": max_len}
    for name, value in (("max_batch_size", 1), ("batch_size", 1), ("device", device), ("dtype", dtype)):
        if name in accepted:
            kw[name] = value
    return StaticCache(**kw)


class GreedyDecoder:
    """Greedy decoding of ``model`` with a static cache of ``max_len`` positions; the decode step
    is compiled once (``compile_mode``: None = eager, ``"default"``, or ``"reduce-overhead"`` for
    CUDA graphs) and reused by every :meth:`generate` call of at most ``max_len`` tokens."""

    def __init__(self, model: nn.Module, max_len: int, compile_mode: str | None = "default") -> None:
        self.model, self.max_len, self.mode = model, max_len, compile_mode
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.cache = _static_cache(model, max_len, self.device, self.dtype)
        fwd = _params(model.forward)
        self.cache_kw = "cache" if "cache" in fwd else "past_key_values"
        body = getattr(model, "base_model", model)
        # older releases index the static cache by an explicit cache_position
        self.pass_cache_position = "cache_position" in fwd or "cache_position" in _params(body.forward)
        # the decode step; the prefill calls _forward itself (eager: one call, its own shapes)
        self.step = self._forward if compile_mode is None else torch.compile(self._forward, mode=compile_mode)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        kw: dict[str, Any] = {self.cache_kw: self.cache, "use_cache": True, "position_ids": pos.unsqueeze(0)}
        if self.pass_cache_position:
            kw["cache_position"] = pos
        logits = self.model(input_ids=ids, **kw).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, new_tokens: int,
                 on_prefill: Callable[[], None] | None = None) -> torch.Tensor:
        """``[1, prompt + new_tokens]`` token ids: the prompt and its greedy continuation.
        ``on_prefill`` is called once the prompt's forward pass is queued (benchmarks time the
        decode steps apart from the prefill)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"greedy decoding here is for one sequence: input_ids [1, n], got {tuple(input_ids.shape)}")
        n = input_ids.shape[1]
        if new_tokens < 1 or n + new_tokens > self.max_len:
            raise ValueError(f"prompt {n} + {new_tokens} new tokens must fit the cache of {self.max_len} "
                             "and new_tokens must be >= 1")
        self.cache.reset()
        ids = input_ids.to(self.device)
        pos = torch.arange(n, device=self.device)
        tok = self._forward(ids, pos)  # prefill
        if on_prefill is not None:
            on_prefill()
        out = [tok]
        pos = pos[-1:] + 1
        cudagraphs = self.mode == "reduce-overhead" and self.device.type == "cuda"
        for _ in range(new_tokens - 1):
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            tok = self.step(tok, pos)
            if cudagraphs:
                tok = tok.clone()  # the graph's output buffer is reused by the next replay
            out.append(tok)
            pos = pos + 1
        return torch.cat([ids, *out], dim=1)


def greedy_decode(model: nn.Module, input_ids: torch.Tensor, new_tokens: int,
                  compile_mode: str | None = None) -> torch.Tensor:
    """One-off :class:`GreedyDecoder` call (benchmarks keep a decoder to reuse its compiled step)."""
    return GreedyDecoder(model, input_ids.shape[1] + new_tokens, compile_mode).generate(input_ids, new_tokens)
