"""Our DPO-family losses and metrics against TRL's ``DPOTrainer`` on the same tiny model and batch.

Both trainers get the same saved tiny Llama as reference and the same deterministically perturbed
copy of it as policy, tokenize the same plain-text pairs through their own data paths (the token
ids are asserted equal), and compute the loss of one batch in eval mode. TRL keeps one batch mean
per metric in ``trainer._metrics["eval"]``; we keep exact (sum, count) pairs in
``trainer._metric_sums["eval"]``; for one batch both are the same mean.

Conventions (TRL 1.16):

* ``dpo`` = TRL ``sigmoid``; ``ipo`` = TRL ``ipo`` (both average the log-ratios over the completion
  tokens before the squared loss; the ``rewards/*`` metrics stay beta * summed log-ratios).
* ``cdpo``: TRL 1.16's ``sigmoid`` no longer reads ``label_smoothing`` (only ``robust``, ``exo_pair``
  and ``aot*`` do), and ``robust`` is a different objective
  (``(-(1-e) log s(bu) + e log s(-bu)) / (1 - 2e)``). The conservative-DPO form
  ``-(1-e) log s(bu) - e log s(-bu)`` survives in ``aot_unpaired``, which sorts the chosen and the
  rejected log-ratios across the batch before pairing them: with one pair per batch the sort is the
  identity and ``aot_unpaired`` is exactly cDPO, so cDPO is compared one pair at a time.
* ``logits/*`` are means of the vocabulary-mean logit over all completion tokens of the batch
  (token-weighted) on both sides; ``logps/*`` are per-pair sums over completion tokens (EOS included).
  Over several batches TRL averages per-batch means, we average over pairs (tokens): equal here.
* ``DPOConfig`` defaults to ``bf16=True`` (``TrainingArguments``, so ``TisdpoConfig``, to False); accelerate
  then runs TRL's reference forward under bf16 autocast, so TRL gets ``bf16=False`` here.
* Tokenization: TRL encodes ``prompt`` and ``prompt + completion + eos_token`` as text (BOS from the
  tokenizer) and splits at the common prefix; we encode the prompt (with BOS) and the completion (then
  the EOS id) apart. They agree unless a token merges across the seam, which this tokenizer never does.
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

import datasets  # noqa: E402
import torch  # noqa: E402
from conftest import toy_pairs  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from tisdpo.config import TisdpoConfig  # noqa: E402
from tisdpo.data.formats import RawRecords  # noqa: E402
from tisdpo.data.prepare import prepare_pairs  # noqa: E402
from tisdpo.data.tokenize import PairTokenizer  # noqa: E402
from tisdpo.logprobs import unshared  # noqa: E402
from tisdpo.trainer import PreferenceTrainer  # noqa: E402

PAIRS = toy_pairs(6, seed=3)
MAX_LENGTH = 512  # far above the toy pairs' length: no truncation on either side
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
)
RTOL, ATOL = 1e-5, 1e-6
# Summed fp32 log-probs (|logp| ~ 50 here) agree to ~1e-5 absolute: TRL's fused LM-head kernel and our chunked
# head add up the vocabulary and the tokens in different orders (each is within ~1e-5 of an fp64 forward). A
# reward is beta * (two such sums) and a margin four, so their absolute error floor is beta * 2 (4) * LOGP_ATOL;
# on a pair whose chosen and rejected rewards nearly cancel, a relative tolerance alone would test fp32 rounding.
LOGP_ATOL = 2e-5

# our loss_type -> (TRL loss_type, beta, label_smoothing, pairs per batch). IPO's beta is large enough that its
# target margin 1 / (2 beta) does not swamp the log-ratio term of the loss.
CASES = {
    "dpo": ("sigmoid", 0.1, 0.0, len(PAIRS)),
    "ipo": ("ipo", 1.0, 0.0, len(PAIRS)),
    "cdpo": ("aot_unpaired", 0.5, 0.1, 1),
}


def load_model(model_dir: str, perturb: bool) -> torch.nn.Module:
    """The saved tiny model in fp32; the policy gets the same seeded noise on every parameter."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if perturb:
        generator = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def trl_trainer(model_dir: str, tmp_path, loss_type: str, beta: float, label_smoothing: float) -> DPOTrainer:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        report_to="none",
        use_cpu=True,
        # DPOConfig defaults to bf16=True, under which accelerate wraps the reference forward in bf16 autocast
        # (errors ~1e-3 on the reference log-probs); TrainingArguments (and so TisdpoConfig) default to fp32.
        bf16=False,
        gradient_checkpointing=False,  # DPOConfig's default is True, TrainingArguments' False
        beta=beta,
        loss_type=[loss_type],
        label_smoothing=label_smoothing,
        max_length=MAX_LENGTH,
        precompute_ref_log_probs=False,
    )
    return DPOTrainer(
        model=load_model(model_dir, perturb=True),
        ref_model=load_model(model_dir, perturb=False),
        args=config,
        train_dataset=datasets.Dataset.from_list(PAIRS),
        processing_class=tokenizer,
    )


