"""The Python API (``from tisdpo import ...``) and the command line are one code path: the same model after the
same steps, the same weights file, the same refusals; and the examples run."""

from __future__ import annotations

import dataclasses
import os
import runpy
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from conftest import cli_args, evaluate, prompt_weights_args, read_jsonl, run_cli, run_ok, toy_pairs, write_jsonl
from safetensors.torch import load_file

import tisdpo
import tisdpo.api
from tisdpo import (
    TISDPOConfig,
    TISDPOTrainer,
    estimate_weights,
    evaluate_preferences,
    generate_and_score,
    load_weights,
    render_heatmaps,
    save_weights,
)
from tisdpo.config import DataArguments, ModelArguments, TisdpoConfig, check_values, field_names
from tisdpo.config.ranges import RANGES
from tisdpo.config.trainer import DatasetArguments
from tisdpo.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STEPS = 3
# The flags of both runs of a parity test, and the same settings as TISDPOConfig fields.
TRAIN_SETTINGS = {
    "max_steps": STEPS,
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-3,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 0,
    "max_length": 64,
    "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def weights_data(tmp_path_factory) -> str:
    return str(write_jsonl(tmp_path_factory.mktemp("api-data") / "pairs.jsonl", toy_pairs(12, seed=3)))


@pytest.fixture(scope="module")
def cli_weights_file(tiny_model_dir, weights_data, tmp_path_factory) -> str:
    """``tisdpo weights`` (method P) on the module's pairs."""
    path = tmp_path_factory.mktemp("cli-weights") / "weights.jsonl"
    run_ok(*prompt_weights_args(tiny_model_dir, weights_data, path, "--max_length", 64))
    return str(path)


def test_the_package_exports_the_api():
    assert {"TISDPOTrainer", "TISDPOConfig", "estimate_weights", "load_weights", "save_weights"} <= set(tisdpo.__all__)
    assert isinstance(tisdpo.__version__, str)
    # The package's lazy names are exactly the API module's, and each resolves to the API's object.
    assert set(tisdpo.__all__) - {"__version__"} == set(tisdpo.api.__all__)
    assert all(getattr(tisdpo, name) is getattr(tisdpo.api, name) for name in tisdpo.api.__all__)


def test_the_command_line_starts_without_loading_the_api():
    """The package loads its API on first use: `tisdpo --help` answers without importing torch (seconds)."""
    code = "import sys, tisdpo.cli; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(tisdpo.__file__).parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout == "False\n"


def test_estimate_weights_writes_the_file_tisdpo_weights_writes(
    tiny_model_dir, weights_data, cli_weights_file, tmp_path
):
    weighted = estimate_weights(
        read_jsonl(weights_data),
        model=tiny_model_dir,
        positive_prompt="harmless",
        negative_prompt="harmful",
        max_length=64,
    )
    path = tmp_path / "weights.jsonl"
    save_weights(str(path), weighted)
    assert path.read_text() == Path(cli_weights_file).read_text()
    assert weighted.meta["tokenizer_fingerprint"] == load_weights(cli_weights_file).meta["tokenizer_fingerprint"]
    assert load_weights(str(path)) == weighted


@pytest.mark.parametrize("loss_type", ["dpo", "tisdpo"])
def test_trainer_and_tisdpo_train_give_the_same_model(loss_type, tiny_model_dir, cli_weights_file, tmp_path):
    """Two separate runs on the same pairs (with their weights) and settings: equal parameters after 3 steps."""
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    flags = [item for name, value in TRAIN_SETTINGS.items() for item in (f"--{name}", value)]
    common = ["--loss_type", loss_type, "--dtype", "float32", *flags]
    run_ok(
        "train",
        "--model_name_or_path",
        tiny_model_dir,
        "--dataset_name",
        cli_weights_file,
        "--output_dir",
        cli_out,
        *common,
    )

    args = TISDPOConfig(output_dir=str(api_out), loss_type=loss_type, **TRAIN_SETTINGS)
    trainer = TISDPOTrainer(tiny_model_dir, args, train_dataset=load_weights(cli_weights_file))
    trainer.train()
    trainer.save_model()

    cli_params, api_params = load_file(cli_out / "model.safetensors"), load_file(api_out / "model.safetensors")
    assert cli_params.keys() == api_params.keys()
    for name, value in cli_params.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(api_params[name], value, rtol=0, atol=1e-6, msg=name)
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(before[name], value) for name, value in cli_params.items())  # the runs trained


