"""PEFT/LoRA training (the reference is the base with the adapter disabled: no second model), two
adapters on one base as a contrastive pair, gradient checkpointing and bf16 on the chunked log-prob path."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    LORA_FLAGS,
    NO_TQDM,
    QUIET_FLAGS,
    batch_inputs,
    cli_args,
    decided_by_rounding,
    log_history,
    read_jsonl,
    toy_pairs,
    train_argv,
    write_jsonl,
)
from conftest import run_ok as run
from safetensors.torch import load_file

from tisdpo import TISDPOTrainer, modeling
from tisdpo.commands import train as train_command
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.logprobs import completion_logps
from tisdpo.modeling import AdapterView, load_causal_lm, load_contrastive_pair, load_tokenizer
from tisdpo.scoring import score_sequences

peft = pytest.importorskip("peft")

COMMON = ["--per_device_train_batch_size", "8", *QUIET_FLAGS, "--logging_steps", "1", *NO_TQDM]
LORA = LORA_FLAGS
ADAPTED = ("q_proj", "v_proj")


@pytest.fixture
def spies(monkeypatch) -> SimpleNamespace:
    """Count the models the commands load; keep the trainers `tisdpo train` builds and their loss dtypes."""
    seen = SimpleNamespace(loads=[], trainers=[], loss_dtypes=[])
    real_load = modeling.load_causal_lm

    def counting_load(name, *args, **kwargs):
        seen.loads.append(str(name))
        return real_load(name, *args, **kwargs)

    class SpyTrainer(TISDPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.trainers.append(self)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            seen.loss_dtypes.append((out[0] if return_outputs else out).dtype)
            return out

    monkeypatch.setattr(modeling, "load_causal_lm", counting_load)
    monkeypatch.setattr(train_command, "TISDPOTrainer", SpyTrainer)
    return seen


def weights_file(model_dir: str, train_file: str, path: Path) -> str:
    """The training pairs with the trainer's token ids and (seeded) weights in [0.5, 2]."""
    pair_tokenizer = PairTokenizer(load_tokenizer(model_dir), max_length=64)
    rng = random.Random(0)
    rows = read_jsonl(train_file)
    for row in rows:
        pair = pair_tokenizer.tokenize(row)
        for side, ids in (("chosen", pair.chosen_full_ids), ("rejected", pair.rejected_full_ids)):
            row[f"{side}_token_ids"] = ids
            row[f"{side}_weights"] = [rng.uniform(0.5, 2.0) for _ in ids]
    return str(write_jsonl(path, rows))


def train_args(model: str, data: str, loss_type: str, steps: int, learning_rate: str, *extra: object) -> list:
    """`tisdpo train` of MODEL on DATA with LOSS_TYPE for STEPS steps at LEARNING_RATE, then EXTRA and COMMON."""
    flags = ["--loss_type", loss_type, "--max_steps", steps, "--learning_rate", learning_rate, *extra, *COMMON]
    return cli_args("train", "--model_name_or_path", model, "--dataset_name", data, *flags)


def assert_only_adapted_weights_changed(merged: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> None:
    assert set(merged) == set(base)
    for name, tensor in base.items():
        if any(f"{module}.weight" in name for module in ADAPTED):
            assert not torch.equal(merged[name], tensor), name
        else:
            assert torch.equal(merged[name], tensor), name


@pytest.mark.parametrize("loss_type", ["dpo", "tisdpo", "sft"])
def test_lora_trains_only_the_adapter_with_no_second_model(
    loss_type, tiny_model_dir, toy_data_files, tmp_path, spies, monkeypatch
):
    train_file = toy_data_files[0]
    if loss_type == "tisdpo":
        train_file = weights_file(tiny_model_dir, train_file, tmp_path / "weights.jsonl")
    out = tmp_path / loss_type
    monkeypatch.setenv("TISDPO_CACHE", str(tmp_path / "cache"))
    run(*train_args(tiny_model_dir, train_file, loss_type, 8, "1e-2", "--output_dir", out, *LORA))
    # one model in memory: the policy; the reference is its base with the adapter disabled
    assert spies.loads == [tiny_model_dir]
    (trainer,) = spies.trainers
    assert trainer.ref_model is None
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and any(m in name for m in ADAPTED) for name in trainable)
    if loss_type != "sft":  # reference log-probs were precomputed with the adapter disabled
        assert len(list((tmp_path / "cache" / "ref_logps").iterdir())) == 1

    # the output is an adapter folder holding LoRA weights only
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    assert "AutoPeftModelForCausalLM" in (out / "README.md").read_text()  # the model card loads it as an adapter
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_A" in name or "lora_B" in name for name in adapter)
    assert all(adapter[name].abs().max() > 0 for name in adapter if "lora_B" in name)  # B starts at 0

    # it loads through load_causal_lm (base + adapter, merged): only the adapted weights differ from the base
    merged = load_causal_lm(str(out)).state_dict()
    assert_only_adapted_weights_changed(merged, load_file(Path(tiny_model_dir) / "model.safetensors"))

    steps = log_history(out, "loss")
    assert len(steps) == 8
    assert steps[-1]["loss"] < steps[0]["loss"]
    if loss_type != "sft":
        assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the policy starts as the reference
        assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
        assert steps[-1]["rewards/margins"] > 0.01


