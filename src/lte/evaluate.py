"""Evaluation: perplexity, FFN sparsity and GFLOPs per token.

Perplexity is computed over the evaluation text in non-overlapping windows of ``seq_len``
tokens (each window's first token is not predicted); ``tokens`` counts predicted tokens.

GFLOPs per token count multiply-adds as 2 FLOPs in: attention projections (q, k, v, o),
attention scores and weighted values at the average attended length (``context``; half the
window for non-overlapping windows), FFN expert blocks actually run (per-layer sparsity),
routers (when not dense), and the LM head. Embedding look-ups, norms and activations are
not counted.

Other methods' selection rules (``lte.baselines``) plug in additively: a layer whose
``selector`` has ``flops_per_token(layer)`` reports its own FFN FLOPs (at its granularity,
from what it measured) and its predictor/router cost, counted under ``predictor``; any module
with ``flops_saved_per_token()`` (e.g. TEAL's sparsified attention projections) lowers the
attention count. Block sparsity (``block_sparsity``) is the fraction of 32-neuron blocks
(``lte.ffn.KERNEL_BLOCK``) a block kernel could skip: a block is skipped only when none of its
neurons runs. For LTE with experts of 32 or more it equals ``ffn_sparsity``; finer experts
and per-neuron methods skip fewer whole blocks than neurons.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models import without_kv_cache
from .sparsify import get_mode, lte_layers, reset_stats, stats


def gflops_per_token(model, per_layer_sparsity: list[float] | None = None, context: int = 512) -> dict[str, float]:
    """GFLOPs per token, total and by part, for an LTE model at the given per-layer sparsity
    (None = dense: no routers, every block). ``context``: attended keys per token (for an
    encoder, the mean real sequence length weighted by tokens)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = lte_layers(model)
    d = layers[0].up.shape[1]
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    head_dim = getattr(cfg, "head_dim", None) or d // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    vocab = cfg.vocab_size
    q, kv = n_heads * head_dim, n_kv * head_dim
    attn_proj = 2 * d * (q + 2 * kv) + 2 * q * d
    attn_mix = 2 * 2 * n_heads * head_dim * context
    ffn = router = predictor = 0.0
    for i, layer in enumerate(layers):
        sel = getattr(layer, "selector", None)
        if per_layer_sparsity is not None and sel is not None and hasattr(sel, "flops_per_token"):
            f_ffn, f_pred = sel.flops_per_token(layer)  # the method's own FFN FLOPs + its predictor
            ffn += f_ffn
            predictor += f_pred
            continue
        f = layer.up.shape[0]
        n_mats = 3 if layer.gate is not None else 2
        frac = 1.0 if per_layer_sparsity is None else 1.0 - per_layer_sparsity[i]
        ffn += 2 * n_mats * d * f * frac
        if per_layer_sparsity is not None:
            router += 2 * d * layer.n_experts
    n = len(layers)
    # The LM head runs on every token; a classification head (no output embeddings) runs once
    # per sequence on a pooled vector and is not counted per token.
    get_out = getattr(model, "get_output_embeddings", None)
    head = 2 * d * vocab if get_out is None or get_out() is not None else 0
    attention = n * (attn_proj + attn_mix)
    if per_layer_sparsity is not None:
        attention -= sum(m.flops_saved_per_token() for m in model.modules()
                         if callable(getattr(m, "flops_saved_per_token", None)))
    total = attention + ffn + router + predictor + head
    return {"gflops_per_token": total / 1e9, "attention": attention / 1e9, "ffn": ffn / 1e9,
            "router": router / 1e9, "predictor": predictor / 1e9, "lm_head": head / 1e9}


def block_sparsity(model) -> list[float]:
    """Per-layer fraction of 32-neuron kernel blocks skipped, cumulative since the last reset
    (equal to the FFN sparsity for LTE's own routers with experts of 32 or more)."""
    out = []
    for layer in lte_layers(model):
        blk = layer.cum_block if layer.cum_block is not None else layer.cum_selected
        if blk is None:
            raise ValueError("no forward pass recorded yet: run the model first")
        out.append(1.0 - float(blk) / max(int(layer.cum_tokens) * layer.n_experts, 1))
    return out


def reset_all_stats(model) -> None:
    """``reset_stats`` of the LTE layers and of any other module that keeps counts (baselines)."""
    reset_stats(model)
    for m in model.modules():
        if callable(getattr(m, "reset_stats", None)) and not hasattr(m, "n_experts"):
            m.reset_stats()


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, seq_len: int = 1024, batch_size: int = 8,
               max_windows: int | None = None, progress: bool = True, autocast: bool | None = None) -> dict[str, Any]:
    """Perplexity of ``model`` on the 1-D token tensor ``ids`` (non-overlapping windows), with
    the FFN sparsity it ran at and GFLOPs per token."""
    device = next(model.parameters()).device
    n_win = ids.numel() // seq_len
    if n_win == 0:
        raise ValueError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    if max_windows is not None:
        n_win = min(n_win, max_windows)
    windows = ids[: n_win * seq_len].view(n_win, seq_len)
    was_training = model.training
    model.eval()
    reset_all_stats(model)
    use_amp = device.type == "cuda" if autocast is None else autocast
    nll, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for i in tqdm(range(0, n_win, batch_size), desc="eval", disable=not progress, leave=False):
        x = windows[i:i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp), without_kv_cache(model):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                               reduction="sum")
        nll += loss.double()
        count += x[:, 1:].numel()
    model.train(was_training)
    st = stats(model, cumulative=True)
    mode = get_mode(model)
    flops = gflops_per_token(model, None if mode == "dense" else st["per_layer"], context=seq_len // 2)
    blocks = block_sparsity(model) if mode != "dense" else [0.0] * len(st["per_layer"])
    return {
        "perplexity": math.exp(float(nll) / count),
        "ffn_sparsity": st["ffn_sparsity"] if mode != "dense" else 0.0,
        "block_sparsity": sum(blocks) / len(blocks),
        "per_layer_sparsity": st["per_layer"],
        "per_layer_block_sparsity": blocks,
        "gflops_per_token": flops["gflops_per_token"],
        "tokens": count,
        "mode": mode,
    }