def test_evaluate_preferences_is_tisdpo_evaluate(tiny_model_dir, weights_data, tmp_path):
    flags = ["--max_length", 64, "--report_to", "none", "--per_device_eval_batch_size", 4]
    cli = evaluate(tiny_model_dir, tiny_model_dir, weights_data, tmp_path / "cli", *flags)
    args = TISDPOConfig(output_dir=str(tmp_path / "api"), max_length=64, report_to="none", per_device_eval_batch_size=4)
    api = evaluate_preferences(tiny_model_dir, read_jsonl(weights_data), args, ref_model=tiny_model_dir)
    assert api.keys() >= {"eval_loss", "eval_rewards/margins", "eval_logps/chosen"}
    for key in ("eval_loss", "eval_rewards/margins", "eval_logps/chosen", "eval_logps/rejected"):
        assert api[key] == pytest.approx(cli[key], abs=1e-6), key
    with pytest.raises(UserError, match="needs ref_model"):
        evaluate_preferences(tiny_model_dir, read_jsonl(weights_data), args)


def test_generate_and_score_is_tisdpo_evaluate_generate(tiny_model_dir, weights_data, tmp_path):
    options = {"scorer": "tisdpo.demo.task:oracle_scorer", "num_samples": 2, "max_new_tokens": 6, "max_prompts": 3}
    flags = [item for name, value in options.items() for item in (f"--{name}", value)]
    cli = evaluate(tiny_model_dir, tiny_model_dir, weights_data, tmp_path / "cli", "--generate", *flags)
    api = generate_and_score(tiny_model_dir, tiny_model_dir, weights_data, str(tmp_path / "api"), **options)
    assert api["gen/num_prompts"] == 3 and api["gen/num_samples"] == 2
    assert {k: v for k, v in api.items() if k.startswith("gen/")} == {
        k: v for k, v in cli.items() if k.startswith("gen/")
    }
    assert read_jsonl(tmp_path / "api" / "generations.jsonl") == read_jsonl(tmp_path / "cli" / "generations.jsonl")
    with pytest.raises(UserError, match=r"generate_and_score field 'num_samples': expected an integer"):
        generate_and_score(tiny_model_dir, tiny_model_dir, weights_data, str(tmp_path / "x"), num_samples="two")


def test_trainer_takes_conversational_and_implicit_prompt_rows(tiny_model_dir, tmp_path):
    def turn(role: str, text: str) -> list[dict[str, str]]:
        return [{"role": role, "content": text}]

    conversational = [
        {"prompt": turn("user", "hello"), "chosen": turn("assistant", "kind"), "rejected": turn("assistant", "rude")}
    ] * 4
    implicit = [{"chosen": "Human: hi Assistant: kind", "rejected": "Human: hi Assistant: rude"}] * 4
    for rows in (conversational, implicit):
        args = TISDPOConfig(output_dir=str(tmp_path), **{**TRAIN_SETTINGS, "max_steps": 1})
        trainer = TISDPOTrainer(tiny_model_dir, args, train_dataset=rows)
        assert len(trainer.train_dataset) == 4 and "ref_chosen_logps" in trainer.train_dataset.column_names
        trainer.train()


def test_trainer_errors_are_the_command_lines(tiny_model_dir, tmp_path):
    args = TISDPOConfig(output_dir=str(tmp_path), loss_type="tisdpo", report_to="none")
    with pytest.raises(UserError, match=r"train_dataset:row 0 field 'chosen_weights': is missing"):
        TISDPOTrainer(tiny_model_dir, args, train_dataset=toy_pairs(2))
    with pytest.raises(UserError, match=r"train_dataset:row 1 field 'chosen': is missing"):
        TISDPOTrainer(tiny_model_dir, args, train_dataset=[toy_pairs(1)[0], {"prompt": "x", "rejected": "y"}])
    with pytest.raises(UserError, match="expected a datasets.Dataset or a list of dicts"):
        TISDPOTrainer(tiny_model_dir, args, train_dataset="pairs.jsonl")


def test_config_keeps_the_flags_of_tisdpo_train():
    """TISDPOConfig holds the data-side options of DataArguments; with DatasetArguments, the train command has
    exactly the flags (and defaults) it had."""
    assert field_names([ModelArguments, DatasetArguments, TISDPOConfig]) == field_names(
        [ModelArguments, DataArguments, TisdpoConfig]
    )
    defaults = {f.name: f.default for f in dataclasses.fields(DataArguments)}
    for item in dataclasses.fields(TISDPOConfig):
        if item.name in defaults:
            assert item.default == defaults[item.name], item.name


