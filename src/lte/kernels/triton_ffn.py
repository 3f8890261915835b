"""Triton kernels for the hard-mode sparse FFN at decode batch sizes (1-16 tokens).

Nothing synchronises with the host: the grids are fixed by the shapes, the router runs on the
device and unselected experts are skipped inside the kernels (programs exit, or their loads are
predicated off and move no bytes). Only the selected 32-neuron blocks of ``w_gate``, ``w_up``
and ``w_down`` (all neuron-contiguous ``[f, d]``, so every load is a coalesced row segment) are
read; for several tokens the union of their experts is read and each token is masked to its
own experts in registers. Weights may be fp32/bf16/fp16; accumulation is fp32.

Which variant runs is chosen by the token count (``LTE_TRITON_VARIANT`` forces one): ``fused``
at one token, ``splitk`` at 2-16 tokens; on an H200 (``benchmarks/results/kernel_h200_v4.json``)
fused was 1.9x dense at 50% sparsity and batch 1, while at batch 8 splitk was faster.

``fused``: one launch, one program per 16-neuron slice of an expert doing router, gate/up,
activation and down (atomic adds into an fp32 output), with large K/d chunks per program (few
dependent memory round trips) and enough programs that the last wave stays short.

``splitk``: three launches that replace the long chains by thousands of short programs:

1. router, one program per expert: logits in fp32 -> mask; it also zeroes that expert's gate/up
   accumulators and initialises a slice of the fp32 output, so no memset launch is needed;
2. gate/up, program (expert, 256-wide K chunk): short programs with all their loads in flight;
   partial sums go to fp32 accumulators with a few atomics;
3. down, program (128-wide d block, 4 experts): bias, activation and token mask on the finished
   sums, ``h @ w_down`` over the 4 experts in registers, one atomic add per output element.

Batches above :data:`MAX_DECODE_TOKENS` are prefill: almost every expert is selected by some
token, so the dispatcher (``lte.kernels.sparse_ffn``) uses the masked dense product (cuBLAS).
"""

from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl

from .reference import ACTIVATIONS

MAX_DECODE_TOKENS = 16
VARIANTS = ("splitk", "fused")
# LTE_TRITON_VARIANT forces one variant at every token count (benchmarks compare them); unset,
# the fastest measured one per token count runs (see default_variant).
FORCED_VARIANT = os.environ.get("LTE_TRITON_VARIANT") or None
if FORCED_VARIANT is not None and FORCED_VARIANT not in VARIANTS:
    raise ValueError(f"LTE_TRITON_VARIANT={FORCED_VARIANT!r}: expected one of {VARIANTS}")
# splitk tile sizes: gate/up K chunk, experts per down program, down d block, warps per program
# (4 experts x 128-wide d blocks beat 8 x 64 at batch 8 on an H100 and an H200).
SPLITK_CONFIG = {"block_k": 256, "epp": 4, "block_d": 128, "num_warps": 4}
# fused tile sizes at one token (K chunk of gate/up, d chunk of down, router chunk, warps) and
# at several tokens (tensor-core tiles), and block_f / block_f_dot: neurons per program (an
# expert of 32 runs as 32 // block_f programs). Larger chunks = fewer dependent memory round
# trips per program; smaller neuron slices = more, shorter programs, so the last wave is short
# when few experts are selected. At LLaMA-2-7B shapes on an H200, 2048-wide K chunks, 4 warps and
# 16-neuron slices were the fastest or near it at every sparsity: 43 us at 50% vs 58 us for
# whole experts with 1024/1024 and 8 warps (kernel_h200_v4.json, kernel_h200_tilings*.json);
# 4096-wide down chunks then took 41.5 us against 43.0 for 2048 and were no slower at 0.25-0.9
# (kernel_h200_tilings3.json).
# num_stages: Triton's software-pipelining depth for the K and d loops (3 is Triton's own default);
# tma: read weight tiles with tensor-descriptor bulk copies (Hopper and later; tiles of at most 256
# columns; only where the shapes allow it, else plain loads); dot: run one token through the
# tensor-core (several-token) tiles too; router_first: a router kernel writes the mask (and
# initialises the output) before the FFN kernel, instead of every FFN program computing its
# expert's logit. On an H200 none of these beat the default at 50% (BENCHMARKS.md, eleventh
# session: stages changed nothing, one-token TMA tiles were ~10x slower, dot tiles ~2x), but
# router_first with block_f 8 and block_k 4096 took 17.2 us against 22.1 at 90% sparsity.
# Three more one-token designs were built, checked correct at full shapes and timed slower on an H200
# at 50% than the default's 41.3-41.8 us (twelfth session, BENCHMARKS.md; code in git history):
# loading the down rows before the gate/up loop (47.7-53.9 us, 697d20e~1), a persistent grid
# streaming a router-built work list with the next slice's rows in flight (56-1600 us: full-row
# tiles cost registers and spills, 697d20e), and gate/up products summed element-wise over small K
# chunks with 4-16 warps, reduced once after the loop (42.6-204 us, 3f5c75e).
# maxnreg: cap the registers per thread (0: the compiler's choice, 166 at the default tiling, which
# leaves room for ~3 programs per SM). Caps of 64-128 spill and were slower at 50% (44.5-103 us), but
# cut the call's fixed cost with nothing selected from 5.5 to 4.9 us (kernel_h200_s12_regs.json).
FUSED_CONFIG = {"block_k": 2048, "block_d": 4096, "router_k": 4096, "num_warps": 4, "block_k_dot": 128,
                "block_d_dot": 128, "block_f": 16, "block_f_dot": 16, "num_stages": 3, "tma": 0, "dot": 0,
                "router_first": 0, "maxnreg": 0}
