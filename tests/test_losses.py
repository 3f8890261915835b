"""Loss values on hand-made inputs."""

from __future__ import annotations

import pytest
import torch

from lte.losses import distillation_loss, efficiency_loss, separability_loss


def test_efficiency_mean_and_square():
    s = torch.tensor([[[0.2, 0.6], [1.0, 0.0]]])
    assert efficiency_loss(s, kind="mean").item() == pytest.approx(0.45)
    assert efficiency_loss(s, kind="square").item() == pytest.approx((0.04 + 0.36 + 1.0) / 4)


def test_losses_ignore_padding_tokens():
    s = torch.tensor([[[0.2, 0.6], [0.9, 0.9]]])
    mask = torch.tensor([[True, False]])
    assert efficiency_loss(s, mask).item() == pytest.approx(0.4)
    sep = separability_loss(s, mask, threshold=0.5, eps=0.01).item()
    assert sep == pytest.approx((1 / (0.09 + 0.01) + 1 / (0.01 + 0.01)) / 2)


def test_separability_is_minimal_at_zero_and_one():
    far = separability_loss(torch.tensor([[0.0, 1.0]]), eps=0.01)
    near = separability_loss(torch.tensor([[0.45, 0.55]]), eps=0.01)
    assert far.item() == pytest.approx(1 / 0.26)
    assert near.item() > 10 * far.item()


def test_distillation_zero_for_identical_and_positive_otherwise():
    a = torch.randn(2, 3, 7)
    assert distillation_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(a, a + torch.randn(2, 3, 7)).item() > 0
    m = torch.tensor([[True, False, False], [False, False, False]])
    b = a.clone()
    b[0, 1:] += 5
    b[1] += torch.randn(3, 7)
    assert distillation_loss(a, b, mask=m).item() == pytest.approx(0.0, abs=1e-6)


def test_causal_lm_task_ignores_masked_labels():
    from lte.tasks import CausalLMTask
    task = CausalLMTask()
    logits = torch.randn(1, 4, 5)
    ids = torch.tensor([[1, 2, 3, 4]])
    full = task.loss(logits, {"input_ids": ids})
    only_last = task.loss(logits, {"input_ids": ids, "labels": torch.tensor([[-100, -100, -100, 4]])})
    ref = torch.nn.functional.cross_entropy(logits[0, 2:3], ids[0, 3:4])
    assert only_last.item() == pytest.approx(ref.item(), rel=1e-6)
    assert full.item() != pytest.approx(only_last.item())
    padded = task.loss(logits, {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0]])})
    ref2 = torch.nn.functional.cross_entropy(logits[0, :2], ids[0, 1:3])
    assert padded.item() == pytest.approx(ref2.item(), rel=1e-6)
