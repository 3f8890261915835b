"""Triton kernels for the hard-mode sparse FFN at decode batch sizes (1-16 tokens).

One launch computes the router, the selection and the FFN with no host synchronisation:

* the grid is fixed: one program per ``BLOCK_F``-neuron slice of every expert;
* each program computes its expert's router logits for all tokens (fp32) and, when no
  token selects the expert, stops before touching a weight (the mask is written by the
  first slice of every expert);
* otherwise it streams only its rows of ``w_gate`` / ``w_up`` (neuron-contiguous, so the
  loads are coalesced), applies bias, activation and the per-token mask in fp32 registers
  (each token keeps its own experts even though the union of experts is read), and then
  either adds ``h @ w_down[rows]`` into an fp32 output with atomics (``fused``) or writes
  ``h`` for a second, split-K down-projection kernel (``split``) that reduces over experts
  in registers and issues far fewer atomics.

Batches above :data:`MAX_DECODE_TOKENS` are prefill: almost every expert is selected by some
token, so the fastest path measured is the masked dense product (cuBLAS), see
``lte.kernels.sparse_ffn``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .reference import ACTIVATIONS

MAX_DECODE_TOKENS = 16
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}  # silu, gelu, gelu_tanh, relu
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
def _gate_up_kernel(
    x_ptr, wg_ptr, wu_ptr, wd_ptr, rw_ptr, rb_ptr, bg_ptr, bu_ptr, y_ptr, h_ptr, mask_ptr,
    N, D, F, S, E, threshold,
    HAS_GATE: tl.constexpr, HAS_RB: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr,
    ACT: tl.constexpr, FUSED_DOWN: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    N_SUB: tl.constexpr,
):
    """Router + selection + gate/up/act for one neuron slice of one expert (+ fused down)."""
    pid = tl.program_id(0)
    e = pid // N_SUB
    sub = pid % N_SUB
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_kb = tl.arange(0, BLOCK_K)

    # Router logits of expert e for every token, fp32.
    racc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + offs_kb
        k_ok = offs_k < D
        xt = tl.load(x_ptr + offs_n[:, None] * D + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        rw = tl.load(rw_ptr + e * D + offs_k, mask=k_ok, other=0.0)
        racc += xt.to(tl.float32) * rw.to(tl.float32)[None, :]
    logit = tl.sum(racc, axis=1)
    if HAS_RB:
        logit += tl.load(rb_ptr + e).to(tl.float32)
    sel = (logit > threshold) & n_ok
    if sub == 0:
        tl.store(mask_ptr + offs_n * E + e, sel.to(tl.int8), mask=n_ok)
    n_sel = tl.sum(sel.to(tl.int32), axis=0)

    if n_sel > 0:
        offs_f = sub * BLOCK_F + tl.arange(0, BLOCK_F)
        f_ok = offs_f < S
        rows = e * S + offs_f
        if USE_DOT:
            accu = tl.zeros([BLOCK_N, BLOCK_F], dtype=tl.float32)
            accg = tl.zeros([BLOCK_N, BLOCK_F], dtype=tl.float32)
        else:
            accu2 = tl.zeros([BLOCK_F, BLOCK_K], dtype=tl.float32)
            accg2 = tl.zeros([BLOCK_F, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + offs_kb
            k_ok = offs_k < D
            wmask = f_ok[:, None] & k_ok[None, :]
            woffs = rows[:, None] * D + offs_k[None, :]
            wu = tl.load(wu_ptr + woffs, mask=wmask, other=0.0)
            if USE_DOT:
                xt = tl.load(x_ptr + offs_n[:, None] * D + offs_k[None, :],
                             mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                accu = _mm(xt, tl.trans(wu), accu, PREC, UPCAST)
                if HAS_GATE:
                    wg = tl.load(wg_ptr + woffs, mask=wmask, other=0.0)
                    accg = _mm(xt, tl.trans(wg), accg, PREC, UPCAST)
            else:
                xk = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
                accu2 += wu.to(tl.float32) * xk[None, :]
                if HAS_GATE:
                    wg = tl.load(wg_ptr + woffs, mask=wmask, other=0.0)
                    accg2 += wg.to(tl.float32) * xk[None, :]
        if not USE_DOT:
            accu = tl.sum(accu2, axis=1)[None, :]
            accg = tl.sum(accg2, axis=1)[None, :]
        if HAS_BU:
            accu += tl.load(bu_ptr + rows, mask=f_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_GATE:
            if HAS_BG:
                accg += tl.load(bg_ptr + rows, mask=f_ok, other=0.0).to(tl.float32)[None, :]
            h = _act(accg, ACT) * accu
        else:
            h = _act(accu, ACT)
        h = tl.where(sel[:, None] & f_ok[None, :], h, 0.0)  # each token keeps only its own experts

        if FUSED_DOWN:
            offs_db = tl.arange(0, BLOCK_D)
            hd = h.to(wd_ptr.dtype.element_ty)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + offs_db
                d_ok = offs_d < D
                wd = tl.load(wd_ptr + rows[:, None] * D + offs_d[None, :], mask=f_ok[:, None] & d_ok[None, :],
                             other=0.0)
                if USE_DOT:
                    out = _mm(hd, wd, tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32), PREC, UPCAST)
                else:
                    out = tl.sum(tl.trans(h) * wd.to(tl.float32), axis=0)[None, :]
                tl.atomic_add(y_ptr + offs_n[:, None] * D + offs_d[None, :], out,
                              mask=sel[:, None] & d_ok[None, :], sem="relaxed")
        else:
            tl.store(h_ptr + offs_n[:, None] * F + rows[None, :], h, mask=n_ok[:, None] & f_ok[None, :])


@triton.jit
def _down_kernel(
    h_ptr, wd_ptr, mask_ptr, y_ptr, N, D, F, S, E, EXP_PER_PROG,
    USE_DOT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Split-K down projection: program (d-block, expert range) sums its selected experts, one atomic add."""
    pid_d = tl.program_id(0)
    pid_e = tl.program_id(1)
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for i in range(0, EXP_PER_PROG):
        e = pid_e * EXP_PER_PROG + i
        ld_ok = n_ok & ((offs_n * 0 + e) < E)
        sel = tl.load(mask_ptr + offs_n * E + e, mask=ld_ok, other=0) != 0
        n_sel = tl.max(sel.to(tl.int32), axis=0)
        row_ok = s_ok & ((offs_s * 0 + n_sel) > 0)
        rows = e * S + offs_s
        # Predicated loads: an unselected expert moves no bytes; unwritten h rows are never read.
        h = tl.load(h_ptr + offs_n[:, None] * F + rows[None, :], mask=sel[:, None] & s_ok[None, :], other=0.0)
        wd = tl.load(wd_ptr + rows[:, None] * D + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                     other=0.0)
        if USE_DOT:
            acc = _mm(h.to(wd.dtype), wd, acc, PREC, UPCAST)
        else:
            acc += tl.sum(tl.trans(h) * wd.to(tl.float32), axis=0)[None, :]
    tl.atomic_add(y_ptr + offs_n[:, None] * D + offs_d[None, :], acc, mask=n_ok[:, None] & d_ok[None, :],
                  sem="relaxed")


