"""Sparse FFN kernel benchmark: LTE kernels vs dense and vs index_select + matmul.

GPU (default): LLaMA-2-7B FFN (d=4096, f=11008, 344 experts of 32, bf16), batch 1 and 8,
expert sparsity 0 / 0.25 / 0.5 / 0.75 / 0.9. Each variant is timed in the same run over
several weight copies (together far bigger than L2), replayed from CUDA graphs (the way a
compiled decoder runs it), median of many replays; eager times are recorded too.

CPU (``--device cpu``): SmolLM2-135M FFN (d=576, f=1536, 48 experts) over its 30 layers'
worth of distinct weights (a decode step streams every layer once), batch 1, fp32 and bf16:
the ``cpu`` backend against dense ``F.linear``.

    PYTHONPATH=src python benchmarks/kernel_bench.py --out benchmarks/results/kernel_h100.json
    PYTHONPATH=src python benchmarks/kernel_bench.py --device cpu
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lte.kernels import sparse_ffn, union_sparsity
from lte.kernels.reference import router_mask, sparse_ffn_reference

SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9)
# fused tilings tried at batch 1 (gate/up K chunk, down d chunk, router chunk, warps, neurons per
# program): larger chunks shorten each program's chain of dependent memory round trips; smaller
# neuron slices (16, 8 of an expert's 32) give more, shorter programs, so the last wave is short
# when few experts are selected, and smaller tiles let more programs share an SM (KERNEL_NOTES.md).
FUSED_TRIES = tuple(t + (3, 0) for t in (
    (512, 512, 1024, 4, 32), (1024, 1024, 4096, 8, 32), (2048, 1024, 4096, 16, 32),
    (1024, 1024, 4096, 8, 16), (1024, 1024, 4096, 4, 16), (1024, 1024, 4096, 4, 8),
    (2048, 2048, 4096, 4, 8), (1024, 1024, 4096, 2, 8), (2048, 2048, 4096, 8, 8),
    (2048, 2048, 4096, 4, 16)))  # the v4 default before 4096-wide down chunks


def make_weights(n_copies: int, d: int, f: int, s: int, dtype: torch.dtype, device: str, seed: int = 0) -> list[dict]:
    """Random FFN weight sets: neuron-contiguous for the kernels, nn.Linear layout for dense."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(n_copies):
        wg = (torch.randn(f, d, generator=g, device=device) / d ** 0.5).to(dtype)
        wu = (torch.randn(f, d, generator=g, device=device) / d ** 0.5).to(dtype)
        wd_t = (torch.randn(f, d, generator=g, device=device) / f ** 0.5).to(dtype)  # [f, d]
        out.append(dict(wg=wg, wu=wu, wd_t=wd_t, wd=wd_t.t().contiguous(),  # wd: nn.Linear [d, f]
                        rw=torch.randn(f // s, d, generator=g, device=device).to(dtype)))
    return out


def threshold_for(x: torch.Tensor, rws: list[torch.Tensor], sparsity: float) -> float:
    """Logit threshold that leaves ``sparsity`` of (token, expert) pairs unselected, pooled over copies."""
    logits = torch.cat([(x.float() @ rw.float().t()).flatten() for rw in rws]).sort().values
    k = int(round(sparsity * logits.numel()))
    if k <= 0:
        return float(logits[0]) - 1.0
    if k >= logits.numel():
        return float(logits[-1]) + 1.0
    return float(0.5 * (logits[k - 1] + logits[k]))


def dense_ffn(x: torch.Tensor, w: dict) -> torch.Tensor:
    """The dense baseline a user runs: three cuBLAS/MKL products (gate, up, down) and SiLU."""
    return F.linear(F.silu(F.linear(x, w["wg"])) * F.linear(x, w["wu"]), w["wd"])


def index_select_ffn(x: torch.Tensor, w: dict, thr: float, s: int) -> torch.Tensor:
    """Router, then ``index_select`` of the union's neurons and dense products on the copies."""
    mask = router_mask(x, w["rw"], None, thr)
    experts = mask.any(0).nonzero().flatten()
    idx = (experts[:, None] * s + torch.arange(s, device=x.device)).flatten()
    m = mask[:, experts].to(x.dtype).repeat_interleave(s, dim=-1)
    h = F.silu(F.linear(x, w["wg"].index_select(0, idx))) * F.linear(x, w["wu"].index_select(0, idx))
    return (h * m) @ w["wd_t"].index_select(0, idx)


def lte_ffn(x: torch.Tensor, w: dict, thr: float, s: int, backend: str, **kw) -> torch.Tensor:
    """The LTE kernel, router included."""
    if kw:
        from lte.kernels.triton_ffn import sparse_ffn_triton
        return sparse_ffn_triton(x, w["wu"], w["wd_t"], w["rw"], None, expert_size=s, act="silu", w_gate=w["wg"],
                                 logit_threshold=thr, **kw)[0]
    return sparse_ffn(x, w["wu"], w["wd_t"], w["rw"], None, expert_size=s, act="silu", w_gate=w["wg"],
                      logit_threshold=thr, backend=backend)[0]


def time_cuda_graph(fn, xs: list, ws: list, reps: int = 30) -> float:
    """Median microseconds per call of ``fn(x, w)`` replayed from a CUDA graph over all weight copies."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            for x, w in zip(xs, ws):
                fn(x, w)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    per_graph = 4
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            for x, w in zip(xs, ws):
                fn(x, w)
    calls = per_graph * len(ws)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return statistics.median(times)


def time_cuda_eager(fn, xs: list, ws: list, reps: int = 30) -> float:
    """Median microseconds per call of ``fn(x, w)`` launched eagerly, rotating weight copies."""
    for _ in range(3):
        for x, w in zip(xs, ws):
            fn(x, w)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for x, w in zip(xs, ws):
            fn(x, w)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / len(ws))
    return statistics.median(times)


def check_gpu(ws: list, d: int, s: int, batches=(1, 3, 8, 16)) -> list[dict]:
    """Correctness at full shapes: every variant against the fp32 reference on the same mask."""
    from lte.kernels.triton_ffn import sparse_ffn_triton
    rows = []
    w = ws[0]
    for n in batches:
        x = torch.randn(n, d, device="cuda", dtype=w["wg"].dtype)
        for sp in (0.0, 0.5, 0.9, 1.0):
            thr = threshold_for(x, [w["rw"]], sp)
            ref_mask = router_mask(x, w["rw"], None, thr)
            ref = sparse_ffn_reference(x.float(), w["wu"].float(), w["wd_t"].float(), ref_mask, expert_size=s,
                                       act="silu", w_gate=w["wg"].float())
            for name, variant, cfg in (("splitk", "splitk", None), ("fused", "fused", None),
                                       ("fused_f8", "fused", {"block_f": 8}),
                                       ("fused_tma", "fused", {"tma": 1, "block_k": 256, "block_d": 256}),
                                       ("fused_dot_tma", "fused", {"dot": 1, "tma": 1, "block_k_dot": 256,
                                                                   "block_d_dot": 256, "num_stages": 4})):
                y, mask = sparse_ffn_triton(x, w["wu"], w["wd_t"], w["rw"], None, expert_size=s, act="silu",
                                            w_gate=w["wg"], logit_threshold=thr, variant=variant, config=cfg)
                err = ((y.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
                if ref.norm() == 0:
                    err = y.float().abs().max().item()
                rows.append(dict(batch=n, sparsity=sp, variant=name, rel_err=err,
                                 mask_mismatch=int((mask != ref_mask).sum())))
    return rows


def bench_gpu(args: argparse.Namespace) -> list[dict]:
    """Time kernel, dense and index_select at LLaMA-2-7B FFN shapes."""
    d, f, s = 4096, 11008, args.expert_size
    dtype = torch.bfloat16
    from lte.kernels.triton_ffn import default_variant
    ws = make_weights(args.copies, d, f, s, dtype, "cuda")
    checks = check_gpu(ws, d, s, batches=tuple(args.check_batches) if not args.quick else (1, 8))
    for c in checks:
        print("check", c)
    bad = [c for c in checks if not c["rel_err"] < 2e-2 or c["mask_mismatch"] > 0]
    broken = {c["variant"] for c in bad}
    if bad:
        print(f"correctness check failed (these variants are not timed): {bad}")
    if args.variant in broken or args.variant == "auto" and broken & {"splitk", "fused"}:
        raise SystemExit(f"the reported variant {args.variant!r} is wrong at full shapes")
    props = torch.cuda.get_device_properties(0)
    dense_bytes = 3 * f * d * 2
    results = []
    for batch in args.batches:
        xs = [torch.randn(batch, d, device="cuda", dtype=dtype) for _ in ws]
        dense_g = time_cuda_graph(dense_ffn, xs, ws)
        dense_e = time_cuda_eager(dense_ffn, xs, ws)
        for sp in args.sparsities:
            thrs = [threshold_for(x, [w["rw"]], sp) for x, w in zip(xs, ws)]
            masks = [router_mask(x, w["rw"], None, t) for x, w, t in zip(xs, ws, thrs)]
            thr_of = {id(w): t for w, t in zip(ws, thrs)}
            usp = statistics.mean(union_sparsity(m) for m in masks)
            tsp = statistics.mean(1 - m.float().mean().item() for m in masks)
            variants, configs = {}, {}
            tried = (("splitk", dict(variant="splitk")), ("fused", dict(variant="fused")),
                     ("splitk_e8d64", dict(variant="splitk", config=dict(epp=8, block_d=64))),
                     *((f"fused_f{bf}k{k}d{dd}r{r}w{nw}" + (f"s{st}" if st != 3 else "") + ("tma" if tma else ""),
                        dict(variant="fused", config=dict(block_k=k, block_d=dd, router_k=r, num_warps=nw,
                                                          block_f=bf, num_stages=st, tma=tma)))
                       for k, dd, r, nw, bf, st, tma in args.fused_tries),
                     *(("fused_c_" + "_".join(f"{k}{v}" for k, v in cfg.items()), dict(variant="fused", config=cfg))
                       for cfg in args.fused_configs))
            for name, kw in tried[:2] if args.quick else tried:
                split = kw.get("config", {}).get("block_f", 32) < 32
                tma = kw.get("config", {}).get("tma", 0)
                if (kw["variant"] in broken or split and "fused_f8" in broken or tma and {"fused_tma", "fused_dot_tma"} & broken
                        or batch > 1 and name.startswith(("fused_f", "fused_c_"))):
                    continue  # the tilings differ at one token only; split slices and TMA only if checked correct
                configs[name] = kw.get("config")
                variants[name] = time_cuda_graph(
                    lambda x, w, kw=kw, thr_of=thr_of: lte_ffn(x, w, thr_of[id(w)], s, "triton", **kw), xs, ws)
            best = min(variants, key=variants.get)
            reported = default_variant(batch) if args.variant == "auto" else args.variant
            kernel_g = variants[reported]
            kernel_e = time_cuda_eager(lambda x, w, thr_of=thr_of: lte_ffn(x, w, thr_of[id(w)], s, "triton"), xs, ws)
            keep = max(1, int(round((1 - usp) * f)))  # cuBLAS on pre-sliced weights of the kept width
            sliced = [dict(wg=w["wg"][:keep], wu=w["wu"][:keep], wd=w["wd"][:, :keep].contiguous()) for w in ws]
            dense_sliced = time_cuda_graph(lambda x, w: dense_ffn(x, w), xs, sliced)
            del sliced
            isel = time_cuda_eager(lambda x, w, thr_of=thr_of: index_select_ffn(x, w, thr_of[id(w)], s), xs, ws)
            read = (1 - usp) * dense_bytes + f // s * d * 2 + batch * d * 2
            row = dict(batch=batch, expert_size=s, sparsity=sp, token_sparsity=round(tsp, 4), union_sparsity=round(usp, 4),
                       kernel_us=round(kernel_g, 2), dense_us=round(dense_g, 2), index_select_us=round(isel, 2),
                       speedup_vs_dense=round(dense_g / kernel_g, 3),
                       dense_sliced_us=round(dense_sliced, 2),
                       bandwidth_TBps=round(read / kernel_g / 1e6, 3),
                       kernel_eager_us=round(kernel_e, 2), dense_eager_us=round(dense_e, 2),
                       variants_us={k: round(v, 2) for k, v in variants.items()}, fastest_variant=best,
                       fastest_us=round(variants[best], 2), speedup_fastest=round(dense_g / variants[best], 3),
                       fastest_config=configs[best],
                       broken_variants=sorted(broken),
                       timing=f"CUDA graph replay, median, {len(ws)} weight copies "
                              f"({len(ws) * (dense_bytes + f // s * d * 2) / 1e9:.1f} GB)",
                       device=props.name, date=_dt.date.today().isoformat())
            print(json.dumps(row))
            results.append(row)
    return results


def time_cpu(fn, reps: int) -> float:
    """Median seconds of ``fn()``."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_cpu(args: argparse.Namespace) -> list[dict]:
    """SmolLM2-135M FFN shapes, 30 layers, batch 1: cpu backend vs dense F.linear."""
    from lte.kernels.cpu import native_available
    d, f, s, layers = 576, 1536, args.expert_size, 30
    results = []
    print("native CPU kernel:", native_available(), "threads:", torch.get_num_threads())
    for dtype in (torch.float32, torch.bfloat16):
        ws = make_weights(layers, d, f, s, dtype, "cpu")
        xs = [torch.randn(1, d, dtype=dtype) for _ in ws]
        dense_bytes = 3 * f * d * ws[0]["wg"].element_size()

        def dense_all(ws=ws, xs=xs):
            for x, w in zip(xs, ws):
                dense_ffn(x, w)

        dense = time_cpu(dense_all, args.reps) / layers * 1e6
        for sp in args.sparsities:
            thrs = [threshold_for(x, [w["rw"]], sp) for x, w in zip(xs, ws)]
            # correctness at these shapes before timing
            for x, w, t in list(zip(xs, ws, thrs))[:3]:
                y, m = sparse_ffn(x, w["wu"], w["wd_t"], w["rw"], None, expert_size=s, act="silu", w_gate=w["wg"],
                                  logit_threshold=t, backend="cpu")
                ref = sparse_ffn_reference(x.double(), w["wu"].double(), w["wd_t"].double(), m, expert_size=s,
                                           act="silu", w_gate=w["wg"].double())
                err = ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item() if ref.norm() > 0 else 0.0
                if not err < 2e-2:
                    raise SystemExit(f"cpu backend wrong at sparsity {sp}: rel err {err}")
            usp = statistics.mean(union_sparsity(router_mask(x, w["rw"], None, t)) for x, w, t in zip(xs, ws, thrs))

            def sparse_all(ws=ws, xs=xs, thrs=thrs):
                for x, w, t in zip(xs, ws, thrs):
                    sparse_ffn(x, w["wu"], w["wd_t"], w["rw"], None, expert_size=s, act="silu", w_gate=w["wg"],
                               logit_threshold=t, backend="cpu")

            sparse = time_cpu(sparse_all, args.reps) / layers * 1e6
            read = (1 - usp) * dense_bytes + f // s * d * ws[0]["rw"].element_size()
            row = dict(batch=1, expert_size=s, dtype=str(dtype).replace("torch.", ""), sparsity=sp, union_sparsity=round(usp, 4),
                       kernel_us=round(sparse, 1), dense_us=round(dense, 1),
                       speedup_vs_dense=round(dense / sparse, 3), bandwidth_GBps=round(read / sparse / 1e3, 2),
                       dense_bandwidth_GBps=round(dense_bytes / dense / 1e3, 2),
                       timing=f"per layer, median of {args.reps} passes over {layers} distinct layers",
                       threads=torch.get_num_threads(), device="cpu", date=_dt.date.today().isoformat())
            print(json.dumps(row))
            results.append(row)
    return results


def ir_report() -> list[dict]:
    """What Triton compiled for each fused-kernel specialisation of this process: warps, stages, shared
    memory, registers and spills, and whether the weight loads became asynchronous copies (cp.async or
    TMA) that the software pipeliner can keep several tiles of in flight."""
    import re

    from lte.kernels.triton_ffn import _fused_kernel
    rows = []
    for caches in getattr(_fused_kernel, "device_caches", {}).values():
        for k in caches[0].values():
            ir = k.asm.get("ttgir", "")
            md = k.metadata
            rows.append(dict(num_warps=md.num_warps, num_stages=md.num_stages, shared_bytes=md.shared,
                             n_regs=getattr(k, "n_regs", None), n_spills=getattr(k, "n_spills", None),
                             cp_async=ir.count("async_copy_global_to_local"), tma_loads=ir.count("async_tma_copy"),
                             descriptor_loads=ir.count("tt.descriptor_load"),
                             tiles=sorted(set(re.findall(r"tensor<(\d+x\d+)x(?:bf16|f16|f32)", ir)))))
    return rows


def _configs(text: str) -> tuple[dict, ...]:
    """``--fused-configs`` value: a JSON list of fused-kernel config dicts with known keys."""
    from lte.kernels.triton_ffn import FUSED_CONFIG
    try:
        out = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(out, list) or not all(isinstance(c, dict) for c in out):
        raise argparse.ArgumentTypeError("expected a JSON list of objects")
    unknown = sorted({k for c in out for k in c} - set(FUSED_CONFIG))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown config keys {unknown}; known: {sorted(FUSED_CONFIG)}")
    return tuple(out)


def _tilings(text: str) -> tuple[tuple[int, ...], ...]:
    """``--fused-tries`` value: comma-separated K/D/R/W/F[/S[/T]] tilings (S: pipeline stages,
    default 3; T: 1 reads weights through TMA descriptors, default 0)."""
    try:
        out = tuple(tuple(int(v) for v in t.split("/")) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected K/D/R/W/F[/S[/T]],... with integers, got {text!r}") from exc
    if not out or any(len(t) not in (5, 6, 7) or min(t[:6]) < 1 or t[6:] not in ((), (0,), (1,)) for t in out):
        raise argparse.ArgumentTypeError(f"each tiling needs 5 positive integers K/D/R/W/F, then optionally "
                                         f"stages (>= 1) and TMA (0 or 1), got {text!r}")
    return tuple(t + (3, 0)[len(t) - 5:] for t in out)


def main() -> None:
    """Parse arguments, run the benchmark, write the JSON list."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--copies", type=int, default=4, help="GPU weight copies rotated (each 0.27 GB)")
    p.add_argument("--variant", choices=("auto", "splitk", "fused"), default="auto",
                   help="GPU kernel variant reported as kernel_us (all are recorded); auto (default): the one "
                        "inference runs at that batch (fused at 1 token, splitk above)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="GPU batch sizes")
    p.add_argument("--check-batches", type=int, nargs="+", default=[1, 3, 8, 16],
                   help="GPU batch sizes of the full-shape correctness check before timing (default 1 3 8 16)")
    p.add_argument("--quick", action="store_true", help="GPU: time only the splitk and fused variants")
    p.add_argument("--fused-tries", type=_tilings, default=FUSED_TRIES, metavar="K/D/R/W/F[/S[/T]],...",
                   help="GPU: fused tilings timed beside the defaults at batch 1, each gate/up K chunk / down d "
                        "chunk / router chunk / warps / neurons per program, optionally / pipeline stages "
                        "(default 3) / TMA descriptor loads (0 or 1, default 0) (default: FUSED_TRIES)")
    p.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES),
                   help="expert sparsities timed (default 0 0.25 0.5 0.75 0.9)")
    p.add_argument("--fused-configs", type=_configs, default=(), metavar="JSON",
                   help="GPU: more fused configurations timed at batch 1, a JSON list of config dicts "
                        "(keys of lte.kernels.triton_ffn.FUSED_CONFIG), e.g. '[{\"dot\": 1, \"num_stages\": 4}]'")
    p.add_argument("--ir-report", action="store_true",
                   help="GPU: print, per compiled fused-kernel specialisation, warps, stages, shared memory, "
                        "registers, spills and whether its loads were pipelined (cp.async / TMA)")
    p.add_argument("--reps", type=int, default=20, help="CPU repetitions")
    p.add_argument("--expert-size", type=int, default=32,
                   help="neurons per expert (default 32); the FFN width must be a multiple (11008 on the GPU "
                        "shape: 1, 2, 4, 8, 16, 32, 43, 64, 86, 172, 344, 688, ...; 1536 on the CPU shape)")
    args = p.parse_args()
    width = 11008 if args.device == "cuda" else 1536
    if args.expert_size < 1 or width % args.expert_size:
        p.error(f"--expert-size must be a positive divisor of the FFN width {width}, got {args.expert_size}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; use --device cpu")
        results = bench_gpu(args)
        if args.ir_report:
            for r in ir_report():
                print("ir", json.dumps(r))
        out = args.out or Path("benchmarks/results/kernel_h100.json")
    else:
        results = bench_cpu(args)
        out = args.out or Path("benchmarks/results/kernel_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
