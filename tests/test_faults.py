"""Faults: kill -9 of real `tisdpo` processes at several points, then the same command again, compared
with an uninterrupted run; atomic writes; numerical guards (non-finite loss or gradient); fp32 losses.

Kills are triggered by polling for the files a run writes (bounded waits, no fixed sleeps).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import log_history, prompt_weights_args, read_jsonl, run_cli, toy_pairs, train_argv, write_jsonl
from safetensors.torch import load_file

from tisdpo import losses
from tisdpo.trainer import PreferenceTrainer, checkpoint_is_complete, last_complete_checkpoint
from tisdpo.utils import atomic_path

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 90  # upper bound of any wait for a file; a healthy run needs a few seconds


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread here and in the killed processes: the same arithmetic in both (results compared
    bit for bit), and no spinning thread pools on a shared 2-core machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tisdpo(*args) -> list[str]:
    return [sys.executable, "-m", "tisdpo", *map(str, args)]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115 - closed by the process's end
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], log: Path) -> None:
    """SIGKILL the process as soon as ``ready()`` holds; fail if it ends first or the wait runs out."""
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the run ended (code {process.returncode}) before the kill point:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no kill point after {WAIT_S}s:\n{log.read_text()}")
        time.sleep(0.005)
    process.kill()
    assert process.wait(timeout=30) == -9


def finish(argv: list[str], log: Path) -> str:
    process = start(argv, log)
    try:
        code = process.wait(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert code == 0, text
    return text


def assert_same_model(a: Path, b: Path) -> None:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-7, msg=name)


# -- training ------------------------------------------------------------------------------------------


def train_args(model: str, data: Path, out: Path, *extra) -> list[str]:
    """12 steps (two epochs of 6 batches of 48 pairs), a checkpoint every 3; EXTRA last (a flag given again wins)."""
    flags = ["--max_steps", "12", "--save_steps", "3", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3"]
    flags += [
        "--seed",
        "0",
        "--max_length",
        "64",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "1",
    ]
    return train_argv(model, data, out, *flags, *extra)


def test_killed_training_resumes_to_the_same_model(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(48, seed=11))
    reference = tmp_path / "reference"
    assert run_cli(*train_args(tiny_model_dir, data, reference)) == 0

    out, log = tmp_path / "killed", tmp_path / "train.log"
    argv = tisdpo(*train_args(tiny_model_dir, data, out))
    # Kill 1: in the training steps after the first checkpoint.
    kill_when(start(argv, log), lambda: (out / "checkpoint-3").is_dir(), log)
    first = out / "checkpoint-3" / "model.safetensors"
    stamp = first.stat().st_mtime_ns
    # Kill 2: while the second checkpoint is being written (or just after, if the write was too quick to see).
    kill_when(
        start(argv, log),
        lambda: (out / ".tmp-checkpoint" / "checkpoint-6").exists() or (out / "checkpoint-6").exists(),
        log,
    )
    for folder in out.glob("checkpoint-*"):  # only complete checkpoints carry the name a resume trusts
        assert checkpoint_is_complete(str(folder)), folder
    text = finish(argv, log)
    assert text.count("resuming from") == 2, text  # the second and the third run
    assert first.stat().st_mtime_ns == stamp  # resumed, not started over
    assert_same_model(reference, out)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 12 and not (out / ".tmp-checkpoint").exists() and not (out / ".tmp-model").exists()
    assert not (out / "pytorch_model.bin").exists() and (out / "model.safetensors").exists()


def test_an_incomplete_checkpoint_is_never_resumed_from(tiny_model_dir, tmp_path, caplog):
    """A checkpoint folder cut short (no trainer state) and a staging leftover are passed over."""
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(48, seed=11))
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out, "--max_steps", "6")
    assert run_cli(*args) == 0
    reference = load_file(out / "model.safetensors")
    # A kill in the middle of someone else's copy: checkpoint-9 has a truncated model and no trainer state.
    (out / "checkpoint-9").mkdir()
    (out / "checkpoint-9" / "model.safetensors").write_bytes(b"\x00" * 10)
    (out / ".tmp-checkpoint" / "checkpoint-12").mkdir(parents=True)
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-6")
    (out / "model.safetensors").unlink()
    caplog.set_level("WARNING", logger="tisdpo")
    assert run_cli(*args) == 0
    assert any("checkpoint-9 is incomplete" in m and "resuming from" in m for m in caplog.messages)
    after = load_file(out / "model.safetensors")
    for name in reference:
        assert torch.equal(reference[name], after[name]), name


# -- weight scoring ------------------------------------------------------------------------------------


def weights_args(model: str, data: Path, out: Path) -> list[str]:
    return prompt_weights_args(model, data, out, "--rows_per_part", "4", "--batch_size", "4", "--max_length", "64")


def test_killed_weight_scoring_resumes_with_no_lost_or_duplicated_rows(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(60, seed=12))
    reference = tmp_path / "reference.jsonl"
    assert run_cli(*weights_args(tiny_model_dir, data, reference)) == 0

    out, log = tmp_path / "w.jsonl", tmp_path / "weights.log"
    parts = Path(str(out) + ".parts")
    argv = tisdpo(*weights_args(tiny_model_dir, data, out))
    kill_when(start(argv, log), lambda: (parts / "part-000000008.jsonl").exists(), log)
    assert not out.exists() and not Path(str(out) + ".meta.json").exists()
    done = sorted(p.name for p in parts.glob("part-*.jsonl"))
    assert 3 <= len(done) < 15
    for part in parts.glob("part-*.jsonl"):  # every part under its final name is complete
        assert len(part.read_text().splitlines()) == 4
    text = finish(argv, log)
    assert re.search(rf"resuming: {len(done)} of 15 parts already scored", text), text
    assert out.read_bytes() == reference.read_bytes()
    assert not parts.exists()
    assert [row["prompt"] for row in read_jsonl(out)] == [row["prompt"] for row in toy_pairs(60, seed=12)]


def test_parts_of_other_inputs_or_cut_short_are_not_trusted(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(12, seed=13))
    reference = tmp_path / "reference.jsonl"
    assert run_cli(*weights_args(tiny_model_dir, data, reference)) == 0
    out = tmp_path / "w.jsonl"
    parts = Path(str(out) + ".parts")
    parts.mkdir()
    # A part from a run on other data (same name, same row count) and a temp file a kill left behind.
    (parts / "fingerprint").write_text("0123456789abcdef")
    (parts / "part-000000000.jsonl").write_text('{"result": null}\n' * 4)
    (parts / ".tmp-cut.jsonl").write_text('{"result": {"chosen_tok')
    assert run_cli(*weights_args(tiny_model_dir, data, out)) == 0
    assert out.read_bytes() == reference.read_bytes()


# -- pipeline ------------------------------------------------------------------------------------------


def pipeline_recipe(tmp: Path, model: str, data: Path) -> Path:
    values = {
        "run_dir": str(tmp / "run"),
        "base_model": model,
        "data": {"dataset_name": str(data)},
        "data_args": {"max_length": 64},
        "train_defaults": {
            "per_device_train_batch_size": 8,
            "save_steps": 2,
            "learning_rate": 1e-3,
            "report_to": "none",
            "disable_tqdm": True,
            "logging_steps": 1,
        },
        "contrastive": {"P": {"positive_prompt": "harmless", "negative_prompt": "harmful"}},
        "weights": {"rows_per_part": 4, "batch_size": 4},
        "random_weights": False,
        "objectives": {"tisdpo_P": {"loss_type": "tisdpo", "weights": "P", "args": {"max_steps": 8}}},
        "report": False,
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_killed_pipeline_resumes_at_the_interrupted_stage(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(64, seed=14))
    # The uninterrupted result: the same two commands run one after the other.
    ref_weights = tmp_path / "ref_weights.jsonl"
    assert run_cli(*weights_args(tiny_model_dir, data, ref_weights)) == 0
    ref_model = tmp_path / "ref_model"
    # the recipe's training: 8 steps, a checkpoint every 2
    train = train_args(
        tiny_model_dir, ref_weights, ref_model, "--loss_type", "tisdpo", "--max_steps", "8", "--save_steps", "2"
    )
    assert run_cli(*train) == 0

    run_dir, log = tmp_path / "run", tmp_path / "pipeline.log"
    argv = tisdpo("pipeline", "--config", pipeline_recipe(tmp_path, tiny_model_dir, data))
    weights_parts = run_dir / ".weights_P.partial" / "weights.jsonl.parts"
    # Kill 1: in the middle of weight scoring.
    kill_when(start(argv, log), lambda: (weights_parts / "part-000000008.jsonl").exists(), log)
    assert not (run_dir / "weights_P").exists()
    # Kill 2: in training, after its second checkpoint.
    train_dir = run_dir / ".train_tisdpo_P_s0.partial"
    kill_when(start(argv, log), lambda: (train_dir / "checkpoint-4").is_dir(), log)
    assert (run_dir / "weights_P" / "stage.json").exists() and not (run_dir / "train_tisdpo_P_s0").exists()
    stamp = (train_dir / "checkpoint-2" / "model.safetensors").stat().st_mtime_ns
    text = finish(argv, log)
    runs = text.split("pipeline in ")
    assert len(runs) == 4, text
    assert "weights_P: resuming" in runs[2] and "train_tisdpo_P_s0: resuming" in runs[3]
    assert "weights_P: finished earlier, skipped" in runs[3]
    final = run_dir / "train_tisdpo_P_s0"
    assert (final / "checkpoint-2" / "model.safetensors").stat().st_mtime_ns == stamp  # resumed, not redone
    assert (run_dir / "weights_P" / "weights.jsonl").read_bytes() == ref_weights.read_bytes()
    assert_same_model(ref_model, final)
    assert not any(name.startswith(".") for name in os.listdir(run_dir))


def test_a_stage_finished_but_not_renamed_is_not_run_again(tmp_path):
    from tisdpo.pipeline.engine import Pipeline, Stage

    calls = []

    def action(ctx):
        calls.append(ctx.resumed)
        Path(ctx.work_dir, "out.txt").write_text("done")

    pipeline = Pipeline(str(tmp_path), [Stage("a", action, {"x": 1})])
    partial = Path(pipeline.partial_dir("a"))
    partial.mkdir()
    (partial / "out.txt").write_text("done")
    (partial / "stage.json").write_text(json.dumps({"fingerprint": pipeline.fingerprint("a")}))
    assert pipeline.status("a") == "partial"
    pipeline.run(progress=lambda _: None)
    assert calls == [] and (tmp_path / "a" / "out.txt").read_text() == "done"
    # A stage.json cut short by a kill is not trusted: the stage runs (again).
    partial.mkdir()
    (partial / "stage.json").write_text('{"fingerprint": "')
    other = Pipeline(str(tmp_path), [Stage("a", action, {"x": 2})])
    other.run(progress=lambda _: None)
    assert calls == [False]


def test_a_kill_during_an_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "eval_results.json"
    target.write_text('{"old": true}\n')
    script = (
        "import sys, time\n"
        "from tisdpo.utils import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp, open(tmp, 'w') as handle:\n"
        "    handle.write('{\"new\": ' + 'x' * 100000)\n"
        "    handle.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait(timeout=30)
    assert json.loads(target.read_text()) == {"old": True}
    with atomic_path(str(target)) as tmp:
        Path(tmp).write_text('{"new": true}\n')
    assert json.loads(target.read_text()) == {"new": True}


# -- numerical guards ----------------------------------------------------------------------------------

GUARD_ARGS = ["--max_steps", "5", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3"]
GUARD_ARGS += ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1"]
GUARD_ARGS += ["--max_length", "64"]


@pytest.fixture
def nan_at_step_3(monkeypatch):
    real, calls = losses.dpo_loss, []

    def dpo_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        return out._replace(losses=out.losses * float("nan")) if len(calls) == 3 else out

    monkeypatch.setattr(losses, "dpo_loss", dpo_loss)


@pytest.fixture
def trainers(monkeypatch) -> list[PreferenceTrainer]:
    """The trainers the CLI builds, to look at their optimizer afterwards."""
    seen: list[PreferenceTrainer] = []
    real = PreferenceTrainer.train

    def train(self, *args, **kwargs):
        seen.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PreferenceTrainer, "train", train)
    return seen


@pytest.mark.parametrize("accumulation,step", [(1, 3), (2, 2)])
def test_a_nan_loss_stops_training_with_the_step_and_pairs(
    accumulation, step, nan_at_step_3, tiny_model_dir, toy_data_files, tmp_path, capsys
):
    """The third batch's loss is NaN: optimizer step 3, or step 2 with two micro-batches a step."""
    out = tmp_path / "out"
    args = train_argv(tiny_model_dir, toy_data_files[0], out, "--gradient_accumulation_steps", accumulation)
    assert run_cli(*args, *GUARD_ARGS) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tisdpo train: error: ")]
    assert len(lines) == 1, err
    assert re.fullmatch(
        rf"tisdpo train: error: non-finite loss \(nan\) at step {step} on pairs \[\d+(, \d+){{7}}\]; check these pairs' data "
        r"and token weights \(huge weights overflow\), lower --learning_rate, keep --max_grad_norm on, or pass "
        r"--skip_nonfinite_batches true to skip such batches",
        lines[0],
    ), lines[0]
    assert not (out / "model.safetensors").exists()


