"""A corpus of bad inputs, generated here, run through every command that reads that kind of input.

Each case asserts the exit code (1), the exact one-line message on stderr (file, line or example,
field, what was expected), that no traceback is printed, and that the failed command left no output
that looks finished (no model.safetensors, no weights file, no eval_results.json, no finished stage).
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import evaluate_args, prompt_weights_args, toy_pairs, write_jsonl
from conftest import run_cli as run

from tisdpo.config import LOSS_TYPES
from tisdpo.errors import UserError

REPO = Path(__file__).resolve().parents[1]
LOSSES = ", ".join(LOSS_TYPES)
TRAIN_FLAGS = ["--max_steps", "1", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4"]
TRAIN_FLAGS += ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--max_length", "64"]
GOOD = {"prompt": "\n\nHuman: tell me about it\n\nAssistant:", "chosen": " kind safe", "rejected": " rude harm"}
EMPTY_HINT = "is empty or whitespace only (fix the row, or pass --skip_empty_responses to drop such pairs)"


def one_error_line(err: str, command: str) -> str:
    """The single error line of a failed command; nothing that looks like a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"tisdpo {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0].removeprefix(f"tisdpo {command}: error: ")


# -- the commands, each as: argv for an input, the command name in its messages, what it must not leave ------


@dataclass
class Command:
    name: str  # in the error line: tisdpo <name>: error: ...
    argv: Callable[[str, Path, str], list[str]]  # (input, tmp folder, model) -> argv
    leftovers: Callable[[Path], list[Path]]  # files that must not exist after a failure


def train_argv(data: str, tmp: Path, model: str) -> list[str]:
    return ["train", "--model_name_or_path", model, "--dataset_name", data, "--output_dir", tmp / "out", *TRAIN_FLAGS]


def evaluate_argv(data: str, tmp: Path, model: str) -> list[str]:
    return evaluate_args(model, model, data, tmp / "eval", *TRAIN_FLAGS)


def weights_argv(data: str, tmp: Path, model: str) -> list[str]:
    return prompt_weights_args(model, data, tmp / "w.jsonl", "--max_length", "64")


def generate_argv(data: str, tmp: Path, model: str) -> list[str]:
    return evaluate_args(model, model, data, tmp / "gen", "--generate", "--max_new_tokens", "3", "--max_length", "64")


