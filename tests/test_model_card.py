"""The README.md model card of a saved model: front matter, objective, weights (TIS-DPO only), data, metrics."""

from __future__ import annotations

import os

import pytest
import yaml

from tisdpo import __version__
from tisdpo.report.model_card import ModelCardInfo, hub_id, model_card, write_model_card

LOG_HISTORY = [
    {"loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.01, "step": 10, "epoch": 0.5},
    {"eval_loss": 0.68, "eval_rewards/accuracies": 0.6, "eval_runtime": 3.2, "step": 20, "epoch": 1.0},
    {"loss": 0.65, "rewards/accuracies": 0.75, "rewards/margins": 0.125, "step": 20, "epoch": 1.0},
    {"train_loss": 0.67, "train_runtime": 100.0, "step": 20, "epoch": 1.0},
]
WEIGHTS_META = {
    "method": "models",
    "positive_model": "runs/dpo",
    "negative_model": "runs/reverse_dpo",
    "dataset": "PKU-Alignment/PKU-SafeRLHF",
    "tokenizer": "runs/dpo",
    "transform": {"name": "rank_based", "mu": 1.0, "rank_min": 0.7, "rank_max": 1.3},
    "rows": 1000,
}


def front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def dpo_info(**overrides) -> ModelCardInfo:
    values = {
        "model_id": "me/smol-dpo",
        "loss_type": "dpo",
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "objective": {"beta": 0.1},
        "dataset_name": "Anthropic/hh-rlhf",
        "datasets": ["Anthropic/hh-rlhf"],
        "num_pairs": 1234,
        "training": {"steps": 20, "learning_rate": 5e-7, "effective_batch_size": 32},
        "train_metrics": {"loss": 0.65, "rewards/accuracies": 0.75, "train_loss": 0.67},
        "eval_metrics": {"eval_rewards/margins": 0.25},
    }
    return ModelCardInfo(**{**values, **overrides})


def test_a_dpo_card_has_every_field_and_no_weights():
    card = model_card(dpo_info())
    meta = front(card)
    assert meta["library_name"] == "tisdpo"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["tags"][:2] == ["tisdpo", "dpo"]
    assert meta["datasets"] == ["Anthropic/hh-rlhf"]
    assert "license" not in meta
    for text in ("# smol-dpo", "| loss_type | `dpo` |", "| beta | `0.1` |", "1234", "5e-07", "| steps | `20` |"):
        assert text in card, text
    for text in ("train/rewards/accuracies | 0.7500", "train_loss | 0.6700", "eval_rewards/margins | 0.2500"):
        assert text in card, text
    assert __version__ in card
    assert 'AutoModelForCausalLM.from_pretrained("me/smol-dpo")' in card and "peft" not in card
    assert "weight" not in card.lower()  # a DPO card says nothing of token weights


def test_license_and_adapter_are_stated_when_known():
    card = model_card(dpo_info(license="apache-2.0", is_adapter=True))
    meta = front(card)
    assert meta["license"] == "apache-2.0"
    assert {"peft", "lora"} <= set(meta["tags"])
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/smol-dpo")' in card


def test_a_local_base_model_and_data_stay_out_of_the_front_matter(tmp_path):
    info = dpo_info(base_model=str(tmp_path), datasets=[], dataset_name=str(tmp_path / "pairs.jsonl"))
    meta = front(model_card(info))
    assert "base_model" not in meta and "datasets" not in meta
    assert hub_id("Anthropic/hh-rlhf") == "Anthropic/hh-rlhf"
    assert hub_id("pairs.jsonl") is None and hub_id(str(tmp_path)) is None and hub_id(None) is None


def test_a_tisdpo_card_names_the_weight_source_and_transform():
    info = dpo_info(loss_type="tisdpo", objective={"beta": 0.1, "tisdpo_kl_coef": 0.0}, weights=WEIGHTS_META)
    card = model_card(info)
    assert "## Token weights" in card
    assert "positive model: `runs/dpo`" in card and "negative model: `runs/reverse_dpo`" in card
    assert "transform: `rank_based` (rank_min=0.7, rank_max=1.3)" in card  # mu is not a rank_based parameter
    assert "| tisdpo_kl_coef | `0.0` |" in card
    assert front(card)["tags"] == ["tisdpo", "dpo"]


def test_a_prompt_based_source_names_the_prompts():
    meta = {
        "method": "prompt",
        "model": "m",
        "positive_prompt": {"name": "harmless", "text": "Be harmless."},
        "negative_prompt": {"name": "custom", "text": 'Say "no".'},
        "transform": {"name": "exp", "mu": 1.0, "k": 1.0, "min_weight": 0.5, "max_weight": 2.0},
    }
    card = model_card(dpo_info(loss_type="tisdpo", weights=meta))
    assert "TIS-DPO(P)" in card and "preset `harmless`" in card and 'Say "no".' in card
    assert "transform: `exp` (mu=1.0, k=1.0, min_weight=0.5, max_weight=2.0)" in card
    front(card)


def test_front_matter_stays_valid_yaml_with_odd_names():
    info = dpo_info(model_id="a: b", base_model="org/model: v2 #1", tags=["x: y"], datasets=["o/d"])
    meta = front(model_card(info))
    assert "x: y" in meta["tags"]


def test_from_training_reads_the_config_and_the_log_history(tmp_path):
    from tisdpo.config import TisdpoConfig

    args = TisdpoConfig(
        output_dir=str(tmp_path / "run"),
        loss_type="tisdpo",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=5e-7,
        report_to="none",
    )
    info = ModelCardInfo.from_training(
        args, "org/base", str(tmp_path / "w.jsonl"), LOG_HISTORY, weights_meta=WEIGHTS_META, num_pairs=7
    )
    assert info.objective == {"beta": 0.1, "tisdpo_kl_coef": 0.0}
    assert info.datasets == ["PKU-Alignment/PKU-SafeRLHF"]
    assert info.training["steps"] == 20 and info.training["effective_batch_size"] == 8
    assert info.training["learning_rate"] == 5e-7
    assert info.train_metrics == {
        "loss": 0.65,
        "rewards/accuracies": 0.75,
        "rewards/margins": 0.125,
        "train_loss": 0.67,
    }
    assert info.eval_metrics == {"eval_loss": 0.68, "eval_rewards/accuracies": 0.6}
    assert info.weights == WEIGHTS_META and info.num_pairs == 7
    assert info.model_id == str(tmp_path / "run")

    dpo = TisdpoConfig(output_dir=str(tmp_path / "dpo"), loss_type="cdpo", report_to="none")
    card = model_card(ModelCardInfo.from_training(dpo, "org/base", "o/d", [], weights_meta=WEIGHTS_META))
    assert "## Token weights" not in card and "label_smoothing | `0.1`" in card
    assert "## Results" not in card  # nothing logged


@pytest.mark.parametrize(
    ("loss_type", "shown", "hidden"),
    [
        ("simpo", ["simpo_gamma_beta_ratio"], ["tdpo_alpha", "label_smoothing"]),
        ("tdpo2", ["tdpo_alpha"], ["simpo_gamma_beta_ratio"]),
        ("dlma", ["dlma_gamma", "dlma_clamp"], ["tdpo_alpha"]),
        ("sparsepo", ["sparsepo_mask", "sparsepo_threshold", "sparsepo_kl_coef"], ["dlma_gamma"]),
        ("sft", [], ["beta", "tdpo_alpha"]),
    ],
)
def test_each_objective_shows_its_own_parameters(loss_type, shown, hidden, tmp_path):
    from tisdpo.config import TisdpoConfig

    args = TisdpoConfig(output_dir=str(tmp_path), loss_type=loss_type, report_to="none")
    card = model_card(ModelCardInfo.from_training(args, "org/base", "o/d", LOG_HISTORY))
    for name in shown:
        assert f"| {name} |" in card, name
    for name in hidden:
        assert f"| {name} |" not in card, name
    assert front(card)["tags"] == (["tisdpo", "sft"] if loss_type == "sft" else ["tisdpo", "dpo", loss_type])


def test_write_is_atomic_and_overwrites(tmp_path):
    write_model_card(str(tmp_path), dpo_info())
    first = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert first == model_card(dpo_info())
    write_model_card(str(tmp_path), dpo_info(loss_type="ipo"))
    second = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert second != first and "| loss_type | `ipo` |" in second
    assert os.listdir(tmp_path) == ["README.md"]  # no temp file left behind
