"""Multi-GPU LTE training throughput: ``lte train`` on 1 GPU vs N GPUs (FSDP, and DDP).

Each setup launches the real CLI (``python -m lte.cli train``, unchanged) as a subprocess:
- ``1gpu``: one plain process;
- ``fsdp``: ``accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes N``
  (FSDP2 full sharding of every transformer block with its router; bf16 autocast on GPU,
  parameters gathered in fp32, gradients reduced in fp32);
- ``ddp``: ``accelerate launch --multi_gpu --num_processes N`` (``--launcher torchrun`` uses
  ``torchrun --nproc_per_node N`` with ``LTE_FSDP=1`` for FSDP instead).
Every setup runs LTE stage 1 + stage 2 (``--stage1-steps`` + ``--stage2-steps``, target
sparsity 0.5, distillation from the dense model as ``lte train`` does by default) with the
SAME per-GPU micro-batch, so the global batch grows with N (``global_batch`` in the record);
``--same-global-batch`` adds rows whose per-GPU batch is divided by N instead.

``--fsdp-variants`` runs the FSDP setup once per variant in one invocation: a comma list of
``+``-joined knobs (``default``; ``bf16``: LTE_FSDP_PARAM_DTYPE=bfloat16; ``noreshard``:
LTE_FSDP_RESHARD=0; ``shardteacher``: LTE_FSDP_SHARD_TEACHER=1; ``noprefetch``:
LTE_FSDP_PREFETCH=0; ``units3``/``units6``/``units10``/``oneunit``: LTE_FSDP_BLOCKS_PER_UNIT=3/6/10/0;
see ``lte.dist``), e.g. ``default,bf16,bf16+noreshard``. Each row is named
after the knobs that differ from the defaults, e.g. ``fsdp-2gpu`` and ``fsdp-2gpu[bf16,noreshard]``
(knobs set in the calling environment count too), and records them in ``fsdp_env``.

Throughput is read from the trainer's JSONL log: every logged train record carries the real
(non-padding) input tokens over all processes and the wall time of the steps since the
previous record (CUDA-synchronised). Timed steps exclude the first ``--warmup-steps`` of each
stage (optimizer/mode rebuild, allocator and kernel warm-up); the trainer logs every 10 steps
and at the stage end, so the warm-up is rounded up to whole log intervals. Model loading,
grouping, evaluation and checkpoints are not in the timed steps (``launch_s`` has the whole
wall time of a launch).

Writes ``--out`` (a JSON list, one object per setup) after each finished setup and skips
setups already there with the same settings (``--force`` reruns them), then prints a table.

``--profile START:COUNT`` sets ``LTE_PROFILE=START:COUNT`` for every launch (see ``lte.train``):
each process writes ``profile_rank{R}.txt`` (and ``.json``, a chrome trace, when small enough)
into its setup's run folder (``--work-dir``/<setup name>, e.g. ``fsdp-2gpu``); each row then
records ``profile``. Profiled steps run slower: keep the window inside the untimed warm-up
(e.g. ``5:5``, log steps 6-10, with the default ``--warmup-steps 10``) to leave tokens/s as it is.

GPU (2 GPUs, about 3-4 minutes):
  PYTHONPATH=src python benchmarks/multigpu.py --model /root/m/smol.gguf \\
      --data .dev/data/wikitext-2/valid.txt --out benchmarks/results/multigpu.json
CPU smoke (gloo): --device cpu with a small model, see tests/test_multigpu.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from lte.dist import FSDP_ENV_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
SETUPS = ("1gpu", "fsdp", "ddp")
# --fsdp-variants knobs: name -> (environment variable, value); the defaults live in lte.dist
FSDP_KNOBS = {"bf16": ("LTE_FSDP_PARAM_DTYPE", "bfloat16"), "noreshard": ("LTE_FSDP_RESHARD", "0"),
              "shardteacher": ("LTE_FSDP_SHARD_TEACHER", "1"), "noprefetch": ("LTE_FSDP_PREFETCH", "0"),
              "units3": ("LTE_FSDP_BLOCKS_PER_UNIT", "3"), "units6": ("LTE_FSDP_BLOCKS_PER_UNIT", "6"),
              "units10": ("LTE_FSDP_BLOCKS_PER_UNIT", "10"), "oneunit": ("LTE_FSDP_BLOCKS_PER_UNIT", "0")}
FSDP_DEFAULTS = FSDP_ENV_DEFAULTS
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
               "ACCELERATE_USE_FSDP", "LTE_FSDP", "TORCHELASTIC_RUN_ID")


def _default_data() -> str:
    for p in (ROOT / ".dev" / "data" / "wikitext-2" / "valid.txt", Path("/root/data/wikitext-2/valid.txt"),
              ROOT.parent / "shared" / "data" / "wikitext-2" / "valid.txt"):
        if p.is_file():
            return str(p)
    return str(ROOT.parent / "shared" / "data" / "wikitext-2" / "valid.txt")


def _default_model() -> str:
    return "/root/m/smol.gguf" if Path("/root/m/smol.gguf").is_file() else "smollm2-135m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_name(device: str) -> str:
    """The GPU's name (queried in a child process so this one never holds a CUDA context), or the CPU."""
    if device.startswith("cuda"):
        code = "import torch; print(torch.cuda.get_device_name(0), torch.cuda.device_count())"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        if r.returncode == 0 and r.stdout.strip():
            name, _, count = r.stdout.strip().rpartition(" ")
            return f"{count}x {name}"
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def fsdp_variant_env(variant: str) -> dict[str, str]:
    """The environment of one ``--fsdp-variants`` entry (``default``, ``bf16+noreshard``, ...)."""
    env = {}
    for knob in (k.strip() for k in variant.split("+")):
        if knob == "default":
            continue
        if knob not in FSDP_KNOBS:
            raise ValueError(f"FSDP variant {variant!r}: unknown knob {knob!r}; choose from "
                             f"{['default', *FSDP_KNOBS]} joined with '+'")
        var, value = FSDP_KNOBS[knob]
        env[var] = value
    return env