def our_trainer(
    model_dir: str, tmp_path, loss_type: str, beta: float, label_smoothing: float, logprob_path: str = "chunked"
) -> tuple[PreferenceTrainer, list[dict]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = TisdpoConfig(
        output_dir=str(tmp_path / "ours"),
        report_to="none",
        use_cpu=True,
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        precompute_ref_log_probs=False,
        logprob_path=logprob_path,
    )
    trainer = PreferenceTrainer(
        model=load_model(model_dir, perturb=True),
        args=config,
        processing_class=tokenizer,
        ref_model=load_model(model_dir, perturb=False),
    )
    rows = [dict(row) for row in PAIRS]
    records = RawRecords(rows, "toy", [f"example {i}" for i in range(len(rows))])
    prepared = prepare_pairs(rows, records, PairTokenizer(tokenizer, max_length=MAX_LENGTH, max_prompt_length=None))
    assert prepared.dropped_indices == []
    features = [dict(zip(prepared.columns, values)) for values in zip(*prepared.columns.values())]
    return trainer, features


def sequences_trl(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of every row of a TRL batch."""
    out = []
    for ids, attention, completion in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        ids = ids[attention.bool()].tolist()
        completion = completion[: len(ids)].bool().tolist()
        start = completion.index(True)
        assert all(completion[start:])
        out.append((ids[:start], ids[start:]))
    return out


def sequences_ours(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int]]]:
    out = []
    for ids, attention, start, completion in zip(
        batch["input_ids"], batch["attention_mask"], batch["completion_start"], batch["completion_mask"]
    ):
        ids = ids[attention.bool()].tolist()
        start, length = int(start), int(completion.sum())
        assert start + length == len(ids)
        out.append((ids[:start], ids[start:]))
    return out


def trl_step(trainer: DPOTrainer, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    trainer._metrics["eval"].clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    metrics = {}
    for name in METRICS:
        values = trainer._metrics["eval"][name]
        assert len(values) == 1
        metrics[name] = values[0]
    return float(loss), metrics


def our_step(trainer: PreferenceTrainer, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    sums = trainer._metric_sums["eval"]
    sums.clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    metrics = {name: sums[name][0] / sums[name][1] for name in METRICS}
    # the eval loss is accumulated as a mean over pairs, like the other metrics
    assert sums["loss"][0] / sums["loss"][1] == pytest.approx(float(loss), rel=1e-6)
    return float(loss), metrics


def test_token_ids_match_trl(tiny_model_dir, tmp_path):
    """TRL tokenizes prompt and prompt + completion + EOS text; we encode prompt (BOS) and completion (+EOS) apart.

    With this tokenizer (byte-level BPE whose pre-tokenizer splits before the space that starts every
    response) nothing merges across the seam, so both give the same ids and the same batches.
    """
    trl = trl_trainer(tiny_model_dir, tmp_path, "sigmoid", 0.1, 0.0)
    ours, features = our_trainer(tiny_model_dir, tmp_path, "dpo", 0.1, 0.0)
    trl_rows = [trl.train_dataset[i] for i in range(len(PAIRS))]
    bos, eos = trl.processing_class.bos_token_id, trl.processing_class.eos_token_id
    for theirs, mine in zip(trl_rows, features, strict=True):
        assert theirs["prompt_ids"] == mine["prompt_input_ids"]
        assert theirs["chosen_ids"] == mine["chosen_input_ids"]
        assert theirs["rejected_ids"] == mine["rejected_input_ids"]
        assert mine["prompt_input_ids"][0] == bos
        assert mine["chosen_input_ids"][-1] == eos and mine["rejected_input_ids"][-1] == eos
    trl_batch = trl.data_collator(trl_rows)
    our_batch = unshared(ours.data_collator(features))  # ours computes each prompt once: the same rows, unshared
    assert sequences_trl(trl_batch) == sequences_ours(our_batch)
    assert trl_batch["input_ids"].shape == our_batch["input_ids"].shape


@pytest.mark.parametrize(
    ("loss_type", "logprob_path"),
    [("dpo", "chunked"), ("dpo", "logits"), ("ipo", "chunked"), ("cdpo", "chunked")],
)
def test_loss_and_metrics_match_trl(tiny_model_dir, tmp_path, loss_type, logprob_path):
    trl_loss_type, beta, label_smoothing, pairs_per_batch = CASES[loss_type]
    trl = trl_trainer(tiny_model_dir, tmp_path, trl_loss_type, beta, label_smoothing)
    ours, features = our_trainer(tiny_model_dir, tmp_path, loss_type, beta, label_smoothing, logprob_path)
    assert ours.args.label_smoothing == label_smoothing
    trl_rows = [trl.train_dataset[i] for i in range(len(PAIRS))]

    margins = []
    for start in range(0, len(PAIRS), pairs_per_batch):
        stop = start + pairs_per_batch
        trl_batch = trl.data_collator(trl_rows[start:stop])
        our_batch = ours.data_collator(features[start:stop])
        assert "position_ids" in our_batch  # the shared-prompt layout, against TRL's one row per response
        assert sequences_trl(trl_batch) == sequences_ours(unshared(our_batch))

        trl_loss, trl_metrics = trl_step(trl, trl_batch)
        our_loss, our_metrics = our_step(ours, our_batch)
        where = f"{loss_type} pairs [{start}, {stop})"
        assert our_loss == pytest.approx(trl_loss, rel=RTOL, abs=ATOL), where
        for name in METRICS:
            atol = ATOL
            if name in ("rewards/chosen", "rewards/rejected"):
                atol = beta * 2 * LOGP_ATOL
            elif name == "rewards/margins":
                atol = beta * 4 * LOGP_ATOL
            elif name.startswith("logps/"):
                atol = LOGP_ATOL
            assert our_metrics[name] == pytest.approx(trl_metrics[name], rel=RTOL, abs=atol), f"{where}: {name}"
        margins.append(trl_metrics["rewards/margins"])

    # the perturbation must move the policy away from the reference, or the comparison proves little
    assert min(abs(m) for m in margins) > 1e-2
