"""Where the fused kernel's time goes at LLaMA-2-7B FFN shapes, one token: the default kernel timed
beside ablated copies of itself (wrong results on purpose, timing only), in one run.

The copies are made from this checkout's ``lte/kernels/triton_ffn.py`` by textual edits and imported
from a temporary directory:

- ``store_not_atomic``: the down products are stored (last writer wins) instead of added atomically;
- ``no_down``: gate/up/activation only; the down rows are not read, one value per program is stored;
- ``no_gate_up``: the down phase only (h = 1); gate and up rows are not read.

    PYTHONPATH=src python benchmarks/kernel_ablation.py --out benchmarks/results/kernel_ablation_h200.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernel_bench import dense_ffn, make_weights, threshold_for, time_cuda_graph  # noqa: E402

import lte.kernels.triton_ffn as base  # noqa: E402

ATOMIC = """            tl.atomic_add(y_ptr + offs_n[:, None] * D + offs_d[None, :], out,
                          mask=sel[:, None] & d_ok[None, :], sem="relaxed")"""
STORE = """            tl.store(y_ptr + offs_n[:, None] * D + offs_d[None, :], out, mask=sel[:, None] & d_ok[None, :])"""
DOWN_LOOP = "        for d0 in range(0, D, BLOCK_D):\n"
GATE_LOOP = "        for k0 in range(0, D, BLOCK_K):\n"
EDITS = {
    "store_not_atomic": [(ATOMIC, STORE)],
    "no_down": [(DOWN_LOOP, "        tl.store(y_ptr + e + offs_n, tl.sum(h, axis=1), mask=sel)\n"
                            "        for d0 in range(0, 0, BLOCK_D):\n")],
    "no_gate_up": [(GATE_LOOP, "        for k0 in range(0, 0, BLOCK_K):\n"),
                   ("            h = _act(accg, ACT) * accu\n", "            h = _act(accg, ACT) * accu + 1.0\n")],
}


def ablated(name: str, edits: list[tuple[str, str]], tmp: Path):
    """Import a copy of the kernel module with ``edits`` applied (each must match exactly once)."""
    src = Path(base.__file__).read_text().replace("from .reference import", "from lte.kernels.reference import")
    for old, new in edits:
        if src.count(old) != 1:
            raise SystemExit(f"{name}: the kernel source no longer matches the ablation edit {old[:60]!r}")
        src = src.replace(old, new)
    path = tmp / f"triton_ffn_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"triton_ffn_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    """Time the default fused kernel and its ablations at several sparsities; write JSON rows."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.0, 0.9, 1.0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (medians)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernel_ablation needs a CUDA GPU")
    d, f, s = 4096, 11008, 32
    ws = make_weights(4, d, f, s, torch.bfloat16, "cuda")
    xs = [torch.randn(1, d, device="cuda", dtype=torch.bfloat16) for _ in ws]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mods = {"default": base, **{k: ablated(k, v, Path(tmp)) for k, v in EDITS.items()}}
        for sp in args.sparsities:
            thr = {id(w): threshold_for(x, [w["rw"]], sp) for x, w in zip(xs, ws)}
            fns = {"dense": dense_ffn}
            for name, mod in mods.items():
                fns[name] = lambda x, w, mod=mod, thr=thr: mod.sparse_ffn_triton(
                    x, w["wu"], w["wd_t"], w["rw"], None, expert_size=s, act="silu", w_gate=w["wg"],
                    logit_threshold=thr[id(w)], variant="fused")[0]
            times = {k: [] for k in fns}
            for _ in range(args.repeats):
                for k, fn in fns.items():
                    times[k].append(time_cuda_graph(fn, xs, ws))
            row = dict(sparsity=sp, **{f"{k}_us": round(sorted(v)[len(v) // 2], 2) for k, v in times.items()},
                       device=torch.cuda.get_device_name(0), date=_dt.date.today().isoformat(),
                       timing="CUDA graph replay, median of interleaved rounds, 4 weight copies")
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
