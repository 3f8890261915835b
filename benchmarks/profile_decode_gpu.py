"""Where a decode step's GPU time goes: CUDA kernel times of the lean loop's step (static cache,
compiled, CUDA graphs) for the dense and the LTE model of ``e2e_gpu.py`` (LLaMA-2-7B shape,
random weights, routers set to the target sparsity), from ``torch.profiler``.

    PYTHONPATH=src python benchmarks/profile_decode_gpu.py --sparsity 0.5 --tokens 33 --out profile.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from e2e_gpu import build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16, help="decoded tokens profiled per model")
    ap.add_argument("--top", type=int, default=12, help="kernels listed (and written) per model")
    ap.add_argument("--out", type=Path, default=None, help="also write the per-model totals and top kernels as JSON")
    a = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from lte.bench import calibrate_router_bias, dense_copy
    from lte.decode import GreedyDecoder
    from lte.sparsify import set_mode
    model = build(a.shape, "cuda", torch.bfloat16, 0)
    dense = dense_copy(model).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, a.prompt_len), generator=torch.Generator().manual_seed(1))
    ids = ids.cuda()
    set_mode(model, "hard")
    calibrate_router_bias(model, ids, a.sparsity)
    model.lte_state.track_stats = False
    def kernel_times(dec, n: int) -> dict[str, tuple[float, int]]:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dec.generate(ids, n)
            torch.cuda.synchronize()
        return {e.key: (e.self_device_time_total, e.count) for e in prof.key_averages()
                if e.device_type.name == "CUDA"}

    rows = []
    for name, m in (("dense", dense), ("lte", model)):
        dec = GreedyDecoder(m, a.prompt_len + a.tokens, "reduce-overhead")
        for _ in range(3):
            dec.generate(ids, a.tokens)
        torch.cuda.synchronize()
        # decode steps only: a run of 1 new token (prefill + 1 step) subtracted from a run of N
        long, short = kernel_times(dec, a.tokens), kernel_times(dec, 1)
        steps = a.tokens - 1
        per = {k: ((t - short.get(k, (0, 0))[0]) / steps, (c - short.get(k, (0, 0))[1]) / steps)
               for k, (t, c) in long.items()}
        total = sum(t for t, _ in per.values())
        top = sorted(per.items(), key=lambda kv: -kv[1][0])[:a.top]
        print(f"== {name}: {total / 1000:.3f} ms of kernel time per decode step ({len(per)} kernel names)")
        for k, (t, c) in top:
            print(f"  {t:9.1f} us/step  {c:6.1f} calls/step  {k[:100]}")
        rows.append({"model": name, "kernel_ms_per_step": round(total / 1000, 3), "kernel_names": len(per),
                     "top": [{"kernel": k, "us_per_step": round(t, 1), "calls_per_step": round(c, 1)}
                             for k, (t, c) in top]})
    if a.out:
        a.out.write_text(json.dumps({"sparsity": a.sparsity, "tokens": a.tokens, "shape": a.shape,
                                     "device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
                                     "command": "python " + " ".join(sys.argv), "models": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
