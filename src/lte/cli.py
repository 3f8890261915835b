"""The ``lte`` command line: demo, train, eval, generate, bench.

Every subcommand explains each flag in ``--help``. Bad input ends with a one-line
``lte: error: ...`` message and exit status 2, never a traceback (set ``LTE_DEBUG=1`` to
see one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ROUTER_FORMS, ROUTER_INITS, ConfigError, TrainConfig, check_layer_offsets


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def _add_common_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LTE method")
    g.add_argument("--expert-size", type=int, default=32, help="neurons per expert block (default 32)")
    g.add_argument("--grouping", choices=["kmeans", "random", "coactivation"], default="kmeans",
                   help="how neurons are grouped into experts (default kmeans on gate weights)")
    g.add_argument("--threshold", type=float, default=0.5, help="router score above which an expert runs (default 0.5)")
    s = g.add_mutually_exclusive_group()
    s.add_argument("--target-sparsity", type=float, default=None,
                   help="FFN sparsity to reach (0-1); a controller sets the efficiency weight during stage 1")
    s.add_argument("--efficiency-weight", type=float, default=None,
                   help="fixed efficiency-loss weight eta (the paper's knob) instead of a target")
    g.add_argument("--layer-target-offsets", type=layer_offsets_arg, default=None,
                   help=LAYER_OFFSETS_HELP + " (needs --target-sparsity)")
    g.add_argument("--separability-weight", type=float, default=0.0,
                   help="separability-loss weight lambda (default 0: with the default ste gate it only hurt in "
                        "our runs, see BENCHMARKS.md; the paper used 0.5 with --stage1-gate scale)")
    g.add_argument("--stage1-gate", choices=["ste", "scale"], default="ste",
                   help="stage-1 gating: ste (hard mask, straight-through gradient; default) or scale (the paper)")
    g.add_argument("--efficiency-loss", choices=["mean", "square"], default="mean",
                   help="efficiency loss: mean score or mean squared score (default mean)")
    g.add_argument("--router-bias-init", type=float, default=3.0,
                   help="initial router bias: +3 starts with ~every expert on (default 3)")
    g.add_argument("--router-init", choices=list(ROUTER_INITS), default="calibrated",
                   help="router weights at the start: calibrated (default: fitted, on training batches, to "
                        "predict each expert's contribution to the FFN output, so lowering the bias switches "
                        "the least important experts off first; see lte.router_init), random, or gate (with "
                        "--expert-size 1: each neuron's router starts as its gate pre-activation, i.e. CATS's "
                        "selection)")
    g.add_argument("--router-form", choices=list(ROUTER_FORMS), default="linear",
                   help=ROUTER_FORM_HELP)
    t = p.add_argument_group("training")
    t.add_argument("--stage1-steps", type=int, default=None, help="optimizer steps of stage 1 (routers + model, soft)")
    t.add_argument("--stage2-steps", type=int, default=None, help="optimizer steps of stage 2 (frozen routers, hard)")
    t.add_argument("--dense-steps", type=int, default=0,
                   help="dense fine-tuning steps before grouping (the paper's pipeline; default 0)")
    t.add_argument("--lr", type=float, default=None, help="model learning rate (default 5e-5)")
    t.add_argument("--router-lr", type=float, default=None, help="router learning rate (default 1e-2)")
    t.add_argument("--stage2-bias-gain", type=float, default=None,
                   help="gain of the router-bias loop that holds --target-sparsity during stage 2, where the "
                        "routers are frozen but their inputs drift as the model adapts "
                        f"(default {TrainConfig.stage2_bias_gain}; 0 turns it off)")
    t.add_argument("--batch-size", type=int, default=None, help="sequences per micro-batch")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    t.add_argument("--seq-len", type=int, default=None, help="tokens per training sequence")
    t.add_argument("--distill-weight", type=float, default=None,
                   help="weight a of KL distillation from the frozen dense model: (1-a)*CE + a*KL (0 disables)")
    t.add_argument("--ramp-fraction", type=float, default=0.5,
                   help="fraction of stage 1 over which the sparsity target ramps up from 0 (default 0.5)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile each transformer block (student and teacher) during training: fewer "
                        "kernel launches where the step is host-bound (small models on a GPU); first steps "
                        "are slower while it compiles")
    t.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="autocast dtype (auto: bf16 on GPU, none on CPU)")
    t.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps")
    t.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps")
    t.add_argument("--seed", type=int, default=0, help="random seed (grouping, routers, data order)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", help="model weights dtype: float32 (default), bfloat16, float16")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


ROUTER_FORM_HELP = ("router form: linear (default: sigmoid(x W + b), the paper's) or folded (sigmoid(|x W + c| + b): "
                    "an expert can be selected on both sides of a fold, as CATS keeps |silu(gate)| > t; with "
                    "--router-init gate it starts as |gate pre-activation|, near CATS's selection: use a small "
                    "--router-lr, 2e-3 to 5e-3, the best LTE of the GPU frontier at 0.5 and 0.75, BENCHMARKS.md); "
                    "every kernel backend computes both forms")


def layer_offsets_arg(text: str) -> list[float] | str:
    """``--layer-target-offsets``: 'linear:A' as given, or a comma list as floats (checked here)."""
    try:
        spec = text if text.startswith("linear:") else [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'linear:A' or a comma list of numbers, got {text!r}") from None
    try:
        check_layer_offsets(spec)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return spec


LAYER_OFFSETS_HELP = ("per-layer sparsity targets: 'linear:A' (the target - A at the first LTE layer rising evenly "
                      "to the target + A at the last) or a comma list of one offset per layer; offsets are "
                      "centred, so the mean target is unchanged; one router-bias loop per layer holds them")
_CLS_TASK_HELP = (
    "glue:sst2|cola|mrpc|rte|stsb|qnli: sequence classification/regression (--data: the GLUE folder, e.g. "
    "../shared/data/glue; train.tsv trains, dev.tsv is scored; a *ForSequenceClassification model with a fresh "
    "head, e.g. --model minilm-l6; training defaults to --seq-len 128 and no distillation unless --dense-steps); "
    "classification / regression: the same on a .tsv/.csv/.jsonl file with named columns (--text-field, "
    "--text-pair-field, --label-field; --val-data is scored). eval prints the task's metrics, FFN sparsity, "
    "union sparsity of each --batch-size batch (hard mode) and GFLOPs/token")


def _add_classification_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-pair-field", default=None,
                   help="classification/regression: column of the second text of a pair (default: none)")
    p.add_argument("--label-field", default="label", help="classification/regression: label column (default label)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render the README's usage)."""
    ap = argparse.ArgumentParser(prog="lte", description="Learn To be Efficient: structured FFN sparsity for transformers.")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    d = sub.add_parser("demo", help="the embedded default job: LTE on SmolLM2-135M, offline",
                       description="Sparsify SmolLM2-135M with LTE and report dense vs LTE perplexity, sparsity, "
                                   "GFLOPs/token, tokens/s and a sample. With no --data it trains on a corpus "
                                   "generated by the dense model itself (cached), distilling from it.")
    d.add_argument("--data", default=None, help="train on this text instead (file, .jsonl, dir); last 10%% held out")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--target-sparsity", type=float, default=0.5, help="FFN sparsity to reach (default 0.5)")
    d.add_argument("--steps", type=int, default=None, help="stage-1 steps (stage 2 gets half; default: sized to the device)")
    d.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.add_argument("--router-init", choices=["random", "calibrated"], default="calibrated",  # experts of 32: no gate
                   help="router weights at the start: calibrated (default: fitted to expert importance on the "
                        "first training blocks, see lte.router_init) or random")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="two-stage LTE training of a model on text",
                       description="Fine-tune with LTE: group + route (sparsify), stage 1 (soft, routers learn), "
                                   "stage 2 (hard, routers frozen). Writes OUT/model, OUT/log.jsonl, OUT/summary.json.")
    t.add_argument("--model", default="smollm2-135m", help="alias, local dir, .gguf file or hub name (default smollm2-135m)")
    t.add_argument("--data", required=True, help="training text: .txt, .jsonl, .json, a directory, or a hub dataset")
    t.add_argument("--val-data", default=None, help="held-out text (default: the last 10%% of --data lines)")
    t.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.json (default text)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--task", default="causal-lm",
                   help="causal-lm (default): language modelling on text; sft: prompt/response records (.json/.jsonl: "
                        "instruction/input/output, prompt/response or chat messages), loss on responses only, "
                        "last 5%% held out; e2e: an E2E NLG folder (trainset.csv trains, devset.csv is held out); "
                        + _CLS_TASK_HELP)
    t.add_argument("--chat-template", action="store_true",
                   help="sft: format with the tokenizer's chat template instead of the Alpaca prompt")
    t.add_argument("--packed", action="store_true",
                   help="sft/e2e: pack examples into --seq-len blocks instead of padding one example per row")
    _add_classification_flags(t)
    _add_common_train_flags(t)

    e = sub.add_parser("eval", help="perplexity, FFN sparsity and GFLOPs/token of a saved model",
                       description="Evaluate a model directory (or alias) on text: perplexity over non-overlapping "
                                   "windows, FFN sparsity (hard mode), GFLOPs per token.")
    e.add_argument("model", help="LTE model directory written by lte train / lte.save (or any load_model name)")
    e.add_argument("--data", required=True, help="evaluation text (.txt is read as is)")
    e.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.json")
    e.add_argument("--seq-len", type=int, default=1024, help="evaluation window (default 1024)")
    e.add_argument("--batch-size", type=int, default=8, help="windows per batch (default 8)")
    e.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
    e.add_argument("--mode", choices=["dense", "soft", "hard"], default=None, help="override the saved mode")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument("--task", default="causal-lm",
                   help="causal-lm (default): perplexity of text; sft: held-out response perplexity (last 5%% of the "
                        "records); mmlu: 5-shot accuracy (--data: the folder with dev/ and test/); e2e: generate per "
                        "test MR, BLEU and ROUGE-L (--data: the E2E folder or a CSV); "
                        + _CLS_TASK_HELP)
    e.add_argument("--limit", type=int, default=None,
                   help="mmlu: the first N test questions per subject; e2e: the first N distinct MRs")
    e.add_argument("--subjects", default=None, help="mmlu: comma-separated subjects (default all)")
    e.add_argument("--max-length", type=int, default=None,
                   help="mmlu: prompt token budget (default the model's context); longer prompts drop shots")
    e.add_argument("--decoding", choices=["greedy", "beam"], default="greedy", help="e2e: decoding (default greedy)")
    e.add_argument("--num-beams", type=int, default=4, help="e2e: beams for --decoding beam (default 4)")
    e.add_argument("--max-new-tokens", type=int, default=96, help="e2e: tokens generated at most per MR (default 96)")
    e.add_argument("--split", choices=["test", "dev"], default="test",
                   help="e2e: testset_w_refs.csv (default) or devset.csv")
    e.add_argument("--out", default=None,
                   help="e2e: folder for generations.jsonl + scores.json (default: beside the model, "
                        "e2e_SPLIT_DECODING); mmlu: also write per-subject results + predictions there")
    e.add_argument("--chat-template", action="store_true", help="sft: the records were trained with the chat template")
    e.add_argument("--backend", default="auto", help="hard-mode kernel backend: auto, reference, triton, cpu")
    _add_classification_flags(e)

    g = sub.add_parser("generate", help="generate text with a model and print the sparsity it ran at",
                       description="Generate from a prompt (chat template applied when the tokenizer has one).")
    g.add_argument("model", help="LTE model directory (or any load_model name)")
    g.add_argument("--prompt", required=True, help="the prompt")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--no-chat-template", action="store_true", help="use the raw prompt")
    g.add_argument("--mode", choices=["dense", "soft", "hard"], default=None, help="override the saved mode")
    g.add_argument("--backend", default="auto", help="hard-mode kernel backend: auto, reference, triton, cpu")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    b = sub.add_parser("bench", help="generation speed: LTE (hard mode) vs its dense self, side by side",
                       description="Decode tokens/s of a saved LTE model in hard mode and of the same weights in "
                                   "plain dense FFNs, measured alternately in one process (medians).")
    b.add_argument("model", help="LTE model directory (written by lte train / lte demo / lte.save)")
    b.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (default 128)")
    b.add_argument("--new-tokens", type=int, default=256, help="tokens generated per run (default 256)")
    b.add_argument("--repeats", type=int, default=3, help="timed runs per model and setup; medians reported (default 3)")
    b.add_argument("--setups", default="eager,static,static+compile",
                   help="comma list of: eager (dynamic cache), static (static KV cache), static+compile "
                        "(static cache + torch.compile), static+cudagraphs (static cache + torch.compile "
                        "mode reduce-overhead, CUDA only), static+loop (lte's lean greedy loop instead of "
                        "generate: static cache, compiled decode step, CUDA graphs on GPUs, no host sync per "
                        "token); default eager,static,static+compile")
    b.add_argument("--dtype", default="bfloat16", help="weights dtype for both models (default bfloat16)")
    b.add_argument("--backend", default="auto", help="hard-mode kernel backend: auto, reference, triton, cpu")
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    b.add_argument("--json", action="store_true", help="print the rows as JSON")
    b.add_argument("--out", default=None, help="also write the rows to this JSON file")
    _add_sweep_parser(sub)
    return ap