def recipe(tmp: Path, model: str, data: str, **extra) -> Path:
    values = {
        "run_dir": str(tmp / "run"),
        "base_model": model,
        "data": {"dataset_name": data},
        "data_args": {"max_length": 64},
        "train_defaults": {
            "max_steps": 1,
            "per_device_train_batch_size": 4,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
        },
        "random_weights": False,
        "objectives": {"dpo": {"loss_type": "dpo"}},
        "report": False,
        **extra,
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def pipeline_argv(data: str, tmp: Path, model: str) -> list[str]:
    return ["pipeline", "--config", recipe(tmp, model, data)]


TRAIN = Command("train", train_argv, lambda t: [t / "out" / "model.safetensors", t / "out" / "all_results.json"])
EVALUATE = Command("evaluate", evaluate_argv, lambda t: [t / "eval" / "eval_results.json"])
WEIGHTS = Command("weights", weights_argv, lambda t: [t / "w.jsonl", t / "w.jsonl.meta.json"])
GENERATE = Command(
    "evaluate", generate_argv, lambda t: [t / "gen" / "eval_results.json", t / "gen" / "generations.jsonl"]
)
PIPELINE = Command("pipeline", pipeline_argv, lambda t: [t / "run" / "train_dpo_s0"])
PAIR_COMMANDS = {"train": TRAIN, "evaluate": EVALUATE, "weights": WEIGHTS, "pipeline": PIPELINE}


def expect_failure(command: Command, argv: list[str], tmp: Path, capsys) -> str:
    capsys.readouterr()
    assert run(*argv) == 1
    message = one_error_line(capsys.readouterr().err, command.name)
    for path in command.leftovers(tmp):
        assert not path.exists(), f"{path} left behind by a failed run"
    return message


def in_pipeline(message: str) -> str:
    return f"stage 'train_dpo_s0' failed: tisdpo train: {message}"


# -- preference data: one good line, then the bad one ------------------------------------------------------


def lines_file(*rows) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "pairs.jsonl"
        path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
        return path

    return make


def json_error(text: str) -> str:
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return f"{err.msg} at column {err.colno}"
    raise AssertionError(text)


def truncated_gzip(tmp: Path) -> Path:
    path = tmp / "pairs.jsonl.gz"
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in toy_pairs(200)).encode())
    path.write_bytes(whole[: len(whole) // 2])
    return path


def truncated_parquet(tmp: Path) -> Path:
    import datasets

    path = tmp / "pairs.parquet"
    datasets.Dataset.from_list(toy_pairs(20)).to_parquet(str(path))
    path.write_bytes(path.read_bytes()[:-50])
    return path


NOT_JSON = '{"prompt": "x", "chosen": '
MISSING = "is missing (expected prompt/chosen/rejected, chosen/rejected, or PKU-SafeRLHF response_0/response_1)"
DATA_CASES = {
    "not_json": (lines_file(GOOD, NOT_JSON.encode()), f"line 2: not valid JSON ({json_error(NOT_JSON)})"),
    "not_an_object": (lines_file(GOOD, ["a", "b"]), "line 2: expected a JSON object, got list"),
    "null_field": (
        lines_file(GOOD, {**GOOD, "chosen": None}),
        "line 2 field 'chosen': is missing or null (expected text)",
    ),
    "missing_field": (lines_file(GOOD, {"prompt": "q", "chosen": " a"}), f"line 2 field 'rejected': {MISSING}"),
    "wrong_type": (lines_file(GOOD, {**GOOD, "rejected": 5}), "line 2 field 'rejected': expected text, got int"),
    "empty_response": (lines_file(GOOD, {**GOOD, "chosen": ""}), f"line 2 field 'chosen': {EMPTY_HINT}"),
    "whitespace_response": (lines_file(GOOD, {**GOOD, "rejected": " \n\t "}), f"line 2 field 'rejected': {EMPTY_HINT}"),
    "unknown_role": (
        lines_file(
            GOOD,
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "bot", "content": "hello"}],
                "rejected": [{"role": "assistant", "content": "go away"}],
            },
        ),
        "line 2 field 'chosen': message 0 has unknown role 'bot' (expected one of system, user, assistant, tool)",
    ),
    "text_and_messages": (
        lines_file(GOOD, {**GOOD, "rejected": [{"role": "assistant", "content": "no"}]}),
        "line 2 field 'rejected': chosen and rejected must both be text or both be message lists",
    ),
    "mixed_formats": (
        lines_file(
            GOOD,
            GOOD,
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "hello"}],
                "rejected": [{"role": "assistant", "content": "go away"}],
            },
        ),
        "line 3 field 'chosen': is a list of messages but line 1, the first row, is text; a dataset must not mix "
        "plain-text and conversational pairs (expected text, like line 1)",
    ),
    "messages_prompt_text_responses": (
        lines_file(GOOD, {**GOOD, "prompt": [{"role": "user", "content": "hi"}]}),
        "line 2 field 'prompt': is a list of messages but chosen and rejected are text (expected the responses as "
        'assistant messages, [{"role": "assistant", "content": ...}], or the prompt as text)',
    ),
    "pku_bad_choice": (
        lines_file(GOOD, {"prompt": "q", "response_0": " a", "response_1": " b", "better_response_id": 2}),
        "line 2 field 'better_response_id': expected 0 or 1, got 2",
    ),
    "not_utf8": (
        lines_file(GOOD, b'{"prompt": "q", "chosen": " \xff", "rejected": " b"}'),
        "line 2: not UTF-8 text (byte b'\\xff' at position 28 of the line)",
    ),
    "empty_file": (lines_file(), "the dataset has no rows"),
    "missing_file": (lambda tmp: tmp / "nowhere.jsonl", "file not found"),
    "truncated_gzip": (
        truncated_gzip,
        "could not read the file (EOFError: Compressed file ended before the end-of-stream marker was reached)",
    ),
    "truncated_parquet": (truncated_parquet, "not a readable Parquet file ("),
}


@pytest.mark.parametrize("command", list(PAIR_COMMANDS))
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_preference_data(case, command, tiny_model_dir, tmp_path, capsys):
    make, expected = DATA_CASES[case]
    data = make(tmp_path)
    cmd = PAIR_COMMANDS[command]
    message = expect_failure(cmd, cmd.argv(str(data), tmp_path, tiny_model_dir), tmp_path, capsys)
    if case == "truncated_gzip":  # the line where the stream breaks depends on the compressor
        prefix, _, rest = message.partition(": could not read")
        start = in_pipeline(f"{data}:line ") if command == "pipeline" else f"{data}:line "
        assert prefix.startswith(start) and prefix[len(start) :].isdigit(), message
        assert ": could not read" + rest == f": {expected}"
        return
    if command == "pipeline" and case == "missing_file":  # the recipe is checked before any stage runs
        assert message == f"{tmp_path / 'recipe.yaml'} field 'data.dataset_name': file not found: {data}"
        return
    full = f"{data}:{expected}" if expected.startswith("line ") else f"{data}: {expected}"
    if command == "pipeline":
        full = in_pipeline(full)
    if expected.endswith("("):
        assert message.startswith(full) and message.endswith(")"), message
    else:
        assert message == full