# LTE_TRITON_CONFIG='{"block_k": 512, ...}' overrides entries of the default variant's config.
_CONFIG_KEYS = set(FUSED_CONFIG) | set(SPLITK_CONFIG)


def _env_config(text: str) -> dict:
    """LTE_TRITON_CONFIG's JSON object, with every key one of the variants' config keys."""
    try:
        cfg = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"LTE_TRITON_CONFIG={text!r} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or set(cfg) - _CONFIG_KEYS:
        raise ValueError(f"LTE_TRITON_CONFIG={text!r}: expected a JSON object with keys among {sorted(_CONFIG_KEYS)}")
    return cfg


_ENV_CONFIG = _env_config(os.environ.get("LTE_TRITON_CONFIG", ""))
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}  # silu, gelu, gelu_tanh, relu
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def default_variant(n_tokens: int) -> str:
    """The variant hard-mode inference runs for ``n_tokens`` tokens: ``fused`` at one token,
    ``splitk`` at several (faster there at every sparsity measured), unless LTE_TRITON_VARIANT forces one."""
    if FORCED_VARIANT is not None:
        return FORCED_VARIANT
    return "fused" if n_tokens == 1 else "splitk"


@triton.jit
def _router_logits(x_ptr, rw_ptr, rb_ptr, rc_ptr, e, offs_n, n_ok, offs_kb, D, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, HAS_RB: tl.constexpr, HAS_RC: tl.constexpr):
    """Router logits of expert ``e`` for every token (fp32), shared by both kernel variants
    (``HAS_RC``: a folded router, ``|x w + c| + b``)."""
    racc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + offs_kb
        k_ok = offs_k < D
        xt = tl.load(x_ptr + offs_n[:, None] * D + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        rw = tl.load(rw_ptr + e * D + offs_k, mask=k_ok, other=0.0)
        racc += xt.to(tl.float32) * rw.to(tl.float32)[None, :]
    logit = tl.sum(racc, axis=1)
    if HAS_RC:
        logit = tl.abs(logit + tl.load(rc_ptr + e).to(tl.float32))
    if HAS_RB:
        logit += tl.load(rb_ptr + e).to(tl.float32)
    return logit


@triton.jit
def _act(g, ACT: tl.constexpr):
    """Activation in fp32: 0 silu, 1 gelu (erf), 2 gelu (tanh), 3 relu."""
    if ACT == 0:
        return g * tl.sigmoid(g)
    elif ACT == 1:
        return 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    elif ACT == 2:
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        return g * tl.sigmoid(2.0 * z)  # 0.5 * (1 + tanh(z)) == sigmoid(2z)
    else:
        return tl.maximum(g, 0.0)


@triton.jit
def _mm(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` on tensor cores; ``UPCAST`` computes in fp32 (Triton's CPU interpreter
    mis-multiplies 16-bit dot operands, so interpreted runs upcast)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _load_rows(w, offs, mask, row0, col0, TMA: tl.constexpr):
    """A [rows, cols] tile of a neuron-contiguous weight: a descriptor's bulk copy at
    ``(row0, col0)`` (``TMA``) or a masked load at pointer offsets ``offs``."""
    if TMA:
        return w.load([row0, col0])
    else:
        return tl.load(w + offs, mask=mask, other=0.0)


@triton.jit
def _fused_kernel(
    x_ptr, wg_ptr, wu_ptr, wd_ptr, rw_ptr, rb_ptr, rc_ptr, bg_ptr, bu_ptr, y_ptr, mask_ptr,
    N, D, F, S, E, threshold,
    HAS_GATE: tl.constexpr, HAS_RB: tl.constexpr, HAS_RC: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr,
    ACT: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    N_SUB: tl.constexpr, ROUTER_K: tl.constexpr, TMA: tl.constexpr, MASK_IN: tl.constexpr,
):
    """fused: router, selection, gate/up/act and down (atomics) for one neuron slice of one expert.
    ``TMA``: ``wg_ptr``/``wu_ptr``/``wd_ptr`` are tensor descriptors (bulk copies, out-of-range rows
    and columns read as zeros), else plain pointers with masked loads. ``MASK_IN``: the router kernel
    already wrote the mask (and initialised the output), so a program reads its expert's mask bytes
    instead of computing the logits."""
    pid = tl.program_id(0)
    e = pid // N_SUB
    sub = pid % N_SUB
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_kb = tl.arange(0, BLOCK_K)

    if MASK_IN:
        sel = tl.load(mask_ptr + offs_n * E + e, mask=n_ok, other=0) != 0
    else:  # router logits of expert e for every token, fp32
        logit = _router_logits(x_ptr, rw_ptr, rb_ptr, rc_ptr, e, offs_n, n_ok, tl.arange(0, ROUTER_K), D, BLOCK_N,
                               ROUTER_K, HAS_RB, HAS_RC)
        sel = (logit > threshold) & n_ok
        if sub == 0:
            tl.store(mask_ptr + offs_n * E + e, sel.to(tl.int8), mask=n_ok)
    n_sel = tl.sum(sel.to(tl.int32), axis=0)

    if n_sel > 0:
        offs_f = sub * BLOCK_F + tl.arange(0, BLOCK_F)
        f_ok = offs_f < S
        rows = e * S + offs_f
        offs_db = tl.arange(0, BLOCK_D)
        if USE_DOT:
            accu = tl.zeros([BLOCK_N, BLOCK_F], dtype=tl.float32)
            accg = tl.zeros([BLOCK_N, BLOCK_F], dtype=tl.float32)
        else:  # one token: reduce each chunk at once (small accumulators, so large chunks fit)
            accu1 = tl.zeros([BLOCK_F], dtype=tl.float32)
            accg1 = tl.zeros([BLOCK_F], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + offs_kb
            k_ok = offs_k < D
            wmask = f_ok[:, None] & k_ok[None, :]
            woffs = rows[:, None] * D + offs_k[None, :]
            wu = _load_rows(wu_ptr, woffs, wmask, e * S + sub * BLOCK_F, k0, TMA)
            if USE_DOT:
                xt = tl.load(x_ptr + offs_n[:, None] * D + offs_k[None, :],
                             mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                accu = _mm(xt, tl.trans(wu), accu, PREC, UPCAST)
                if HAS_GATE:
                    wg = _load_rows(wg_ptr, woffs, wmask, e * S + sub * BLOCK_F, k0, TMA)
                    accg = _mm(xt, tl.trans(wg), accg, PREC, UPCAST)
            else:
                xk = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
                if HAS_GATE:
                    wg = _load_rows(wg_ptr, woffs, wmask, e * S + sub * BLOCK_F, k0, TMA)
                    accg1 += tl.sum(wg.to(tl.float32) * xk[None, :], axis=1)
                accu1 += tl.sum(wu.to(tl.float32) * xk[None, :], axis=1)
        if not USE_DOT:
            accu = accu1[None, :]
            accg = accg1[None, :]
        if HAS_BU:
            accu += tl.load(bu_ptr + rows, mask=f_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_GATE:
            if HAS_BG:
                accg += tl.load(bg_ptr + rows, mask=f_ok, other=0.0).to(tl.float32)[None, :]
            h = _act(accg, ACT) * accu
        else:
            h = _act(accu, ACT)
        h = tl.where(sel[:, None] & f_ok[None, :], h, 0.0)  # each token keeps only its own experts

        hd = h.to(x_ptr.dtype.element_ty)  # the wrapper checks every weight has x's dtype
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + offs_db
            d_ok = offs_d < D
            wd = _load_rows(wd_ptr, rows[:, None] * D + offs_d[None, :], f_ok[:, None] & d_ok[None, :],
                            e * S + sub * BLOCK_F, d0, TMA)
            if USE_DOT:
                out = _mm(hd, wd, tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32), PREC, UPCAST)
            else:
                out = tl.sum(tl.trans(h) * wd.to(tl.float32), axis=0)[None, :]
            tl.atomic_add(y_ptr + offs_n[:, None] * D + offs_d[None, :], out,
                          mask=sel[:, None] & d_ok[None, :], sem="relaxed")


@triton.jit
def _router_kernel(
    x_ptr, rw_ptr, rb_ptr, rc_ptr, bd_ptr, mask_ptr, gu_ptr, y_ptr, N, D, F, S, E, threshold, Z_PER_PROG,
    HAS_RB: tl.constexpr, HAS_RC: tl.constexpr, HAS_BD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_Z: tl.constexpr, HAS_GU: tl.constexpr,
):
    """splitk step 1 (and ``fused`` with ``router_first``), one program per expert: router logits ->
    mask; zero this expert's gate/up accumulators (``HAS_GU``) and initialise a slice of the fp32
    output (to ``b_down`` or 0)."""
    e = tl.program_id(0)
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_kb = tl.arange(0, BLOCK_K)
    logit = _router_logits(x_ptr, rw_ptr, rb_ptr, rc_ptr, e, offs_n, n_ok, offs_kb, D, BLOCK_N, BLOCK_K, HAS_RB,
                           HAS_RC)
    tl.store(mask_ptr + offs_n * E + e, ((logit > threshold) & n_ok).to(tl.int8), mask=n_ok)
    offs_s = tl.arange(0, BLOCK_S)
    zmask = n_ok[:, None] & (offs_s < S)[None, :]
    zoffs = offs_n[:, None] * F + (e * S + offs_s)[None, :]
    zeros = tl.zeros([BLOCK_N, BLOCK_S], dtype=tl.float32)
    if HAS_GU:
        tl.store(gu_ptr + zoffs, zeros, mask=zmask)
        tl.store(gu_ptr + N * F + zoffs, zeros, mask=zmask)
    offs_z = e * Z_PER_PROG + tl.arange(0, BLOCK_Z)
    z_ok = (offs_z < N * D) & (offs_z < (e + 1) * Z_PER_PROG)
    if HAS_BD:
        init = tl.load(bd_ptr + offs_z % D, mask=z_ok, other=0.0).to(tl.float32)
    else:
        init = tl.zeros([BLOCK_Z], dtype=tl.float32)
    tl.store(y_ptr + offs_z, init, mask=z_ok)


@triton.jit
def _gate_up_partial_kernel(
    x_ptr, wg_ptr, wu_ptr, mask_ptr, gu_ptr, N, D, F, S, E,
    HAS_GATE: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """splitk step 2, program (expert, K-chunk): partial gate/up sums of a selected expert, atomically
    added to the fp32 accumulators; unselected experts exit after reading one mask column."""
    e = tl.program_id(0)
    kc = tl.program_id(1)
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    sel = tl.load(mask_ptr + offs_n * E + e, mask=n_ok, other=0) != 0
    n_sel = tl.sum(sel.to(tl.int32), axis=0)
    if n_sel > 0:
        offs_s = tl.arange(0, BLOCK_S)
        s_ok = offs_s < S
        rows = e * S + offs_s
        offs_k = kc * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < D
        wmask = s_ok[:, None] & k_ok[None, :]
        woffs = rows[:, None] * D + offs_k[None, :]
        omask = sel[:, None] & s_ok[None, :]
        ooffs = offs_n[:, None] * F + rows[None, :]
        wu = tl.load(wu_ptr + woffs, mask=wmask, other=0.0)
        if HAS_GATE:
            wg = tl.load(wg_ptr + woffs, mask=wmask, other=0.0)
        if USE_DOT:
            xt = tl.load(x_ptr + offs_n[:, None] * D + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                         other=0.0)
            pu = _mm(xt, tl.trans(wu), tl.zeros([BLOCK_N, BLOCK_S], dtype=tl.float32), PREC, UPCAST)
            if HAS_GATE:
                pg = _mm(xt, tl.trans(wg), tl.zeros([BLOCK_N, BLOCK_S], dtype=tl.float32), PREC, UPCAST)
        else:
            xk = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
            pu = tl.sum(wu.to(tl.float32) * xk[None, :], axis=1)[None, :]
            if HAS_GATE:
                pg = tl.sum(wg.to(tl.float32) * xk[None, :], axis=1)[None, :]
        tl.atomic_add(gu_ptr + N * F + ooffs, pu, mask=omask, sem="relaxed")
        if HAS_GATE:
            tl.atomic_add(gu_ptr + ooffs, pg, mask=omask, sem="relaxed")


@triton.jit
def _down_kernel(
    gu_ptr, wd_ptr, mask_ptr, bg_ptr, bu_ptr, y_ptr, N, D, F, S, E,
    HAS_GATE: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, ACT: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, EPP: tl.constexpr,
):
    """splitk step 3, program (d-block, group of EPP experts): bias + activation + per-token mask of the
    complete gate/up sums, ``h @ w_down`` summed over the group in registers, one atomic add."""
    pid_d = tl.program_id(0)
    pid_e = tl.program_id(1)
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    touched = tl.zeros([BLOCK_N], dtype=tl.int32)
    for i in tl.static_range(EPP):  # unrolled: every expert's loads can be in flight together
        e = pid_e * EPP + i
        sel = tl.load(mask_ptr + offs_n * E + e, mask=n_ok & ((offs_n * 0 + e) < E), other=0) != 0
        touched += sel.to(tl.int32)
        n_sel = tl.max(sel.to(tl.int32), axis=0)
        rows = e * S + offs_s
        row_ok = s_ok & ((offs_s * 0 + n_sel) > 0)
        hmask = sel[:, None] & s_ok[None, :]
        hoffs = offs_n[:, None] * F + rows[None, :]
        wd = tl.load(wd_ptr + rows[:, None] * D + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        u = tl.load(gu_ptr + N * F + hoffs, mask=hmask, other=0.0)
        if HAS_BU:
            u += tl.load(bu_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_GATE:
            g = tl.load(gu_ptr + hoffs, mask=hmask, other=0.0)
            if HAS_BG:
                g += tl.load(bg_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
            h = _act(g, ACT) * u
        else:
            h = _act(u, ACT)
        h = tl.where(hmask, h, 0.0)  # each token keeps only its own experts
        if USE_DOT:
            acc = _mm(h.to(wd.dtype), wd, acc, PREC, UPCAST)
        else:
            acc += tl.sum(tl.trans(h) * wd.to(tl.float32), axis=0)[None, :]
    tl.atomic_add(y_ptr + offs_n[:, None] * D + offs_d[None, :], acc,
                  mask=(n_ok & (touched > 0))[:, None] & d_ok[None, :], sem="relaxed")


def interpreted() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _tma_fits(x: torch.Tensor, d: int, expert_size: int, block_f: int, block_k: int, block_d: int) -> bool:
    """Whether the fused kernel can read weights through tensor descriptors: a Hopper-or-later GPU (or
    the interpreter), rows whose byte stride is a multiple of 16, experts made of whole neuron slices
    (a slice never runs into the next expert) and tiles within the 256-element box limit."""
    if not interpreted() and (x.device.type != "cuda" or torch.cuda.get_device_capability(x.device)[0] < 9):
        return False
    return (d * x.element_size()) % 16 == 0 and expert_size % block_f == 0 and max(block_f, block_k, block_d) <= 256


def _check(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, router_w: torch.Tensor,
           expert_size: int, act: str, w_gate: torch.Tensor | None) -> None:
    """Validate shapes, dtypes and devices for the Triton path."""
    n, d = x.shape
    f = w_up.shape[0]
    if act not in _ACT_CODE:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"triton backend supports {_DTYPES}, got {x.dtype}")
    for name, w in (("w_up", w_up), ("w_down", w_down), ("w_gate", w_gate)):
        if w is None:
            continue
        if w.shape != (f, d):
            raise ValueError(f"{name} must be [f={f}, d={d}] (neuron-contiguous), got {tuple(w.shape)}")
        if w.dtype != x.dtype:
            raise ValueError(f"{name} dtype {w.dtype} differs from x dtype {x.dtype}")
    if f % expert_size:
        raise ValueError(f"f={f} is not a multiple of expert_size={expert_size}")
    if router_w.shape != (f // expert_size, d):
        raise ValueError(f"router_w must be [E={f // expert_size}, d={d}], got {tuple(router_w.shape)}")


def sparse_ffn_triton(
    x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, router_w: torch.Tensor,
    router_b: torch.Tensor | None, *, expert_size: int, act: str, w_gate: torch.Tensor | None = None,
    b_up: torch.Tensor | None = None, b_gate: torch.Tensor | None = None, b_down: torch.Tensor | None = None,
    logit_threshold: float = 0.0, router_center: torch.Tensor | None = None, variant: str | None = None,
    block_f: int | None = None, config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode-size sparse FFN (1..16 tokens) with no host synchronisation; returns ``(y, mask)``.

    ``variant``: ``splitk`` (router kernel, split-K gate/up kernel, down kernel), ``fused`` (one
    launch, atomics per neuron slice) or None (:func:`default_variant` of the token count); see
    the module docstring. ``config`` overrides entries of
    :data:`SPLITK_CONFIG` or :data:`FUSED_CONFIG` (tuning); ``block_f`` (default: the config's) is
    the neuron slice of one ``fused`` program.
    """
    _check(x, w_up, w_down, router_w, expert_size, act, w_gate)
    n, d = x.shape
    if not 1 <= n <= MAX_DECODE_TOKENS:
        raise ValueError(f"sparse_ffn_triton handles 1..{MAX_DECODE_TOKENS} tokens, got {n}")
    chosen = variant is None
    variant = default_variant(n) if chosen else variant
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    known = SPLITK_CONFIG if variant == "splitk" else FUSED_CONFIG
    if config and set(config) - set(known):
        raise ValueError(f"unknown {variant} config keys {sorted(set(config) - set(known))}; known: {sorted(known)}")
    f = w_up.shape[0]
    n_exp = f // expert_size
    x = x.contiguous()
    router_w = router_w.contiguous()
    use_dot = n > 1
    block_n = 16 if use_dot else 1
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    upcast = interpreted()
    dev = x.device
    mask = torch.empty(n, n_exp, device=dev, dtype=torch.int8)
    dummy = w_up
    opt = {"w_gate": w_gate, "router_b": router_b, "router_center": router_center, "b_gate": b_gate, "b_up": b_up,
           "b_down": b_down}
    ptr = {k: (v if v is not None else dummy) for k, v in opt.items()}
    env = _ENV_CONFIG if chosen else {}  # LTE_TRITON_CONFIG tunes the variant inference runs

    def route(y32: torch.Tensor, gu: torch.Tensor | None, block_s: int) -> None:
        """Router kernel: the mask, ``y32`` initialised to ``b_down`` or 0, gate/up sums ``gu`` zeroed."""
        rn = triton.next_power_of_2(n)
        z_per = triton.cdiv(n * d, n_exp)
        _router_kernel[(n_exp,)](
            x, router_w, ptr["router_b"], ptr["router_center"], ptr["b_down"], mask, dummy if gu is None else gu,
            y32, n, d, f, expert_size, n_exp, float(logit_threshold), z_per, HAS_RB=router_b is not None,
            HAS_RC=router_center is not None, HAS_BD=b_down is not None, BLOCK_N=rn,
            BLOCK_K=max(64, min(triton.next_power_of_2(d), 4096 // rn)), BLOCK_S=block_s,
            BLOCK_Z=triton.next_power_of_2(z_per), HAS_GU=gu is not None, num_warps=4)
    if variant == "splitk":
        cfg = {**SPLITK_CONFIG, **env, **(config or {})}
        warps = cfg["num_warps"]
        block_s = max(16, triton.next_power_of_2(expert_size))
        y32 = torch.empty(n, d, device=dev, dtype=torch.float32)
        gu = torch.empty(2, n, f, device=dev, dtype=torch.float32)
        route(y32, gu, block_s)
        block_k = min(cfg["block_k"], max(16, triton.next_power_of_2(d)))
        _gate_up_partial_kernel[(n_exp, triton.cdiv(d, block_k))](
            x, ptr["w_gate"], w_up, mask, gu, n, d, f, expert_size, n_exp, HAS_GATE=w_gate is not None,
            USE_DOT=use_dot, PREC=prec, UPCAST=upcast, BLOCK_N=block_n, BLOCK_S=block_s, BLOCK_K=block_k,
            num_warps=warps)
        epp = cfg["epp"]
        block_d = min(cfg["block_d"], max(16, triton.next_power_of_2(d)))
        _down_kernel[(triton.cdiv(d, block_d), triton.cdiv(n_exp, epp))](
            gu, w_down, mask, ptr["b_gate"], ptr["b_up"], y32, n, d, f, expert_size, n_exp,
            HAS_GATE=w_gate is not None, HAS_BG=b_gate is not None, HAS_BU=b_up is not None, ACT=_ACT_CODE[act],
            USE_DOT=use_dot, PREC=prec, UPCAST=upcast, BLOCK_N=block_n, BLOCK_S=block_s, BLOCK_D=block_d, EPP=epp,
            num_warps=warps)
        return y32.to(x.dtype), mask.view(torch.bool)

    cfg = {**FUSED_CONFIG, **env, **(config or {})}
    if cfg["dot"] and not use_dot:  # one token through the tensor-core tiles (its loads feed dots, so
        use_dot, block_n = True, 16  # Triton's software pipeliner keeps several tiles in flight)
    if block_f is None:
        block_f = min(cfg["block_f_dot" if use_dot else "block_f"], triton.next_power_of_2(expert_size))
        block_f = max(block_f, 16) if use_dot else block_f
    if block_f < 1 or block_f & (block_f - 1):
        raise ValueError(f"block_f must be a power of two, got {block_f}")
    if use_dot and block_f < 16:
        raise ValueError("block_f must be >= 16 for several tokens (tensor-core tiles)")
    n_sub = triton.cdiv(expert_size, block_f)
    block_k = min(cfg["block_k_dot" if use_dot else "block_k"], max(16, triton.next_power_of_2(d)))
    block_d = min(cfg["block_d_dot" if use_dot else "block_d"], max(16, triton.next_power_of_2(d)))
    wts = {"w_gate": ptr["w_gate"], "w_up": w_up, "w_down": w_down}
    use_tma = bool(cfg["tma"]) and _tma_fits(x, d, expert_size, block_f, block_k, block_d)
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor
        wts = {k: TensorDescriptor.from_tensor(w, [block_f, block_d if k == "w_down" else block_k])
               for k, w in wts.items() if k != "w_gate" or w_gate is not None}
        wts.setdefault("w_gate", dummy)
    if cfg["router_first"]:  # router kernel first: mask and output initialisation in one launch
        y32 = torch.empty(n, d, device=dev, dtype=torch.float32)
        route(y32, None, 16)
    elif b_down is not None:
        y32 = b_down.to(device=dev, dtype=torch.float32).reshape(1, d).repeat(n, 1)
    else:
        y32 = torch.zeros(n, d, device=dev, dtype=torch.float32)
    _fused_kernel[(n_exp * n_sub,)](
        x, wts["w_gate"], wts["w_up"], wts["w_down"], router_w, ptr["router_b"], ptr["router_center"], ptr["b_gate"],
        ptr["b_up"], y32, mask, n, d, f, expert_size, n_exp, float(logit_threshold),
        HAS_GATE=w_gate is not None, HAS_RB=router_b is not None, HAS_RC=router_center is not None,
        HAS_BG=b_gate is not None, HAS_BU=b_up is not None, ACT=_ACT_CODE[act], USE_DOT=use_dot, PREC=prec,
        UPCAST=upcast, BLOCK_N=block_n, BLOCK_F=block_f,
        BLOCK_K=block_k, BLOCK_D=block_d,
        N_SUB=n_sub, ROUTER_K=min(cfg["router_k"] if not use_dot else 128, max(16, triton.next_power_of_2(d))),
        TMA=use_tma, MASK_IN=bool(cfg["router_first"]), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        maxnreg=cfg["maxnreg"] or None,
    )
    return y32.to(x.dtype), mask.view(torch.bool)
