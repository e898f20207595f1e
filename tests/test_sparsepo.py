"""SparsePO: masks, the loss with fixed masks against hand computation, and a learned mask that trains."""

from __future__ import annotations

import math

import pytest
import torch

from tisdpo import losses, sparsepo


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_reference_masks_threshold_and_sparsity():
    ref_logps = torch.log(torch.tensor([[0.5, 0.01, 0.2, 0.9]]))
    mask = torch.tensor([[True, True, True, False]])
    masks = sparsepo.reference_masks(ref_logps, mask, threshold=0.1)
    assert masks.tolist()[0] == pytest.approx([0.5, 0.0, 0.2, 0.0])
    assert sparsepo.sparsity(masks, mask).item() == pytest.approx(1 / 3)


def test_sparsepo_loss_with_fixed_masks_hand_computed():
    d_c, d_r = torch.tensor([[0.4, -0.2, 0.3]]), torch.tensor([[0.1, 0.5, 0.0]])
    m_c, m_r = torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[0.0, 1.0, 1.0]])
    full = torch.ones(1, 3, dtype=torch.bool)
    out = losses.sparsepo_loss(d_c, d_r, m_c, m_r, full, full, beta=0.2)
    u = (0.4 + 0.5 * 0.3) - 0.5
    assert out.item() == pytest.approx(-logsig(0.2 * u), rel=1e-6)
    kl_c, kl_r = torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[0.4, 0.5, 0.6]])
    out = losses.sparsepo_loss(
        d_c, d_r, m_c, m_r, full, full, beta=0.2, kl_coef=0.5, chosen_token_kl=kl_c, rejected_token_kl=kl_r
    )
    delta = 0.5 * 0.2 * ((0.5 + 0.6) - (0.1 + 0.5 * 0.3))
    assert out.item() == pytest.approx(-logsig(0.2 * u - delta), rel=1e-6)


def test_mask_head_starts_at_one_and_learns():
    torch.manual_seed(0)
    head = sparsepo.MaskHead(8)
    hidden = torch.randn(20, 8)
    mask = torch.ones(4, 5, dtype=torch.bool)
    assert torch.all(sparsepo.learned_masks(head, hidden, mask) == 1.0)
    before = [p.detach().clone() for p in head.parameters()]
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    target = (hidden[:, 0] > 0).float()  # learn to switch off half the tokens
    for _ in range(200):
        optimizer.zero_grad()
        values = head(hidden)
        ((values - target) ** 2).mean().backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters()))
    masks = sparsepo.learned_masks(head, hidden, mask)
    assert sparsepo.sparsity(masks, mask).mean().item() > 0.2  # exact zeros appear


def test_learned_mask_trains_with_the_policy_and_reports_sparsity(tiny_model_dir, toy_data_files, tmp_path):
    import json

    from safetensors.torch import load_file

    from tisdpo.cli import main

    out = tmp_path / "sparsepo"
    args = [
        "train",
        "--model_name_or_path",
        tiny_model_dir,
        "--dataset_name",
        toy_data_files[0],
        "--output_dir",
        str(out),
        "--loss_type",
        "sparsepo",
        "--sparsepo_mask",
        "learned",
    ]
    args += [
        "--max_steps",
        "8",
        "--learning_rate",
        "5e-2",
        "--per_device_train_batch_size",
        "8",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--max_length",
        "64",
    ]
    assert main(args) == 0
    weights = load_file(out / "model.safetensors")
    assert (
        weights["sparsepo_mask_head.proj.bias"].item() != 1.0
        or weights["sparsepo_mask_head.proj.weight"].abs().sum() > 0
    )
    history = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "sparsity/chosen" in e]
    assert len(history) >= 8 and all(0.0 <= e["sparsity/chosen"] <= 1.0 for e in history)
    assert 0.0 < history[-1]["masks/chosen_mean"] <= 1.0


def test_reference_masks_train_and_report_sparsity(tiny_model_dir, toy_data_files, tmp_path):
    import json

    from tisdpo.cli import main

    out = tmp_path / "sparsepo_ref"
    args = [
        "train",
        "--model_name_or_path",
        tiny_model_dir,
        "--dataset_name",
        toy_data_files[0],
        "--output_dir",
        str(out),
        "--loss_type",
        "sparsepo",
        "--sparsepo_threshold",
        "0.01",
    ]
    args += [
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--max_length",
        "64",
    ]
    assert main(args) == 0
    history = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "sparsity/chosen" in e]
    assert history and history[0]["sparsity/chosen"] > 0.0  # an untrained model finds many tokens unlikely
