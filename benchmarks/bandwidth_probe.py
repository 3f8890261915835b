"""Read-bandwidth ceiling of this GPU for the sparse FFN's access pattern, measured side by side.

The fused kernel reads, per selected 16-neuron slice, three contiguous 128 KB blocks (gate, up and
down rows). This probe times, from CUDA-graph replays over 1.1 GB of bf16 weights (4 copies of the
LLaMA-2-7B FFN): torch's own reduction and copy, and a minimal Triton kernel in which each program
sums ``chunk`` contiguous elements in ``block``-wide loads, with every program live (dense) or only
the programs of a random half of the slices (the 50% case). The best of these is the practical
ceiling a sparse FFN kernel can approach on this card; the fused kernel is timed beside it.

    PYTHONPATH=src python benchmarks/bandwidth_probe.py --out benchmarks/results/bandwidth_h200.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent))
from kernel_bench import make_weights, threshold_for, time_cuda_graph  # noqa: E402

from lte.kernels import sparse_ffn  # noqa: E402


@triton.jit
def _stream_read(w_ptr, live_ptr, out_ptr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Program p sums CHUNK contiguous elements from p * CHUNK when live[p] (one store per program)."""
    p = tl.program_id(0)
    if tl.load(live_ptr + p) != 0:
        offs = tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        base = w_ptr + p.to(tl.int64) * CHUNK
        for c in range(0, CHUNK, BLOCK):
            acc += tl.load(base + c + offs).to(tl.float32)
        tl.store(out_ptr + p, tl.sum(acc, axis=0))


def main() -> None:
    """Time the probes and the fused kernel; print and write one JSON row per probe."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    ap.add_argument("--copies", type=int, default=4, help="weight copies rotated (each 0.27 GB)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bandwidth_probe needs a CUDA GPU")
    d, f, s = 4096, 11008, 32
    ws = make_weights(args.copies, d, f, s, torch.bfloat16, "cuda")
    for w in ws:  # one flat buffer per copy in slice order: [gate 16 rows | up 16 rows | down 16 rows] ...
        w["flat"] = torch.stack([w["wg"], w["wu"], w["wd_t"]]).view(3, f // 16, 16 * d).transpose(0, 1).reshape(-1)
    n_bytes = ws[0]["flat"].numel() * 2
    xs = [torch.randn(1, d, device="cuda", dtype=torch.bfloat16) for _ in ws]
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []

    def record(name: str, us: float, read: float, **extra) -> None:
        row = dict(probe=name, us=round(us, 2), read_MB=round(read / 1e6, 1), TBps=round(read / us / 1e6, 3), **extra)
        print(json.dumps(row), flush=True)
        rows.append(row)

    record("torch sum (read)", time_cuda_graph(lambda x, w: w["flat"].sum(dtype=torch.float32), xs, ws), n_bytes)
    for w in ws:
        w["copy"] = torch.empty_like(w["flat"])
    record("torch copy (read+write, bytes read only)",
           time_cuda_graph(lambda x, w: w["copy"].copy_(w["flat"]), xs, ws), n_bytes)
    for w in ws:
        del w["copy"]
    for frac in (1.0, 0.5):
        for chunk_rows in (48, 16):  # a whole slice (gate+up+down, 384 KB) or one matrix's 128 KB per program
            n_prog = n_bytes // 2 // (chunk_rows * d)
            live = (torch.rand(n_prog, generator=g, device="cuda") < frac).to(torch.int8) if frac < 1 else \
                torch.ones(n_prog, device="cuda", dtype=torch.int8)
            read = int(live.sum()) * chunk_rows * d * 2
            out = torch.empty(n_prog, device="cuda", dtype=torch.float32)
            for block in (2048, 4096, 8192, 16384):
                for warps in (4, 8, 16):
                    def fn(x, w, chunk=chunk_rows * d, block=block, warps=warps, live=live, out=out, n_prog=n_prog):
                        _stream_read[(n_prog,)](w["flat"], live, out, CHUNK=chunk, BLOCK=block, num_warps=warps)
                    record(f"triton stream {frac:.0%} live, {chunk_rows * d * 2 // 1024} KB/program", time_cuda_graph(
                        fn, xs, ws), read, block=block, num_warps=warps, live_fraction=frac)
    for sp in (0.0, 0.5):
        thr = {id(w): threshold_for(x, [w["rw"]], sp) for x, w in zip(xs, ws)}
        us = time_cuda_graph(lambda x, w, thr=thr: sparse_ffn(
            x, w["wu"], w["wd_t"], w["rw"], None, expert_size=s, act="silu", w_gate=w["wg"],
            logit_threshold=thr[id(w)], backend="triton")[0], xs, ws)
        record(f"lte fused kernel at {sp:.0%} sparsity (router included)", us, (1 - sp) * 3 * f * d * 2 + f // s * d * 2)
    props = torch.cuda.get_device_properties(0)
    for r in rows:
        r.update(device=props.name, date=_dt.date.today().isoformat(),
                 timing=f"CUDA graph replay, median, {len(ws)} weight copies")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
