"""End-to-end decode speed of a LLaMA-2-7B-shaped model: dense vs LTE hard mode, side by side.

The model has random bf16 weights (no 7B checkpoint travels here); LTE routers are random and
their biases are shifted per layer (``lte.bench.calibrate_router_bias``) so that the target
share of (token, expert) pairs is skipped on a random 128-token prompt; the sparsity that
generation actually ran at is measured and reported. Hugging Face ``generate``, batch 1,
prompt 128, 256 new tokens, greedy; dense and LTE alternate in one process (medians).

    PYTHONPATH=src python benchmarks/e2e_gpu.py --sparsities 0.5,0.8 --out $OUT/e2e_h100.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time

import torch

SHAPES = {  # name: (hidden, intermediate, layers, heads, kv heads, vocab)
    "llama2-7b": (4096, 11008, 32, 32, 32, 32000),
    "tiny": (64, 256, 2, 4, 4, 128),  # CPU smoke test of the script
}


def build(shape: str, device: str, dtype: torch.dtype, seed: int):
    """A randomly initialised LlamaForCausalLM of the named shape, sparsified with random grouping."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import lte
    d, f, n, h, kv, v = SHAPES[shape]
    cfg = LlamaConfig(hidden_size=d, intermediate_size=f, num_hidden_layers=n, num_attention_heads=h,
                      num_key_value_heads=kv, vocab_size=v, max_position_embeddings=4096)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.eval()
    lte.sparsify(model, lte.LTEConfig(expert_size=32, grouping="random", seed=seed), progress=False)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES), help="model shape (default llama2-7b)")
    ap.add_argument("--sparsities", default="0.5,0.8", help="target FFN sparsities (default 0.5,0.8)")
    ap.add_argument("--setups", default="static+compile,static+cudagraphs",
                    help="lte.bench setups to time (default static+compile,static+cudagraphs)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per model and setup (medians)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file for the rows (written after every sparsity)")
    a = ap.parse_args()
    from lte.bench import (
        bench_generation,
        calibrate_router_bias,
        dense_copy,
        measured_sparsity,
        prompt_inputs,
    )
    from lte.sparsify import set_mode

    t0 = time.time()
    dtype = getattr(torch, a.dtype)
    model = build(a.shape, a.device, dtype, a.seed)
    dense = dense_copy(model).eval()
    vocab = model.config.vocab_size
    calib = torch.randint(0, vocab, (1, a.prompt_len), generator=torch.Generator().manual_seed(a.seed + 1)).to(a.device)
    print(f"[e2e] built {a.shape} in {time.time() - t0:.0f} s", flush=True)
    device_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    rows = []
    for target in [float(x) for x in a.sparsities.split(",")]:
        set_mode(model, "hard")
        calibrate_router_bias(model, calib, target)
        # the sparsity generation runs at: one eager pass per target, shared by every setup
        spars = measured_sparsity(model, prompt_inputs(None, a.prompt_len, a.device, vocab), a.new_tokens, None)
        res = []
        for setup in a.setups.split(","):  # one setup at a time: a failure in one keeps the others
            try:
                res += bench_generation(model, None, prompt_len=a.prompt_len, new_tokens=a.new_tokens,
                                        repeats=a.repeats, setups=(setup,), dense=dense, vocab_size=vocab,
                                        sparsity=spars)
            except Exception as e:  # noqa: BLE001 - recorded in the results, then the next setup runs
                print(f"[e2e] target {target}: {setup} failed: {type(e).__name__}: {e}", flush=True)
                rows.append({"setup": setup, "target_sparsity": target, "error": f"{type(e).__name__}: {e}"[:500]})
        for r in res:
            r.update(target_sparsity=target, shape=a.shape, device=device_name,
                     date=_dt.date.today().isoformat(), command="python " + " ".join(sys.argv))
            print(f"[e2e] target {target}: {r['setup']}: dense {r['dense_tok_s']:.1f} tok/s, lte {r['lte_tok_s']:.1f} "
                  f"tok/s, {r['speedup']:.2f}x at measured sparsity {r['sparsity']:.3f}", flush=True)
        rows += res
        if a.out:
            tmp = a.out + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(rows, fh, indent=2)
            os.replace(tmp, a.out)
    print(f"[e2e] done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
