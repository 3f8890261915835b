"""Kernel dispatch for the hard-mode sparse FFN.

Backends (all compute exactly :func:`lte.kernels.reference.sparse_ffn_reference` with the mask
of :func:`lte.kernels.reference.router_mask`, linear or folded routers alike):

* ``reference``: masked dense PyTorch, any device (the definition).
* ``triton``: CUDA (or ``TRITON_INTERPRET=1`` on CPU tensors); one launch at decode sizes
  (1-16 tokens) that computes the router on the device, skips unselected experts and
  reads only the selected 32-neuron blocks; masked dense cuBLAS for prefill.
* ``cpu``: CPU tensors; a small C kernel (compiled once with the system C compiler) that
  reads only the selected blocks at 1-8 tokens, masked dense PyTorch above; a PyTorch
  gather fallback when no compiler is available.

``auto`` picks ``triton`` for CUDA tensors when Triton imports, ``cpu`` for CPU tensors.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .reference import ACTIVATIONS, router_mask, sparse_ffn_reference

__all__ = ["available_backends", "resolve_backend", "sparse_ffn", "union_sparsity", "router_mask",
           "sparse_ffn_reference", "ACTIVATIONS", "kernel_env"]

BACKENDS = ("reference", "cpu", "triton")
# Environment variables that change which kernel code runs or how it is tiled (see the backends).
KERNEL_ENV = ("LTE_TRITON_VARIANT", "LTE_TRITON_CONFIG", "LTE_DISABLE_NATIVE", "LTE_DISABLE_NATIVE_OP")


def kernel_env() -> dict[str, str]:
    """The kernel-selecting environment variables set in this process, for benchmark records."""
    return {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}


def _triton_importable() -> bool:
    """True when the ``triton`` package can be imported here."""
    return importlib.util.find_spec("triton") is not None


def _triton_interpreted() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_backends() -> list[str]:
    """Backends usable in this process (``triton`` only when importable)."""
    out = ["reference", "cpu"]
    if _triton_importable():
        out.append("triton")
    return out


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Concrete backend for ``name`` (``auto`` or a backend) on ``device``; raises if it cannot run."""
    dev = torch.device(device)
    if name == "auto":
        if dev.type == "cuda":
            return "triton" if _triton_importable() else "reference"
        if dev.type == "cpu":
            return "cpu"
        return "reference"
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected 'auto' or one of {list(BACKENDS)}")
    if name == "triton":
        if not _triton_importable():
            raise RuntimeError("kernel backend 'triton' requested but triton is not installed (pip install triton)")
        if dev.type != "cuda" and not (dev.type == "cpu" and _triton_interpreted()):
            raise RuntimeError(f"kernel backend 'triton' needs CUDA tensors (got {dev.type}); on CPU set "
                               "TRITON_INTERPRET=1 (slow, for tests) or use backend 'cpu'")
    if name == "cpu" and dev.type != "cpu":
        raise ValueError(f"kernel backend 'cpu' needs CPU tensors, got {dev.type}")
    return name