def fsdp_settings(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The FSDP knobs a launch runs with: this process's environment overlaid by ``extra``,
    normalised (lower case; "" for the default fp32 gather dtype)."""
    env = {**os.environ, **(extra or {})}
    out = {var: env.get(var, default).strip().lower() for var, default in FSDP_DEFAULTS.items()}
    if out["LTE_FSDP_PARAM_DTYPE"] in ("none", "float32", "fp32"):
        out["LTE_FSDP_PARAM_DTYPE"] = ""
    for var in ("LTE_FSDP_RESHARD", "LTE_FSDP_SHARD_TEACHER", "LTE_FSDP_PREFETCH"):
        out[var] = {"true": "1", "false": "0"}.get(out[var], out[var])
    return out


def fsdp_label(settings: dict[str, str]) -> str:
    """The knobs of ``fsdp_settings`` that differ from the defaults, e.g. ``bf16,noreshard``."""
    names = []
    for var, value in settings.items():
        if value == FSDP_DEFAULTS[var]:
            continue
        if var == "LTE_FSDP_PARAM_DTYPE":
            names.append({"bfloat16": "bf16", "float16": "fp16"}.get(value, value))
        else:
            names.append(next((k for k, (v, val) in FSDP_KNOBS.items() if v == var and val == value),
                              f"{var}={value}"))
    return ",".join(names)


def setup_name(kind: str, procs: int, same_global: bool = False, fsdp: dict[str, str] | None = None) -> str:
    """Row name: 1gpu, fsdp-2gpu, ddp-2gpu (+ -same-global); FSDP rows add the non-default
    knobs of ``fsdp`` (``fsdp_settings``, default: this environment's), e.g. fsdp-2gpu[bf16,noreshard]."""
    if kind == "1gpu":
        return "1gpu"
    name = f"{kind}-{procs}gpu"
    if kind == "fsdp":
        label = fsdp_label(fsdp if fsdp is not None else fsdp_settings())
        name += f"[{label}]" if label else ""
    return name + ("-same-global" if same_global else "")


def launch_command(kind: str, procs: int, launcher: str, train_args: list[str]) -> tuple[list[str], dict]:
    """(argv, extra environment) that runs ``lte train`` with ``train_args`` as setup ``kind``."""
    module = ["-m", "lte.cli", "train", *train_args]
    if kind == "1gpu":
        return [sys.executable, *module], {}
    port = str(_free_port())
    if launcher == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *module]
        return argv, {"LTE_FSDP": "1" if kind == "fsdp" else "0"}
    acc = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs), "--num_machines", "1",
           "--main_process_port", port]
    if kind == "fsdp":
        acc += ["--config_file", str(ROOT / "configs" / "accelerate_fsdp.yaml")]
    else:
        acc += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*acc, *module], {}


