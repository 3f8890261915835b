"""Multi-process training (accelerate DDP, and FSDP full sharding, over gloo on CPU) equals
single-process training, and a multi-process checkpoint resumes on one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("dist_worker.py")


def _run(out: Path, procs: int, batch: int, s1: int, s2: int, resume: bool = False, fsdp: bool = False,
         perturb: bool = False, count: bool = False, profile: str = "", compile: bool = False) -> None:
    env = {**os.environ, "LTE_PROFILE": profile, "OMP_NUM_THREADS": "1", "LTE_FSDP": "1" if fsdp else "0",
           "LTE_TEST_COMPILE": "1" if compile else "0",
           "LTE_TEST_PERTURB": "1" if perturb else "0", "LTE_TEST_COUNT_COLLECTIVES": "1" if count else "0"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_FSDP"):
        env.pop(k, None)
    args = [str(WORKER), str(out), str(batch), str(s1), str(s2), "1" if resume else "0"]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_port", str(29500 + os.getpid() % 1000), *args]
    else:
        cmd = [sys.executable, *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _losses(out: Path, key: str = "loss") -> dict[int, float]:
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in recs if r.get("kind") == "train"}


def _assert_same_losses(one_dir: Path, two_dir: Path, steps: list[int] | None = None, rel: float = 1e-4,
                        abs_: float = 1e-5) -> dict[int, float]:
    """The two runs logged the same steps (``steps`` when given) with losses equal within
    tolerance; returns the first run's losses."""
    one, two = _losses(one_dir), _losses(two_dir)
    if steps is not None:
        assert sorted(one) == sorted(two) == steps
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=rel, abs=abs_), (step, one, two)
    return one


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_match_one_and_resume_on_one(tmp_path, fsdp):
    _run(tmp_path / "one", 1, 4, 4, 2)
    _run(tmp_path / "two", 2, 2, 4, 2, fsdp=fsdp)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["parallel"] == ("fsdp" if fsdp else "ddp")
    one = _assert_same_losses(tmp_path / "one", tmp_path / "two", list(range(1, 7)))
    # throughput counts the global batch's tokens (4 blocks of 24), not one process's slice
    assert set(_losses(tmp_path / "two", "tokens").values()) == set(_losses(tmp_path / "one", "tokens").values()) == {96}
    assert summary["train_tokens"] == 6 * 96
    # a checkpoint written by 2 processes (stage 1 only) resumes on 1 process to the same end
    _run(tmp_path / "cut", 2, 2, 4, 0, fsdp=fsdp)
    _run(tmp_path / "cut", 1, 4, 4, 2, resume=True)
    cut = _losses(tmp_path / "cut")
    assert cut[6] == pytest.approx(one[6], rel=1e-4, abs=1e-5)


def test_fsdp_takes_rank0_weights(tmp_path):
    """Ranks that built different weights (e.g. a loader that leaves non-zero ranks empty) still
    train rank 0's model under FSDP: the same losses as one process."""
    _run(tmp_path / "one", 1, 4, 3, 0)
    _run(tmp_path / "two", 2, 2, 3, 0, fsdp=True, perturb=True)
    _assert_same_losses(tmp_path / "one", tmp_path / "two")


# all-gathers per step of the tiny model's 3 FSDP units (2 blocks + root): 3 in forward, 2 in
# backward (the root stays gathered; none with LTE_FSDP_RESHARD=0), and 2 more for the teacher's
# blocks only when it is sharded (its root stays gathered after the first step)
# (LTE_FSDP_BLOCKS_PER_UNIT=2: both blocks form one unit, so 2 units: 2 + 1 gathers, 2 scatters)
@pytest.mark.parametrize("knobs,gathers,scatters", [
    ({}, 5, 3),
    ({"LTE_FSDP_RESHARD": "0"}, 3, 3),
    ({"LTE_FSDP_SHARD_TEACHER": "1", "LTE_FSDP_PREFETCH": "0"}, 7, 3),
    ({"LTE_FSDP_BLOCKS_PER_UNIT": "2"}, 3, 2),
], ids=["default", "noreshard", "shardteacher-noprefetch", "grouped"])
def test_fsdp_variants_match_one_process_and_count_collectives(tmp_path, monkeypatch, knobs, gathers, scatters):
    for k in ("LTE_FSDP_RESHARD", "LTE_FSDP_SHARD_TEACHER", "LTE_FSDP_PREFETCH", "LTE_FSDP_PARAM_DTYPE",
              "LTE_FSDP_BLOCKS_PER_UNIT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in knobs.items():
        monkeypatch.setenv(k, v)
    _run(tmp_path / "one", 1, 4, 2, 1)
    _run(tmp_path / "two", 2, 2, 2, 1, fsdp=True, count=True)
    _assert_same_losses(tmp_path / "one", tmp_path / "two", [1, 2, 3])
    per_step = json.loads((tmp_path / "two" / "collectives.json").read_text())
    assert len(per_step) == 3
    for counts in per_step[1:]:  # the first step also holds the one-time broadcasts' setup
        assert counts.get("all_gather_single", 0) == gathers, per_step
        assert counts.get("reduce_scatter_single", 0) == scatters, per_step  # one per unit: the student's gradients


def test_fsdp_profile_writes_every_ranks_report(tmp_path):
    """LTE_PROFILE under 2 FSDP processes: each rank writes its report (with its collectives per
    phase), and the losses stay those of one unprofiled process."""
    _run(tmp_path / "one", 1, 4, 2, 1)
    _run(tmp_path / "two", 2, 2, 2, 1, fsdp=True, profile="1:1")
    _assert_same_losses(tmp_path / "one", tmp_path / "two")
    for rank in (0, 1):
        txt = (tmp_path / "two" / f"profile_rank{rank}.txt").read_text()
        assert f"LTE_PROFILE=1:1 rank {rank}: 1 steps profiled" in txt
        assert "lte/backward" in txt and "collectives/step" in txt and "FSDP::pre_forward" in txt


def test_fsdp_with_compiled_blocks_matches_one_eager_process(tmp_path):
    """``TrainConfig.compile`` under 2 FSDP processes (hooks eager around compiled block
    forwards): the losses of one eager process."""
    _run(tmp_path / "one", 1, 4, 2, 1)
    _run(tmp_path / "two", 2, 2, 2, 1, fsdp=True, compile=True)
    _assert_same_losses(tmp_path / "one", tmp_path / "two", [1, 2, 3], rel=2e-3, abs_=1e-4)
