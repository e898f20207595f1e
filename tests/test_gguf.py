"""Naming a GGUF model: --gguf_file / --ref_gguf_file, a path ending in .gguf, and the errors for people.

Loading the real GGUF model (SmolLM2-135M-Instruct) is tested in tests/test_real_model.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from conftest import toy_pairs, write_jsonl

from tisdpo.cli import main
from tisdpo.config import ModelArguments
from tisdpo.gguf_names import join_gguf, split_gguf
from tisdpo.modeling import model_fingerprint_parts


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"tisdpo {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_gguf_model_is_named_by_its_file_path():
    args = ModelArguments(model_name_or_path="models/smol", gguf_file="smol.Q4_1.gguf", ref_gguf_file="ref.gguf")
    assert args.model_name_or_path == "models/smol/smol.Q4_1.gguf"
    assert args.ref_model_name_or_path == "models/smol/ref.gguf"  # the reference defaults to the policy's folder
    assert (args.gguf_file, args.ref_gguf_file) == (None, None)
    other = ModelArguments(model_name_or_path="a", ref_model_name_or_path="refs", ref_gguf_file="r.gguf")
    assert (other.model_name_or_path, other.ref_model_name_or_path) == ("a", "refs/r.gguf")
    assert ModelArguments(model_name_or_path="m/x.gguf", gguf_file="y.gguf").model_name_or_path == "m/x.gguf"
    assert join_gguf("org/repo-GGUF", "q4.gguf") == "org/repo-GGUF/q4.gguf"
    assert split_gguf("org/repo-GGUF/q4.gguf") == ("org/repo-GGUF", "q4.gguf")
    assert split_gguf("plain.gguf") == (".", "plain.gguf")
    assert split_gguf("models/smol") == ("models/smol", None)


def test_the_gguf_file_is_part_of_the_reference_cache_key(tmp_path):
    import torch

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(12))
    model = torch.nn.Linear(2, 2)
    before = model_fingerprint_parts(str(gguf), model)
    gguf.write_bytes(b"GGUF" + bytes(20))
    assert model_fingerprint_parts(str(gguf), model) != before


@pytest.mark.parametrize("command", ["train", "evaluate", "weights"])
def test_a_bad_gguf_file_is_one_line(command, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4))
    fake = tmp_path / "model.gguf"
    fake.write_text("not a gguf file")
    out = tmp_path / "out"
    argv = {
        "train": ["train", "--dataset_name", data, "--output_dir", out, "--model_name_or_path", tmp_path],
        "evaluate": ["evaluate", "--dataset_name", data, "--output_dir", out, "--model_name_or_path", tmp_path],
        "weights": [
            "weights",
            "--dataset_name",
            data,
            "--output_file",
            out / "w.jsonl",
            "--model_name_or_path",
            tmp_path,
        ],
    }[command]
    if command == "evaluate":
        argv += ["--ref_model_name_or_path", fake]
    if command == "weights":
        argv += ["--positive_prompt", "harmless", "--negative_prompt", "harmful"]
    argv += ["--gguf_file", "model.gguf"]
    assert main([str(a) for a in argv]) == 1
    assert error_line(capsys, command) == (
        f"tisdpo {command}: error: {fake}: not a GGUF file (it does not start with the GGUF magic bytes)"
    )
    assert main([str(a) for a in argv[:-1]] + ["missing.gguf"]) == 1
    assert error_line(capsys, command) == f"tisdpo {command}: error: {tmp_path / 'missing.gguf'}: GGUF file not found"


def test_a_missing_gguf_package_says_what_to_install(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(12))
    code = main(
        ["evaluate", "--dataset_name", str(data), "--output_dir", str(tmp_path / "out")]
        + ["--model_name_or_path", str(gguf), "--ref_model_name_or_path", str(gguf)]
    )
    assert code == 1
    assert error_line(capsys, "evaluate") == (
        f"tisdpo evaluate: error: {gguf}: loading a GGUF file needs the gguf package: pip install gguf"
    )


def test_a_recipe_names_a_gguf_model_by_its_path(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4))
    recipe.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp_path / "run"),
                "base_model": str(tmp_path / "smol"),
                "model_args": {"gguf_file": "smol.gguf"},
                "data": {"dataset_name": str(data)},
                "objectives": {"dpo": {"loss_type": "dpo"}},
            }
        )
    )
    assert main(["pipeline", "--config", str(recipe), "--dry_run"]) == 1
    assert error_line(capsys, "pipeline") == (
        f"tisdpo pipeline: error: {recipe} field 'model_args': 'gguf_file' would apply to every stage's model; "
        "name a GGUF model by its file's path instead (base_model: folder/model.gguf)"
    )
    missing = Path(tmp_path / "nowhere.gguf")
    recipe.write_text(
        recipe.read_text()
        .replace("model_args:\n  gguf_file: smol.gguf\n", "")
        .replace(str(tmp_path / "smol"), str(missing))
    )
    assert main(["pipeline", "--config", str(recipe), "--dry_run"]) == 1
    assert error_line(capsys, "pipeline") == (
        f"tisdpo pipeline: error: {recipe} field 'base_model': GGUF file not found: {missing}"
    )
