"""Step profiling of training (``LTE_PROFILE=START:COUNT``, see ``lte.train``): torch.profiler
over a window of optimizer steps, with per-rank reports of where each labelled phase's time goes."""

from __future__ import annotations

import os

import torch

PROFILE_PHASES = ("lte/data", "lte/forward_loss", "lte/backward", "lte/stats", "lte/grad_clip", "lte/optimizer_step",
                  "lte/sync_log")
PROFILE_TRACE_MAX_BYTES = 20_000_000


def profile_window(value: str | None = None) -> tuple[int, int] | None:
    """(start, count) of ``LTE_PROFILE=START:COUNT`` (optimizer steps START..START+COUNT-1,
    counted from 0), or None when unset/empty."""
    value = (os.environ.get("LTE_PROFILE", "") if value is None else value).strip()
    if not value:
        return None
    parts = value.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or int(parts[1]) < 1:
        raise ValueError(f"LTE_PROFILE={value!r}: expected START:COUNT with integers START >= 0, COUNT >= 1")
    return int(parts[0]), int(parts[1])


def _phase_counts(events) -> dict[str, dict[str, int]]:
    """Per ``PROFILE_PHASES`` label: its calls and host time (``host_us``), and the tensor-subclass
    dispatches, c10d collectives and CUDA kernel launches that start inside one of its intervals
    (any thread: backward runs on another on GPU)."""
    import bisect

    from torch.autograd import DeviceType
    # the labels' host intervals (on GPU each label also has a device-side annotation event: not those)
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                   if e.name in PROFILE_PHASES and e.device_type == DeviceType.CPU)
    starts = [s[0] for s in spans]
    out: dict[str, dict[str, int]] = {}
    for start, end, name in spans:
        c = out.setdefault(name, {"calls": 0, "host_us": 0.0})
        c["calls"] += 1
        c["host_us"] += end - start
    for e in events:
        kind = ("subclass" if e.name == "PythonSubclass" else "collectives" if e.name.startswith("c10d::")
                else "launches" if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC") else None)
        if kind is None:
            continue
        i = bisect.bisect_right(starts, e.time_range.start) - 1
        if i >= 0 and e.time_range.start <= spans[i][1]:
            c = out[spans[i][2]]
            c[kind] = c.get(kind, 0) + 1
    return out


class StepProfiler:
    """torch.profiler over a window of training steps (``LTE_PROFILE``); writes per-rank reports
    to ``out_dir``: ``profile_rank{R}.txt`` (tables, wall times) and ``profile_rank{R}.json``
    (chrome trace; ``.json.gz`` when only that fits ``PROFILE_TRACE_MAX_BYTES``; none when
    neither does). Inactive (every method a no-op) without ``window``."""

    def __init__(self, window: tuple[int, int] | None, out_dir, rank: int) -> None:
        self.window, self.out, self.rank = window, out_dir, rank
        self.prof = None
        self.step_s: list[float] = []
        self.done = window is None

    def begin(self, step: int) -> None:
        """Start profiling if ``step`` is the window's first step (or inside it, after a resume)."""
        if self.done or self.prof is not None:
            return
        start, count = self.window
        if not start <= step < start + count:
            return
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.prof = profile(activities=acts, record_shapes=False, with_stack=False)
        self.prof.__enter__()

    def end(self, step: int, step_s: float) -> None:
        """Record the wall time of ``step``; stop and write the reports after the window's last step."""
        if self.prof is None:
            return
        self.step_s.append(step_s)
        if step + 1 >= sum(self.window):
            self.close()

    def close(self) -> None:
        """Stop profiling (if running) and write the reports."""
        if self.prof is None:
            return
        prof, self.prof, self.done = self.prof, None, True
        prof.__exit__(None, None, None)
        from pathlib import Path

        from torch.autograd import DeviceType
        out = Path(self.out)
        ka = prof.key_averages()
        dev_key = "self_device_time_total" if hasattr(next(iter(ka), None), "self_device_time_total") else "self_cuda_time_total"
        lines = [f"LTE_PROFILE={self.window[0]}:{self.window[1]} rank {self.rank}: {len(self.step_s)} steps profiled, "
                 f"wall {sum(self.step_s) * 1e3:.1f} ms in all ({sum(self.step_s) * 1e3 / max(len(self.step_s), 1):.1f} ms/step; "
                 "step_s as logged: CUDA-synchronised on GPU, profiler overhead included)", "",
                 "phase                      calls   host ms (wall, all steps)   ms/step   device ms (all steps)"]
        by_name = {e.key: e for e in ka}
        counts = _phase_counts(prof.events())
        n = max(len(self.step_s), 1)
        for name in PROFILE_PHASES:
            c = dict(counts.get(name, {}))
            if not c:
                continue
            calls, host = c.pop("calls"), c.pop("host_us") / 1e3
            e = by_name.get(name)
            dev = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) / 1e3 if e is not None else 0.0
            lines.append(f"{name:<26} {calls:>5}   {host:>25.1f}   {host / n:>7.1f}   {dev:>21.1f}   "
                         + "  ".join(f"{k}/step {v / n:.0f}" for k, v in sorted(c.items())))
        lines.append("(host ms: the time the host spent inside the phase; on GPU its kernels may run later, "
                     "see device ms and the trace; subclass = tensor-subclass (DTensor) dispatches, "
                     "collectives = c10d ops, launches = CUDA kernel launches, all threads)")
        hooks: dict[str, list[float]] = {}  # FSDP's own labelled host work, summed over its units
        for e in prof.events():
            if e.name.startswith("FSDP::") and e.device_type == DeviceType.CPU:
                h = hooks.setdefault(e.name.split(" (")[0].split(" for ")[0], [0, 0.0])  # no unit names
                h[0] += 1
                h[1] += (e.time_range.end - e.time_range.start) / 1e3
        if hooks:
            lines += ["", "FSDP labels (all units; host ms/step, calls/step; nested labels count in their parents too)"]
            lines += [f"{k:<40} {v[1] / n:>8.2f} ms  {v[0] / n:>6.0f} calls" for k, v in sorted(hooks.items(),
                                                                                           key=lambda kv: -kv[1][1])]
        for title, key in (("self CPU time", "self_cpu_time_total"), ("self device time", dev_key)):
            lines += ["", f"== top 40 by {title} ==", ka.table(sort_by=key, row_limit=40, max_name_column_width=60)]
        trace = out / f"profile_rank{self.rank}.json"
        prof.export_chrome_trace(str(trace))
        size = trace.stat().st_size
        if size <= PROFILE_TRACE_MAX_BYTES:
            lines += ["", f"chrome trace: {trace.name} ({size / 1e6:.1f} MB)"]
        else:  # too large as it is: keep it gzipped (chrome://tracing and Perfetto read .json.gz) if that fits
            import gzip
            import shutil
            packed = trace.with_suffix(".json.gz")
            with trace.open("rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
            trace.unlink()
            gz = packed.stat().st_size
            if gz <= PROFILE_TRACE_MAX_BYTES:
                lines += ["", f"chrome trace: {packed.name} ({gz / 1e6:.1f} MB gzipped; {size / 1e6:.1f} MB as JSON, "
                          f"over the {PROFILE_TRACE_MAX_BYTES / 1e6:.0f} MB limit)"]
            else:
                packed.unlink()
                lines += ["", f"chrome trace skipped: {size / 1e6:.1f} MB ({gz / 1e6:.1f} MB gzipped) > "
                          f"{PROFILE_TRACE_MAX_BYTES / 1e6:.0f} MB (profile fewer steps)"]
        (out / f"profile_rank{self.rank}.txt").write_text("\n".join(lines) + "\n")
