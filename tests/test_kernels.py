"""Every kernel backend equals the reference (lte.kernels.reference) on random problems.

Triton runs under its CPU interpreter (TRITON_INTERPRET=1) on small shapes when no GPU is
present; with CUDA the same checks run on the GPU, plus LLaMA-2-7B FFN shapes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from lte import kernels
from lte.kernels import cpu as cpu_kernels
from lte.kernels.reference import router_mask, sparse_ffn_reference

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}
NEAR = 1e-3  # logits this close to the threshold may round either way in another summation order


def _interpreter_ready() -> bool:
    """Triton decides interpreter vs GPU when triton.language is first imported: check which it chose."""
    import triton.language as tl
    return type(tl.zeros).__name__ == "InterpretedFunction"


@pytest.fixture(scope="module")
def triton_ffn():
    """The Triton module, on the GPU or under the CPU interpreter (env set before the kernels are made)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install triton): the triton backend cannot be tested")
    old = os.environ.get("TRITON_INTERPRET")
    if not HAS_CUDA:
        os.environ["TRITON_INTERPRET"] = "1"
        if not _interpreter_ready():
            if old is None:
                os.environ.pop("TRITON_INTERPRET", None)
            pytest.skip("triton.language was imported before TRITON_INTERPRET=1 in this process; "
                        "test_triton_interpreter_in_subprocess runs these tests instead")
    import lte.kernels.triton_ffn as mod
    if not HAS_CUDA:  # kernels made before the variable was set would need a GPU: remake them
        mod = importlib.reload(mod)
    yield mod
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