def timed_rate(records: list[dict], stage1_steps: int, warmup: int) -> dict:
    """Tokens/s over the logged intervals that start after the first ``warmup`` steps of their stage."""
    tokens = secs = steps = 0.0
    per_stage = {1: [0.0, 0.0], 2: [0.0, 0.0]}
    for r in records:
        if r.get("kind") != "train" or "interval_steps" not in r:
            continue
        first = r["step"] - r["interval_steps"] + 1
        start = 0 if r["stage"] == 1 else stage1_steps
        if first <= start or first - start <= warmup:
            continue
        tokens += r["interval_tokens"]
        secs += r["interval_s"]
        steps += r["interval_steps"]
        per_stage[r["stage"]][0] += r["interval_tokens"]
        per_stage[r["stage"]][1] += r["interval_s"]
    if steps == 0:
        raise RuntimeError("no timed steps: raise --stage1-steps/--stage2-steps or lower --warmup-steps")
    return {"tokens_per_s": tokens / secs, "steps_timed": int(steps), "tokens_timed": int(tokens),
            "stage1_tokens_per_s": per_stage[1][0] / per_stage[1][1] if per_stage[1][1] else None,
            "stage2_tokens_per_s": per_stage[2][0] / per_stage[2][1] if per_stage[2][1] else None}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(tmp, path)


def _same(row: dict, key: dict) -> bool:
    """Whether ``row`` was measured with ``key``'s settings (rows written before ``train_args``
    was recorded had none)."""
    return all(row.get(k, "" if k == "train_args" else None) == v for k, v in key.items())