def _add_sweep_parser(sub) -> None:
    w = sub.add_parser("sweep", help="quality-sparsity frontier: LTE and the baselines side by side, CSV + PNG",
                       description="Run LTE and the baselines (dense, TEAL, CATS, Deja Vu, MoEfication, top-k "
                                   "routers) on one model and data at several sparsities, measured the same way. "
                                   "Writes OUT/results.json, results.csv, sparsity.png and gflops.png after every "
                                   "point; rerunning skips finished points.")
    w.add_argument("--model", default="smollm2-135m", help="alias, local dir, .gguf file or hub name (default smollm2-135m)")
    w.add_argument("--task", default="causal-lm",
                   help="causal-lm (default: perplexity) or glue:NAME (sst2, cola, mrpc, rte, stsb, qnli: an encoder "
                        "such as minilm-l6 with a fresh classification head, trained on the task's train split and "
                        "scored on dev; --data is the GLUE folder, --seq-len defaults to 128)")
    w.add_argument("--data", required=True,
                   help="training/calibration text; its last 10%% of lines is held out (LTE's controller check); "
                        "with --task glue:NAME the GLUE folder")
    w.add_argument("--eval-data", default=None, help="evaluation text (default: the held-out 10%% of --data; "
                                                     "glue tasks: dev.tsv, or this file in the task's layout)")
    w.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.json (default text)")
    w.add_argument("--methods", default="lte,dense,teal,cats,dejavu,moefication,topk",
                   help="comma list of methods (base, dense, lte, teal-ffn, teal-all, cats-nofinetune, cats-finetune, "
                        "dejavu-neuron, dejavu-block, moefication-router, moefication-oracle, topk-softmax, "
                        "random-router) or groups (teal, cats, dejavu, moefication, topk, random, training-free, all); "
                        "default lte,dense,teal,cats,dejavu,moefication,topk")
    w.add_argument("--sparsities", default="0.25,0.5,0.75,0.9", help="comma list of target FFN sparsities (default "
                                                                      "0.25,0.5,0.75,0.9)")
    w.add_argument("--out", required=True, help="output directory (results are resumed from it)")
    w.add_argument("--train-steps", dest="train_steps", type=int, default=None,
                   help="optimizer steps of every method that trains (LTE's two stages together; default 100)")
    w.add_argument("--dense-steps", dest="dense_steps", type=int, default=None,
                   help="dense fine-tuning steps of the shared starting model, before any method (default 0)")
    w.add_argument("--stage1-fraction", dest="stage1_fraction", type=float, default=None,
                   help="LTE: share of --train-steps spent in stage 1 (default 0.7)")
    w.add_argument("--lr", type=float, default=None, help="model learning rate of every trained method (default 5e-5)")
    w.add_argument("--router-lr", dest="router_lr", type=float, default=None,
                   help="LTE router learning rate (default 1e-2)")
    w.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="sequences per micro-batch (default 8)")
    w.add_argument("--grad-accum", dest="grad_accum", type=int, default=None,
                   help="micro-batches per optimizer step (default 1)")
    w.add_argument("--seq-len", dest="seq_len", type=int, default=None, help="tokens per training sequence (default 512)")
    w.add_argument("--distill-weight", dest="distill_weight", type=float, default=None,
                   help="weight of KL distillation from the starting model in every trained method (default 0.9)")
    w.add_argument("--separability-weight", dest="separability_weight", type=float, default=None,
                   help="LTE separability-loss weight (default 0)")
    w.add_argument("--router-init", dest="router_init", choices=list(ROUTER_INITS), default=None,
                   help="LTE router start: calibrated (default: each router first fitted to its experts' "
                        "importance on the calibration tokens; see lte.router_init), random, or gate (with "
                        "--expert-size 1: each router starts as its neuron's gate pre-activation, CATS's order)")
    w.add_argument("--router-form", dest="router_form", choices=list(ROUTER_FORMS), default=None,
                   help="LTE " + ROUTER_FORM_HELP)
    w.add_argument("--layer-target-offsets", dest="layer_target_offsets", type=layer_offsets_arg, default=None,
                   help="LTE " + LAYER_OFFSETS_HELP)
    w.add_argument("--stage2-bias-gain", dest="stage2_bias_gain", type=float, default=None,
                   help="LTE: gain of the router-bias loop that holds the target in stage 2 "
                        f"(default {TrainConfig.stage2_bias_gain})")
    w.add_argument("--aux-weight", dest="aux_weight", type=float, default=None,
                   help="noisy top-k: load-balancing (importance) loss weight (default 0.01)")
    w.add_argument("--expert-size", dest="expert_size", type=int, default=None,
                   help="neurons per expert block, for every method (default 32)")
    w.add_argument("--calib-tokens", dest="calib_tokens", type=int, default=None,
                   help="training tokens used to fit thresholds and train predictors (default 16384)")
    w.add_argument("--predictor-epochs", dest="predictor_epochs", type=int, default=None,
                   help="epochs of Deja Vu predictor / MoEfication router training (default 20)")
    w.add_argument("--eval-len", dest="eval_len", type=int, default=None, help="evaluation window (default 1024)")
    w.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=None,
                   help="evaluation windows per batch (default 8)")
    w.add_argument("--max-windows", dest="max_windows", type=int, default=None,
                   help="evaluate only the first N windows (default all)")
    w.add_argument("--mixed-precision", dest="mixed_precision", choices=["auto", "no", "bf16", "fp16"], default=None,
                   help="training autocast dtype (auto: bf16 on GPU, none on CPU)")
    w.add_argument("--seed", type=int, default=None, help="random seed (grouping, predictors, data order; default 0)")
    w.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    w.add_argument("--dtype", default="float32", help="model weights dtype: float32 (default), bfloat16, float16")
    w.add_argument("--verbose", action="store_true", help="also show the progress of each method's training")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")