def test_lora_live_reference_trains_like_precomputed_reference(tiny_model_dir, toy_data_files, tmp_path, spies):
    """--precompute_ref_log_probs false with LoRA: the reference runs every step as the policy with its
    adapter disabled (no reference model loaded), and training is the same as with precomputed log-probs."""
    args = train_args(tiny_model_dir, toy_data_files[0], "dpo", 5, "1e-2", *LORA)
    for name, flag in (("pre", "true"), ("live", "false")):
        run(*args, "--output_dir", tmp_path / name, "--precompute_ref_log_probs", flag)
    assert spies.loads == [tiny_model_dir, tiny_model_dir]  # one model per run
    assert all(trainer.ref_model is None for trainer in spies.trainers)
    columns = [trainer.train_dataset.column_names for trainer in spies.trainers]
    assert "ref_chosen_logps" in columns[0] and "ref_chosen_logps" not in columns[1]
    pre, live = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("pre", "live"))
    assert set(pre) == set(live)
    for name in pre:
        torch.testing.assert_close(live[name], pre[name], rtol=1e-5, atol=1e-6)
    for a, b in zip(log_history(tmp_path / "pre", "loss"), log_history(tmp_path / "live", "loss"), strict=True):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen"):
            if not decided_by_rounding(a, key):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
        if a["step"] == 1:  # the adapter starts at zero: the policy is its reference
            assert a["rewards/margins"] == pytest.approx(0.0, abs=1e-5)


# -- method D with two adapters on one base ------------------------------------------------------


def make_adapter(base_dir: str, out: Path, seed: int) -> str:
    """A LoRA adapter with random (non-zero) A and B, saved like `tisdpo train --use_peft` saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(ADAPTED), init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    return make_adapter(tiny_model_dir, root / "positive", 1), make_adapter(tiny_model_dir, root / "negative", 2)


def scoring_sequences(model_dir: str, rows: list[dict] | None = None) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(prompt, full completion) token ids of each side of ROWS (by default 9 toy pairs), and the pad id."""
    tokenizer = load_tokenizer(model_dir)
    pair_tokenizer = PairTokenizer(tokenizer, max_length=64)
    sequences = []
    for row in toy_pairs(9, seed=7) if rows is None else rows:
        pair = pair_tokenizer.tokenize(row)
        sequences += [(pair.prompt_ids, pair.chosen_full_ids), (pair.prompt_ids, pair.rejected_full_ids)]
    return sequences, tokenizer.pad_token_id


