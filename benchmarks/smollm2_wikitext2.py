"""SmolLM2-135M on WikiText-2: dense fine-tune vs LTE at several target sparsities.

Protocol (data README): fine-tune on the first 90% of lines of WikiText-2 ``valid.txt``;
the last 10% is the held-out split the target controller and model selection may use;
perplexity on ``test.txt`` joined as is, non-overlapping windows of ``--eval-len``.
1. Dense fine-tune for ``--dense-epochs`` (the dense baseline; also the starting point and
   the distillation teacher of every LTE run, as in the paper's pipeline).
2. Per target: sparsify (balanced k-means, 32-neuron experts), stage 1 + stage 2 with KL
   distillation from the dense fine-tuned model, then test perplexity in hard mode.
Also reports the dense model trained for the same total token budget as LTE.

Usage: python benchmarks/smollm2_wikitext2.py --data ../shared/data/wikitext-2 --out DIR
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import time
from pathlib import Path

import torch

import lte
from lte.data import load_texts, pack, split_tail, tokenize
from lte.evaluate import perplexity
from lte.train import finetune_dense, make_teacher, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with valid.txt and test.txt")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="0.25,0.5,0.75,0.9")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-len", type=int, default=1024)
    ap.add_argument("--dense-epochs", type=float, default=3)
    ap.add_argument("--stage1-epochs", type=float, default=4)
    ap.add_argument("--stage2-epochs", type=float, default=2)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--stage-lr", type=float, default=None, help="model lr in LTE stages (default --lr)")
    ap.add_argument("--router-lr", type=float, default=2e-3)
    ap.add_argument("--stage1-gate", default="ste", choices=["ste", "scale"])
    ap.add_argument("--stage2-bias-gain", type=float, default=0.2)
    ap.add_argument("--backend", default="reference", help="kernel backend for hard-mode evaluation")
    ap.add_argument("--router-bias-lr", type=float, default=5e-2)
    ap.add_argument("--router-bias-init", type=float, default=3.0)
    ap.add_argument("--distill-weight", type=float, default=0.9)
    ap.add_argument("--ramp-fraction", type=float, default=0.5)
    ap.add_argument("--controller-gain", type=float, default=0.5)
    ap.add_argument("--separability-weight", type=float, default=0.5)
    ap.add_argument("--efficiency-loss", default="mean")
    ap.add_argument("--max-eval-windows", type=int, default=None)
    ap.add_argument("--skip-same-budget-dense", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = a.device
    dev_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    date = datetime.date.today().isoformat()
    command = "python " + " ".join(sys.argv)
    model, tok = lte.load_model(a.model, device=device)
    lines = load_texts(Path(a.data) / "valid.txt")
    train_texts, heldout_texts = split_tail(lines, 0.1)
    train_blocks = pack(tokenize(train_texts, tok), a.seq_len)
    heldout = pack(tokenize(heldout_texts, tok), a.seq_len)
    test_ids = tokenize(load_texts(Path(a.data) / "test.txt"), tok, add_eos=False)
    steps_per_epoch = max(train_blocks.shape[0] // a.batch_size, 1)
    print(f"train blocks {tuple(train_blocks.shape)}, {steps_per_epoch} steps/epoch; test tokens {test_ids.numel()}",
          flush=True)

    def ev(m):
        return perplexity(m, test_ids, seq_len=a.eval_len, batch_size=8, max_windows=a.max_eval_windows,
                          progress=False)

    rows = []

    def emit(row):
        row.update(device=dev_name, date=date, command=command)
        rows.append(row)
        (out / "smollm2_wikitext2.json").write_text(json.dumps(rows, indent=2))
        print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)

    base_cfg = lte.TrainConfig(lr=a.lr, batch_size=a.batch_size, seq_len=a.seq_len, seed=0)
    # pretrained, no fine-tuning
    lte.sparsify(model, lte.LTEConfig(grouping="random"), group=False, progress=False)
    r0 = ev(model)
    emit({"method": "dense-pretrained", "target_sparsity": 0.0, "ffn_sparsity": 0.0, "perplexity": r0["perplexity"],
          "gflops_per_token": r0["gflops_per_token"], "train_tokens": 0, "tokens": r0["tokens"]})
    model, tok = lte.load_model(a.model, device=device)
    dense_steps = int(round(a.dense_epochs * steps_per_epoch))
    t0 = time.time()
    finetune_dense(model, base_cfg, train_blocks, dense_steps, progress=False)
    dense_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dense_tokens = dense_steps * a.batch_size * a.seq_len
    probe = copy.deepcopy(model)
    lte.sparsify(probe, lte.LTEConfig(grouping="random"), group=False, progress=False)
    rd = ev(probe)
    emit({"method": "dense", "target_sparsity": 0.0, "ffn_sparsity": 0.0, "perplexity": rd["perplexity"],
          "gflops_per_token": rd["gflops_per_token"], "train_tokens": dense_tokens, "tokens": rd["tokens"],
          "seconds": time.time() - t0})
    del probe
    s1 = int(round(a.stage1_epochs * steps_per_epoch))
    s2 = int(round(a.stage2_epochs * steps_per_epoch))
    if not a.skip_same_budget_dense:
        same = copy.deepcopy(model)
        finetune_dense(same, base_cfg, train_blocks, s1 + s2, progress=False)
        lte.sparsify(same, lte.LTEConfig(grouping="random"), group=False, progress=False)
        rs = ev(same)
        emit({"method": "dense-same-budget", "target_sparsity": 0.0, "ffn_sparsity": 0.0,
              "perplexity": rs["perplexity"], "gflops_per_token": rs["gflops_per_token"],
              "train_tokens": dense_tokens + (s1 + s2) * a.batch_size * a.seq_len, "tokens": rs["tokens"]})
        del same
    for target in [float(t) for t in a.targets.split(",") if t]:
        model.load_state_dict(dense_state)
        m = copy.deepcopy(model)
        teacher = make_teacher(model)
        lcfg = lte.LTEConfig(router_bias_init=a.router_bias_init, separability_weight=a.separability_weight,
                             efficiency_loss=a.efficiency_loss)
        lte.sparsify(m, lcfg, progress=False)
        lte.set_backend(m, a.backend)
        tcfg = lte.TrainConfig(stage1_steps=s1, stage2_steps=s2, lr=a.stage_lr or a.lr, router_lr=a.router_lr,
                               router_bias_lr=a.router_bias_lr, batch_size=a.batch_size, seq_len=a.seq_len,
                               distill_weight=a.distill_weight, target_sparsity=target, ramp_fraction=a.ramp_fraction,
                               controller_gain=a.controller_gain, eval_every=max(s1 // 4, 1), save_every=10**9,
                               stage1_gate=a.stage1_gate, stage2_bias_gain=a.stage2_bias_gain,
                               log_every=5, seed=0)
        t0 = time.time()
        summary = train(m, tcfg, train_blocks, heldout, out / f"lte_{target}", tokenizer=tok, teacher=teacher,
                        progress=False)
        r = ev(m)
        emit({"method": "lte", "target_sparsity": target, "ffn_sparsity": r["ffn_sparsity"],
              "perplexity": r["perplexity"], "gflops_per_token": r["gflops_per_token"],
              "train_tokens": dense_tokens + summary["train_tokens"], "tokens": r["tokens"],
              "heldout_sparsity": summary.get("val_ffn_sparsity"), "final_eta": summary["final_eta"],
              "per_layer_sparsity": [round(x, 3) for x in r["per_layer_sparsity"]], "seconds": time.time() - t0,
              "tag": a.tag, "stage1_gate": a.stage1_gate})
        del m, teacher
        torch.cuda.empty_cache() if device.startswith("cuda") else None


if __name__ == "__main__":
    main()