def _device(name: str | None) -> str:
    import torch
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine")
    return name


def _check_path(path: str, what: str) -> None:
    if os.sep in path or path.startswith(".") or os.path.splitext(path)[1]:
        if not os.path.exists(path):
            raise CLIError(f"{what} {path}: no such file or directory")


def cmd_train(a) -> int:
    from .pipeline import run_train
    _check_path(a.data, "--data")
    if a.val_data:
        _check_path(a.val_data, "--val-data")
    from .dist import is_main_process, local_device, shutdown_distributed
    summary = run_train(a, device=local_device(_device(a.device)))  # under a launcher: cuda -> cuda:LOCAL_RANK
    if is_main_process():
        print(json.dumps(summary, indent=2))
    shutdown_distributed()
    return 0


def cmd_eval(a) -> int:
    from .pipeline import run_eval
    _check_path(a.data, "--data")
    res = run_eval(a, device=_device(a.device))
    task = getattr(a, "task", None) or "causal-lm"
    if task in ("mmlu", "e2e"):
        return _print_generation_eval(a, task, res)
    from .glue import format_report, is_classification_task, report
    if is_classification_task(task):
        print(json.dumps(report(res)) if a.json else format_report(res))
        return 0
    if a.json:
        print(json.dumps({k: res[k] for k in ("perplexity", "ffn_sparsity", "gflops_per_token", "tokens")}))
    else:
        print(f"perplexity {res['perplexity']:.3f}  ffn_sparsity {res['ffn_sparsity']:.3f}  "
              f"GFLOPs/token {res['gflops_per_token']:.4f}  tokens {res['tokens']}  (mode {res['mode']})")
    return 0


