"""The CPU kernel of the ``lte::sparse_ffn`` operator, in C++.

A decode step calls the sparse FFN once per layer. Through Python (the operator's Python
kernel, the argument checks, ``ctypes``) each call paid for Python work before the C kernel
started. This module registers a C++ kernel for the operator's CPU dispatch key that calls the C
kernel of :mod:`lte.kernels.cpu` directly: 67-69 us per SmolLM2 FFN call at 50% against 82 us
(``benchmarks/cpu_op_overhead.py``), and a median 1.34x instead of 1.29x end to end (BENCHMARKS.md).
It serves only what the C kernel serves: backend ``auto``/``cpu``, 1 to
:data:`~lte.kernels.cpu.MAX_NATIVE_TOKENS` tokens, fp32/bf16/fp16, contiguous CPU tensors of
consistent shapes. Every other call (prefill, another backend, a bad argument) goes on to the
Python dispatch through ``lte::sparse_ffn_generic``, which gives the same result or error.

Built once per machine with the system C++ compiler against torch's headers (~10 s); when
that fails the operator keeps its Python kernel, with one warning. ``LTE_DISABLE_NATIVE_OP=1``
keeps the Python kernel on purpose (to measure what this module saves).
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings

import torch

from . import cpu
from .reference import ACTIVATIONS

_CPP = r"""
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include <cstdint>
#include <optional>
#include <string_view>
#include <tuple>

using Tensor = at::Tensor;
using OptTensor = std::optional<Tensor>;
using Out = std::tuple<Tensor, Tensor>;
using Str = c10::string_view;

/* The C kernels of lte.kernels.cpu, one per weight type, all of this signature. */
extern "C" {
typedef int ffn_t(int64_t, int64_t, int64_t, int64_t, const void*, const void*, const void*, const void*,
                  const void*, const void*, const void*, int, const void*, const void*, const void*, float, int,
                  void*, uint8_t*, int);
ffn_t lte_ffn_f32, lte_ffn_bf16, lte_ffn_f16;
}

static ffn_t* const kFns[3] = {lte_ffn_f32, lte_ffn_bf16, lte_ffn_f16};
static const char* kActs[] = {$ACTS};
constexpr int64_t kMaxTokens = $MAX_TOKENS;

static int type_code(at::ScalarType t) {
    return t == at::kFloat ? 0 : t == at::kBFloat16 ? 1 : t == at::kHalf ? 2 : -1;
}

static int act_code(Str a) {
    for (int i = 0; i < (int)(sizeof(kActs) / sizeof(kActs[0])); ++i)
        if (a == kActs[i]) return i;
    return -1;
}

/* A CPU tensor of dtype dt, contiguous, of exactly this shape (what the C kernel indexes blindly). */
static bool fits(const Tensor& t, at::ScalarType dt, c10::IntArrayRef shape) {
    return t.device().is_cpu() && t.scalar_type() == dt && t.is_contiguous() && t.sizes() == shape;
}
static bool fits(const OptTensor& t, at::ScalarType dt, c10::IntArrayRef shape) {
    return !t.has_value() || fits(*t, dt, shape);
}
static const void* ptr(const OptTensor& t) { return t.has_value() ? t->data_ptr() : nullptr; }

static Out generic(const Tensor& x, const Tensor& w_up, const Tensor& w_down, const Tensor& rw,
                   const OptTensor& rb, const OptTensor& rc, const OptTensor& wg, const OptTensor& bu,
                   const OptTensor& bg, const OptTensor& bd, int64_t s, Str act, double thr, Str backend) {
    static auto op = c10::Dispatcher::singleton()
        .findSchemaOrThrow("lte::sparse_ffn_generic", "")
        .typed<Out(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                   const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, int64_t, Str, double,
                   Str)>();
    return op.call(x, w_up, w_down, rw, rb, rc, wg, bu, bg, bd, s, act, thr, backend);
}

