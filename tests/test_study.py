"""``tisdpo demo --study``: a miniature study end to end, its resumption, and its settings' errors."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from conftest import run_cli

from tisdpo.cli import main

MICRO = """
sft_pairs: 64
n_eval_prompts: 8
train_defaults: {per_device_train_batch_size: 8, learning_rate: 1.0e-3, lr_scheduler_type: constant, report_to: none,
                 disable_tqdm: true, dataloader_pin_memory: false, logging_steps: 5}
sft_args: {num_train_epochs: 1, learning_rate: 2.0e-3, save_strategy: "no"}
contrastive_args: {max_steps: 4, save_strategy: "no"}
policy_args: {max_steps: 4, save_strategy: steps, save_steps: 2}
evaluate_args: {scorer: "tisdpo.demo.task:oracle_scorer", num_samples: 1, max_new_tokens: 6, temperature: 1.0,
                top_p: 1.0, generation_batch_size: 8}
betas: [0.1, 0.5]
explore_seeds: [0, 1]
confirm_seeds: [2, 3]
regimes:
  big: {n_pairs: 64, label_temperature: 1.0}
  small: {n_pairs: 24, label_temperature: 3.5}
main_regime: big
sources: [oracle, D]
variants: {exp_mu1_response: {weight_normalize: response}}
oracle_variants: []
dpo_reach: {betas: [0.02], args: {max_steps: 6, save_steps: 3}}
"""


def test_micro_study_writes_its_answers_and_resumes(tmp_path, capsys):
    config = tmp_path / "micro.yaml"
    config.write_text(MICRO)
    out = tmp_path / "study"
    assert run_cli("demo", "--study", "--study_config", config, "--output_dir", out) == 0
    printed = capsys.readouterr().out
    for name in (
        "study.json",
        "study.md",
        "frontier_sources.png",
        "frontier_transforms.png",
        "frontier_regimes.png",
        "frontier_confirm.png",
    ):
        assert (out / name).stat().st_size > 0, name
    study = json.loads((out / "study.json").read_text())
    main_arms = study["main"]["arms"]
    assert set(main_arms) == {"dpo", "dpo_reach", "tisdpo_oracle", "tisdpo_D", "tisdpo_D/exp_mu1_response"}
    assert len(study["main"]["kl_levels"]) == 3 and study["regimes"]["small"]["n_pairs"] == 24
    for entry in main_arms.values():
        assert entry["seeds"] == [0, 1] and len(entry["levels"]) == 3
    assert study["choices"]["variant"]["arm"] in ("tisdpo_D", "tisdpo_D/exp_mu1_response")
    assert study["choices"]["regime"]["regime"] in ("big", "small")
    confirmed = study["confirm"]["big"]["arms"]
    assert {"dpo", study["choices"]["variant"]["arm"], "tisdpo_oracle"} <= set(confirmed)
    assert all(entry["seeds"] == [2, 3] for entry in confirmed.values())
    text = (out / "study.md").read_text()
    for question in ("**(a) Do oracle weights beat DPO", "**(b) Which estimated source", "**(c) In which regime"):
        assert question in text
    assert "## Answers" in text
    # a progress line per unit: 4 arms x 2 betas x 2 seeds, and DPO's reach (1 beta x 2 seeds)
    assert len(re.findall(r"explore_main \d+/18: ", printed)) == 18
    assert study["dpo_reach"]["arms"]["dpo_reach"]["seeds"] == [0, 1]
    assert set(study["regimes_explore"]["small"]["arms"]) == {
        "dpo",
        "tisdpo_oracle",
        study["choices"]["variant"]["arm"],
    }
    # A units' folder per arm x beta x seed; the models of the grid are not kept.
    units = [d for d, _, files in os.walk(out / "explore_main") if "result.json" in files]
    assert len(units) == 4 * 2 * 2 + 2 and not any(os.path.isdir(os.path.join(u, "model")) for u in units)

    # Nothing runs again; an interrupted grid stage redoes only its unfinished units.
    assert run_cli("demo", "--study", "--study_config", config, "--output_dir", out) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 9
    shutil.rmtree(out / "report")
    # As a kill leaves it: the stage's folder under its .partial name, its fingerprint file, no stage.json.
    partial = out / ".confirm.partial"
    os.rename(out / "confirm", partial)
    (partial / "fingerprint").write_text(json.loads((partial / "stage.json").read_text())["fingerprint"])
    (partial / "stage.json").unlink()
    lost = next(d for d, _, files in os.walk(partial) if "result.json" in files)
    shutil.rmtree(lost)
    assert run_cli("demo", "--study", "--study_config", config, "--output_dir", out) == 0
    resumed = capsys.readouterr().out
    total = len(confirmed) * 2 * 2
    assert f"{total - 1} of {total} units finished earlier" in resumed and "confirm 1/1: " in resumed
    assert json.loads((out / "study.json").read_text())["confirm"]["big"]["arms"].keys() == confirmed.keys()


@pytest.mark.parametrize(
    "override, message",
    [
        ("betaz: [0.1]\n", "unknown study key 'betaz' (did you mean 'betas'?)"),
        ("confirm_seeds: [0, 5]\n", "confirmation seeds must be fresh"),
        ("sources: [oracle, S]\n", "sources must include D"),
        ("sources: [D, Q]\n", "unknown weight source 'Q'"),
        ("main_regime: huge\n", "'huge' is not one of the regimes"),
        ("explore_seeds: [0]\n", "at least 2 seeds"),
        ("variants: {fast: {weight_mu: quick}}\noracle_variants: []\n", "variants.fast"),
    ],
)
def test_bad_study_settings_are_one_line(tmp_path, capsys, override, message):
    config = tmp_path / "bad.yaml"
    config.write_text(override)
    assert main(["demo", "--study", "--study_config", str(config), "--output_dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and str(config) in err
    assert not (tmp_path / "o").exists()


def test_study_dry_run_lists_its_stages(tmp_path, capsys):
    assert main(["demo", "--study", "--output_dir", str(tmp_path / "o"), "--dry_run"]) == 0
    plan = capsys.readouterr().out
    for stage in ("task", "sft", "models", "weights", "explore_main", "explore_regimes", "confirm", "report"):
        assert stage in plan