def _print_generation_eval(a, task: str, res: dict) -> int:
    if task == "mmlu":
        keys = ("accuracy", "accuracy_macro", "chance", "questions", "subjects", "truncated_prompts", "ffn_sparsity",
                "gflops_per_token", "tokens", "tokens_per_s", "mode")
        if a.json:
            out = {k: res[k] for k in keys}
            out["per_subject"] = {s: v["accuracy"] for s, v in res["per_subject"].items()}
            print(json.dumps(out))
        else:
            for s, v in res["per_subject"].items():
                print(f"  {s:<40} {v['accuracy']:.3f}  ({v['correct']}/{v['questions']})")
            print(f"MMLU 5-shot accuracy {res['accuracy']:.4f} (micro over {res['questions']} questions; macro over "
                  f"{res['subjects']} subjects {res['accuracy_macro']:.4f}; chance 0.25)  truncated prompts "
                  f"{res['truncated_prompts']}  ffn_sparsity {res['ffn_sparsity']:.3f}  GFLOPs/token "
                  f"{res['gflops_per_token']:.4f}  tokens {res['tokens']}  (mode {res['mode']})")
        return 0
    keys = ("bleu", "rouge_l", "mrs", "decoding", "num_beams", "ffn_sparsity", "gflops_per_token", "tokens",
            "tokens_per_s", "mode", "out_dir", "bleu_signature")
    if a.json:
        print(json.dumps({k: res[k] for k in keys if k in res}))
    else:
        print(f"E2E {res['split']}: BLEU {res['bleu']:.2f}  ROUGE-L {res['rouge_l']:.4f}  over {res['mrs']} MRs "
              f"({res['decoding']})  ffn_sparsity {res['ffn_sparsity']:.3f}  GFLOPs/token "
              f"{res['gflops_per_token']:.4f}  {res['tokens_per_s']:.1f} tokens/s  (mode {res['mode']})\n"
              f"generations and scores in {res.get('out_dir')}")
    return 0


