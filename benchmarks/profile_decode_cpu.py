"""Where a CPU decode step's time goes: torch.profiler operator times of the lean loop's step
(static cache, ``torch.compile`` default mode) for a saved LTE model in hard mode and its dense copy,
the setup ``lte bench --setups static+loop`` times.

    PYTHONPATH=src python benchmarks/profile_decode_cpu.py runs/demo/model --tokens 40 --out profile_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lte.bench import dense_copy
from lte.decode import GreedyDecoder
from lte.io import CheckpointError, load
from lte.sparsify import set_mode


def main() -> None:
    """Profile the dense and the LTE decode loop; print and optionally write the top operators."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a saved LTE model (lte demo / lte train output)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=40, help="tokens generated per model (tokens - 1 decode steps profiled)")
    ap.add_argument("--top", type=int, default=12, help="operators listed (and written) per model")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--out", type=Path, default=None, help="also write the per-model totals and top operators as JSON")
    a = ap.parse_args()
    try:
        loaded = load(a.model, dtype=getattr(torch, a.dtype), device="cpu")
    except CheckpointError as exc:
        raise SystemExit(f"profile_decode_cpu: {exc}") from None
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    set_mode(model, "hard")
    model.eval()
    model.lte_state.track_stats = False
    dense = dense_copy(model).eval()
    vocab = min(1000, model.get_input_embeddings().num_embeddings)
    ids = torch.randint(0, vocab, (1, a.prompt_len), generator=torch.Generator().manual_seed(0))
    rows = {}
    for name, m in (("dense", dense), ("lte", model)):
        dec = GreedyDecoder(m, a.prompt_len + a.tokens, "default")
        with torch.no_grad():
            dec.generate(ids, a.tokens)
            dec.generate(ids, a.tokens)
            t = time.perf_counter()
            dec.generate(ids, a.tokens)
            tok_s = a.tokens / (time.perf_counter() - t)
            prof = profile(activities=[ProfilerActivity.CPU])
            dec.generate(ids, a.tokens, on_prefill=prof.start)  # the decode steps only, not the prefill
            prof.stop()
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops)
        steps = a.tokens - 1  # the compiled decode steps after the prefill
        top = [dict(op=e.key, ms_per_step=round(e.self_cpu_time_total / 1e3 / steps, 3), calls=e.count,
                    share=round(e.self_cpu_time_total / total, 3)) for e in ops[:a.top]]
        rows[name] = dict(tok_s_unprofiled=round(tok_s, 1), self_cpu_ms_total=round(total / 1e3, 1), top=top)
        print(f"== {name}: {tok_s:.1f} tok/s unprofiled (prompt {a.prompt_len} + {a.tokens} tokens); "
              f"self CPU {total / 1e3:.1f} ms profiled")
        for r in top:
            print(f"  {r['ms_per_step']:8.3f} ms/step  {r['share']:6.1%}  {r['calls']:6d} calls  {r['op'][:70]}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(dict(rows, model=a.model, prompt_len=a.prompt_len, tokens=a.tokens, dtype=a.dtype,
                                         date=datetime.date.today().isoformat()), indent=1) + "\n")


if __name__ == "__main__":
    main()
