"""The pipeline engine skips finished stages, redoes changed ones and their descendants, resumes
interrupted ones; recipes (the demo's and the paper-scale ones) parse and dry-run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tisdpo.cli import main
from tisdpo.errors import UserError
from tisdpo.pipeline import kinds
from tisdpo.pipeline.engine import Pipeline, Stage

REPO = Path(__file__).resolve().parents[1]


def counting_pipeline(
    run_dir: Path, calls: list[str], config_b: dict | None = None, fail_in: str | None = None
) -> Pipeline:
    def action_for(name: str):
        def action(ctx):
            calls.append(name)
            marker = Path(ctx.work_dir) / "progress"
            if name == fail_in and not marker.exists():
                marker.write_text("half done")
                raise KeyboardInterrupt
            text = "".join(Path(ctx.inputs[d], "out.txt").read_text() for d in sorted(ctx.inputs))
            Path(ctx.work_dir, "out.txt").write_text(text + name + ("(resumed)" if ctx.resumed else ""))

        return action

    return Pipeline(
        str(run_dir),
        [
            Stage("a", action_for("a"), {"x": 1}),
            Stage("b", action_for("b"), config_b or {"y": 1}, ["a"]),
            Stage("c", action_for("c"), {}, ["b"]),
            Stage("d", action_for("d"), {}, ["a"]),
        ],
    )


def test_rerun_skips_finished_and_changed_config_reruns_downstream(tmp_path):
    calls: list[str] = []
    counting_pipeline(tmp_path, calls).run(progress=lambda _: None)
    assert calls == ["a", "b", "c", "d"]
    assert (tmp_path / "c" / "out.txt").read_text() == "abc"
    calls.clear()
    counting_pipeline(tmp_path, calls).run(progress=lambda _: None)
    assert calls == []
    changed = counting_pipeline(tmp_path, calls, config_b={"y": 2})
    assert [p.status for p in changed.plan()] == ["done", "stale", "stale", "done"]
    changed.run(progress=lambda _: None)
    assert calls == ["b", "c"]  # b changed, c depends on b; a and d untouched
    assert json.loads((tmp_path / "b" / "stage.json").read_text())["config"] == {"y": 2}


def test_interrupted_stage_resumes_in_its_partial_folder(tmp_path):
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        counting_pipeline(tmp_path, calls, fail_in="b").run(progress=lambda _: None)
    assert not (tmp_path / "b").exists() and (tmp_path / ".b.partial" / "progress").exists()
    resumed = counting_pipeline(tmp_path, calls, fail_in="b")
    assert [p.status for p in resumed.plan()][:2] == ["done", "partial"]
    calls.clear()
    resumed.run(progress=lambda _: None)
    assert calls == ["b", "c", "d"]
    assert (tmp_path / "b" / "out.txt").read_text() == "ab(resumed)"
    assert not (tmp_path / ".b.partial").exists()


def test_partial_folder_of_other_inputs_is_discarded(tmp_path):
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        counting_pipeline(tmp_path, calls, fail_in="b").run(progress=lambda _: None)
    other = counting_pipeline(tmp_path, calls, config_b={"y": 3}, fail_in=None)
    assert [p.status for p in other.plan()][1] == "pending"
    other.run(progress=lambda _: None)
    assert (tmp_path / "b" / "out.txt").read_text() == "ab"


def test_cycles_and_unknown_dependencies_are_refused(tmp_path):
    noop = lambda ctx: None  # noqa: E731
    with pytest.raises(UserError, match="cycle"):
        Pipeline(str(tmp_path), [Stage("a", noop, deps=["b"]), Stage("b", noop, deps=["a"])])
    with pytest.raises(UserError, match="unknown stage 'z'"):
        Pipeline(str(tmp_path), [Stage("a", noop, deps=["z"])])


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_recipes_parse_and_dry_run(recipe, tmp_path, capsys):
    assert (
        main(["pipeline", "--config", str(REPO / "configs" / recipe), "--run_dir", str(tmp_path / "run"), "--dry_run"])
        == 0
    )
    plan = capsys.readouterr().out
    assert "stages" in plan and "train_" in plan
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_demo_dry_run_lists_every_stage(tmp_path, capsys):
    assert main(["demo", "--quick", "--output_dir", str(tmp_path), "--dry_run"]) == 0
    plan = capsys.readouterr().out
    for stage in (
        "task",
        "base",
        "sft",
        "contrast_S_pos",
        "contrast_D_neg",
        "weights_P",
        "weights_random",
        "train_tisdpo_D_b0.1_s0",
        "eval_dpo_b0.1_s0",
        "report",
    ):
        assert stage in plan


def test_bad_recipes_get_clear_errors(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base_model: m\ndata: {dataset_name: d.jsonl}\nobjectivs: {}\n")
    assert main(["pipeline", "--config", str(recipe), "--dry_run"]) == 1
    assert "unknown recipe key 'objectivs' (did you mean 'objectives'?)" in capsys.readouterr().err
    recipe.write_text(
        "base_model: m\ndata: {dataset_name: d.jsonl}\nobjectives: {tis: {loss_type: tisdpo, weights: D}}\n"
    )
    assert main(["pipeline", "--config", str(recipe), "--dry_run"]) == 1
    assert "uses weights 'D', which is not a contrastive method" in capsys.readouterr().err


def test_small_pipeline_runs_and_a_changed_config_reruns_the_right_stages(
    tiny_model_dir, toy_data_files, tmp_path, capsys
):
    train, heldout = toy_data_files
    recipe = tmp_path / "r.yaml"
    base = f"""