def cmd_generate(a) -> int:
    from .pipeline import run_generate
    text, st, tps = run_generate(a, device=_device(a.device))
    print(text)
    print(f"\n[mode {st['mode']}, FFN sparsity {st['ffn_sparsity']:.3f} over {st['tokens']} tokens, {tps:.1f} tokens/s]")
    return 0


def cmd_demo(a) -> int:
    from .pipeline import run_demo
    if a.data:
        _check_path(a.data, "--data")
    run_demo(a, device=_device(a.device))
    return 0


def cmd_bench(a) -> int:
    from .bench import SETUPS, bench_generation
    from .models import load_model
    from .sparsify import set_backend
    setups = tuple(dict.fromkeys(x.strip() for x in a.setups.split(",") if x.strip()))  # in order, once each
    bad = [x for x in setups if x not in SETUPS]
    if not setups:
        raise CLIError(f"--setups: give at least one of {list(SETUPS)}")
    if bad:
        raise CLIError(f"--setups: unknown setup(s) {bad}; choose from {list(SETUPS)}")
    for name in ("prompt_len", "new_tokens", "repeats"):
        if getattr(a, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1")
    model, tok = load_model(a.model, dtype=a.dtype, device=_device(a.device))
    set_backend(model, a.backend)
    rows = bench_generation(model, tok, prompt_len=a.prompt_len, new_tokens=a.new_tokens, repeats=a.repeats,
                            setups=setups, progress=not a.json)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rows, fh, indent=2)
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'setup':<16} {'dense tok/s':>12} {'LTE tok/s':>10} {'speedup':>8} {'FFN sparsity':>13}")
        for r in rows:
            print(f"{r['setup']:<16} {r['dense_tok_s']:>12.1f} {r['lte_tok_s']:>10.1f} {r['speedup']:>7.2f}x "
                  f"{r['sparsity']:>13.3f}")
        for r in rows:
            if "decode_speedup" in r:
                print(f"{r['setup']}, decode steps only (prefill excluded): dense {r['dense_decode_tok_s']:.1f}, "
                      f"LTE {r['lte_decode_tok_s']:.1f} tok/s, {r['decode_speedup']:.2f}x")
        if len(rows) > 1:
            best = max(rows, key=lambda r: r["lte_tok_s"])
            print(f"fastest LTE ({best['setup']}) vs fastest dense ({best['fastest_dense_setup']}): "
                  f"{best['speedup_vs_fastest_dense']:.2f}x")
    return 0


def cmd_sweep(a) -> int:
    from .sweep import run_cli
    _check_path(a.data, "--data")
    if a.eval_data:
        _check_path(a.eval_data, "--eval-data")
    a.device = _device(a.device)
    res = run_cli(a)
    n = len(res["rows"])
    print(f"{res['computed']} point(s) computed, {n - res['computed']} reused; results in {res['out']}/results.json, "
          f"results.csv, sparsity.png, gflops.png")
    return 0


COMMANDS = {"sweep": cmd_sweep, "bench": cmd_bench, "train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lte`` command."""
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.cmd is None:
        ap.print_help()
        return 2
    try:
        return COMMANDS[a.cmd](a)
    except KeyboardInterrupt:
        print("lte: interrupted (use --resume to continue a training run)", file=sys.stderr)
        return 130
    except (CLIError, ConfigError, ValueError, FileNotFoundError, OSError) as e:
        if os.environ.get("LTE_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"lte: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