# -- ranges ---------------------------------------------------------------------------------------------
def numeric_fields(settings: type) -> list[str]:
    hints = typing.get_type_hints(settings)
    return [
        item.name
        for item in dataclasses.fields(settings)
        if item.init
        and any(kind in (int, float) for kind in (typing.get_args(hints[item.name]) or (hints[item.name],)))
    ]


TRAIN_NUMERIC = sorted(
    {name for group in (ModelArguments, DatasetArguments, TISDPOConfig) for name in numeric_fields(group)}
)


def out_of_range(name: str) -> float:
    """The nearest whole number outside the range (an integer, which every numeric flag parses)."""
    allowed = RANGES[name]
    if allowed.low is not None:
        value = allowed.low if allowed.low_strict else allowed.low - 1
    else:
        value = allowed.high if allowed.high_strict else allowed.high + 1
    return int(value)


def test_every_numeric_option_of_tisdpo_train_has_a_range():
    assert TRAIN_NUMERIC, "no numeric field found"
    missing = [name for name in TRAIN_NUMERIC if name not in RANGES]
    assert not missing, f"numeric fields without a range in tisdpo.config.ranges.RANGES: {missing}"


@pytest.mark.parametrize("name", TRAIN_NUMERIC)
def test_an_out_of_range_value_is_refused_by_the_config_and_the_command(name, tmp_path, capsys):
    value = out_of_range(name)
    if name in numeric_fields(TISDPOConfig):
        with pytest.raises(UserError, match=rf"^field '{name}': must be "):
            TISDPOConfig(output_dir=str(tmp_path), **{name: value})
    argv = cli_args("train", "--model_name_or_path", "m", "--dataset_name", "d.jsonl", "--output_dir", tmp_path)
    assert run_cli(*argv, f"--{name}", value) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tisdpo train: error: field '{name}': must be ") and "\n" not in err


def test_negative_beta_is_refused_everywhere(tmp_path, capsys):
    with pytest.raises(UserError, match=r"field 'beta': must be > 0 \(got -0.1\)"):
        TISDPOConfig(beta=-0.1)
    assert (
        run_cli("train", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", tmp_path, "--beta", "-0.1")
        == 1
    )
    assert capsys.readouterr().err.strip() == "tisdpo train: error: field 'beta': must be > 0 (got -0.1)"
    with pytest.raises(UserError, match=r"recipe.yaml field 'train.beta': must be > 0"):
        check_values({"beta": -0.1}, [TisdpoConfig], source="recipe.yaml", section="train")
    assert TISDPOConfig(output_dir=str(tmp_path), pack_tokens=None, max_steps=-1, report_to="none").beta == 0.1


# -- examples -------------------------------------------------------------------------------------------
def run_example(name: str, *argv: object, monkeypatch: pytest.MonkeyPatch, cwd: Path) -> None:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [name, *(str(a) for a in argv)])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_readme_example_p_weights_with_lora(tiny_model_dir, tmp_path, monkeypatch):
    code_lines = (EXAMPLES / "p_weights_chat_lora.py").read_text().split("# fmt: off\n", 1)[1].splitlines()
    assert len(code_lines) <= 20, "the README's example must stay within 20 lines"
    run_example("p_weights_chat_lora.py", tiny_model_dir, monkeypatch=monkeypatch, cwd=tmp_path)
    assert (tmp_path / "smollm2-tisdpo" / "adapter_model.safetensors").exists()


def test_example_d_weights_on_a_jsonl_file(tiny_model_dir, weights_data, tmp_path, monkeypatch):
    # The tiny model as base, DPO and reverse-DPO model: every reward is 0, which is all this run needs.
    run_example(
        "d_weights_jsonl.py",
        weights_data,
        *[tiny_model_dir] * 3,
        tmp_path / "out",
        monkeypatch=monkeypatch,
        cwd=tmp_path,
    )
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "README.md").exists()
    assert len(read_jsonl(tmp_path / "out" / "weights_D.jsonl")) == 12
    assert (tmp_path / "out" / "heatmaps" / "heatmap.html").exists()


def test_example_trl_style_script(tiny_model_dir, tmp_path, monkeypatch):
    run_example("trl_style_script.py", tiny_model_dir, tmp_path / "out", monkeypatch=monkeypatch, cwd=tmp_path)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_render_heatmaps_of_rows_in_memory(tiny_model_dir, cli_weights_file, tmp_path):
    summary = render_heatmaps(load_weights(cli_weights_file), str(tmp_path / "maps"), tokenizer=tiny_model_dir)
    assert summary and (tmp_path / "maps" / "heatmap.png").exists()