PROMPT_CASES = {
    "not_json": DATA_CASES["not_json"],
    "not_an_object": DATA_CASES["not_an_object"],
    "not_utf8": DATA_CASES["not_utf8"],
    "empty_file": DATA_CASES["empty_file"],
    "missing_file": DATA_CASES["missing_file"],
    "truncated_parquet": DATA_CASES["truncated_parquet"],
    "null_prompt": (
        lines_file(GOOD, {**GOOD, "prompt": None}),
        "line 2 field 'prompt': is missing or null (expected text or a list of messages)",
    ),
    "no_prompt": (
        lines_file(GOOD, {"text": "hello"}),
        "line 2: has no prompt (expected a 'prompt' column, TL;DR 'post' + 'summary', or a chosen/rejected pair; "
        "or name the column with --prompt_column)",
    ),
    "unknown_role": (
        lines_file(GOOD, {"prompt": [{"role": "bot", "content": "hi"}]}),
        "line 2 field 'prompt': message 0 needs a role (system, user, assistant, tool) and a text 'content'",
    ),
}


def dlma_argv(data: str, tmp: Path, model: str) -> list[str]:
    return [
        "dlma",
        "generate",
        "--model_name_or_path",
        model,
        "--dataset_name",
        data,
        "--output_file",
        tmp / "dlma.jsonl",
        "--max_new_tokens",
        "3",
    ]


PROMPT_COMMANDS = {
    "generate": GENERATE,
    "dlma": Command("dlma", dlma_argv, lambda t: [t / "dlma.jsonl", t / "dlma.jsonl.meta.json"]),
}


@pytest.mark.parametrize("command", list(PROMPT_COMMANDS))
@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_bad_prompts_for_generation(case, command, tiny_model_dir, tmp_path, capsys):
    make, expected = PROMPT_CASES[case]
    data = make(tmp_path)
    cmd = PROMPT_COMMANDS[command]
    message = expect_failure(cmd, cmd.argv(str(data), tmp_path, tiny_model_dir), tmp_path, capsys)
    full = f"{data}:{expected}" if expected.startswith("line ") else f"{data}: {expected}"
    if expected.endswith("("):
        assert message.startswith(full)
    else:
        assert message == full


def test_debug_shows_the_traceback(tiny_model_dir, tmp_path, capsys):
    data = lines_file(GOOD, {**GOOD, "chosen": None})(tmp_path)
    with pytest.raises(UserError, match="field 'chosen': is missing or null"):
        run("--debug", *train_argv(str(data), tmp_path, tiny_model_dir))
    # In a real process: one line and exit code 1 without --debug, the traceback with it.
    env_run = [sys.executable, "-m", "tisdpo"]
    plain = subprocess.run([*env_run, "compare", tmp_path / "missing"], capture_output=True, text=True, cwd=REPO)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip() == (
        f"tisdpo compare: error: {tmp_path / 'missing'}: not found (expected the output folder of tisdpo evaluate)"
    )
    debug = subprocess.run(
        [*env_run, "--debug", "compare", tmp_path / "missing"], capture_output=True, text=True, cwd=REPO
    )
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "tisdpo.errors.UserError" in debug.stderr


# -- identical pairs and prompts that fill max_length: warnings with counts, errors when nothing is left ------


def identical_file(tmp: Path, identical: int, total: int = 8) -> Path:
    rows = toy_pairs(total, seed=4)
    for row in rows[:identical]:
        row["rejected"] = row["chosen"]
    return write_jsonl(tmp / "pairs.jsonl", rows)


@pytest.mark.parametrize("command", ["train", "evaluate", "weights"])
def test_identical_pairs_are_counted_and_dropped_on_request(command, tiny_model_dir, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="tisdpo")
    data = identical_file(tmp_path, 3)
    cmd = PAIR_COMMANDS[command]
    assert run(*cmd.argv(str(data), tmp_path, tiny_model_dir)) == 0
    assert (
        f"{data}: 3 of 8 pair(s) have chosen identical to rejected; they carry no preference signal "
        "(--drop_identical_pairs true drops them)" in caplog.messages
    )
    caplog.clear()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    assert run(*cmd.argv(str(data), tmp_path, tiny_model_dir), "--drop_identical_pairs", "true") == 0
    assert (
        f"{data}: 3 of 8 pair(s) have chosen identical to rejected; they carry no preference signal (dropped)"
        in caplog.messages
    )
    if command == "weights":
        assert len((tmp_path / "w.jsonl").read_text().splitlines()) == 5
    else:
        assert f"{data}: 5 pairs ready (0 dropped by truncation)" in caplog.messages

    everything = identical_file(tmp_path, 8)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    shutil.rmtree(tmp_path / "eval", ignore_errors=True)
    (tmp_path / "w.jsonl").unlink(missing_ok=True)
    Path(str(tmp_path / "w.jsonl") + ".meta.json").unlink(missing_ok=True)
    message = expect_failure(
        cmd, [*cmd.argv(str(everything), tmp_path, tiny_model_dir), "--drop_identical_pairs", "true"], tmp_path, capsys
    )
    assert message == (
        f"{everything}: no pair left: all 8 have chosen identical to rejected (dropped by --drop_identical_pairs)"
    )


def long_prompt_file(tmp: Path, long_rows: int, total: int = 8) -> Path:
    rows = toy_pairs(total, seed=5)
    for row in rows[:long_rows]:
        row["prompt"] = "\n\nHuman: " + " ".join(["tell me about the item"] * 12) + "\n\nAssistant:"
    return write_jsonl(tmp / "pairs.jsonl", rows)


