"""What each per-neuron selection rule keeps of a dense FFN: why a sigmoid router lags CATS at 50%.

For every FFN layer of a model, on real text, and for target sparsities 0.5 / 0.75 / 0.9, keep
the same number of neurons per token under four rules and report the share of the FFN's
intermediate magnitude ``sum |act(g) * u|`` each keeps (layer mean):
- ``oracle``: the largest ``|act(g) * u|`` (the best any rule can do);
- ``cats``: the largest ``|act(g)|`` (CATS's rule);
- ``gate_linear``: the largest ``g`` (what a sigmoid of a linear score starts as with
  ``--router-init gate``: one-sided, so never a neuron on the negative side);
- ``gate_folded``: the largest ``|g|`` (a folded router, ``--router-form folded``).
Also the share of CATS's kept neurons whose gate pre-activation is negative, at CATS's global
per-layer threshold for that sparsity. ``g`` is the gate pre-activation (up, without a gate).

    python benchmarks/cats_selection_analysis.py --data ../shared/data/wikitext-2/valid.txt \
        --out benchmarks/results/cats_selection_analysis.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lte
from lte.baselines.base import abs_quantile, capture_ffn_inputs
from lte.kernels.reference import activation
from lte.models import load_model
from lte.sparsify import lte_layers

SPARSITIES = (0.5, 0.75, 0.9)


def _keep_top(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping each row's ``(1 - sparsity)`` largest scores."""
    k = max(1, round(score.shape[-1] * (1 - sparsity)))
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(k, dim=-1).indices, True)


@torch.no_grad()
def analyse(model: torch.nn.Module, blocks: torch.Tensor) -> dict:
    """Per-sparsity layer means of each rule's kept share and CATS's negative-side share."""
    lte.sparsify(model, lte.LTEConfig(expert_size=1, grouping="random"), progress=False)
    xs = capture_ffn_inputs(model, [blocks], max_tokens=blocks.numel(), mode="dense")
    out = {s: {"oracle": [], "cats": [], "gate_linear": [], "gate_folded": [], "cats_negative_share": []}
           for s in SPARSITIES}
    for layer, x in zip(lte_layers(model), xs):
        src, src_b = layer.act_projection()
        g = F.linear(x, src.float(), None if src_b is None else src_b.float())
        a = activation(g, layer.act)
        h = (a * F.linear(x, layer.up.float(), None if layer.up_bias is None else layer.up_bias.float())
             if layer.gate is not None else a).abs()
        total = h.sum(-1)
        for s in SPARSITIES:
            for name, score in (("oracle", h), ("cats", a.abs()), ("gate_linear", g), ("gate_folded", g.abs())):
                out[s][name].append(float(((h * _keep_top(score, s)).sum(-1) / total).mean()))
            kept = a.abs() > abs_quantile(a, s)  # CATS's own threshold rule (lte.baselines.cats)
            out[s]["cats_negative_share"].append(float((kept & (g < 0)).sum() / kept.sum().clamp_min(1)))
    return {str(s): {k: round(sum(v) / len(v), 4) for k, v in d.items()} | {"per_layer_cats_negative_share":
            [round(v, 3) for v in d["cats_negative_share"]]} for s, d in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="alias, local dir, .gguf file or hub name")
    ap.add_argument("--data", required=True, help="text file (its first --tokens tokens are used)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens of text to analyse (default 4096)")
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (default 1024)")
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    a = ap.parse_args()
    if not Path(a.data).is_file():
        raise SystemExit(f"--data {a.data}: no such file")
    model, tok = load_model(a.model)
    model.float().eval()
    ids = tok(Path(a.data).read_text()[: a.tokens * 12], return_tensors="pt").input_ids[0]
    n = (min(ids.numel(), a.tokens) // a.seq_len) * a.seq_len
    if n == 0:
        raise SystemExit(f"--data has fewer than --seq-len={a.seq_len} tokens")
    t0 = time.time()
    res = {"model": a.model, "data": str(a.data), "tokens": n, "results": analyse(model, ids[:n].view(-1, a.seq_len)),
           "seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/cats_selection_analysis.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if v is not None)}
    print(json.dumps(res["results"], indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
