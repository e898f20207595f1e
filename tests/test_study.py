"""``tisdpo demo --study``: a miniature study end to end, its resumption, and its settings' errors."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from conftest import run_cli

from tisdpo.cli import main
from tisdpo.demo.study.plan import StudyPlan

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
  big: {n_pairs: 32, label_temperature: 1.0}
  small: {n_pairs: 16, label_temperature: 0.01}
main_regime: big
sources: [oracle, D]
variants: {rank_based: {weight_transform: rank_based}}
"""


def test_micro_study_writes_its_answers_and_resumes(tmp_path, capsys):
    config = tmp_path / "micro.yaml"
    config.write_text(MICRO)
    out = tmp_path / "study"
    assert run_cli("demo", "--study", "--study_config", config, "--output_dir", out) == 0
    printed = capsys.readouterr().out
    images = ["frontier_explore.png", "frontier_explore_per_word.png", "frontier_confirm.png"]
    for name in ("study.json", "study.md", *images, "frontier_confirm_per_word.png"):
        assert (out / name).stat().st_size > 0, name
    study = json.loads((out / "study.json").read_text())
    explore, confirm = study["explore"], study["confirm"]
    assert set(explore["big"]["arms"]) == {"dpo", "tisdpo_oracle", "tisdpo_D", "tisdpo_D/rank_based"}
    assert set(explore["small"]["arms"]) == {"dpo", "tisdpo_oracle", "tisdpo_D"}
    choice = study["choices"]["variant"]
    assert choice["arm"] in ("tisdpo_D", "tisdpo_D/rank_based") and choice["runner_up"] is not None
    # The rank_based pick is kept only when it beats the runner-up with an interval above 0.
    assert choice["arm"] == ("tisdpo_D" if choice["tie"] else choice["best"])
    # Every regime and every arm is confirmed on the fresh seeds, on the reward and the reward per word.
    for regime in ("big", "small"):
        entry = confirm[regime]
        assert set(entry["arms"]) == {"dpo", "tisdpo_oracle", choice["arm"]} == set(entry["per_word"])
        assert all(arm["seeds"] == [2, 3] and len(arm["levels"]) == 4 for arm in entry["arms"].values())
        # The levels span the union of the arms' KL ranges: the last is the largest reach of any arm.
        reach = max(arm["max_kl"]["mean"] for arm in entry["arms"].values())  # 2 seeds: median = mean
        assert entry["kl_levels"][-1] == pytest.approx(reach, abs=1e-3)
        assert set(entry["lengths"]) == set(entry["arms"])
    # Exact ties are dropped and their share reported; the noise-free regime has no flipped label.
    assert study["regimes"]["small"]["label_ties_dropped"] and 0 <= study["regimes"]["small"]["label_ties"] < 0.5
    assert study["regimes"]["small"]["flipped_labels"] == 0
    text = (out / "study.md").read_text()
    for heading in (
        "**(a) Do oracle weights beat DPO",
        "**(c) In which regime",
        "**Length.**",
        "score (reward per word)",
    ):
        assert heading in text
    # a progress line per unit: 3 arms x 2 regimes + rank_based in the main regime, x 2 betas x 2 seeds
    assert len(re.findall(r"explore \d+/28: ", printed)) == 28
    assert "study plan: " in printed and " units (" in printed
    # A units' folder per arm x beta x seed; the models of the grid are not kept.
    units = [d for d, _, files in os.walk(out / "explore") if "result.json" in files]
    assert len(units) == 28 and not any(os.path.isdir(os.path.join(u, "model")) for u in units)

    # Nothing runs again; an interrupted grid stage redoes only its unfinished units.
    assert run_cli("demo", "--study", "--study_config", config, "--output_dir", out) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 8
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
    total = 3 * 2 * 2 * 2
    assert f"{total - 1} of {total} units finished earlier" in resumed and "confirm 1/1: " in resumed
    assert (
        json.loads((out / "study.json").read_text())["confirm"]["big"]["arms"].keys() == confirm["big"]["arms"].keys()
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("betaz: [0.1]\n", "unknown study key 'betaz' (did you mean 'betas'?)"),
        ("confirm_seeds: [0, 5]\n", "confirmation seeds must be fresh"),
        ("sources: [oracle, S]\n", "sources must include D"),
        ("sources: [D, Q]\n", "unknown weight source 'Q'"),
        ("main_regime: huge\n", "'huge' is not one of the regimes"),
        ("confirm_seeds: [7]\n", "at least 2 seeds"),
        ("estimate: {seconds_per_stp: 1}\n", "unknown estimate key"),
        ("variants: {fast: {weight_mu: quick}}\n", "variants.fast"),
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
    for stage in ("task", "sft", "models", "weights", "explore", "confirm", "report"):
        assert stage in plan
    assert re.search(r"study plan: \d+ units \(.*\); estimated \d+ min with 2 worker", plan)


def test_quick_study_is_a_smaller_plan_of_the_same_stages(tmp_path, capsys):
    full, quick = StudyPlan.load(), StudyPlan.load(quick=True)
    assert len(quick.explore_seeds) == 1 and len(quick.confirm_seeds) >= 2
    assert sum(quick.unit_counts().values()) < sum(full.unit_counts().values()) / 4
    assert len(full.confirm_seeds) >= 5 and set(full.explore_seeds).isdisjoint(full.confirm_seeds)
    assert main(["demo", "--study", "--quick", "--output_dir", str(tmp_path / "o"), "--dry_run"]) == 0
    assert f"study plan: {sum(quick.unit_counts().values())} units" in capsys.readouterr().out


def test_every_arm_gets_the_same_budget_and_is_confirmed_in_every_regime():
    plan = StudyPlan.load()
    confirmed = plan.confirm_arms("rank_based")
    assert [arm.name for arm in confirmed] == [
        "dpo",
        *(f"tisdpo_{s}" if s != "D" else "tisdpo_D/rank_based" for s in plan.sources),
    ]
    assert min(plan.betas) <= 0.01 and plan.unit_counts()["confirm"] == (
        len(plan.betas) * len(plan.confirm_seeds) * len(plan.regimes) * len(confirmed)
    )