@pytest.mark.parametrize("command", ["train", "evaluate", "weights"])
def test_prompt_filling_max_length(command, tiny_model_dir, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="tisdpo")
    cmd = PAIR_COMMANDS[command]
    limits = ["--max_length", "24", "--max_prompt_length", "24"]
    data = long_prompt_file(tmp_path, 2)
    assert run(*cmd.argv(str(data), tmp_path, tiny_model_dir), *limits) == 0
    assert (
        f"{data}: dropped 2 of 8 pair(s) whose prompt leaves no room for completion tokens "
        "(max_length=24, max_prompt_length=24)" in caplog.messages
    )
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    shutil.rmtree(tmp_path / "eval", ignore_errors=True)
    (tmp_path / "w.jsonl").unlink(missing_ok=True)
    Path(str(tmp_path / "w.jsonl") + ".meta.json").unlink(missing_ok=True)
    data = long_prompt_file(tmp_path, 8)
    message = expect_failure(cmd, [*cmd.argv(str(data), tmp_path, tiny_model_dir), *limits], tmp_path, capsys)
    assert message == (
        f"{data}: no pair left after truncation (all 8 dropped); raise --max_length or lower --max_prompt_length"
    )


# -- token weights ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_file(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    data = write_jsonl(folder / "pairs.jsonl", toy_pairs(6, seed=6))
    out = folder / "w.jsonl"
    assert run(*weights_argv(str(data), folder, tiny_model_dir)) == 0
    return out


def mutated(weights_file: Path, tmp: Path, change: Callable[[dict], None], keep_meta: bool = True) -> Path:
    rows = [json.loads(line) for line in weights_file.read_text().splitlines()]
    change(rows[1])
    path = tmp / "w_bad.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if keep_meta:
        shutil.copy(str(weights_file) + ".meta.json", str(path) + ".meta.json")
    return path


def shorten(row: dict) -> None:
    row["chosen_weights"] = row["chosen_weights"][:-1]


def set_weight(value: float) -> Callable[[dict], None]:
    def change(row: dict) -> None:
        row["chosen_weights"][1] = value

    return change


def tisdpo_train(data: str, tmp: Path, model: str) -> list[str]:
    return [*train_argv(data, tmp, model), "--loss_type", "tisdpo"]


def tisdpo_evaluate(data: str, tmp: Path, model: str) -> list[str]:
    return [*evaluate_argv(data, tmp, model), "--loss_type", "tisdpo"]


def visualize_argv(data: str, tmp: Path, model: str) -> list[str]:
    return ["visualize", "--weights_file", data, "--output_dir", tmp / "viz"]


TISDPO = {
    "train": Command("train", tisdpo_train, TRAIN.leftovers),
    "evaluate": Command("evaluate", tisdpo_evaluate, EVALUATE.leftovers),
    "visualize": Command(
        "visualize", visualize_argv, lambda t: [t / "viz" / "summary.json", t / "viz" / "heatmap.html"]
    ),
}


@pytest.mark.parametrize("command", list(TISDPO))
@pytest.mark.parametrize("case", ["wrong_length", "nan", "inf", "negative"])
def test_bad_token_weights(case, command, weights_file, tiny_model_dir, tmp_path, capsys):
    change = {"wrong_length": shorten, "nan": set_weight(math.nan), "inf": set_weight(math.inf)}.get(
        case, set_weight(-0.5)
    )
    path = mutated(weights_file, tmp_path, change)
    row = json.loads(path.read_text().splitlines()[1])
    n = len(row["chosen_token_ids"])
    cmd = TISDPO[command]
    argv = cmd.argv(str(path), tmp_path, tiny_model_dir)
    where = f"{path}:line 2 field 'chosen_weights'"
    if command == "visualize":
        if case == "negative":  # a weight may be negative (threshold, origin transforms): it is only shown
            assert run(*argv) == 0 and (tmp_path / "viz" / "summary.json").exists()
            return
        expected = {
            "wrong_length": f"has {n - 1} values but chosen_token_ids has {n} tokens (expected one per token)",
            "nan": "value 1 is nan (expected a finite number)",
            "inf": "value 1 is inf (expected a finite number)",
        }[case]
    else:
        expected = {
            "wrong_length": f"has {n - 1} weights but the completion has {n} tokens (response + EOS); "
            "weights must have one value per completion token as tokenized for training",
            "nan": "weight 1 is nan (expected a finite number)",
            "inf": "weight 1 is inf (expected a finite number)",
            "negative": "weight 1 is negative (-0.5); TIS-DPO needs weights >= 0 (negative weights flip the gradient). "
            "Use a transform with positive output (exp, rank_based, threshold_and_scale)",
        }[case]
    assert expect_failure(cmd, argv, tmp_path, capsys) == f"{where}: {expected}"