static Out sparse_ffn_cpu(const Tensor& x, const Tensor& w_up, const Tensor& w_down, const Tensor& rw,
                          const OptTensor& rb, const OptTensor& rc, const OptTensor& wg, const OptTensor& bu,
                          const OptTensor& bg, const OptTensor& bd, int64_t s, Str act, double thr, Str backend) {
    const int ty = type_code(x.scalar_type()), rty = type_code(rw.scalar_type()), ac = act_code(act);
    bool ok = (backend == "auto" || backend == "cpu") && ty >= 0 && rty >= 0 && ac >= 0 && s >= 1
              && x.dim() == 2 && x.size(0) >= 1 && x.size(0) <= kMaxTokens && w_up.dim() == 2;
    int64_t n = 0, d = 0, f = 0, E = 0;
    if (ok) {
        n = x.size(0); d = x.size(1); f = w_up.size(0); E = f / s;
        const auto dt = x.scalar_type(), rdt = rw.scalar_type();
        ok = f % s == 0 && fits(x, dt, {n, d}) && fits(w_up, dt, {f, d}) && fits(w_down, dt, {f, d})
             && fits(wg, dt, {f, d}) && fits(bu, dt, {f}) && fits(bg, dt, {f}) && fits(bd, dt, {d})
             && fits(rw, rdt, {E, d}) && fits(rb, rdt, {E}) && fits(rc, rdt, {E});
    }
    if (!ok) return generic(x, w_up, w_down, rw, rb, rc, wg, bu, bg, bd, s, act, thr, backend);
    Tensor y = at::empty({n, d}, x.options());
    Tensor mask = at::empty({n, E}, x.options().dtype(at::kBool));
    const int r = kFns[ty](n, d, s, E, x.data_ptr(), ptr(wg), w_up.data_ptr(), w_down.data_ptr(), rw.data_ptr(),
                           ptr(rb), ptr(rc), rty, ptr(bg), ptr(bu), ptr(bd), (float)thr, ac, y.data_ptr(),
                           (uint8_t*)mask.data_ptr(), at::get_num_threads());
    TORCH_CHECK(r == 0, "the native CPU sparse FFN could not allocate its scratch buffers");
    return {y, mask};
}

TORCH_LIBRARY_IMPL(lte, CPU, m) { m.impl("sparse_ffn", TORCH_FN(sparse_ffn_cpu)); }
"""

_state: dict[str, object] = {}
_lock = threading.Lock()


def _source() -> str:
    acts = ", ".join(f'"{a}"' for a in ACTIVATIONS)  # the C kernel's activation codes are these positions
    return _CPP.replace("$ACTS", acts).replace("$MAX_TOKENS", str(cpu.MAX_NATIVE_TOKENS))


def _build_and_load() -> None:
    kernel = cpu.native_library_path()
    if kernel is None:
        raise RuntimeError("the C kernel is unavailable")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    from torch.utils import cpp_extension
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = ["-O2", "-std=c++20", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    flags += [f"-I{p}" for p in cpp_extension.include_paths()]
    lib_dirs = cpp_extension.library_paths()
    libs = (str(kernel), *(f"-L{p}" for p in lib_dirs), "-lc10", "-ltorch_cpu",
            *(f"-Wl,-rpath,{p}" for p in (*lib_dirs, str(kernel.parent))))
    path = cpu.build_shared_library("lte_cpu_op", _source(), cxx, flags, suffix=".cpp", libs=libs,
                                    key_extra=torch.__version__,
                                    announce="lte: building the C++ CPU operator (once per machine, ~10 s) ...")
    torch.ops.load_library(str(path))


def load_native_op() -> bool:
    """Register the C++ CPU kernel of ``lte::sparse_ffn`` (building it on first use); ``False``,
    with one warning, when it cannot be built here (the Python kernel then serves every call)."""
    if "ok" in _state:
        return bool(_state["ok"])
    with _lock:
        if "ok" not in _state:
            if os.environ.get("LTE_DISABLE_NATIVE_OP", "0") not in ("", "0"):
                _state["ok"] = False  # keep the C kernel, call it through Python (LTE_DISABLE_NATIVE: no C kernel)
            else:
                try:
                    _build_and_load()
                    _state["ok"] = True
                except (RuntimeError, OSError) as exc:
                    _state["ok"] = False
                    if cpu.native_available():  # no second warning when the C kernel itself is missing
                        warnings.warn(f"lte: C++ operator for the CPU kernel unavailable, calls go through "
                                      f"Python ({exc})", RuntimeWarning, stacklevel=3)
    return bool(_state["ok"])
