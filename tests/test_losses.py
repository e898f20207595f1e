"""Objectives against hand-computed values, and TIS-DPO with unit weights against DPO (exact)."""

from __future__ import annotations

import math

import pytest
import torch

from tisdpo import losses


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_loss_hand_computed():
    chosen, rejected = torch.tensor([1.0, -0.5]), torch.tensor([0.2, 0.5])
    out = losses.dpo_loss(chosen, rejected, beta=0.5).losses
    expected = [-logsig(0.5 * 0.8), -logsig(0.5 * -1.0)]
    assert out.tolist() == pytest.approx(expected, rel=1e-6)


def test_cdpo_label_smoothing_hand_computed():
    out = losses.dpo_loss(torch.tensor([2.0]), torch.tensor([0.0]), beta=0.1, label_smoothing=0.25).losses
    expected = -0.75 * logsig(0.2) - 0.25 * logsig(-0.2)
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_ipo_loss_hand_computed():
    out = losses.ipo_loss(torch.tensor([0.3]), torch.tensor([0.1]), beta=0.5).losses
    assert out.item() == pytest.approx((0.2 - 1.0) ** 2, rel=1e-6)


def test_simpo_loss_hand_computed():
    out = losses.simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma_beta_ratio=0.5).losses
    assert out.item() == pytest.approx(-logsig(2.0 * 1.0 - 1.0), rel=1e-6)


def test_tdpo_variants_hand_computed():
    u_c, u_r, kl_c, kl_r = (
        torch.tensor([1.0]),
        torch.tensor([0.5]),
        torch.tensor([0.2]),
        torch.tensor([0.6]),
    )
    tdpo1 = losses.tdpo_loss(u_c, u_r, kl_c, kl_r, beta=0.1, variant=1).losses
    tdpo2 = losses.tdpo_loss(u_c, u_r, kl_c, kl_r, beta=0.1, alpha=0.5, variant=2).losses
    assert tdpo1.item() == pytest.approx(-logsig(0.1 * (0.5 - 0.4)), rel=1e-6)
    assert tdpo2.item() == pytest.approx(-logsig(0.1 * (0.5 - 0.5 * 0.4)), rel=1e-6)


def test_tdpo2_detaches_chosen_kl():
    kl_c = torch.tensor([0.2], requires_grad=True)
    kl_r = torch.tensor([0.6], requires_grad=True)
    losses.tdpo_loss(torch.tensor([1.0]), torch.tensor([0.5]), kl_c, kl_r, beta=0.1, variant=2).losses.sum().backward()
    assert kl_c.grad is None or kl_c.grad.item() == 0.0
    assert kl_r.grad.item() > 0  # the loss grows with the rejected response's KL


def test_tisdpo_weighted_sums_hand_computed():
    d_c = torch.tensor([[0.5, -0.2, 0.1]])
    d_r = torch.tensor([[0.3, 0.4, 0.0]])
    w_c = torch.tensor([[2.0, 0.5, 1.0]])
    w_r = torch.tensor([[1.0, 1.5, 9.0]])
    m_c = torch.tensor([[True, True, True]])
    m_r = torch.tensor([[True, True, False]])  # the last rejected position is padding
    out = losses.tisdpo_loss(d_c, d_r, w_c, w_r, m_c, m_r, beta=0.1).losses
    u = (2.0 * 0.5 + 0.5 * -0.2 + 0.1) - (0.3 + 1.5 * 0.4)
    assert out.item() == pytest.approx(-logsig(0.1 * u), rel=1e-6)


def test_tisdpo_with_unit_weights_is_dpo_exactly():
    generator = torch.Generator().manual_seed(0)
    d_c, d_r = torch.randn(8, 13, generator=generator), torch.randn(8, 13, generator=generator)
    m_c = torch.rand(8, 13, generator=generator) > 0.3
    m_r = torch.rand(8, 13, generator=generator) > 0.3
    ones = torch.ones(8, 13)
    tis = losses.tisdpo_loss(d_c, d_r, ones, ones, m_c, m_r, beta=0.1).losses
    dpo = losses.dpo_loss(losses.masked_sum(d_c, m_c), losses.masked_sum(d_r, m_r), beta=0.1).losses
    assert torch.equal(tis, dpo)


def test_tisdpo_kl_term_sign_and_direction():
    """eta = coef * beta * (SeqKL_w(y_l) - stopgrad SeqKL_w(y_w)); loss = -log sigmoid(beta u - eta)."""
    d = torch.tensor([[0.4, 0.2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    w_c, w_r = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]])
    kl_c = torch.tensor([[0.1, 0.3]], requires_grad=True)
    kl_r = torch.tensor([[0.2, 0.4]], requires_grad=True)
    out = losses.tisdpo_loss(
        d,
        torch.zeros(1, 2),
        w_c,
        w_r,
        mask,
        mask,
        beta=0.5,
        kl_coef=2.0,
        chosen_token_kl=kl_c,
        rejected_token_kl=kl_r,
    ).losses
    u = 1.0 * 0.4 + 2.0 * 0.2
    eta = 2.0 * 0.5 * ((0.5 * 0.2 + 1.0 * 0.4) - (1.0 * 0.1 + 2.0 * 0.3))
    assert out.item() == pytest.approx(-logsig(0.5 * u - eta), rel=1e-6)
    out.sum().backward()
    assert kl_c.grad is None or torch.all(kl_c.grad == 0)
    assert torch.all(kl_r.grad > 0)
    with pytest.raises(ValueError, match="per-token KL"):
        losses.tisdpo_loss(d, d, w_c, w_r, mask, mask, beta=0.5, kl_coef=1.0)


def test_sft_loss_is_token_mean_nll():
    logps = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert losses.sft_loss(logps, mask).item() == pytest.approx(2.0)


def test_token_kl_matches_definition():
    ref = torch.tensor([[0.0, 1.0, -1.0]])
    pol = torch.tensor([[0.5, 0.0, 0.0]])
    p = torch.softmax(ref, -1)
    expected = (p * (torch.log_softmax(ref, -1) - torch.log_softmax(pol, -1))).sum()
    assert losses.token_kl(pol, ref).item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses.token_kl(ref, ref).item() == pytest.approx(0.0, abs=1e-7)


def test_pair_losses_return_their_implicit_rewards():
    chosen, rejected = torch.tensor([1.0, -0.5]), torch.tensor([0.2, 0.5])
    dpo = losses.dpo_loss(chosen, rejected, beta=0.5)
    assert dpo.chosen_rewards.tolist() == pytest.approx([0.5, -0.25])
    assert dpo.rejected_rewards.tolist() == pytest.approx([0.1, 0.25])
    # IPO: the loss on length-averaged log-ratios, the rewards on the sums (as TRL logs them)
    ipo = losses.ipo_loss(chosen, rejected, 0.5, torch.tensor([2.0, 1.0]), torch.tensor([1.0, 5.0]))
    assert ipo.losses.tolist() == pytest.approx([(0.5 - 0.2 - 1.0) ** 2, (-0.5 - 0.1 - 1.0) ** 2])
    assert ipo.chosen_rewards.tolist() == pytest.approx([0.5, -0.25])
    d = torch.tensor([[0.5, -0.2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    tis = losses.tisdpo_loss(d, d, torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 3.0]]), mask, mask, beta=0.1)
    assert tis.chosen_rewards.item() == pytest.approx(0.1 * (1.0 - 0.2))
    assert tis.rejected_rewards.item() == pytest.approx(0.1 * (0.5 - 0.6))
    assert not tis.chosen_rewards.requires_grad