def test_negative_weights_are_fine_for_objectives_that_ignore_them(weights_file, tiny_model_dir, tmp_path):
    path = mutated(weights_file, tmp_path, set_weight(-0.5))
    assert run(*train_argv(str(path), tmp_path, tiny_model_dir), "--loss_type", "dpo") == 0


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("case", ["weights_as_text", "word_in_weights", "token_ids_as_text", "word_in_token_ids"])
def test_token_columns_that_are_not_lists_of_numbers(case, command, weights_file, tiny_model_dir, tmp_path, capsys):
    column, value, expected = {
        "weights_as_text": (
            "chosen_weights",
            "1,2,3",
            "expected a list of numbers, one weight per completion token, got str",
        ),
        "word_in_weights": ("chosen_weights", [1.0, "high", 1.0], "weight 1 is 'high' (expected a number)"),
        "token_ids_as_text": ("chosen_token_ids", "5 6 7", "expected a list of token ids (integers), got str"),
        "word_in_token_ids": ("chosen_token_ids", [5, "six", 7], "token id 1 is 'six' (expected an integer)"),
    }[case]
    path = mutated(weights_file, tmp_path, lambda row: row.update({column: value}))
    cmd = TISDPO[command]
    message = expect_failure(cmd, cmd.argv(str(path), tmp_path, tiny_model_dir), tmp_path, capsys)
    assert message == f"{path}:line 2 field '{column}': {expected}"


@pytest.mark.parametrize("case", ["nan", "wrong_length", "not_numbers", "text", "ids_as_text"])
def test_bad_stored_rewards(case, weights_file, tmp_path, capsys):
    def change(row: dict) -> None:
        if case == "nan":
            row["chosen_token_rewards"][2] = math.nan
        elif case == "wrong_length":
            row["chosen_token_rewards"] = row["chosen_token_rewards"][:-1]
        elif case == "text":
            row["chosen_token_rewards"] = "0.1,0.2"
        elif case == "ids_as_text":
            row["chosen_token_ids"] = "5 6 7"
        else:
            row["chosen_token_rewards"][0] = "high"

    path = mutated(weights_file, tmp_path, change)
    n = len(json.loads(path.read_text().splitlines()[1])["chosen_token_ids"])
    out = tmp_path / "w2.jsonl"
    cmd = Command("weights", lambda *_: [], lambda t: [out, Path(str(out) + ".meta.json")])
    message = expect_failure(cmd, ["weights", "--from_rewards", path, "--output_file", out], tmp_path, capsys)
    expected = {
        "nan": "reward 2 is nan (expected a finite number)",
        "wrong_length": f"has {n - 1} rewards but chosen_token_ids has {n} tokens (expected one reward per token)",
        "not_numbers": "reward 0 is 'high' (expected a number)",
        "text": "expected a list of numbers, one reward per completion token, got str",
        "ids_as_text": "expected a list of token ids (integers), got str",
    }[case]
    field = "chosen_token_ids" if case == "ids_as_text" else "chosen_token_rewards"
    assert message == f"{path}:line 2 field '{field}': {expected}"


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> str:
    from tisdpo.demo.factory import build_tiny_llama, train_tokenizer

    path = tmp_path_factory.mktemp("other-model")
    tokenizer = train_tokenizer(
        [r["prompt"] + r["chosen"] + r["rejected"] for r in toy_pairs(60)], str(path), kind="bpe", vocab_size=300
    )
    build_tiny_llama(tokenizer, str(path), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    return str(path)


@pytest.mark.parametrize("command", list(TISDPO))
def test_weights_file_from_another_tokenizer(command, weights_file, tiny_model_dir, other_model_dir, tmp_path, capsys):
    from tisdpo.data.tokenize import tokenizer_fingerprint
    from tisdpo.modeling import load_tokenizer

    meta = json.loads(Path(str(weights_file) + ".meta.json").read_text())
    other = tokenizer_fingerprint(load_tokenizer(other_model_dir))
    cmd = TISDPO[command]
    if command == "visualize":
        argv = [*visualize_argv(str(weights_file), tmp_path, ""), "--tokenizer_name_or_path", other_model_dir]
        expected = (
            f"{weights_file}: this weights file was made with another tokenizer ({meta['tokenizer']}, fingerprint "
            f"{meta['tokenizer_fingerprint']}) than {other_model_dir}; its token ids would decode to other text"
        )
    else:
        argv = cmd.argv(str(weights_file), tmp_path, other_model_dir)
        expected = (
            f"{weights_file}: this weights file was made with another tokenizer (fingerprint "
            f"{meta['tokenizer_fingerprint']}, training uses {other}; made from {meta['tokenizer']}); "
            "rescore it with `tisdpo weights` using this model's tokenizer"
        )
    assert expect_failure(cmd, argv, tmp_path, capsys) == expected

    # Without the provenance file, the token ids themselves give it away.
    bare = mutated(weights_file, tmp_path, lambda row: None, keep_meta=False)
    if command == "visualize":
        argv = [*visualize_argv(str(bare), tmp_path, ""), "--tokenizer_name_or_path", other_model_dir]
        message = expect_failure(cmd, argv, tmp_path, capsys)
        assert message.startswith(f"{bare}:line 1 field 'chosen_token_ids': token id ")
        assert message.endswith(
            "not an id of this tokenizer (vocabulary of 300); was the file made with another tokenizer?"
        )
    else:
        message = expect_failure(cmd, cmd.argv(str(bare), tmp_path, other_model_dir), tmp_path, capsys)
        assert message.startswith(
            f"{bare}:line 1 field 'chosen_token_ids': token ids differ from this tokenizer's completion ids at position "
        )


# -- model folders ------------------------------------------------------------------------------------------


def broken_model(kind: str, tiny_model_dir: str, tmp: Path) -> Path:
    path = tmp / f"model-{kind}"
    if kind == "missing":
        return path
    shutil.copytree(tiny_model_dir, path)
    if kind == "no_weights":
        (path / "model.safetensors").unlink()
    else:
        (path / "config.json").write_text('{"model_type": "llama", ')
    return path


MODEL_COMMANDS = {
    "train": TRAIN,
    "evaluate": EVALUATE,
    "weights": WEIGHTS,
    "generate": GENERATE,
    "visualize": TISDPO["visualize"],
    "pipeline": PIPELINE,
}


@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
@pytest.mark.parametrize("kind", ["missing", "no_weights", "config_not_json"])
def test_missing_or_incomplete_model_folder(kind, command, tiny_model_dir, weights_file, tmp_path, capsys):
    model = broken_model(kind, tiny_model_dir, tmp_path)
    cmd = MODEL_COMMANDS[command]
    if command == "visualize":
        if kind == "no_weights":
            pytest.skip("visualize needs only the tokenizer")
        argv = [*visualize_argv(str(weights_file), tmp_path, ""), "--tokenizer_name_or_path", model]
    else:
        data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4))
        argv = cmd.argv(str(data), tmp_path, str(model))
    message = expect_failure(cmd, argv, tmp_path, capsys)
    # The tokenizer is read first, except by `weights`, which loads its scoring models first.
    what = "model" if command == "weights" else "tokenizer"
    expected = {
        "missing": f"{model}: {what} folder not found (expected a save_pretrained folder or a hub id)",
        "no_weights": f"{model}: model folder is incomplete: no weights (model.safetensors)",
        "config_not_json": f"{model}: config.json is not valid JSON (Expecting property name enclosed in double quotes)",
    }[kind]
    if command == "pipeline":
        expected = (
            f"{tmp_path / 'recipe.yaml'} field 'base_model': model folder not found: {model}"
            if kind == "missing"
            else in_pipeline(expected)
        )
    assert message == expected