def test_two_adapters_on_one_base_score_like_their_merged_models(tiny_model_dir, adapters, monkeypatch):
    sequences, pad = scoring_sequences(tiny_model_dir)
    merged = [score_sequences(load_causal_lm(path), sequences, pad, batch_size=4) for path in adapters]
    base = score_sequences(load_causal_lm(tiny_model_dir), sequences, pad, batch_size=4)

    loads = []
    real_load = modeling.load_causal_lm
    monkeypatch.setattr(
        modeling, "load_causal_lm", lambda name, *a, **k: loads.append(name) or real_load(name, *a, **k)
    )
    positive, negative = load_contrastive_pair(*adapters)
    assert loads == [tiny_model_dir]  # the base, once
    assert isinstance(positive, AdapterView) and isinstance(negative, AdapterView)
    assert positive.module is negative.module
    assert positive.config.vocab_size == negative.config.vocab_size == 400
    base_size = sum(p.numel() for p in load_causal_lm(tiny_model_dir).parameters())
    shared_size = sum(p.numel() for p in positive.module.parameters())
    assert base_size < shared_size < 1.2 * base_size  # one base plus two small adapters

    # alternate between the sides: each forward activates its own adapter
    scores = [score_sequences(model, sequences, pad, batch_size=4) for model in (positive, negative, positive)]
    assert scores[2] == scores[0]
    for got, expected in zip(scores[:2], merged):
        for a, b in zip(got, expected, strict=True):
            assert a == pytest.approx(b, abs=2e-5)
    assert max(abs(a - b) for s, t in zip(scores[0], scores[1]) for a, b in zip(s, t)) > 1e-3
    assert max(abs(a - b) for s, t in zip(scores[0], base) for a, b in zip(s, t)) > 1e-3

    # the chunked and the logits log-prob paths agree through the view
    logits_path = score_sequences(negative, sequences, pad, batch_size=4, logprob_path="logits")
    for a, b in zip(logits_path, scores[1]):
        assert a == pytest.approx(b, abs=1e-5)


def test_contrastive_pair_falls_back_to_two_models(tiny_model_dir, adapters, tmp_path):
    """An adapter and a full model (or adapters on different bases) load as two merged models."""
    positive, negative = load_contrastive_pair(adapters[0], tiny_model_dir)
    assert not isinstance(positive, AdapterView) and not isinstance(negative, AdapterView)
    other_base = tmp_path / "other_base"
    load_causal_lm(tiny_model_dir).save_pretrained(other_base)
    other = make_adapter(str(other_base), tmp_path / "other", 3)
    positive, negative = load_contrastive_pair(adapters[0], other)
    assert not isinstance(positive, AdapterView) and not isinstance(negative, AdapterView)


def test_weights_from_two_adapter_folders(tiny_model_dir, adapters, tmp_path):
    """`tisdpo weights` with two LoRA folders (method D with adapters): rewards are log p+ - log p-."""
    rows = toy_pairs(5, seed=8)
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "weights.jsonl"
    run(
        "weights",
        "--positive_model_name_or_path",
        adapters[0],
        "--negative_model_name_or_path",
        adapters[1],
        "--tokenizer_name_or_path",
        tiny_model_dir,
        "--dataset_name",
        data,
        "--output_file",
        out,
        "--max_length",
        "64",
    )
    written = read_jsonl(out)
    sequences, pad = scoring_sequences(tiny_model_dir, rows)
    pos, neg = (score_sequences(load_causal_lm(path), sequences, pad) for path in adapters)
    assert len(written) == len(rows)
    for k, row in enumerate(written):
        for j, side in enumerate(("chosen", "rejected")):
            expected = [a - b for a, b in zip(pos[2 * k + j], neg[2 * k + j])]
            assert row[f"{side}_token_rewards"] == pytest.approx(expected, abs=5e-5)


# -- gradient checkpointing and bf16 on the chunked log-prob path ----------------------------------


@pytest.mark.parametrize("peft_flags", [[], LORA], ids=["full", "lora"])
def test_gradient_checkpointing_trains_exactly_like_without(
    peft_flags, tiny_model_dir, toy_data_files, tmp_path, spies
):
    args = train_args(tiny_model_dir, toy_data_files[0], "dpo", 4, "1e-2" if peft_flags else "1e-3", *peft_flags)
    run(*args, "--output_dir", tmp_path / "plain")
    run(*args, "--output_dir", tmp_path / "checkpointed", "--gradient_checkpointing", "true")
    plain, checkpointed = spies.trainers
    assert plain.logprob_path == checkpointed.logprob_path == "chunked"
    assert not any(getattr(m, "gradient_checkpointing", False) for m in plain.model.modules())
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.model.modules())
    weights = "adapter_model.safetensors" if peft_flags else "model.safetensors"
    a, b = load_file(tmp_path / "plain" / weights), load_file(tmp_path / "checkpointed" / weights)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7)
    for x, y in zip(
        log_history(tmp_path / "plain", "loss"), log_history(tmp_path / "checkpointed", "loss"), strict=True
    ):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6)


