"""Small pieces of lte.dist: FSDP gather dtype, the units it shards, per-rank devices."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

import lte
from lte.dist import (
    DistEnv,
    broadcast_from_main,
    fsdp_forward_prefetch,
    fsdp_param_dtype,
    fsdp_reshard_after_forward,
    fsdp_shard_teacher,
    local_device,
    shard_units,
    shutdown_distributed,
)
from lte.sparsify import lte_layers


def test_fsdp_param_dtype_from_env(monkeypatch):
    monkeypatch.delenv("LTE_FSDP_PARAM_DTYPE", raising=False)
    assert fsdp_param_dtype() is None  # default: gather fp32, routers stay fp32
    monkeypatch.setenv("LTE_FSDP_PARAM_DTYPE", "bfloat16")
    assert fsdp_param_dtype() is torch.bfloat16
    monkeypatch.setenv("LTE_FSDP_PARAM_DTYPE", "int8")
    with pytest.raises(ValueError, match="LTE_FSDP_PARAM_DTYPE"):
        fsdp_param_dtype()


def test_fsdp_reshard_from_env(monkeypatch):
    monkeypatch.delenv("LTE_FSDP_RESHARD", raising=False)
    assert fsdp_reshard_after_forward() is True
    monkeypatch.setenv("LTE_FSDP_RESHARD", "0")
    assert fsdp_reshard_after_forward() is False
    monkeypatch.setenv("LTE_FSDP_RESHARD", "sometimes")
    with pytest.raises(ValueError, match="LTE_FSDP_RESHARD"):
        fsdp_reshard_after_forward()


def test_fsdp_teacher_and_prefetch_knobs_from_env(monkeypatch):
    for k in ("LTE_FSDP_SHARD_TEACHER", "LTE_FSDP_PREFETCH", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert fsdp_shard_teacher() is False and fsdp_forward_prefetch() is True  # replicated teacher, prefetch on
    monkeypatch.setenv("LTE_FSDP_SHARD_TEACHER", "1")
    monkeypatch.setenv("LTE_FSDP_PREFETCH", "false")
    assert fsdp_shard_teacher() is True and fsdp_forward_prefetch() is False
    monkeypatch.setenv("LTE_FSDP_SHARD_TEACHER", "yes")
    with pytest.raises(ValueError, match="LTE_FSDP_SHARD_TEACHER"):
        fsdp_shard_teacher()
    teacher = tiny_llama()  # single process: prepare_teacher leaves it as it is
    assert DistEnv().prepare_teacher(teacher) is teacher and not hasattr(teacher, "_lte_prepared")


def test_shard_units_are_transformer_blocks():
    plain = tiny_llama()  # e.g. the distillation teacher: no LTE layers
    units = shard_units(plain)
    assert [type(u).__name__ for u in units] == ["LlamaDecoderLayer"] * 2
    model = lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16), progress=False)
    units = shard_units(model)
    assert len(units) == 2 and all(any(isinstance(c, lte.ffn.LTEFFN) for c in u.children()) for u in units)
    # each LTE router lives inside its block's unit (sharded and gathered with it)
    inside = {id(m) for u in units for m in u.modules()}
    assert all(id(layer.router) in inside for layer in lte_layers(model))


def test_local_device_and_broadcast_outside_a_launch(monkeypatch):
    for k in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert local_device("cuda") == "cuda" and local_device("cpu") == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device("cpu") == "cpu" and local_device("cuda:0") == "cuda:0"  # explicit choices are kept
    m = tiny_llama()
    before = [p.clone() for p in m.parameters()]
    broadcast_from_main(m)  # no process group: nothing to do
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    shutdown_distributed()  # likewise (the multi-process tests run it at the end of every worker)
    assert not torch.distributed.is_initialized()