# -- configs, flags and outputs ---------------------------------------------------------------------------

CONFIG_COMMANDS = {
    "train": (TRAIN, "lerning_rate", "learning_rate"),
    "evaluate": (EVALUATE, "bta", "beta"),
    "weights": (WEIGHTS, "weight_mue", "weight_mu"),
    "visualize": (TISDPO["visualize"], "max_example", "max_examples"),
    "pipeline": (PIPELINE, "objectivs", "objectives"),
}


def config_argv(command: str, config: Path, tmp: Path, model: str, weights: Path) -> list[str]:
    if command == "pipeline":
        return ["pipeline", "--config", config]
    if command == "visualize":
        return [*visualize_argv(str(weights), tmp, model), "--config", config]
    data = write_jsonl(tmp / "pairs.jsonl", toy_pairs(4))
    return [*CONFIG_COMMANDS[command][0].argv(str(data), tmp, model), "--config", config]


@pytest.mark.parametrize("command", list(CONFIG_COMMANDS))
@pytest.mark.parametrize("case", ["unknown_key", "not_a_mapping", "invalid_yaml", "python_tag", "duplicate_key"])
def test_bad_config_files(case, command, tiny_model_dir, weights_file, tmp_path, capsys):
    cmd, typo, right = CONFIG_COMMANDS[command]
    config = tmp_path / "config.yaml"
    marker = tmp_path / "executed"
    text = {
        "unknown_key": f"{typo}: 1\n",
        "not_a_mapping": "- a list\n- not a mapping\n",
        "invalid_yaml": "seed: [1, 2\nbeta: 3\n",
        "python_tag": f"seed: !!python/object/apply:os.system ['touch {marker}']\n",
        "duplicate_key": "seed: 1\nseed: 2\n",
    }[case]
    config.write_text(text)
    message = expect_failure(
        cmd, config_argv(command, config, tmp_path, tiny_model_dir, weights_file), tmp_path, capsys
    )
    if case == "unknown_key":
        noun = "recipe key" if command == "pipeline" else "setting"
        assert message == f"{config}: unknown {noun} '{typo}' (did you mean '{right}'?)"
    elif case == "not_a_mapping":
        assert message == f"{config}: expected a mapping of field names to values, got list"
    elif case == "invalid_yaml":
        assert message == f"{config}:line 2: not valid YAML (expected ',' or ']', but got ':')"
    elif case == "duplicate_key":  # plain YAML would keep the second silently
        assert message == f"{config}:line 2: not valid YAML (key 'seed' appears twice in one mapping (first on line 1))"
    else:  # the safe loader refuses Python tags: nothing is executed
        assert message.startswith(f"{config}:line 1: not valid YAML (could not determine a constructor for the tag")
        assert not marker.exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_unknown_loss_type_suggests_the_close_match(command, tiny_model_dir, tmp_path, capsys):
    cmd = PAIR_COMMANDS[command]
    data = str(write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4)))
    expected = f"unknown value 'dpoo' (did you mean 'dpo'?); choose one of {LOSSES}"
    assert expect_failure(
        cmd, [*cmd.argv(data, tmp_path, tiny_model_dir), "--loss_type", "dpoo"], tmp_path, capsys
    ) == (f"--loss_type: {expected}")
    config = tmp_path / "c.yaml"
    config.write_text("loss_type: dpoo\n")
    argv = [*cmd.argv(data, tmp_path, tiny_model_dir), "--config", config]
    assert expect_failure(cmd, argv, tmp_path, capsys) == f"{config} field 'loss_type': {expected}"
    config.write_text("max_steps: many\n")
    assert expect_failure(cmd, argv, tmp_path, capsys) == f"{config} field 'max_steps': expected an integer, got 'many'"
    argv = [*cmd.argv(data, tmp_path, tiny_model_dir), "--lerning_rate", "1"]
    assert (
        expect_failure(cmd, argv, tmp_path, capsys) == "unknown flag '--lerning_rate' (did you mean 'learning_rate'?)"
    )
    argv = [*cmd.argv(data, tmp_path, tiny_model_dir), "--max_steps", "many"]
    assert expect_failure(cmd, argv, tmp_path, capsys) == "--max_steps: invalid int value: 'many'"


