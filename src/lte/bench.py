"""End-to-end generation speed: an LTE model in hard mode against its own dense self.

The dense reference is the same weights in plain FFN modules (``dense_copy``), so both run
the same attention, cache and generation code. Each setup (eager / static KV cache +
``torch.compile``) is measured for dense and LTE alternately in the same process, several
times, and the median is reported: these machines are noisy, so only ratios measured side
by side mean anything. Tokens/s = new tokens / wall time of ``generate`` (prefill included), or
of :class:`lte.decode.GreedyDecoder` for the ``static+loop`` setup.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn

from .ffn import LTEFFN
from .kernels import kernel_env
from .kernels.reference import activation
from .sparsify import lte_layers, reset_stats, set_mode, stats


class DenseFFN(nn.Module):
    """A plain FFN (``nn.Linear`` projections) with an LTE layer's weights: the dense reference."""

    def __init__(self, layer: LTEFFN) -> None:
        super().__init__()
        d, f = layer.up.shape[1], layer.up.shape[0]

        def lin(w: torch.Tensor, b: torch.Tensor | None, transpose: bool = False) -> nn.Linear:
            w = w.detach().t() if transpose else w.detach()
            m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
            m.weight.data.copy_(w)
            if b is not None:
                m.bias.data.copy_(b.detach())
            return m
        self.up_proj = lin(layer.up, layer.up_bias)
        self.gate_proj = None if layer.gate is None else lin(layer.gate, layer.gate_bias)
        self.down_proj = lin(layer.down, layer.down_bias, transpose=True)
        self.act = layer.act
        self.shape = (d, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``down(act(gate(x)) * up(x))`` or ``down(act(up(x)))``."""
        h = self.up_proj(x)
        h = activation(self.gate_proj(x), self.act) * h if self.gate_proj is not None else activation(h, self.act)
        return self.down_proj(h)


def dense_copy(model: nn.Module) -> nn.Module:
    """A deep copy of an LTE model whose LTE layers are replaced by plain dense FFNs."""
    dense = copy.deepcopy(model)
    for mod in list(dense.modules()):
        for attr, child in list(mod.named_children()):
            if isinstance(child, LTEFFN):
                setattr(mod, attr, DenseFFN(child))
    if hasattr(dense, "lte_hook"):
        dense.lte_hook.remove()
    return dense


def prompt_inputs(tok, prompt_len: int, device, vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """A fixed English prompt of ``prompt_len`` tokens, or seeded random ids when ``tok`` is None
    (models with random weights have no tokenizer)."""
    if tok is None:
        if not vocab_size:
            raise ValueError("a prompt without a tokenizer needs vocab_size")
        ids = torch.randint(0, vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    else:
        text = ("The history of science is the study of the development of science and scientific knowledge, "
                "including both the natural and social sciences. ") * (prompt_len // 8 + 1)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :prompt_len]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


# eager: dynamic cache; static: static KV cache; static+compile: static cache + torch.compile
# (mode "default"); static+cudagraphs: static cache + torch.compile(mode="reduce-overhead"),
# the CUDA-graph setup transformers uses by default on GPUs.
GENERATE_SETUPS = ("eager", "static", "static+compile", "static+cudagraphs")
# static+loop: lte.decode's greedy loop (static cache, compiled step, CUDA graphs on GPUs, no host
# sync per token) instead of Hugging Face generate; both models run it.
LOOP_SETUP = "static+loop"
SETUPS = (*GENERATE_SETUPS, LOOP_SETUP)


def _generate_kwargs(setup: str, pad_id: int | None, new_tokens: int) -> dict[str, Any]:
    if setup not in GENERATE_SETUPS:
        raise ValueError(f"unknown generate setup {setup!r}; expected one of {GENERATE_SETUPS}")
    kw: dict[str, Any] = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=pad_id)
    if setup != "eager":
        kw["cache_implementation"] = "static"
        from transformers import CompileConfig
        mode = "reduce-overhead" if setup == "static+cudagraphs" else "default"
        cc = CompileConfig(fullgraph=False, mode=mode)
        cc._compile_all_devices = True  # transformers compiles only on accelerators unless asked
        kw["compile_config"] = cc
        kw["disable_compile"] = setup == "static"
    return kw


def _now(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work has finished (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _seconds(fn, device: torch.device) -> float:
    """Wall seconds of ``fn()`` (synchronised on CUDA)."""
    t = _now(device)
    with torch.no_grad():
        fn()
    return _now(device) - t


def time_generate(model, enc: dict, kw: dict) -> float:
    """Seconds for one ``generate`` call (synchronised on CUDA)."""
    return _seconds(lambda: model.generate(**enc, **kw), enc["input_ids"].device)


def _timer(setup: str, models: tuple[nn.Module, ...], enc: dict, pad_id: int | None, new_tokens: int):
    """``(timed, warm, decode)``: per-model callables returning the seconds of one timed run and of
    one warm-up run of ``setup``; for the lean loop, ``decode`` maps ``id(model)`` to the seconds of
    its last run after the prefill (else None: ``generate`` does not expose the split)."""
    dev = enc["input_ids"].device
    if setup == LOOP_SETUP:
        from .decode import GreedyDecoder
        mode = "reduce-overhead" if dev.type == "cuda" else "default"
        ids = enc["input_ids"]
        decs = {id(m): GreedyDecoder(m, ids.shape[1] + new_tokens, mode) for m in models}
        decode: dict[int, float] = {}

        def loop(m):
            marks = {}
            t0 = _now(dev)
            with torch.no_grad():
                decs[id(m)].generate(ids, new_tokens, on_prefill=lambda: marks.setdefault("prefill", _now(dev)))
            t1 = _now(dev)
            decode[id(m)] = t1 - marks["prefill"]
            return t1 - t0
        return loop, loop, decode
    kw = _generate_kwargs(setup, pad_id, new_tokens)
    # warm-up: kernels, compilation, caches. A static cache is sized by max_new_tokens and a new
    # size recompiles, so static setups warm up at the timed length (else the first timed run of
    # each model includes a recompilation).
    short = {**kw, "max_new_tokens": min(new_tokens, 16), "min_new_tokens": min(new_tokens, 16)}
    warm = short if setup == "eager" else kw
    return (lambda m: time_generate(m, enc, kw)), (lambda m: time_generate(m, enc, warm)), None


def measured_sparsity(model, enc: dict, new_tokens: int, pad_id: int | None) -> float:
    """FFN sparsity of one eager greedy generation on the same prompt (the timed runs keep the
    selection statistics switched off: their bookkeeping costs decode time, and CUDA-graph
    replay must not keep graph outputs alive across steps)."""
    model.lte_state.track_stats = True
    reset_stats(model)
    time_generate(model, enc, _generate_kwargs("eager", pad_id, new_tokens))
    return stats(model, cumulative=True)["ffn_sparsity"]


def bench_generation(model, tok, *, prompt_len: int = 128, new_tokens: int = 256, repeats: int = 3,
                     setups: tuple[str, ...] = ("eager", "static+compile"), progress: bool = True,
                     dense: nn.Module | None = None, vocab_size: int | None = None,
                     sparsity: float | None = None) -> list[dict]:
    """Dense vs LTE (hard mode) decode tokens/s for each setup; one row per setup with the medians,
    the ratio (tokens over the whole run, prefill included), the FFN sparsity LTE ran at, the
    kernel-selecting environment variables (``kernel_env``), for the lean loop also the decode
    steps alone (``dense_decode_tok_s``, ``lte_decode_tok_s``, ``decode_speedup``: prefill
    excluded), and ``speedup_vs_fastest_dense``: LTE against the
    fastest dense setup of the call. Every setup is warmed up first, then each repeat times every
    setup, dense and LTE alternately, so that a machine whose speed drifts over minutes moves all
    setups alike and the fastest dense setup is picked fairly.

    ``dense``: the dense reference (default: ``dense_copy(model)``; pass one to reuse it, and
    its compiled code, across calls). ``tok=None`` uses random prompt ids (needs ``vocab_size``).
    ``sparsity``: the value ``measured_sparsity`` gave for this model and prompt (an eager
    generation pass; default: measured here), so callers timing one setup per call pay it once.
    """
    if len(set(setups)) != len(setups) or not setups:
        raise ValueError(f"setups must be distinct and not empty, got {list(setups)}")
    set_mode(model, "hard")
    model.eval()
    dense = (dense if dense is not None else dense_copy(model)).eval()
    enc = prompt_inputs(tok, prompt_len, next(model.parameters()).device, vocab_size)
    pad_id = tok.pad_token_id if tok is not None else None
    if sparsity is None:
        sparsity = measured_sparsity(model, enc, new_tokens, pad_id)
    rows = []
    model.lte_state.track_stats = False  # no bookkeeping while timing; sparsity from the eager pass
    try:
        timers = {}
        for setup in setups:
            timers[setup] = _timer(setup, (dense, model), enc, pad_id, new_tokens)
            warm = timers[setup][1]
            for m in (dense, model):
                warm(m)
                warm(m)
        td: dict[str, list[float]] = {s: [] for s in setups}
        tl: dict[str, list[float]] = {s: [] for s in setups}
        dd: dict[str, list[float]] = {s: [] for s in setups}  # decode steps only (lean loop)
        dl: dict[str, list[float]] = {s: [] for s in setups}
        for r in range(repeats):
            for setup in setups:
                timed, _, decode = timers[setup]
                td[setup].append(timed(dense))
                tl[setup].append(timed(model))
                if decode is not None:
                    dd[setup].append(decode[id(dense)])
                    dl[setup].append(decode[id(model)])
                if progress:
                    print(f"[bench] {setup} {r + 1}/{repeats}: dense {new_tokens / td[setup][-1]:.1f} tok/s, "
                          f"lte {new_tokens / tl[setup][-1]:.1f} tok/s", flush=True)
        for setup in setups:
            d_tps, l_tps = new_tokens / statistics.median(td[setup]), new_tokens / statistics.median(tl[setup])
            rows.append({"setup": setup, "dense_tok_s": d_tps, "lte_tok_s": l_tps, "speedup": l_tps / d_tps,
                         "sparsity": sparsity, "prompt_len": prompt_len, "new_tokens": new_tokens,
                         "repeats": repeats, "backend": lte_layers(model)[0].backend,
                         "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                         "kernel_env": kernel_env()})
            if dd[setup] and new_tokens > 1:  # the new_tokens - 1 steps after the prefill's token
                d_dec = (new_tokens - 1) / statistics.median(dd[setup])
                l_dec = (new_tokens - 1) / statistics.median(dl[setup])
                rows[-1].update(dense_decode_tok_s=d_dec, lte_decode_tok_s=l_dec, decode_speedup=l_dec / d_dec)
    finally:
        model.lte_state.track_stats = True
    fastest = max(rows, key=lambda r: r["dense_tok_s"])
    for r in rows:
        r["fastest_dense_setup"] = fastest["setup"]
        r["speedup_vs_fastest_dense"] = r["lte_tok_s"] / fastest["dense_tok_s"]
    return rows


@torch.no_grad()
def calibrate_router_bias(model: nn.Module, input_ids: torch.Tensor, sparsity: float) -> list[float]:
    """Shift each LTE layer's router biases by one constant so that ``sparsity`` of the
    (token, expert) pairs of ``input_ids`` fall below the threshold: routers that give a
    chosen sparsity on a model with random weights (speed benchmarks). Returns the shifts."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    layers = lte_layers(model)
    captured: dict[int, torch.Tensor] = {}

    def hook(i: int):
        def fn(module, args):
            captured[i] = module.router.logits(args[0].reshape(-1, args[0].shape[-1])) - module.logit_threshold
        return fn

    shifts = []
    mode = layers[0].mode
    set_mode(model, "dense")
    for i, layer in enumerate(layers):  # layer by layer: later layers see the already-sparse earlier ones
        h = layer.register_forward_pre_hook(hook(i))
        try:
            set_mode(model, "hard")
            for later in layers[i:]:
                later.mode = "dense"
            model(input_ids=input_ids)
        finally:
            h.remove()
        q = torch.quantile(captured[i].flatten().float(), sparsity).item()
        layer.router.bias.sub_(q)
        shifts.append(-q)
    set_mode(model, mode)
    return shifts


__all__ = ["SETUPS", "DenseFFN", "dense_copy", "bench_generation", "calibrate_router_bias", "measured_sparsity",
           "time_generate"]