def make_case(n: int, d: int, s: int, n_exp: int, dtype: torch.dtype, *, gated: bool, biases: bool, mode: str,
              device: str = "cpu", seed: int = 0, folded: bool = False) -> dict:
    """Random FFN problem; ``mode`` is none / all / single / random (about half of the experts);
    ``folded`` adds a router center (logits ``|x W^T + c| + b``)."""
    g = torch.Generator().manual_seed(seed)
    f = s * n_exp

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)

    x = rnd(n, d)
    case = dict(x=x, w_up=rnd(f, d, scale=d ** -0.5), w_down=rnd(f, d, scale=f ** -0.5), expert_size=s,
                w_gate=rnd(f, d, scale=d ** -0.5) if gated else None,
                b_up=rnd(f, scale=0.1) if biases else None, b_gate=rnd(f, scale=0.1) if biases and gated else None,
                b_down=rnd(d, scale=0.1) if biases else None)
    router_w = torch.randn(n_exp, d, generator=g) * d ** -0.5
    router_b = torch.randn(n_exp, generator=g) * 0.5
    thr = 0.0
    if mode == "none":
        router_b = torch.full((n_exp,), -1e4)
    elif mode == "all":
        router_b = torch.full((n_exp,), 1e4)
    elif mode == "single":
        router_w = torch.zeros(n_exp, d)
        router_b = torch.full((n_exp,), -1.0)
        router_b[n_exp // 2] = 1.0
    elif mode == "random":
        thr = 0.1
        if folded:  # |z| >= 0: shift the bias so that about half of the experts stay selected
            router_b = router_b - 0.6
    else:
        raise ValueError(mode)
    if folded:
        center = torch.randn(n_exp, generator=g) * 0.5 if mode != "single" else torch.zeros(n_exp)
        case["router_center"] = center.to(dtype=dtype, device=device)
    case.update(router_w=router_w.to(dtype=dtype, device=device), router_b=router_b.to(dtype=dtype, device=device),
                logit_threshold=thr)
    return case


def check_backend(case: dict, act: str, backend: str) -> None:
    """Backend output equals the reference on the backend's own mask; the mask equals the reference's
    except within NEAR of the threshold."""
    c = dict(case)
    x, router_w, router_b, thr = c.pop("x"), c.pop("router_w"), c.pop("router_b"), c.pop("logit_threshold")
    w_up, w_down, center = c.pop("w_up"), c.pop("w_down"), c.pop("router_center", None)
    if backend == "op":  # the registered operator, which the model calls (a C++ kernel on CPU)
        y, mask = _op_call(case, act=act)
    else:
        y, mask = kernels.sparse_ffn(x, w_up, w_down, router_w, router_b, act=act, logit_threshold=thr,
                                     router_center=center, backend=backend, **c)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert mask.shape == (x.shape[0], router_w.shape[0]) and mask.dtype == torch.bool
    logits = x.float() @ router_w.float().t()
    if center is not None:
        logits = (logits + center.float()).abs()
    logits = logits + router_b.float()
    ref_mask = router_mask(x, router_w, router_b, thr, router_center=center)
    clear = (logits - thr).abs() > NEAR
    assert torch.equal(mask[clear].cpu(), ref_mask[clear].cpu()), "mask differs from the reference router"
    dbl = {k: (v.double() if torch.is_tensor(v) else v) for k, v in c.items()}
    ref = sparse_ffn_reference(x.double(), w_up.double(), w_down.double(), mask, act=act, **dbl)
    assert torch.isfinite(y).all()
    err = ((y.double() - ref).norm() / ref.norm().clamp_min(1e-6)).item()
    assert err < TOL[x.dtype], f"{backend}: relative error {err:.2e} over {TOL[x.dtype]:.0e}"


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
VARIANTS = [  # (gated, biases, act)
    (True, False, "silu"), (False, True, "gelu"), (True, True, "gelu_tanh"), (False, False, "relu")]
MODES = ["none", "all", "single", "random"]


@pytest.mark.parametrize("n", [1, 3, 16, 40])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
def test_cpu_backend_matches_reference(n, dtype):
    for i, (gated, biases, act) in enumerate(VARIANTS):
        for mode in MODES:
            case = make_case(n, 72, 8, 6, dtype, gated=gated, biases=biases, mode=mode, seed=i)
            check_backend(case, act, "cpu")


@pytest.mark.parametrize("n", [1, 5])
def test_cpu_gather_fallback_matches_reference(n, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "native_library", lambda: None)
    for i, (gated, biases, act) in enumerate(VARIANTS):
        for mode in MODES:
            check_backend(make_case(n, 40, 4, 5, torch.float32, gated=gated, biases=biases, mode=mode, seed=i),
                          act, "cpu")


@pytest.mark.parametrize("n", [1, 3, 40])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
def test_folded_router_every_backend(n, dtype, monkeypatch):
    """Folded routers (|x W^T + c| + b) select the same experts on every backend, native and fallback."""
    for i, (gated, biases, act) in enumerate(VARIANTS):
        for mode in MODES:
            case = make_case(n, 72, 8, 6, dtype, gated=gated, biases=biases, mode=mode, seed=i, folded=True)
            for backend in ("reference", "cpu"):
                check_backend(case, act, backend)
    monkeypatch.setattr(cpu_kernels, "native_library", lambda: None)
    check_backend(make_case(n, 40, 4, 5, dtype, gated=True, biases=True, mode="random", folded=True), "silu", "cpu")


def test_folded_mask_differs_from_linear():
    """The center is used: a folded router selects experts a linear router with the same weights would not."""
    case = make_case(4, 72, 8, 6, torch.float32, gated=True, biases=False, mode="random", seed=2, folded=True)
    folded = router_mask(case["x"], case["router_w"], case["router_b"], 0.1, router_center=case["router_center"])
    linear = router_mask(case["x"], case["router_w"], case["router_b"], 0.1)
    assert not torch.equal(folded, linear) and 0 < folded.float().mean() < 1


def test_cpu_native_kernel_builds():
    if os.environ.get("LTE_DISABLE_NATIVE", "0") not in ("", "0"):
        pytest.skip("native kernel disabled by LTE_DISABLE_NATIVE")
    import shutil
    if shutil.which(os.environ.get("CC") or "gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler here: the cpu backend falls back to the PyTorch gather path")
    assert cpu_kernels.native_available(), "the C kernel failed to build although a compiler exists"


@pytest.mark.parametrize("n", [1, 5, 8, 9])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
def test_cpu_operator_matches_reference(n, dtype):
    """``torch.ops.lte.sparse_ffn`` on CPU (its C++ kernel up to 8 tokens, Python above) equals the reference."""
    for i, (gated, biases, act) in enumerate(VARIANTS):
        for mode in MODES:
            for folded in (False, True):
                case = make_case(n, 72, 8, 6, dtype, gated=gated, biases=biases, mode=mode, seed=i, folded=folded)
                check_backend(case, act, "op")


def _have_cxx() -> bool:
    import shutil
    return shutil.which(os.environ.get("CXX") or "g++") is not None or shutil.which("c++") is not None


def test_cpu_operator_native_kernel_registered():
    for var in ("LTE_DISABLE_NATIVE", "LTE_DISABLE_NATIVE_OP"):
        if os.environ.get(var, "0") not in ("", "0"):
            pytest.skip(f"native operator disabled by {var}")
    if not (cpu_kernels.native_available() and _have_cxx()):
        pytest.skip("no C/C++ compiler here: the operator keeps its Python kernel")
    from lte.kernels import cpu_op
    assert cpu_op.load_native_op(), "the C++ operator failed to build although compilers exist"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("lte::sparse_ffn", "CPU")


def test_shared_library_builds_once_and_says_so(tmp_path, monkeypatch, capsys):
    """A build is cached by source; only a real compile prints its announcement; compiler errors surface."""
    import shutil
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("LTE_CACHE_DIR", str(tmp_path))
    src = "int lte_probe(void) { return 7; }\n"
    flags = ["-O1", "-shared", "-fPIC"]
    first = cpu_kernels.build_shared_library("probe", src, cc, flags, announce="building probe")
    assert "building probe" in capsys.readouterr().err
    again = cpu_kernels.build_shared_library("probe", src, cc, flags, announce="building probe")
    assert again == first and first.is_file() and "building probe" not in capsys.readouterr().err
    import ctypes
    assert ctypes.CDLL(str(first)).lte_probe() == 7
    with pytest.raises(RuntimeError, match="compiling probe failed"):
        cpu_kernels.build_shared_library("probe", "int broken(void) { return }\n", cc, flags)


def _op_call(case: dict, backend: str = "auto", act: str = "silu", **over):
    """``torch.ops.lte.sparse_ffn`` on a :func:`make_case` problem (entries replaced by ``over``)."""
    c = {**case, **over}
    return kernels.sparse_ffn_op(c["x"], c["w_up"], c["w_down"], c["router_w"], c["router_b"],
                                 c.get("router_center"), c["w_gate"], c["b_up"], c["b_gate"], c["b_down"],
                                 c["expert_size"], act, c["logit_threshold"], backend)


def _dispatch_call(case: dict, backend: str = "auto", **over):
    c = {**case, **over}
    x, w_up, w_down, rw, rb = (c.pop(k) for k in ("x", "w_up", "w_down", "router_w", "router_b"))
    return kernels.sparse_ffn(x, w_up, w_down, rw, rb, act="silu", backend=backend, **c)


def test_cpu_operator_hands_other_calls_to_the_python_dispatch():
    """What the C++ kernel does not serve gives exactly what the Python dispatch gives: another backend,
    prefill sizes, strided or mixed-dtype inputs; bad shapes raise the Python dispatch's error."""
    case = make_case(2, 64, 8, 6, torch.bfloat16, gated=True, biases=True, mode="random", seed=5)
    y, m = _op_call(case, "reference")
    y2, m2 = _dispatch_call(case, "reference")
    assert torch.equal(y, y2) and torch.equal(m, m2)
    big = make_case(12, 64, 8, 6, torch.bfloat16, gated=True, biases=True, mode="random", seed=5)
    assert all(torch.equal(a, b) for a, b in zip(_op_call(big), _dispatch_call(big)))
    for over in (dict(w_up=case["w_up"].t().contiguous().t()), dict(b_up=case["b_up"].float()),
                 dict(router_b=case["router_b"].float())):
        assert all(torch.equal(a, b) for a, b in zip(_op_call(case, **over), _dispatch_call(case, **over)))
    with pytest.raises(ValueError, match="router_w must be"):
        _op_call(case, router_w=case["router_w"][:3])
    with pytest.raises(ValueError, match="router_center must be"):
        _op_call(case, router_center=torch.zeros(2, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="unknown activation"):
        kernels.sparse_ffn_op(case["x"], case["w_up"], case["w_down"], case["router_w"], None, None, None, None,
                              None, None, 8, "swish", 0.0, "auto")


def test_cpu_operator_output_needs_no_grad():
    """The operator is inference-only: trainable weights do not make its outputs part of a graph."""
    case = make_case(1, 64, 8, 6, torch.float32, gated=True, biases=False, mode="random", seed=1)
    params = {k: torch.nn.Parameter(case[k]) for k in ("w_up", "w_down", "w_gate", "router_w")}
    for n in (1, 12):
        x = torch.randn(n, 64)
        y, m = _op_call(case, x=x, **params)
        assert not y.requires_grad and not m.requires_grad


def test_cpu_noncontiguous_and_mixed_dtype_inputs():
    """The native path copies what is not contiguous or not in x's dtype, and nothing else."""
    case = make_case(2, 64, 8, 6, torch.bfloat16, gated=True, biases=True, mode="random", seed=7)
    ref = dict(case)
    case["w_up"] = case["w_up"].t().contiguous().t()  # same values, transposed strides
    case["w_gate"] = case["w_gate"].float()  # another dtype: widened copy is narrowed back
    case["router_w"] = case["router_w"].float().t().contiguous().t()
    check_backend(case, "silu", "cpu")
    y1, m1 = kernels.sparse_ffn(case.pop("x"), case.pop("w_up"), case.pop("w_down"), case.pop("router_w"),
                                case.pop("router_b"), act="silu", backend="cpu", **case)
    r = dict(ref)
    y2, m2 = kernels.sparse_ffn(r.pop("x"), r.pop("w_up"), r.pop("w_down"), r.pop("router_w").float(),
                                r.pop("router_b"), act="silu", backend="cpu", **r)
    assert torch.equal(m1, m2) and torch.allclose(y1.float(), y2.float(), atol=1e-2)
    w = torch.ones(4, 4, dtype=torch.bfloat16)
    assert cpu_kernels._prep(w, torch.bfloat16) is w and cpu_kernels._prep(None, torch.float32) is None
    assert cpu_kernels._prep(w.t()[:, :2], torch.bfloat16).is_contiguous()


def test_cpu_smollm2_shapes():
    for dtype in (torch.float32, torch.bfloat16):
        case = make_case(1, 576, 32, 48, dtype, gated=True, biases=False, mode="random", seed=3)
        check_backend(case, "silu", "cpu")


@pytest.mark.parametrize("n", [1, 3, 16, 40])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
def test_triton_backend_matches_reference(triton_ffn, n, dtype):
    device = "cuda" if HAS_CUDA else "cpu"
    for i, (gated, biases, act) in enumerate(VARIANTS):
        for mode in MODES:
            case = make_case(n, 100, 16 if i % 2 else 8, 5, dtype, gated=gated, biases=biases, mode=mode,
                             device=device, seed=i)
            check_backend(case, act, "triton")


@pytest.mark.parametrize("variant", ["fused", "splitk", "fused-router-first"])
@pytest.mark.parametrize("n", [1, 4])
def test_triton_folded_router(triton_ffn, variant, n, monkeypatch):
    device = "cuda" if HAS_CUDA else "cpu"
    if variant == "fused-router-first":  # the router kernel computes the folded logits
        variant = "fused"
        monkeypatch.setattr(triton_ffn, "_ENV_CONFIG", {"router_first": 1})
    monkeypatch.setattr(triton_ffn, "FORCED_VARIANT", variant)
    for dtype in (torch.float32, torch.bfloat16):
        for mode in MODES:
            case = make_case(n, 72, 8, 6, dtype, gated=True, biases=True, mode=mode, device=device, seed=n,
                             folded=True)
            check_backend(case, "silu", "triton")


@pytest.mark.parametrize("expert_size", [1, 2, 4])
@pytest.mark.parametrize("n", [1, 3])
def test_fine_experts_match_reference(triton_ffn, expert_size, n):
    """Experts under a kernel block (per-neuron routers included) on every backend."""
    device = "cuda" if HAS_CUDA else "cpu"
    for mode in MODES:
        case = make_case(n, 40, expert_size, 48 // expert_size, torch.float32, gated=True, biases=False, mode=mode,
                         seed=expert_size)
        check_backend(case, "silu", "cpu")
        tcase = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in case.items()}
        check_backend(tcase, "silu", "triton")


def _triton_call(mod, case: dict, **kw):
    """``mod.sparse_ffn_triton`` on a :func:`make_case` problem (``kw``: variant, config, ...)."""
    c = dict(case)
    args = [c.pop(k) for k in ("x", "w_up", "w_down", "router_w", "router_b")]
    return mod.sparse_ffn_triton(*args, act="silu", **kw, **c)


def _rel_err_vs_float64(case: dict, y: torch.Tensor, mask: torch.Tensor) -> float:
    """Relative error of ``y`` against the float64 reference on the same mask."""
    c = {k: (v.double() if torch.is_tensor(v) else v) for k, v in case.items()
         if k not in ("router_w", "router_b", "router_center", "logit_threshold")}
    ref = sparse_ffn_reference(c.pop("x"), c.pop("w_up"), c.pop("w_down"), mask, act="silu", **c)
    return ((y.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("variant,config", [
    ("fused", None), ("splitk", None),
    ("fused", {"block_k": 32, "block_d": 64, "router_k": 128, "num_warps": 8}),  # chunks larger/smaller than d
    ("fused", {"block_k": 16, "block_d": 16, "router_k": 16, "block_k_dot": 16, "block_d_dot": 32}),
    ("fused", {"block_f": 4, "block_f_dot": 32}),  # one token: each expert of 8 split over 2 programs
    ("fused", {"tma": 1, "block_k": 32, "block_d": 64, "block_k_dot": 32, "num_stages": 2}),  # descriptor loads
    ("fused", {"tma": 1, "block_f": 4, "block_k": 256, "block_d": 256}),  # TMA, tiles wider than d, split experts
    ("fused", {"router_first": 1, "block_f": 4}),  # mask from the router kernel, split experts
    ("fused", {"tma": 1, "router_first": 1, "block_d": 16}),
    ("fused", {"maxnreg": 96, "num_warps": 8}),  # a register cap (spills, if any, must not change results)
], ids=["fused", "splitk", "fused-cfg-a", "fused-cfg-b", "fused-split-experts", "fused-tma", "fused-tma-split",
        "fused-router-first", "fused-tma-router-first", "fused-maxnreg"])
@pytest.mark.parametrize("n", [1, 4])
def test_triton_variants(triton_ffn, variant, config, n):
    device = "cuda" if HAS_CUDA else "cpu"
    for dtype in (torch.float32, torch.bfloat16):
        case = make_case(n, 72, 8, 4, dtype, gated=True, biases=True, mode="random", device=device, seed=n)
        y, mask = _triton_call(triton_ffn, case, variant=variant, config=config)
        assert _rel_err_vs_float64(case, y, mask) < TOL[dtype]


@pytest.mark.parametrize("n", [1, 5])
def test_triton_tma_loads_match_reference(triton_ffn, n):
    """Descriptor (TMA) weight loads where the shapes allow them, plain loads where they do not
    (row stride not a multiple of 16 bytes, or neuron slices that would run into the next expert)."""
    device = "cuda" if HAS_CUDA else "cpu"
    cfg = {"tma": 1, "block_k": 64, "block_d": 32, "block_k_dot": 32, "block_d_dot": 64}
    for d, expert_size, dtype in ((96, 16, torch.bfloat16), (96, 16, torch.float32), (70, 16, torch.bfloat16),
                                  (96, 20, torch.float32)):
        x = torch.zeros(n, d, dtype=dtype, device=device)
        block_f = 16 if n > 1 else 8
        fits = triton_ffn._tma_fits(x, d, expert_size, block_f, 64, 32)
        assert fits == (d == 96 and expert_size == 16 and (triton_ffn.interpreted() or
                                                            torch.cuda.get_device_capability()[0] >= 9))
        case = make_case(n, d, expert_size, 6, dtype, gated=True, biases=True, mode="random", device=device, seed=d)
        y, mask = _triton_call(triton_ffn, case, variant="fused", config=cfg)
        assert 0 < mask.sum() < mask.numel()  # some experts skipped, some run
        assert _rel_err_vs_float64(case, y, mask) < TOL[dtype]


def test_triton_config_errors(triton_ffn):
    """Unknown tuning keys and malformed LTE_TRITON_CONFIG fail loudly instead of being ignored."""
    case = make_case(1, 32, 8, 2, torch.float32, gated=True, biases=False, mode="all",
                     device="cuda" if HAS_CUDA else "cpu")
    with pytest.raises(ValueError, match="unknown fused config keys"):
        _triton_call(triton_ffn, case, variant="fused", config={"blockf": 8})
    with pytest.raises(ValueError, match="unknown splitk config keys"):
        _triton_call(triton_ffn, case, variant="splitk", config={"router_first": 1})
    assert triton_ffn._env_config('{"block_f": 8, "epp": 2}') == {"block_f": 8, "epp": 2}
    assert triton_ffn._env_config("") == {}
    for bad, msg in (("{block_f: 8}", "not valid JSON"), ('{"blockf": 8}', "keys among"), ("[1]", "keys among")):
        with pytest.raises(ValueError, match=msg):
            triton_ffn._env_config(bad)


def test_triton_variant_follows_token_count(triton_ffn, monkeypatch):
    """Inference runs fused at one token and splitk at several; LTE_TRITON_VARIANT forces one."""
    monkeypatch.setattr(triton_ffn, "FORCED_VARIANT", None)
    assert [triton_ffn.default_variant(n) for n in (1, 2, 16)] == ["fused", "splitk", "splitk"]
    monkeypatch.setattr(triton_ffn, "FORCED_VARIANT", "fused")
    assert triton_ffn.default_variant(8) == "fused"


@pytest.mark.skipif(HAS_CUDA or not HAS_TRITON, reason="only for the CPU interpreter when in-process use is impossible")
def test_triton_interpreter_in_subprocess(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if _interpreter_ready():
        pytest.skip("the Triton tests ran in this process under the interpreter")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                           "-k", "triton and not subprocess"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.skipif(not HAS_CUDA, reason="full LLaMA-2-7B FFN shapes need a CUDA GPU")
@pytest.mark.parametrize("folded", [False, True], ids=["linear", "folded"])
@pytest.mark.parametrize("n", [1, 8, 16])
def test_triton_full_shapes(triton_ffn, n, folded):
    case = make_case(n, 4096, 32, 344, torch.bfloat16, gated=True, biases=False, mode="random", device="cuda",
                     folded=folded)
    check_backend(case, "silu", "triton")


def test_resolve_backend_and_errors(monkeypatch):
    assert kernels.resolve_backend("auto", "cpu") == "cpu"
    assert kernels.resolve_backend("reference", "cpu") == "reference"
    assert {"reference", "cpu"} <= set(kernels.available_backends())
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.resolve_backend("cuda-magic", "cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if HAS_TRITON:
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            kernels.resolve_backend("triton", "cpu")
    monkeypatch.setattr(kernels, "_triton_importable", lambda: False)
    with pytest.raises(RuntimeError, match="not installed"):
        kernels.resolve_backend("triton", "cpu")
    assert "triton" not in kernels.available_backends()
    if HAS_CUDA:
        with pytest.raises(ValueError, match="CPU tensors"):
            kernels.resolve_backend("cpu", "cuda")
        assert kernels.resolve_backend("auto", "cuda") == "reference"


def test_bad_arguments():
    case = make_case(2, 16, 4, 3, torch.float32, gated=True, biases=False, mode="random")
    with pytest.raises(ValueError, match="activation"):
        kernels.sparse_ffn(case["x"], case["w_up"], case["w_down"], case["router_w"], None, expert_size=4,
                           act="swish9")
    with pytest.raises(ValueError, match="multiple of expert_size"):
        kernels.sparse_ffn(case["x"], case["w_up"], case["w_down"], case["router_w"], None, expert_size=5,
                           act="silu")
    with pytest.raises(ValueError, match="x must be"):
        kernels.sparse_ffn(case["x"][0], case["w_up"], case["w_down"], case["router_w"], None, expert_size=4,
                           act="silu")
    with pytest.raises(ValueError, match="router_center must be"):
        kernels.sparse_ffn(case["x"], case["w_up"], case["w_down"], case["router_w"], None, expert_size=4,
                           act="silu", router_center=torch.zeros(5))


def test_union_sparsity():
    mask = torch.tensor([[True, False, False, False], [True, True, False, False]])
    assert kernels.union_sparsity(mask) == pytest.approx(0.5)
    assert kernels.union_sparsity(torch.zeros(3, 5, dtype=torch.bool)) == 1.0
    with pytest.raises(ValueError):
        kernels.union_sparsity(torch.zeros(5, dtype=torch.bool))


def _bench_module(name: str):
    """Import benchmarks/<name>.py (the benchmark scripts are not a package)."""
    bench_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return importlib.import_module(name)


def test_kernel_ablation_copies_still_match_the_kernel(triton_ffn, tmp_path):
    """benchmarks/kernel_ablation.py edits the kernel's source text: every edit must still apply, and the
    ablated copies must run. With one selected expert (one program adds into y) a store equals the add."""
    ka = _bench_module("kernel_ablation")
    device = "cuda" if HAS_CUDA else "cpu"
    case = make_case(1, 64, 8, 4, torch.float32, gated=True, biases=False, mode="single", device=device, seed=3)
    y0, mask = _triton_call(triton_ffn, case, variant="fused", config={"block_f": 8})
    assert int(mask.sum()) == 1
    for name, edits in ka.EDITS.items():
        mod = ka.ablated(name, edits, tmp_path)
        y, m = _triton_call(mod, case, variant="fused", config={"block_f": 8})
        assert y.shape == y0.shape and torch.equal(m, mask)
        if name == "store_not_atomic":
            assert torch.allclose(y, y0)
        else:
            assert not torch.allclose(y, y0)  # a phase was cut out


def test_kernel_bench_option_parsers(triton_ffn):
    """--fused-tries takes K/D/R/W/F[/S[/T]] (defaults S=3, T=0); --fused-configs a JSON list of config
    dicts with known keys; bad values fail with argparse errors."""
    import argparse
    kb = _bench_module("kernel_bench")
    assert kb._tilings("2048/4096/4096/4/16,256/256/4096/4/16/4/1") == ((2048, 4096, 4096, 4, 16, 3, 0),
                                                                         (256, 256, 4096, 4, 16, 4, 1))
    for bad in ("1/2/3", "1/2/3/4/5/0", "1/2/3/4/5/3/2", "a/b/c/d/e"):
        with pytest.raises(argparse.ArgumentTypeError):
            kb._tilings(bad)
    assert kb._configs('[{"router_first": 1, "block_f": 8}]') == ({"router_first": 1, "block_f": 8},)
    for bad, msg in (("{", "not JSON"), ('{"a": 1}', "list"), ('[{"blockf": 8}]', "unknown config keys")):
        with pytest.raises(argparse.ArgumentTypeError, match=msg):
            kb._configs(bad)


def test_bandwidth_probe_stream_kernel_sums_live_chunks(triton_ffn):
    """benchmarks/bandwidth_probe.py's read kernel: program p sums its chunk only when live[p]."""
    bp = _bench_module("bandwidth_probe")
    device = "cuda" if HAS_CUDA else "cpu"
    w = torch.randn(4 * 64, device=device).to(torch.bfloat16)
    live = torch.tensor([1, 0, 1, 1], dtype=torch.int8, device=device)
    out = torch.full((4,), 7.0, device=device)
    bp._stream_read[(4,)](w, live, out, CHUNK=64, BLOCK=16)
    ref = w.float().view(4, 64).sum(1)
    assert torch.allclose(out[[0, 2, 3]], ref[[0, 2, 3]], atol=1e-3) and out[1] == 7.0
