"""Per-call cost of the sparse FFN on CPU, by how it is called: the ``lte::sparse_ffn`` operator with
its C++ kernel (what a compiled decode step calls), the same operator's Python kernel (what it ran
before ``lte.kernels.cpu_op``), and the C kernel through ``ctypes`` alone. SmolLM2-135M FFN shape,
30 distinct layers streamed like a decode step, one token, ~50% of the experts selected.

    PYTHONPATH=src python benchmarks/cpu_op_overhead.py --out benchmarks/results/cpu_op_overhead.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from lte import kernels
from lte.kernels import cpu, cpu_op


def make_layers(n_layers: int, d: int, f: int, s: int, dtype: torch.dtype, seed: int = 0) -> list[dict]:
    """Random layers whose routers select about half of the experts for a random token."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(n_layers):
        w = {k: (torch.randn(f, d, generator=g) * d ** -0.5).to(dtype) for k in ("gate", "up", "down")}
        w["rw"] = (torch.randn(f // s, d, generator=g) * d ** -0.5).to(dtype)
        w["rb"] = torch.zeros(f // s, dtype=dtype)
        layers.append(w)
    return layers


def time_calls(fn, layers: list[dict], x: torch.Tensor, passes: int) -> float:
    """Median over passes of the mean time per call (us) of ``fn(x, layer)`` over every layer."""
    for w in layers:
        fn(x, w)
    per = []
    for _ in range(passes):
        t = time.perf_counter()
        for w in layers:
            fn(x, w)
        per.append((time.perf_counter() - t) / len(layers) * 1e6)
    return statistics.median(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=30, help="passes over the layers (median reported)")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    d, f, s = 576, 1536, 32
    layers = make_layers(args.layers, d, f, s, dtype)
    x = torch.randn(1, d).to(dtype)
    if not cpu_op.load_native_op():
        raise SystemExit("the C++ operator could not be built here; nothing to compare")
    sel = [kernels.router_mask(x, w["rw"], w["rb"]).float().mean().item() for w in layers]

    def op(x, w):
        return kernels.sparse_ffn_op(x, w["up"], w["down"], w["rw"], w["rb"], None, w["gate"], None, None, None, s,
                                     "silu", 0.0, "auto")

    def py_kernel(x, w):  # the operator's Python kernel, as dispatched before the C++ kernel existed
        with torch.no_grad():
            return kernels._op_kernel(x, w["up"], w["down"], w["rw"], w["rb"], None, w["gate"], None, None, None, s,
                                      "silu", 0.0, "auto")

    def c_only(x, w):
        return cpu.sparse_ffn_cpu(x, w["up"], w["down"], w["rw"], w["rb"], expert_size=s, act="silu",
                                  w_gate=w["gate"])

    with torch.no_grad():
        rows = {name: time_calls(fn, layers, x, args.passes)
                for name, fn in (("operator_cpp_us", op), ("operator_python_us", py_kernel), ("ctypes_only_us", c_only),
                                 ("operator_cpp_us_again", op))}
    row = {**{k: round(v, 1) for k, v in rows.items()}, "selected_fraction": round(statistics.mean(sel), 3),
           "layers": args.layers, "dtype": args.dtype, "threads": torch.get_num_threads(), "shape": [d, f, s],
           "date": datetime.date.today().isoformat(),
           "command": "PYTHONPATH=src python benchmarks/cpu_op_overhead.py"}
    print(json.dumps(row, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
