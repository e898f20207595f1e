"""`tisdpo compare`: several evaluation outputs as one table and one reward-against-KL plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from tisdpo.cli import main
from tisdpo.commands.compare import default_labels
from tisdpo.evaluation.report import compare_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def word_count_scorer(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(r.split())) for r in responses]


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Two real `evaluate --generate` outputs: a policy far from its reference, and the reference itself."""
    from tisdpo.demo.factory import build_tiny_llama
    from tisdpo.modeling import load_tokenizer

    root = tmp_path_factory.mktemp("compare")
    other = root / "other-model"
    build_tiny_llama(
        load_tokenizer(tiny_model_dir),
        str(other),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        seed=5,
    )
    prompts = write_jsonl(
        root / "prompts.jsonl", [{"prompt": f"\n\nHuman: tell me about {i}\n\nAssistant:"} for i in range(5)]
    )
    outs = []
    for name, policy in (("far", other), ("same", tiny_model_dir)):
        out = root / "runs" / name / "final"
        code = run(
            "evaluate",
            "--generate",
            "--model_name_or_path",
            policy,
            "--ref_model_name_or_path",
            tiny_model_dir,
            "--dataset_name",
            prompts,
            "--scorer",
            "test_compare:word_count_scorer",
            "--num_samples",
            "2",
            "--max_new_tokens",
            "8",
            "--seed",
            "0",
            "--output_dir",
            out,
            "--report_to",
            "none",
        )
        assert code == 0
        outs.append(out)
    return outs[0], outs[1]


def test_compare_two_runs_writes_a_table_and_the_frontier_plot(two_runs, tmp_path, capsys):
    far, same = two_runs
    out = tmp_path / "cmp"
    assert run("compare", far, same, "--output_dir", out) == 0
    printed = capsys.readouterr().out
    table = (out / "compare.md").read_text()
    assert table.strip() == printed.strip()
    lines = table.strip().splitlines()
    assert lines[0].startswith(
        "| run | reward (mean ± std) | baseline reward | win rate [95% CI] | KL (mean ± std) | length"
    )
    assert len(lines) == 4  # header, rule, two runs
    assert lines[2].startswith("| far/final |") and lines[3].startswith("| same/final |")
    results = json.loads((same / "eval_results.json").read_text())
    assert results["gen/kl"] == 0.0
    assert f"{results['gen/reward_mean']:.3f} ± {results['gen/reward_std']:.3f}" in lines[3]
    assert f"[{results['gen/win_rate_ci_low']:.3f}, {results['gen/win_rate_ci_high']:.3f}]" in lines[3]
    far_results = json.loads((far / "eval_results.json").read_text())
    assert far_results["gen/kl"] != 0.0
    png = (out / "frontier.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000

    assert run("compare", far, same / "eval_results.json", "--labels", "dpo, sft") == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[2].startswith("| dpo |") and rows[3].startswith("| sft |")


def test_compare_shows_the_optional_columns_and_skips_runs_without_generations(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "eval_results.json").write_text(
        json.dumps(
            {
                "gen/reward_mean": 1.5,
                "gen/reward_std": 0.5,
                "gen/win_rate": 0.75,
                "gen/win_rate_ci_low": 0.6,
                "gen/win_rate_ci_high": 0.9,
                "gen/kl": 2.0,
                "gen/kl_std": 1.0,
                "gen/safe_rate": 0.8,
                "gen/rouge1": 0.4,
                "gen/rouge2": 0.2,
                "gen/rougeL": 0.3,
            }
        )
    )
    (b / "eval_results.json").write_text(json.dumps({"eval_rewards/accuracies": 0.625, "eval_loss": 0.6}))
    out = tmp_path / "cmp"
    assert run("compare", a, b, "--output_dir", out) == 0
    table = (out / "compare.md").read_text().strip().splitlines()
    assert table[0] == (
        "| run | reward (mean ± std) | win rate [95% CI] | KL (mean ± std) | safe rate | ROUGE-1/2/L | pref. accuracy |"
    )
    assert (
        table[2] == "| a | 1.500 ± 0.500 | 0.750 [0.600, 0.900] | 2.000 ± 1.000 | 0.800 | 0.400 / 0.200 / 0.300 | – |"
    )
    assert table[3] == "| b | – | – | – | – | – | 0.625 |"
    assert (out / "frontier.png").read_bytes().startswith(PNG_MAGIC)
    capsys.readouterr()


def test_compare_errors_are_clear(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run("compare", tmp_path / "empty") == 1
    assert "empty: no eval_results.json in this folder" in capsys.readouterr().err
    assert run("compare", tmp_path / "missing") == 1
    assert "missing: not found" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "eval_results.json").write_text("{oops")
    assert run("compare", tmp_path / "bad") == 1
    assert "eval_results.json:line 1: not valid JSON" in capsys.readouterr().err
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "eval_results.json").write_text("{}")
    assert run("compare", tmp_path / "ok", "--labels", "x,y") == 1
    assert "field 'labels': got 2 labels for 1 runs" in capsys.readouterr().err
    assert run("compare") == 1
    err = capsys.readouterr().err
    assert "the following arguments are required: RUN" in err and "Traceback" not in err


def test_default_labels_are_the_shortest_distinct_suffixes():
    assert default_labels(["runs/x/eval_dpo/final", "runs/x/eval_sft/final"]) == ["eval_dpo/final", "eval_sft/final"]
    assert default_labels(["a/one", "b/two/eval_results.json"]) == ["one", "two"]
    assert compare_markdown(["r"], [{}]) == "| run |\n| --- |\n| r |"