def test_a_nan_batch_is_skipped_on_request(nan_at_step_3, trainers, tiny_model_dir, toy_data_files, tmp_path, caplog):
    out = tmp_path / "out"
    caplog.set_level("WARNING", logger="tisdpo")
    assert (
        run_cli(*train_argv(tiny_model_dir, toy_data_files[0], out, *GUARD_ARGS, "--skip_nonfinite_batches", "true"))
        == 0
    )
    assert any(m.startswith("skipped the batch of step 3: non-finite loss (nan) at step 3") for m in caplog.messages)
    assert json.loads((out / "all_results.json").read_text())["nonfinite_batches_skipped"] == 1
    history = log_history(out)
    skipped = {entry["step"]: entry["nonfinite_batches_skipped"] for entry in history if "loss" in entry}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 1, 5: 1}
    # No metric of the skipped batch reaches the logs, and the optimizer never saw it: 4 updates of 5 steps.
    assert all(math.isfinite(v) for e in history for v in e.values() if isinstance(v, float))
    optimizer = trainers[0].optimizer
    steps = {int(state["step"]) for state in optimizer.state.values()}
    assert steps == {4}
    for tensor in load_file(out / "model.safetensors").values():
        assert torch.isfinite(tensor).all()


def huge_weights_file(tiny_model_dir: str, path: Path, bad_row: int) -> Path:
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.modeling import load_tokenizer

    pair_tokenizer = PairTokenizer(load_tokenizer(tiny_model_dir), max_length=64)
    rows = toy_pairs(16, seed=15)
    for index, row in enumerate(rows):
        pair = pair_tokenizer.tokenize(row)
        row["chosen_weights"] = [1.0] * len(pair.chosen_full_ids)
        row["rejected_weights"] = [1.0] * len(pair.rejected_full_ids)
        if index == bad_row:
            row["chosen_weights"][0] = 3.0e38  # finite in JSON and float32; its products overflow
    return write_jsonl(path, rows)