def test_unknown_values_and_settings_in_a_pipeline_recipe(tiny_model_dir, tmp_path, capsys):
    data = str(write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4)))
    path = recipe(tmp_path, tiny_model_dir, data, objectives={"dpo": {"loss_type": "dpoo"}})
    assert expect_failure(PIPELINE, ["pipeline", "--config", path], tmp_path, capsys) == (
        f"{path} field 'objectives.dpo.loss_type': unknown value 'dpoo' (did you mean 'dpo'?); choose one of {LOSSES}"
    )
    path = recipe(tmp_path, tiny_model_dir, data, train_defaults={"lerning_rate": 0.1})
    assert expect_failure(PIPELINE, ["pipeline", "--config", path], tmp_path, capsys) == (
        f"{path} field 'train_defaults': unknown setting 'lerning_rate' (did you mean 'learning_rate'?)"
    )
    path = recipe(tmp_path, tiny_model_dir, data, weights={"weight_transform": "rank_base"})
    message = expect_failure(PIPELINE, ["pipeline", "--config", path], tmp_path, capsys)
    assert message.startswith(
        f"{path} field 'weights.weight_transform': unknown value 'rank_base' (did you mean 'rank_based'?)"
    )
    assert expect_failure(PIPELINE, ["pipeline", "--config", path, "--dryrun"], tmp_path, capsys) == (
        "unknown flag '--dryrun' (did you mean 'dry_run'?)"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("section", "values", "field", "expected"),
    [
        ("train_defaults", {"learning_rate": "fast"}, "learning_rate", "expected a number, got 'fast'"),
        (
            "objectives",
            {"dpo": {"loss_type": "dpo", "args": {"learning_rate": "fast"}}},
            "learning_rate",
            "expected a number, got 'fast'",
        ),
        ("train_defaults", {"max_steps": "many"}, "max_steps", "expected an integer, got 'many'"),
        ("data_args", {"reverse_pairs": "maybe"}, "reverse_pairs", "expected true or false, got 'maybe'"),
        ("train_defaults", {"disable_dropout": "maybe"}, "disable_dropout", "expected true or false, got 'maybe'"),
        ("model_args", {"lora_r": 1.5}, "lora_r", "expected an integer, got 1.5"),
        ("evaluate", {"args": {"top_k": "some"}}, "top_k", "expected an integer, got 'some'"),
        ("weights", {"weight_mu": "high"}, "weight_mu", "expected a number, got 'high'"),
    ],
)
def test_recipe_values_are_checked_like_flags_before_any_stage_runs(
    section, values, field, expected, tiny_model_dir, tmp_path, capsys
):
    """A recipe's settings are checked by the code that checks flags and --config files, when the recipe
    loads: a bad value is one line naming the recipe, the section and the setting, and no stage runs."""
    data = str(write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4)))
    path = recipe(tmp_path, tiny_model_dir, data, **{section: values})
    where = {
        "objectives": "objectives.dpo.args",
        "evaluate": "evaluate.args",
    }.get(section, section)
    message = expect_failure(PIPELINE, ["pipeline", "--config", path], tmp_path, capsys)
    assert message == f"{path} field '{where}.{field}': {expected}"
    assert not (tmp_path / "run").exists()