@pytest.mark.parametrize(
    "flags", [["--dtype", "bfloat16"], ["--bf16", "true", "--use_cpu", "true"]], ids=["bf16-weights", "bf16-autocast"]
)
def test_bf16_keeps_the_loss_in_fp32(flags, tiny_model_dir, toy_data_files, tmp_path, spies):
    args = train_args(tiny_model_dir, toy_data_files[0], "dpo", 4, "1e-3")
    run(*args, "--output_dir", tmp_path / "fp32")
    run(*args, "--output_dir", tmp_path / "bf16", *flags)
    assert set(spies.loss_dtypes) == {torch.float32}
    assert spies.trainers[1].accelerator.mixed_precision == ("bf16" if "--bf16" in flags else "no")
    if flags[0] == "--dtype":
        assert next(spies.trainers[1].model.parameters()).dtype == torch.bfloat16
        assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}
    fp32, bf16 = log_history(tmp_path / "fp32", "loss"), log_history(tmp_path / "bf16", "loss")
    for x, y in zip(fp32, bf16, strict=True):
        assert math.isfinite(y["loss"]) and y["loss"] == pytest.approx(x["loss"], abs=2e-3)
    assert bf16[-1]["loss"] < bf16[0]["loss"]


def test_bf16_log_probs_are_fp32_on_both_paths(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, dtype="bfloat16")
    sequences, pad = scoring_sequences(tiny_model_dir, toy_pairs(3, seed=7))
    from tisdpo.data.collate import PreferenceCollator

    features = [{"index": i, "prompt_input_ids": p, "chosen_input_ids": c} for i, (p, c) in enumerate(sequences)]
    batch = PreferenceCollator(pad, sides=("chosen",))(features)
    inputs = batch_inputs(batch)
    chunked = completion_logps(model, *inputs, path="chunked", chunk_size=7)
    logits = completion_logps(model, *inputs, path="logits", chunk_size=7)
    assert chunked.logps.dtype == logits.logps.dtype == torch.float32
    torch.testing.assert_close(chunked.logps, logits.logps, rtol=0, atol=2e-2)
    exact = completion_logps(load_causal_lm(tiny_model_dir), *inputs)
    torch.testing.assert_close(chunked.logps, exact.logps, rtol=0, atol=0.1)


def test_attn_implementation_flag_reaches_the_model_and_changes_no_result(
    tiny_model_dir, toy_data_files, tmp_path, spies
):
    args = train_args(tiny_model_dir, toy_data_files[0], "dpo", 3, "1e-3", "--dtype", "float32")
    for implementation in ("eager", "sdpa"):
        run(*args, "--output_dir", tmp_path / implementation, "--attn_implementation", implementation)
    assert [t.model.config._attn_implementation for t in spies.trainers] == ["eager", "sdpa"]
    eager, sdpa = (load_file(tmp_path / name / "model.safetensors") for name in ("eager", "sdpa"))
    for name in eager:
        torch.testing.assert_close(sdpa[name], eager[name], rtol=1e-5, atol=1e-6)


def test_lora_layers_put_the_adapter_on_those_layers_only(tiny_model_dir, toy_data_files, tmp_path):
    from tisdpo.api import lora_config
    from tisdpo.errors import UserError

    train, _ = toy_data_files
    out = tmp_path / "top"
    run(
        *train_argv(
            tiny_model_dir,
            train,
            out,
            "--use_peft",
            "true",
            "--lora_target_modules",
            "q_proj,v_proj",
            "--lora_layers",
            "1",
            "--max_steps",
            "1",
        )
    )
    adapted = {name.split(".layers.")[1].split(".")[0] for name in load_file(str(out / "adapter_model.safetensors"))}
    assert adapted == {"1"}
    assert lora_config(target_modules="q_proj", layers="0-2,5").layers_to_transform == [0, 1, 2, 5]
    with pytest.raises(UserError, match="module names"):
        lora_config(layers="1")
    with pytest.raises(UserError, match="layer indices"):
        lora_config(target_modules="q_proj", layers="3-1")
