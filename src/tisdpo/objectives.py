"""The objectives in one table: what each needs, its default beta, and how its loss is computed.

An :class:`Objective` declares what its loss needs from a batch (reference log-probs, token weights,
per-token KL, a score column, the policy's hidden states) and computes, from a :class:`PairBatch`,
the per-pair losses with the chosen/rejected rewards (a :class:`tisdpo.losses.PairLoss`) and any
metrics of its own. The trainer, the configuration and the commands read this table; adding an
objective is one :func:`register` call (or one entry in :data:`OBJECTIVES`), its loss function in
``losses.py``, and a row in the objectives table of docs/objectives.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from tisdpo import losses, sparsepo
from tisdpo.errors import UserError, did_you_mean

Metrics = dict[str, tuple[torch.Tensor, torch.Tensor | None]]  # name -> (value per pair, count per pair or None)


@dataclass
class PairBatch:
    """One batch of pairs as an objective sees it; per-token tensors are (2B, T), chosen rows first.

    ``args`` holds the objective's hyperparameters (``beta`` and the others of ``TisdpoConfig``).
    """

    args: Any
    policy_logps: torch.Tensor
    mask: torch.Tensor
    ref_logps: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    token_kl: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # (N, H) policy hidden states predicting each completion token
    mask_head: Any = None  # SparsePO's learned mask head, when there is one
    training: bool = True

    @property
    def pairs(self) -> int:
        return self.mask.shape[0] // 2

    def chosen(self, values: torch.Tensor) -> torch.Tensor:
        return values[: self.pairs]

    def rejected(self, values: torch.Tensor) -> torch.Tensor:
        return values[self.pairs :]

    @cached_property
    def token_logratios(self) -> torch.Tensor:
        """``d_t = log pi_theta(y_t) - log pi_ref(y_t)``."""
        if self.ref_logps is None:
            raise RuntimeError("this objective needs reference log-probs")
        return self.policy_logps - self.ref_logps

    @cached_property
    def logratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``sum_t d_t`` of the chosen and the rejected responses."""
        sums = losses.masked_sum(self.token_logratios, self.mask)
        return self.chosen(sums), self.rejected(sums)

    @cached_property
    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        counts = self.mask.sum(-1)
        return self.chosen(counts), self.rejected(counts)

    def sequence_kl(self, token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``sum_t (w_t) KL_t`` of both responses."""
        if self.token_kl is None:
            raise RuntimeError("this objective needs per-token KL")
        sums = losses.masked_sum(self.token_kl, self.mask, token_weights)
        return self.chosen(sums), self.rejected(sums)

    def split(self, values: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return (None, None) if values is None else (self.chosen(values), self.rejected(values))


@dataclass
class ObjectiveOutput:
    """Per-pair losses and rewards (``loss``), and the objective's own per-pair metrics."""

    loss: losses.PairLoss
    metrics: Metrics = field(default_factory=dict)


def never(_args: Any) -> bool:
    return False


@dataclass(frozen=True)
class Objective:
    """One objective. ``compute`` is None for SFT, the one objective that is not over pairs."""

    name: str
    summary: str
    compute: Callable[[PairBatch], ObjectiveOutput] | None
    default_beta: float = 0.1
    beta_source: str = "DPO's default"
    reference_free: bool = False  # no reference model at all (SimPO, SFT)
    token_weights: bool = False  # reads the weights of a weights file (TIS-DPO)
    score_column: str | None = None  # a per-pair column it reads (DLMA's dlma_score)
    token_kl: Callable[[Any], bool] = never  # needs the full distributions of policy and reference
    hidden_states: Callable[[Any], bool] = never  # needs the policy's final hidden states
    default_label_smoothing: float = 0.0
    parameters: tuple[str, ...] = ()  # its hyperparameters besides beta (TisdpoConfig fields)

    @property
    def pairs(self) -> bool:
        return self.compute is not None


def _dpo(batch: PairBatch) -> ObjectiveOutput:
    chosen, rejected = batch.logratios
    return ObjectiveOutput(losses.dpo_loss(chosen, rejected, batch.args.beta, batch.args.label_smoothing))


def _ipo(batch: PairBatch) -> ObjectiveOutput:
    return ObjectiveOutput(losses.ipo_loss(*batch.logratios, batch.args.beta, *batch.lengths))


def _tdpo(variant: int) -> Callable[[PairBatch], ObjectiveOutput]:
    def compute(batch: PairBatch) -> ObjectiveOutput:
        chosen_kl, rejected_kl = batch.sequence_kl()
        loss = losses.tdpo_loss(
            *batch.logratios, chosen_kl, rejected_kl, batch.args.beta, batch.args.tdpo_alpha, variant=variant
        )
        return ObjectiveOutput(loss, {"kl/chosen": (chosen_kl, None), "kl/rejected": (rejected_kl, None)})

    return compute


def _simpo(batch: PairBatch) -> ObjectiveOutput:
    means = losses.masked_mean(batch.policy_logps, batch.mask)
    loss = losses.simpo_loss(
        batch.chosen(means), batch.rejected(means), batch.args.beta, batch.args.simpo_gamma_beta_ratio
    )
    return ObjectiveOutput(loss)


def _token_weighted(
    loss_function: Callable[..., losses.PairLoss], batch: PairBatch, token_weights: torch.Tensor, kl_coef: float
) -> losses.PairLoss:
    """The TIS-DPO form (also SparsePO's): weighted log-ratios, an optional weighted sequential KL."""
    d_c, d_r = batch.split(batch.token_logratios)
    w_c, w_r = batch.split(token_weights)
    m_c, m_r = batch.split(batch.mask)
    kl_c, kl_r = batch.split(batch.token_kl)
    return loss_function(
        d_c, d_r, w_c, w_r, m_c, m_r, batch.args.beta, kl_coef=kl_coef, chosen_token_kl=kl_c, rejected_token_kl=kl_r
    )


def _with_kl_metrics(batch: PairBatch, metrics: Metrics) -> Metrics:
    if batch.token_kl is not None:
        chosen_kl, rejected_kl = batch.sequence_kl()
        metrics = {"kl/chosen": (chosen_kl, None), "kl/rejected": (rejected_kl, None), **metrics}
    return metrics


def _tisdpo(batch: PairBatch) -> ObjectiveOutput:
    # Pairs without weights (e.g. held-out pairs) get unit weights: their loss is the DPO loss.
    weights = batch.weights if batch.weights is not None else torch.ones_like(batch.policy_logps)
    loss = _token_weighted(losses.tisdpo_loss, batch, weights, batch.args.tisdpo_kl_coef)
    counts = batch.mask.sum(-1)
    weight_sums = losses.masked_sum(weights, batch.mask)
    metrics: Metrics = {
        "weighted_rewards/chosen": (loss.chosen_rewards, None),
        "weighted_rewards/rejected": (loss.rejected_rewards, None),
        "weighted_rewards/margins": (loss.chosen_rewards - loss.rejected_rewards, None),
        "weights/chosen_mean": (batch.chosen(weight_sums), batch.chosen(counts)),
        "weights/rejected_mean": (batch.rejected(weight_sums), batch.rejected(counts)),
    }
    # rewards/* stay DPO's unweighted ones (as TRL names them); the weighted ones are the metrics above.
    unweighted = losses.PairLoss(loss.losses, *(batch.args.beta * r.detach() for r in batch.logratios))
    return ObjectiveOutput(unweighted, _with_kl_metrics(batch, metrics))


def _dlma(batch: PairBatch) -> ObjectiveOutput:
    scores = batch.scores
    if scores is None:
        if batch.training:
            raise UserError(
                "--loss_type dlma needs a 'dlma_score' for every pair (make the pairs with `tisdpo dlma generate`)"
            )
        scores = torch.zeros_like(batch.logratios[0])  # held-out human-labelled pairs: no margin, the DPO loss
    args = batch.args
    return ObjectiveOutput(losses.dlma_loss(*batch.logratios, scores, args.beta, args.dlma_gamma, args.dlma_clamp))


def _sparsepo(batch: PairBatch) -> ObjectiveOutput:
    args = batch.args
    if args.sparsepo_mask == "learned":
        masks = sparsepo.learned_masks(batch.mask_head, batch.hidden, batch.mask)
    else:
        masks = sparsepo.reference_masks(batch.ref_logps, batch.mask, args.sparsepo_threshold)
    loss = _token_weighted(losses.sparsepo_loss, batch, masks, args.sparsepo_kl_coef)
    counts = batch.mask.sum(-1)
    mask_sums = losses.masked_sum(masks.detach(), batch.mask)
    sparsity = sparsepo.sparsity(masks, batch.mask)
    metrics: Metrics = {
        "sparsity/chosen": (batch.chosen(sparsity), None),
        "sparsity/rejected": (batch.rejected(sparsity), None),
        "masks/chosen_mean": (batch.chosen(mask_sums), batch.chosen(counts)),
        "masks/rejected_mean": (batch.rejected(mask_sums), batch.rejected(counts)),
    }
    unweighted = losses.PairLoss(loss.losses, *(args.beta * r.detach() for r in batch.logratios))
    return ObjectiveOutput(unweighted, _with_kl_metrics(batch, metrics))


OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Add an objective to the table (a name already taken is refused)."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


for _objective in (
    Objective(
        "dpo",
        "DPO (Rafailov et al. 2023): `-log sigmoid(beta * u)`, u the chosen minus the rejected summed log-ratio",
        _dpo,
    ),
    Objective(
        "ipo",
        "IPO (Azar et al. 2023): `(u' - 1/(2 beta))^2`, u' from length-averaged log-ratios",
        _ipo,
        beta_source="TRL's IPO default",
    ),
    Objective(
        "cdpo",
        "cDPO, DPO with label smoothing eps (default 0.1): `-(1-eps) log sigmoid(beta u) - eps log sigmoid(-beta u)`",
        _dpo,
        default_label_smoothing=0.1,
        parameters=("label_smoothing",),
    ),
    Objective(
        "tdpo1",
        "TDPO1 (Zeng et al. 2024): DPO with the sequential KL difference `SeqKL(y_l) - SeqKL(y_w)` subtracted",
        _tdpo(1),
        beta_source="TDPO's reference code",
        token_kl=lambda args: True,
    ),
    Objective(
        "tdpo2",
        "TDPO2 (Zeng et al. 2024): DPO minus `alpha * (SeqKL(y_l) - stopgrad SeqKL(y_w))`",
        _tdpo(2),
        beta_source="TDPO's reference code",
        token_kl=lambda args: True,
        parameters=("tdpo_alpha",),
    ),
    Objective(
        "simpo",
        "SimPO (Meng et al. 2024): reference-free, `-log sigmoid(beta * (mean log-prob difference) - gamma)`",
        _simpo,
        default_beta=2.0,
        beta_source="SimPO's default",
        reference_free=True,
        parameters=("simpo_gamma_beta_ratio",),
    ),
    Objective(
        "tisdpo",
        "TIS-DPO (Liu et al. 2025): DPO on importance-weighted per-token log-ratios, "
        "`-log sigmoid(beta * (sum_t w_t d_t(y_w) - sum_t w_t d_t(y_l)) - eta)`",
        _tisdpo,
        beta_source="the TIS-DPO reference code's",
        token_weights=True,
        token_kl=lambda args: bool(args.tisdpo_kl_coef),
        parameters=("tisdpo_kl_coef",),
    ),
    Objective(
        "dlma",
        "DLMA (Liu et al. 2024): DPO with the self-rewarding score R as a margin, `gamma * clamp(R, -c, c)`",
        _dlma,
        beta_source="DLMA's reference run",
        score_column="dlma_score",
        parameters=("dlma_gamma", "dlma_clamp"),
    ),
    Objective(
        "sparsepo",
        "SparsePO (Christopoulou et al. 2024): DPO whose per-token rewards and KL terms are weighted by masks",
        _sparsepo,
        token_kl=lambda args: bool(args.sparsepo_kl_coef),
        hidden_states=lambda args: args.sparsepo_mask == "learned",
        parameters=("sparsepo_mask", "sparsepo_threshold", "sparsepo_kl_coef"),
    ),
    Objective(
        "sft",
        "Supervised fine-tuning: mean negative log-likelihood of the (chosen) completion tokens",
        None,
        beta_source="unused by sft",
        reference_free=True,
    ),
):
    register(_objective)


def objective_for(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise UserError(
            f"unknown --loss_type {name!r}{did_you_mean(name, list(OBJECTIVES))}; choose from {', '.join(OBJECTIVES)}"
        ) from None