def test_recipe_values_are_checked_like_a_config_file(tmp_path):
    """One validator: the same mistake in a --config file of flags and in a recipe's section reads the same."""
    from tisdpo.config import DataArguments, ModelArguments, TisdpoConfig, check_values

    train = [ModelArguments, DataArguments, TisdpoConfig]
    assert check_values({"learning_rate": "1e-4", "bf16": "true", "max_steps": 3}, train, "r.yaml", "x") == {
        "learning_rate": 1e-4,
        "bf16": True,
        "max_steps": 3,
    }
    for values, expected in (
        ({"learning_rate": "fast"}, "r.yaml field 'x.learning_rate': expected a number, got 'fast'"),
        ({"bf16": "maybe"}, "r.yaml field 'x.bf16': expected true or false, got 'maybe'"),
        (
            {"loss_type": "dpoo"},
            f"r.yaml field 'x.loss_type': unknown value 'dpoo' (did you mean 'dpo'?); choose one of {LOSSES}",
        ),
        ({"lerning_rate": 1}, "r.yaml field 'x': unknown setting 'lerning_rate' (did you mean 'learning_rate'?)"),
        (["learning_rate"], "r.yaml field 'x': expected a mapping of flag names to values, got list"),
    ):
        with pytest.raises(UserError) as caught:
            check_values(values, train, "r.yaml", "x")
        assert caught.value.format() == expected
    with pytest.raises(UserError) as caught:
        check_values({"learning_rate": "fast"}, train, "c.yaml")
    assert caught.value.format() == "c.yaml field 'learning_rate': expected a number, got 'fast'"


def test_unknown_choices_of_other_commands(tiny_model_dir, weights_file, tmp_path, capsys):
    data = str(write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4)))
    argv = [*weights_argv(data, tmp_path, tiny_model_dir), "--weight_transform", "expp"]
    assert expect_failure(WEIGHTS, argv, tmp_path, capsys).startswith(
        "--weight_transform: unknown value 'expp' (did you mean 'exp'?); choose one of exp, rank_based"
    )
    viz = TISDPO["visualize"]
    argv = [*visualize_argv(str(weights_file), tmp_path, ""), "--value", "weight"]
    assert expect_failure(viz, argv, tmp_path, capsys) == (
        "--value: unknown value 'weight' (did you mean 'weights'?); choose one of weights, rewards"
    )


def test_bad_output_paths(tiny_model_dir, weights_file, tmp_path, capsys):
    data = str(write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4)))
    csv = tmp_path / "w.csv"
    argv = [*weights_argv(data, tmp_path, tiny_model_dir)[:-4], "--output_file", csv]
    assert expect_failure(WEIGHTS, argv, tmp_path, capsys) == f"{csv}: the output file must end in .jsonl or .parquet"
    assert not csv.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    expected = f"{a_file} field 'output_dir': is a file; --output_dir must be a folder"
    for cmd, argv in (
        (TRAIN, [*train_argv(data, tmp_path, tiny_model_dir), "--output_dir", a_file]),
        (EVALUATE, [*evaluate_argv(data, tmp_path, tiny_model_dir), "--output_dir", a_file]),
        (TISDPO["visualize"], [*visualize_argv(str(weights_file), tmp_path, ""), "--output_dir", a_file]),
    ):
        assert expect_failure(cmd, argv, tmp_path, capsys) == expected
    compare = Command("compare", lambda *_: [], lambda t: [])
    assert expect_failure(compare, ["compare", tmp_path, "--output_dir", a_file], tmp_path, capsys) == expected
    assert a_file.read_text() == "not a folder"


def test_bad_evaluation_outputs_for_compare(tmp_path, capsys):
    compare = Command("compare", lambda *_: [], lambda t: [])
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad" / "eval_results.json"
    bad.parent.mkdir()
    bad.write_text('{"gen/kl": ')
    listed = tmp_path / "listed" / "eval_results.json"
    listed.parent.mkdir()
    listed.write_text("[1, 2]")
    texts = tmp_path / "texts" / "eval_results.json"
    texts.parent.mkdir()
    texts.write_text('{"gen/kl": 0.5, "gen/reward_mean": "high"}')
    cases = {
        tmp_path / "texts": f"{texts} field 'gen/reward_mean': expected a number, got 'high'",
        tmp_path
        / "empty": f"{tmp_path / 'empty'}: no eval_results.json in this folder (expected the output folder of tisdpo evaluate)",
        tmp_path / "missing": f"{tmp_path / 'missing'}: not found (expected the output folder of tisdpo evaluate)",
        tmp_path / "bad": f"{bad}:line 1: not valid JSON (Expecting value)",
        tmp_path / "listed": f"{listed}: expected a JSON object of metrics, got list",
    }
    for run_dir, expected in cases.items():
        assert expect_failure(compare, ["compare", run_dir], tmp_path, capsys) == expected