def test_weights_that_overflow_stop_or_skip_the_step(trainers, tiny_model_dir, tmp_path, capsys):
    data = huge_weights_file(tiny_model_dir, tmp_path / "huge.jsonl", bad_row=5)
    out = tmp_path / "out"
    args = train_argv(tiny_model_dir, data, out, "--loss_type", "tisdpo", *GUARD_ARGS, "--max_steps", "4")
    assert run_cli(*args) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"tisdpo train: error: non-finite (loss \([^)]*\)|gradient[^;]*) at step (\d) on pairs \[([\d, ]+)\]; .*", line
    )
    assert match, line
    assert 5 in [int(i) for i in match.group(3).split(", ")]  # the pair with the huge weight is named
    assert not (out / "model.safetensors").exists()

    trainers.clear()
    assert run_cli(*args, "--skip_nonfinite_batches", "true") == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["nonfinite_batches_skipped"] == 2  # 2 batches an epoch, 2 epochs: the pair is in 2 of 4 steps
    assert {int(state["step"]) for state in trainers[0].optimizer.state.values()} == {2}
    for tensor in load_file(out / "model.safetensors").values():
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("flags", [["--bf16", "true", "--use_cpu", "true"], ["--dtype", "bfloat16"]])
def test_losses_are_fp32_under_bf16(flags, tiny_model_dir, toy_data_files, tmp_path, monkeypatch):
    seen = []
    real = losses.dpo_loss

    def dpo_loss(chosen, rejected, *args, **kwargs):
        out = real(chosen, rejected, *args, **kwargs)
        seen.append((chosen.dtype, rejected.dtype, out.losses.dtype))
        return out

    monkeypatch.setattr(losses, "dpo_loss", dpo_loss)
    args = train_argv(tiny_model_dir, toy_data_files[0], tmp_path / "out", *GUARD_ARGS, "--max_steps", "2", *flags)
    assert run_cli(*args) == 0
    assert seen and all(dtypes == (torch.float32,) * 3 for dtypes in seen), seen
    if "--dtype" in flags:
        assert {t.dtype for t in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.bfloat16}


# -- safe defaults -------------------------------------------------------------------------------------


def test_safe_defaults():
    import dataclasses

    from tisdpo.config import ModelArguments, VisualizeArguments

    for kind in (ModelArguments, VisualizeArguments):
        assert {f.name: f.default for f in dataclasses.fields(kind)}["trust_remote_code"] is False
    # Our code never unpickles: no pickle, no torch.load, no unsafe YAML.
    source = "\n".join(p.read_text() for p in (REPO / "src" / "tisdpo").rglob("*.py"))
    for pattern in (r"\bpickle\b", r"torch\.load\(", r"yaml\.load\(", r"yaml\.unsafe_load", r"trust_remote_code=True"):
        assert not re.search(pattern, source), pattern