def run_setup(a, kind: str, procs: int, per_gpu: int, same_global: bool, dev_name: str,
              variant_env: dict[str, str] | None = None) -> dict:
    """Launch one setup (an FSDP one with ``variant_env`` added to its environment), wait, and
    turn its log into a result row."""
    settings = fsdp_settings(variant_env) if kind == "fsdp" else None
    name = setup_name(kind, procs, same_global, settings)
    run_dir = Path(a.work_dir) / re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")  # fsdp-2gpu_bf16_noreshard
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the trainer appends to log.jsonl: start clean
    run_dir.mkdir(parents=True)
    train_args = ["--model", a.model, "--data", a.data, "--out", str(run_dir), "--stage1-steps", str(a.stage1_steps),
                  "--stage2-steps", str(a.stage2_steps), "--batch-size", str(per_gpu), "--seq-len", str(a.seq_len),
                  "--target-sparsity", str(a.target_sparsity), "--eval-every", "1000000", "--save-every", "1000000",
                  "--device", "cuda" if a.device.startswith("cuda") else a.device, "--no-progress",
                  *shlex.split(a.train_args)]
    argv, extra = launch_command(kind, procs, a.launcher, train_args)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(NCCL_ENV)
    env.update(extra)
    if kind == "fsdp":
        env.update(variant_env or {})
    if a.profile:
        env["LTE_PROFILE"] = a.profile
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    if a.device == "cpu" and a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    shown = " ".join(shlex.quote(x) for x in argv)
    if kind == "fsdp" and variant_env:
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in variant_env.items()) + " " + shown
    print(f"[{name}] {shown}", flush=True)
    t0 = time.perf_counter()
    with (run_dir / "launch.log").open("w") as log:
        r = subprocess.run(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = (run_dir / "launch.log").read_text()[-4000:]
        raise RuntimeError(f"{name} failed (exit {r.returncode}); end of {run_dir / 'launch.log'}:\n{tail}")
    records = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    train = [x for x in records if x.get("kind") == "train"]
    rate = timed_rate(train, a.stage1_steps, a.warmup_steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    mem = [x["peak_mem_gb"] for x in train if "peak_mem_gb" in x]
    row = {"setup": name, "num_processes": procs, "tokens_per_s": rate["tokens_per_s"], "per_gpu_micro_batch": per_gpu,
           "seq_len": a.seq_len, "global_batch": per_gpu * procs, "steps_timed": rate["steps_timed"],
           "speedup_vs_1gpu": None, "final_loss": train[-1]["loss"], "peak_mem_gb": max(mem) if mem else None,
           "device": dev_name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "PYTHONPATH=src python " + " ".join(shlex.quote(x) for x in sys.argv),
           "launch": shown, "parallel": summary.get("parallel"), "stage1_steps": a.stage1_steps,
           "stage2_steps": a.stage2_steps, "warmup_steps": a.warmup_steps, "tokens_timed": rate["tokens_timed"],
           "stage1_tokens_per_s": rate["stage1_tokens_per_s"], "stage2_tokens_per_s": rate["stage2_tokens_per_s"],
           "final_sparsity": train[-1]["sparsity"], "train_tokens": summary.get("train_tokens"),
           "val_perplexity": summary.get("val_perplexity"), "launch_s": wall, "model": a.model,
           "target_sparsity": a.target_sparsity, "fsdp_env": settings, "train_args": a.train_args,
           "note": "tokens_per_s: real input tokens over all processes per second of timed training steps "
                   "(first warmup_steps of each stage excluded, rounded up to 10-step log intervals); "
                   + ("per-GPU micro-batch divided by the process count: same global batch as 1gpu"
                      if same_global else "same per-GPU micro-batch: the global batch scales with num_processes")}
    if env.get("LTE_PROFILE", "").strip():
        row["profile"] = env["LTE_PROFILE"].strip()
        print(f"[{name}] profile (LTE_PROFILE={row['profile']}): {sorted(p.name for p in run_dir.glob('profile_rank*'))} "
              f"in {run_dir}", flush=True)
    print(f"[{name}] {row['tokens_per_s']:.0f} tokens/s over {row['steps_timed']} timed steps, "
          f"final loss {row['final_loss']:.3f}, launch {wall:.0f} s", flush=True)
    return row


def _with_speedups(rows: list[dict]) -> None:
    """Fill ``speedup_vs_1gpu``: tokens/s over the matching 1gpu row's (same settings; its
    batch = this row's per-GPU batch, or its global batch for a -same-global row)."""
    same = ("seq_len", "device", "model", "stage1_steps", "stage2_steps", "warmup_steps")
    for r in rows:
        batch = r["global_batch"] if r["setup"].endswith("-same-global") else r["per_gpu_micro_batch"]
        base = [b for b in rows if b["setup"] == "1gpu" and b["per_gpu_micro_batch"] == batch
                and all(b.get(k) == r.get(k) for k in same)]
        r["speedup_vs_1gpu"] = r["tokens_per_s"] / base[-1]["tokens_per_s"] if base else None


def print_table(rows: list[dict]) -> None:
    """The results as a text table."""
    print(f"\n{'setup':<34} {'procs':>5} {'micro/GPU':>9} {'global':>6} {'tokens/s':>10} {'speedup':>8} "
          f"{'steps':>5} {'final loss':>10} {'peak GB':>8}")
    for r in rows:
        sp = f"{r['speedup_vs_1gpu']:.2f}x" if r.get("speedup_vs_1gpu") else "-"
        mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") is not None else "-"
        print(f"{r['setup']:<34} {r['num_processes']:>5} {r['per_gpu_micro_batch']:>9} {r['global_batch']:>6} "
              f"{r['tokens_per_s']:>10.0f} {sp:>8} {r['steps_timed']:>5} {r['final_loss']:>10.3f} {mem:>8}")
    if rows:
        print(f"(device: {rows[0]['device']}; seq_len {rows[0]['seq_len']}; tokens/s = real tokens over all "
              f"processes)", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark (see module docstring); returns the rows of this configuration."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=_default_model(),
                    help="model for lte train (default /root/m/smol.gguf if present, else smollm2-135m)")
    ap.add_argument("--data", default=_default_data(),
                    help="training text (default .dev/data/wikitext-2/valid.txt, else ../shared/data/...; "
                         "a folder means its valid.txt); its last 10%% of lines is held out by lte train")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "multigpu.json"),
                    help="results JSON (a list; rewritten after each setup; default benchmarks/results/multigpu.json)")
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "multigpu"),
                    help="where each setup's lte train output goes (default runs/multigpu)")
    ap.add_argument("--nproc", type=int, default=2, help="processes (GPUs) of the multi-process setups (default 2)")
    ap.add_argument("--setups", default="1gpu,fsdp,ddp", help="comma list of 1gpu, fsdp, ddp (default all three)")
    ap.add_argument("--fsdp-variants", default="default",
                    help="comma list of FSDP variants, each 'default' or knobs joined with '+' "
                         f"({', '.join(FSDP_KNOBS)}), e.g. default,bf16,bf16+noreshard: one fsdp row each "
                         "(default: 'default')")
    ap.add_argument("--same-global-batch", action="store_true",
                    help="also run the multi-process setups at the 1gpu global batch (per-GPU batch / nproc)")
    ap.add_argument("--batch-size", type=int, default=16, help="per-GPU micro-batch, sequences (default 16)")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    ap.add_argument("--stage1-steps", type=int, default=40, help="stage-1 optimizer steps (default 40)")
    ap.add_argument("--stage2-steps", type=int, default=40, help="stage-2 optimizer steps (default 40)")
    ap.add_argument("--warmup-steps", type=int, default=10,
                    help="untimed steps at the start of each stage, rounded up to 10-step log intervals (default 10)")
    ap.add_argument("--target-sparsity", type=float, default=0.5, help="LTE target FFN sparsity (default 0.5)")
    ap.add_argument("--train-args", default="", help="extra lte train flags, one quoted string (e.g. "
                                                     "'--gradient-checkpointing --distill-weight 0')")
    ap.add_argument("--launcher", choices=["accelerate", "torchrun"], default="accelerate",
                    help="multi-process launcher (default accelerate launch; torchrun sets LTE_FSDP=1 for fsdp)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default cuda if available; cpu runs gloo)")
    ap.add_argument("--threads", type=int, default=1, help="cpu only: OMP threads per process (default 1)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed per launch (default 900)")
    ap.add_argument("--force", action="store_true", help="rerun setups already in --out")
    ap.add_argument("--profile", default="", metavar="START:COUNT",
                    help="LTE_PROFILE for every launch: torch.profiler over optimizer steps START..START+COUNT-1 "
                         "(from 0), reports in each setup's run folder (default: off)")
    a = ap.parse_args(argv)
    if a.device is None:
        a.device = "cuda" if shutil.which("nvidia-smi") and _cuda_available() else "cpu"
    data = Path(a.data)
    if data.is_dir():
        data = data / "valid.txt"
    if not data.is_file():
        ap.error(f"--data {a.data}: no such file (want WikiText-2 valid.txt or its folder)")
    a.data = str(data.resolve())  # the launches run in the repository root: pass absolute paths
    a.work_dir = str(Path(a.work_dir).resolve())
    if Path(a.model).exists():
        a.model = str(Path(a.model).resolve())
    kinds = [k.strip() for k in a.setups.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SETUPS]
    if bad:
        ap.error(f"--setups: unknown {bad}; choose from {list(SETUPS)}")
    if a.nproc < 2:
        ap.error("--nproc must be >= 2")
    for name in ("batch_size", "seq_len", "stage1_steps", "stage2_steps"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.profile:
        from lte.profiling import profile_window
        try:
            profile_window(a.profile)
        except ValueError as e:
            ap.error(f"--profile: {e}")
    if a.same_global_batch and a.batch_size % a.nproc:
        ap.error(f"--same-global-batch: --batch-size {a.batch_size} is not divisible by --nproc {a.nproc}")

    try:
        variants = [fsdp_variant_env(v) for v in a.fsdp_variants.split(",") if v.strip()]
    except ValueError as e:
        ap.error(f"--fsdp-variants: {e}")
    if not variants:
        ap.error("--fsdp-variants: no variant given")

    out = Path(a.out)
    rows: list[dict] = json.loads(out.read_text()) if out.is_file() else []
    dev = device_name(a.device)

    def expand(kind: str, procs: int, per_gpu: int, same: bool) -> list[tuple]:
        return [(kind, procs, per_gpu, same, v) for v in (variants if kind == "fsdp" else [None])]

    plan = [p for k in kinds for p in expand(k, 1 if k == "1gpu" else a.nproc, a.batch_size, False)]
    if a.same_global_batch:
        plan += [p for k in kinds if k != "1gpu" for p in expand(k, a.nproc, a.batch_size // a.nproc, True)]
    mine = []
    for kind, procs, per_gpu, same, venv in plan:
        settings = fsdp_settings(venv) if kind == "fsdp" else None
        base = {"setup": setup_name(kind, procs, same, settings), "num_processes": procs,
                "per_gpu_micro_batch": per_gpu, "seq_len": a.seq_len, "stage1_steps": a.stage1_steps,
                "stage2_steps": a.stage2_steps, "warmup_steps": a.warmup_steps, "device": dev, "model": a.model}
        # FSDP rows measured before fsdp_env was recorded are rerun; so are rows of other --train-args
        key = {**base, "fsdp_env": settings, "train_args": a.train_args}
        done = [r for r in rows if _same(r, key)]
        if done and not a.force:
            print(f"[{key['setup']}] already in {out}; skipped (--force reruns)", flush=True)
            mine.append(done[-1])
            continue
        row = run_setup(a, kind, procs, per_gpu, same, dev, venv)
        rows = [r for r in rows if not _same(r, {**base, "train_args": a.train_args})] + [row]
        mine.append(row)
        _with_speedups(rows)
        _write(out, rows)
    _with_speedups(rows)
    _write(out, rows)
    print_table(mine)
    return mine


def _cuda_available() -> bool:
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                       capture_output=True, text=True, timeout=120)
    return r.stdout.strip() == "True"


if __name__ == "__main__":
    main()