run_dir: {tmp_path / "run"}
base_model: {tiny_model_dir}
data: {{dataset_name: {train}, eval_dataset_name: {heldout}}}
data_args: {{max_length: 64}}
train_defaults: {{per_device_train_batch_size: 8, save_strategy: "no", disable_tqdm: true, learning_rate: 1.0e-3}}
contrastive:
  D: {{args: {{max_steps: 2}}}}
random_weights: false
objectives:
  dpo: {{loss_type: dpo, args: {{max_steps: 2}}}}
  tisdpo_D: {{loss_type: tisdpo, weights: D, args: {{max_steps: 2}}}}
report: false
"""
    recipe.write_text(base)
    assert main(["pipeline", "--config", str(recipe)]) == 0
    for stage in ("contrast_D_pos", "contrast_D_neg", "weights_D", "train_dpo_s0", "train_tisdpo_D_s0"):
        assert (tmp_path / "run" / stage / "stage.json").exists(), stage
    assert (tmp_path / "run" / "train_tisdpo_D_s0" / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["pipeline", "--config", str(recipe)]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 5
    recipe.write_text(
        base.replace(
            "tisdpo_D: {loss_type: tisdpo, weights: D, args: {max_steps: 2}}",
            "tisdpo_D: {loss_type: tisdpo, weights: D, args: {max_steps: 3}}",
        )
    )
    assert main(["pipeline", "--config", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 4 and "train_tisdpo_D_s0: running" in out
    assert json.loads((tmp_path / "run" / "train_tisdpo_D_s0" / "trainer_state.json").read_text())["global_step"] == 3
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / "run"))


def test_oracle_weights_are_a_demo_source(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "extensions: [tisdpo.demo]\nbase_model: m\ndata: {dataset_name: d.jsonl}\ncontrastive: {D: {}}\n"
        "objectives: {tis: {loss_type: tisdpo, weights: oracle}}\n"
    )
    assert main(["pipeline", "--config", str(recipe), "--dry_run"]) == 1
    assert "uses oracle weights: they need the demo task" in capsys.readouterr().err
    assert main(["demo", "--quick", "--output_dir", str(tmp_path / "demo"), "--dry_run"]) == 0
    assert "weights_oracle" in capsys.readouterr().out


def test_a_recipe_can_sweep_beta(tmp_path, capsys):
    recipe, data = tmp_path / "r.yaml", tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    base = f"base_model: m\ndata: {{dataset_name: {data}}}\nseeds: [0, 1]\nobjectives: {{dpo: {{loss_type: dpo}}}}\n"
    recipe.write_text(base + "betas: [0.1, 0.4]\nevaluate: {args: {max_new_tokens: 4}}\n")
    assert main(["pipeline", "--config", str(recipe), "--dry_run"]) == 0
    plan = capsys.readouterr().out
    for stage in ("train_dpo_b0.1_s0", "train_dpo_b0.4_s1", "eval_dpo_b0.4_s0", "eval_sft_s1"):
        assert stage in plan
    recipe.write_text(base + "betas: [0.1, fast]\n")
    assert main(["pipeline", "--config", str(recipe), "--dry_run"]) == 1
    assert "betas must be a list of positive numbers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("section", "slot", "name"),
    [
        ("data: {demo_task: {}}\n", "data", "demo_task"),
        ("data: {dataset_name: d.jsonl}\nbase_model: {demo_factory: {}}\n", "base_model", "demo_factory"),
        (
            "data: {dataset_name: d.jsonl}\ncontrastive: {D: {}}\nobjectives: {t: {loss_type: tisdpo, weights: oracle}}\n",
            "weights",
            "oracle",
        ),
    ],
)
def test_a_demo_kind_without_the_demo_is_one_line_naming_the_known_kinds(
    tmp_path, capsys, monkeypatch, section, slot, name
):
    """The pipeline knows the demo's stage kinds only through the registry: without them (a process that
    never imported tisdpo.demo), a recipe that names one gets one line naming the kinds it could use."""
    monkeypatch.setattr(kinds, "STAGE_KINDS", {key: kind for key, kind in kinds.STAGE_KINDS.items() if key[0] != slot})
    monkeypatch.setitem(kinds.STAGE_KINDS, (slot, "mine"), kinds.StageKind(slot, "mine", lambda *args: None))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(("base_model: m\n" if slot != "base_model" else "") + section)
    assert main(["pipeline", "--config", str(recipe), "--dry_run"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert f"unknown {slot} kind '{name}' (known: mine;" in error and "extensions: [module]" in error


def test_a_recipe_can_register_its_own_stage_kind(tmp_path, capsys, monkeypatch):
    """Any module can add a data kind; a recipe loads it with ``extensions``."""
    module = tmp_path / "my_kinds.py"
    module.write_text(
        "from tisdpo.pipeline import StageKind, register_stage_kind\n"
        "from tisdpo.pipeline.recipe import Ref\n\n"
        "def add_words(builder, spec):\n"
        "    builder.add('words', lambda ctx: None, {'spec': spec}, [], 'my own pairs')\n"
        "    return {'train': Ref('words', 'train.jsonl')}\n\n"
        "register_stage_kind(StageKind('data', 'my_words', add_words))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(kinds, "STAGE_KINDS", dict(kinds.STAGE_KINDS))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "extensions: [my_kinds]\nbase_model: m\ndata: {my_words: {n: 3}}\nobjectives: {dpo: {loss_type: dpo}}\n"
    )
    assert main(["pipeline", "--config", str(recipe), "--run_dir", str(tmp_path / "run"), "--dry_run"]) == 0
    plan = capsys.readouterr().out
    assert "words" in plan and "train_dpo_s0" in plan
    recipe.write_text("extensions: [no_such_module]\nbase_model: m\ndata: {dataset_name: d.jsonl}\n")
    assert main(["pipeline", "--config", str(recipe), "--dry_run"]) == 1
    assert "extension 'no_such_module' cannot be imported" in capsys.readouterr().err