def union_sparsity(mask: torch.Tensor) -> float:
    """Fraction of experts selected by no token of ``mask`` ``[N, E]`` (what a batched kernel skips)."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [N, E], got shape {tuple(mask.shape)}")
    return 1.0 - mask.any(dim=0).float().mean().item()


def _check_args(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, router_w: torch.Tensor,
                router_center: torch.Tensor | None, expert_size: int, act: str) -> None:
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be [N >= 1, d], got shape {tuple(x.shape)}")
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")
    f, d = w_up.shape
    if x.shape[1] != d or w_down.shape != (f, d):
        raise ValueError(f"x [N, d={x.shape[1]}], w_up [f, d] {tuple(w_up.shape)} and w_down [f, d] "
                         f"{tuple(w_down.shape)} do not agree (w_down is stored transposed, neuron-contiguous)")
    if expert_size < 1 or f % expert_size:
        raise ValueError(f"f={f} is not a multiple of expert_size={expert_size}")
    if router_w.shape != (f // expert_size, d):
        raise ValueError(f"router_w must be [E={f // expert_size}, d={d}], got {tuple(router_w.shape)}")
    if router_center is not None and router_center.shape != (f // expert_size,):
        raise ValueError(f"router_center must be [E={f // expert_size}], got {tuple(router_center.shape)}")


def sparse_ffn(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, router_w: torch.Tensor,
               router_b: torch.Tensor | None, *, expert_size: int, act: str, w_gate: torch.Tensor | None = None,
               b_up: torch.Tensor | None = None, b_gate: torch.Tensor | None = None,
               b_down: torch.Tensor | None = None, logit_threshold: float = 0.0,
               router_center: torch.Tensor | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Hard-mode FFN over ``x`` ``[N, d]``: returns ``(y [N, d], mask [N, E] bool)``. With
    ``router_center`` ``[E]`` the router is folded: ``|x W^T + c| + b`` (``lte.router``)."""
    _check_args(x, w_up, w_down, router_w, router_center, expert_size, act)
    name = resolve_backend(backend, x.device)
    kw = dict(expert_size=expert_size, act=act, w_gate=w_gate, b_up=b_up, b_gate=b_gate, b_down=b_down)
    rkw = dict(logit_threshold=logit_threshold, router_center=router_center)
    if name == "triton":
        from .triton_ffn import MAX_DECODE_TOKENS, sparse_ffn_triton
        if x.shape[0] <= MAX_DECODE_TOKENS:
            return sparse_ffn_triton(x, w_up, w_down, router_w, router_b, **rkw, **kw)
        # Prefill: the union of many tokens' experts is nearly all of them; masked dense cuBLAS is fastest.
    elif name == "cpu":
        from .cpu import sparse_ffn_cpu
        return sparse_ffn_cpu(x, w_up, w_down, router_w, router_b, **rkw, **kw)
    mask = router_mask(x, router_w, router_b, **rkw)
    return sparse_ffn_reference(x, w_up, w_down, mask, **kw), mask


# --------------------------------------------------------------------------- torch op
# The dispatch as one opaque PyTorch operator, so that torch.compile (e.g. Hugging Face
# generation with a static cache) keeps the sparse FFN in its graph instead of breaking at
# a ctypes or Triton launcher call. Its Python kernel is the dispatch above; on CPU a C++
# kernel (lte.kernels.cpu_op) takes over once built, handing what it does not serve to
# ``lte::sparse_ffn_generic``, the same operator with only the Python kernel. The operator is
# inference-only: its outputs never require grad.
_SCHEMA = ("(Tensor x, Tensor w_up, Tensor w_down, Tensor router_w, Tensor? router_b, Tensor? router_center, "
           "Tensor? w_gate, Tensor? b_up, Tensor? b_gate, Tensor? b_down, int expert_size, str act, "
           "float logit_threshold, str backend) -> (Tensor, Tensor)")
_LIB = torch.library.Library("lte", "DEF")


def _op_kernel(x, w_up, w_down, router_w, router_b, router_center, w_gate, b_up, b_gate, b_down, expert_size, act,
               logit_threshold, backend):
    if x.device.type == "cpu" and backend in ("auto", "cpu"):
        from .cpu_op import load_native_op
        load_native_op()  # later CPU calls skip this Python kernel
    with torch.no_grad():
        y, mask = sparse_ffn(x, w_up, w_down, router_w, router_b, expert_size=expert_size, act=act, w_gate=w_gate,
                             b_up=b_up, b_gate=b_gate, b_down=b_down, logit_threshold=logit_threshold,
                             router_center=router_center, backend=backend)
    return y.clone() if y.data_ptr() == x.data_ptr() else y, mask


def _op_fake(x, w_up, w_down, router_w, router_b, router_center, w_gate, b_up, b_gate, b_down, expert_size, act,
             logit_threshold, backend):
    return x.new_empty(x.shape[0], w_up.shape[1]), x.new_empty(x.shape[0], router_w.shape[0], dtype=torch.bool)


for _name in ("sparse_ffn", "sparse_ffn_generic"):
    _LIB.define(_name + _SCHEMA)
    _LIB.impl(_name, _op_kernel, "CompositeExplicitAutograd")
    _LIB.impl(_name, torch.library.fallthrough_kernel, "Autograd")  # no graph, and no Python on the way
    torch.library.register_fake(f"lte::{_name}", _op_fake, lib=_LIB)

#: ``sparse_ffn`` as a registered operator (``torch.ops.lte.sparse_ffn``), positional arguments in
#: the schema's order.
sparse_ffn_op = torch.ops.lte.sparse_ffn.default
