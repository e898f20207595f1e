"""tisdpo.report: one table format and one frontier plot for every report; the pipeline's report stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest

from tisdpo.evaluation.report import frontier_plot as evaluation_frontier
from tisdpo.pipeline.report import add_report_stage, markdown_tables, summarize
from tisdpo.report.examples import weights_file_examples
from tisdpo.report.plots import FrontierPoint, FrontierSeries, frontier_plot
from tisdpo.report.tables import Table, fmt, fmt_stat, html_table, markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_drawn(path: Path) -> None:
    assert path.read_bytes().startswith(PNG_MAGIC)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01


# ----------------------------------------------------------------------------- tables


def test_tables_render_as_markdown_and_html():
    assert markdown_table(["a", "b|c"], [["1", "x|y"]]) == "| a | b\\|c |\n| --- | --- |\n| 1 | x\\|y |"
    page = html_table(["<a>"], [["1 & 2"]])
    assert "<th>&lt;a&gt;</th>" in page and "<td>1 &amp; 2</td>" in page
    table = Table(["h"], [["v"]])
    assert table.markdown().startswith("| h |") and table.html().startswith("<table>")


def test_cells_format_numbers_the_same_way_everywhere():
    assert (fmt(None), fmt(float("nan")), fmt(True), fmt(3), fmt(0.12345), fmt(2e6)) == (
        "–",
        "–",
        "True",
        "3",
        "0.123",
        "2e+06",
    )
    assert fmt_stat({"mean": 1.0, "std": 0.5, "n": 2}) == "1.00 ± 0.50"
    assert fmt_stat({"mean": 1.0, "std": 0.0, "n": 1}) == "1.00"
    assert fmt_stat({"mean": float("nan"), "n": 0}) == "-" and fmt_stat(None) == "-"


# ----------------------------------------------------------------------------- plots


def test_frontier_plot_draws_points_and_curves_and_skips_missing_ones(tmp_path):
    series = [
        FrontierSeries("dpo s0", [FrontierPoint(0.5, 1.0), FrontierPoint(1.5, 2.0)], group="dpo"),
        FrontierSeries("dpo s1", [FrontierPoint(0.4, 0.9), FrontierPoint(1.4, 2.1)], group="dpo"),
        FrontierSeries("sft", [FrontierPoint(0.0, 0.5, kl_err=0.1, reward_err=0.2)]),
        FrontierSeries("broken", [FrontierPoint(float("nan"), 1.0)]),
    ]
    path = tmp_path / "frontier.png"
    assert frontier_plot(series, path, matched_kl=1.0, baseline_reward=0.5, title="t") == 3
    assert_drawn(path)


def test_the_evaluation_frontier_uses_the_shared_plot(tmp_path):
    runs = [
        {"gen/kl": 0.2, "gen/reward_mean": 1.0, "gen/reward_stderr": 0.1, "gen/baseline_reward_mean": 0.5},
        {"gen/kl": 0.9, "gen/reward_mean": 1.5},
        {"eval_loss": 0.6},
    ]
    path = tmp_path / "frontier.png"
    assert evaluation_frontier(["a", "b", "c"], runs, str(path)) == 2
    assert_drawn(path)


# ----------------------------------------------------------------------------- pipeline report


def write_eval(folder: Path, label: str, kl: float, reward: float, **extra: float) -> None:
    metrics = {
        "gen/kl": kl,
        "gen/reward_mean": reward,
        "gen/baseline_reward_mean": 0.5,
        "gen/win_rate": 0.5 + kl / 10,
        "gen/length_mean": 20.0,
        **{f"gen/{key}": value for key, value in extra.items()},
    }
    (folder / label).mkdir(parents=True, exist_ok=True)
    (folder / label / "eval_results.json").write_text(json.dumps(metrics))


def eval_folders(root: Path) -> dict[str, str]:
    folders = {}
    for objective, slope in (("sft", 0.0), ("dpo", 1.0), ("tisdpo_D", 1.5)):
        for seed in (0, 1):
            folder = root / f"eval_{objective}_s{seed}"
            if objective == "sft":
                write_eval(folder, "final", 0.0, 0.5)
            else:
                write_eval(folder, "checkpoint-2", 0.5, 0.5 + slope * 0.5)
                write_eval(folder, "checkpoint-10", 1.0 + seed, 0.5 + slope * (1.0 + seed))
                write_eval(folder, "final", 1.2 + seed, 0.5 + slope * (1.2 + seed))
            folders[folder.name] = str(folder)
    return folders


def test_summary_compares_objectives_on_their_frontiers(tmp_path):
    summary = summarize(eval_folders(tmp_path), "reward")
    # DPO's largest KL is 1.2 (seed 0) and 2.2 (seed 1): the levels are quarters of the median, 1.7.
    assert summary["baseline"] == "dpo" and summary["kl_levels"] == [0.425, 0.85, 1.275]
    tisdpo = summary["objectives"]["tisdpo_D"]
    assert [p["label"] for p in tisdpo["seeds"]["0"]] == ["checkpoint-2", "checkpoint-10", "final"]
    middle = summary["frontier"]["tisdpo_D"]["levels"][1]
    # Rewards rise linearly from the SFT point (0, 0.5) with slope 1.5 (TIS-DPO) and 1 (DPO): at KL 0.85
    # every seed is 0.5 * 0.85 ahead of DPO.
    assert middle["reward"]["mean"] == pytest.approx(0.5 + 1.5 * 0.85)
    assert middle["vs_baseline"]["mean"] == pytest.approx(0.5 * 0.85)
    assert "sft" not in summary["frontier"]
    tables = markdown_tables({"summary": summary, "weight_auc": {}})
    final, frontier = tables.split("\n\n")[:2]
    assert final.splitlines()[0].startswith("| model | reward | win rate vs SFT |")
    assert "| tisdpo_D | 3.05 ± 1.06 |" in final
    assert frontier.splitlines()[0].startswith("| model | reward at KL 0.425 | reward at KL 0.85 |")
    assert "- dpo, mean over levels" in frontier and "(better)" in frontier


def test_a_beta_sweep_is_one_frontier_per_objective(tmp_path):
    folders = {}
    for beta, kl in (("0.05", 4.0), ("0.4", 1.0)):
        for seed in (0, 1):
            for objective in ("dpo", "tisdpo_D"):
                folder = tmp_path / f"eval_{objective}_b{beta}_s{seed}"
                gain = 1.0 if objective == "dpo" else 1.5
                write_eval(folder, "final", kl, 0.5 + gain * kl)
                folders[folder.name] = str(folder)
    summary = summarize(folders, "reward")
    # A row per run in the final table, one frontier per objective over both betas.
    assert set(summary["objectives"]) == {
        "dpo (beta 0.05)",
        "dpo (beta 0.4)",
        "tisdpo_D (beta 0.05)",
        "tisdpo_D (beta 0.4)",
    }
    assert set(summary["frontier"]) == {"dpo", "tisdpo_D"} and summary["kl_levels"] == [1.0, 2.0, 3.0]
    assert sorted(summary["frontier_points"]["dpo"]["0"]) == [(1.0, 1.5), (4.0, 4.5)]
    at_one = summary["frontier"]["tisdpo_D"]["levels"][0]  # KL 1: the beta-0.4 runs' own point
    assert at_one["reward"]["mean"] == pytest.approx(2.0) and at_one["vs_baseline"]["mean"] == pytest.approx(0.5)


def test_length_and_a_verdict_that_flips_under_length_control_are_reported(tmp_path):
    # TIS-DPO earns more reward than DPO at every KL, but by writing three times as much: per token it earns less.
    folders = {}
    for seed in (0, 1, 2):
        for objective, gain, length, ended in (("dpo", 1.0, 10.0, 1.0), ("tisdpo_D", 1.5, 30.0, 0.25)):
            folder = tmp_path / f"eval_{objective}_s{seed}"
            for label, kl in (("checkpoint-5", 1.0 + seed / 10), ("final", 2.0 + seed / 10)):
                reward = 0.5 + gain * kl
                per_token = {"reward_per_token_mean": reward / length, "baseline_reward_per_token_mean": 0.05}
                write_eval(folder, label, kl, reward, length_mean=length, eos_rate=ended, **per_token)
            folders[folder.name] = str(folder)
    summary = summarize(folders, "reward")
    tisdpo = summary["objectives"]["tisdpo_D"]
    assert tisdpo["length"]["mean"] == 30.0 and tisdpo["ended"]["mean"] == 0.25
    assert tisdpo["reward_per_token"]["mean"] == pytest.approx(
        np.mean([(0.5 + 1.5 * (2 + s / 10)) / 30 for s in range(3)])
    )
    assert summary["frontier"]["tisdpo_D"]["score"]["lo"] > 0  # ahead on the reward
    assert summary["frontier_per_token"]["tisdpo_D"]["score"]["hi"] < 0  # behind per token
    final, frontier = markdown_tables({"summary": summary, "weight_auc": {}}).split("\n\n")[:2]
    assert "| length | ended | reward per token |" in final.splitlines()[0]
    assert "| 30.0 ± 0.0 | 0.25 ± 0.00 |" in final
    assert "(worse; better on the reward: flips under length control)" in frontier


def write_weights_stage(folder: Path, tokenizer_dir: str) -> None:
    folder.mkdir(parents=True)
    row = {
        "prompt": "Hello?",
        "chosen": " yes",
        "rejected": " no",
        "chosen_token_ids": [5, 6, 7],
        "rejected_token_ids": [8, 9],
        "chosen_token_rewards": [0.1, -0.2, 0.3],
        "rejected_token_rewards": [0.5, -0.5],
        "chosen_weights": [1.1, 0.8, 1.35],
        "rejected_weights": [0.6, 1.6],
    }
    (folder / "weights.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    (folder / "weights.jsonl.meta.json").write_text(json.dumps({"tokenizer": tokenizer_dir}))


def test_the_report_stage_writes_its_files(tiny_model_dir, tmp_path):
    inputs = eval_folders(tmp_path / "evals")
    write_weights_stage(tmp_path / "weights_D", tiny_model_dir)
    inputs["weights_D"] = str(tmp_path / "weights_D")
    added = {}
    builder = SimpleNamespace(
        recipe=SimpleNamespace(evaluate={"reward_name": "score"}, notes="a <small> test"),
        add=lambda name, action, config, deps, description: added.update(action=action, deps=deps),
    )
    evals = [name for name in inputs if name.startswith("eval_")]
    add_report_stage(builder, evals, ["weights_D"], {})
    assert added["deps"] == [*evals, "weights_D"]
    out = tmp_path / "report"
    out.mkdir()
    added["action"](SimpleNamespace(inputs=inputs, work_dir=str(out)))

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"summary", "weight_auc", "table"}
    assert set(results["table"]["dpo"]) == {
        "score",
        "win_rate_vs_sft",
        "kl_vs_sft",
        "length",
        "ended",
        "reward_per_token",
    }
    assert set(results["summary"]["frontier"]) == {"dpo", "tisdpo_D"}
    assert (out / "results.md").read_text().startswith("| model | score |")
    for name in ("frontier.png", "heatmap_D.png"):
        assert_drawn(out / name)
    assert "<span" in (out / "heatmap_D.html").read_text()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "a &lt;small&gt; test" in page
    assert "<td>tisdpo_D</td>" in page and "http" not in page


def test_weights_without_provenance_give_no_heatmap(tmp_path):
    rows = [{"chosen_token_ids": [1], "rejected_token_ids": [2], "chosen_weights": [1.0], "rejected_weights": [1.0]}]
    assert weights_file_examples(rows, str(tmp_path / "none.jsonl")) == []


def test_report_modules_do_not_import_the_commands():
    code = (
        "import sys, tisdpo.pipeline.report, tisdpo.evaluation.report, tisdpo.report.examples, "
        "tisdpo.report.model_card\n"
        "print(sorted(m for m in sys.modules if m.startswith('tisdpo.commands')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