def interpreted() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


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
    logit_threshold: float = 0.0, variant: str = "fused", block_f: int | None = None,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode-size sparse FFN (1..16 tokens) in one or two launches; returns ``(y, mask)``."""
    _check(x, w_up, w_down, router_w, expert_size, act, w_gate)
    n, d = x.shape
    if not 1 <= n <= MAX_DECODE_TOKENS:
        raise ValueError(f"sparse_ffn_triton handles 1..{MAX_DECODE_TOKENS} tokens, got {n}")
    if variant not in ("fused", "split"):
        raise ValueError(f"variant must be 'fused' or 'split', got {variant!r}")
    f = w_up.shape[0]
    n_exp = f // expert_size
    x = x.contiguous()
    use_dot = n > 1
    block_n = 16 if use_dot else 1
    if block_f is None:
        block_f = 16 if use_dot else min(16, triton.next_power_of_2(expert_size))
    if use_dot and block_f < 16:
        raise ValueError("block_f must be >= 16 for several tokens (tensor-core tiles)")
    n_sub = triton.cdiv(expert_size, block_f)
    block_k = 128 if use_dot else 256
    block_d = 128 if use_dot else 256
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    upcast = interpreted()
    dev = x.device
    if b_down is not None:
        y32 = b_down.to(device=dev, dtype=torch.float32).reshape(1, d).repeat(n, 1)
    else:
        y32 = torch.zeros(n, d, device=dev, dtype=torch.float32)
    mask = torch.empty(n, n_exp, device=dev, dtype=torch.int8)
    h = torch.empty(n, f, device=dev, dtype=torch.float32) if variant == "split" else y32
    dummy = w_up
    _gate_up_kernel[(n_exp * n_sub,)](
        x, w_gate if w_gate is not None else dummy, w_up, w_down, router_w.contiguous(),
        router_b if router_b is not None else dummy, b_gate if b_gate is not None else dummy,
        b_up if b_up is not None else dummy, y32, h, mask,
        n, d, f, expert_size, n_exp, float(logit_threshold),
        HAS_GATE=w_gate is not None, HAS_RB=router_b is not None, HAS_BG=b_gate is not None,
        HAS_BU=b_up is not None, ACT=_ACT_CODE[act], FUSED_DOWN=variant == "fused", USE_DOT=use_dot, PREC=prec,
        UPCAST=upcast, BLOCK_N=block_n, BLOCK_F=block_f, BLOCK_K=block_k, BLOCK_D=block_d, N_SUB=n_sub, num_warps=num_warps,
    )
    if variant == "split":
        block_s = max(16, triton.next_power_of_2(expert_size))
        block_dd = 256 if d >= 2048 else 64
        exp_per_prog = max(1, triton.cdiv(n_exp, 32))
        grid = (triton.cdiv(d, block_dd), triton.cdiv(n_exp, exp_per_prog))
        _down_kernel[grid](
            h, w_down, mask, y32, n, d, f, expert_size, n_exp, exp_per_prog,
            USE_DOT=use_dot, PREC=prec, UPCAST=upcast, BLOCK_N=block_n, BLOCK_S=block_s, BLOCK_D=block_dd, num_warps=num_warps,
        )
    return y32.to(x.dtype), mask.view(torch.bool)
