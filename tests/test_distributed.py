"""`accelerate launch` with 2 CPU processes (gloo) gives the single-process results.

How the processes are launched: `accelerate launch --cpu` runs a single process unless MPI is set up,
so the launch is torchrun's (`--multi_gpu --num_processes 2`) with `ACCELERATE_USE_CPU=1`, which makes
the Trainer's (and `tisdpo.modeling.distributed_state`'s) process group a CPU/gloo one.
`OMP_NUM_THREADS=1` keeps the two processes from fighting over the 2 cores; the single-process runs
we compare with run in the test process (cheaper than another interpreter) on one thread too, so
the arithmetic is the same.

Data order: transformers' train sampler draws one seeded permutation of the pairs (the same in every
process); accelerate splits its batches of `per_device_train_batch_size` among the processes,
process k taking batches k, k + 2, ... So with 4 pairs per process, global step s sees
permutation[8s : 8s + 8] across the two processes: exactly the batch of 8 of a single process with
the same seed. DDP averages the two per-process mean losses' gradients, which is the mean over the 8
pairs, so the loss curve and the final weights match within float tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    LORA_FLAGS,
    NO_TQDM,
    QUIET_FLAGS,
    decided_by_rounding,
    evaluate_args,
    log_history,
    prompt_weights_args,
    read_jsonl,
    toy_pairs,
    write_jsonl,
)
from safetensors.torch import load_file

from tisdpo.cli import main

ACCELERATE = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")

pytestmark = [
    pytest.mark.skipif(ACCELERATE is None, reason="accelerate's launcher is not installed"),
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="torch.distributed with gloo is needed",
    ),
]

COMMON = [*QUIET_FLAGS, *NO_TQDM]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment() -> dict[str, str]:
    env = dict(os.environ)  # TISDPO_CACHE and HF_HUB_OFFLINE come from conftest's fixture
    env.update(
        {
            "ACCELERATE_USE_CPU": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "WANDB_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def launch(*args: object) -> str:
    """Run `accelerate launch ... -m tisdpo ARGS` with 2 CPU processes; return the log of both."""
    command = [
        ACCELERATE,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "tisdpo",
        *(str(a) for a in args),
    ]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return log


def single(*args: object) -> None:
    """The same command in this process, on one thread like each launched process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(a) for a in args]) == 0
    finally:
        torch.set_num_threads(threads)


def assert_both_ranks_ran(log: str) -> None:
    for rank in range(2):
        assert f"process {rank} of 2" in log, log[-4000:]


def test_two_processes_train_like_one_with_the_same_global_batch(tiny_model_dir, toy_data_files, tmp_path, monkeypatch):
    train_file, eval_file = toy_data_files  # 96 training pairs, 32 held-out pairs
    args = [
        "train",
        "--model_name_or_path",
        tiny_model_dir,
        "--dataset_name",
        train_file,
        "--eval_dataset_name",
        eval_file,
        "--loss_type",
        "dpo",
        "--max_steps",
        "6",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "1",
        "--per_device_eval_batch_size",
        "8",
        *COMMON,
        "--save_strategy",  # after COMMON's "no": the last flag wins
        "steps",
        "--save_steps",
        "3",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    caches = {one: tmp_path / "cache_one", two: tmp_path / "cache_two"}
    monkeypatch.setenv("TISDPO_CACHE", str(caches[one]))
    single(*args, "--per_device_train_batch_size", "8", "--output_dir", one)
    monkeypatch.setenv("TISDPO_CACHE", str(caches[two]))
    # Gradient checkpointing changes no number (tests/test_lora.py): here it runs under DDP too.
    log = launch(*args, "--per_device_train_batch_size", "4", "--output_dir", two, "--gradient_checkpointing", "true")
    assert_both_ranks_ran(log)

    # The loss curve and every metric of every step: means over all 8 pairs of the global batch
    # (a process that logged only its own 4 pairs would differ already at step 1).
    first, second = log_history(one), log_history(two)
    assert [sorted(e) for e in first] == [sorted(e) for e in second]
    steps = [(a, b) for a, b in zip(first, second) if "loss" in a]
    assert [a["step"] for a, _ in steps] == [1, 2, 3, 4, 5, 6]
    for a, b in steps:
        for key in a:
            if key not in ("epoch", "step") and not decided_by_rounding(a, key):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert steps[0][0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert steps[-1][0]["loss"] < steps[0][0]["loss"]

    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    final_one, final_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert not torch.equal(final_one["lm_head.weight"], start["lm_head.weight"])
    for name in final_one:
        torch.testing.assert_close(final_two[name], final_one[name], rtol=1e-4, atol=1e-5)

    # Held-out metrics (32 pairs, 2 x 2 batches of 8: no pair repeated to even out the processes).
    results_one = json.loads((one / "all_results.json").read_text())
    results_two = json.loads((two / "all_results.json").read_text())
    for key, value in results_one.items():
        if key.startswith("eval_") and not key.endswith(("runtime", "per_second")):
            assert results_two[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    # One output, written by the main process only (each process adds its RNG state to a checkpoint);
    # one reference cache per dataset, written once.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in two.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        files_one = {p.name for p in (one / checkpoint).iterdir()}
        files_two = {p.name for p in (two / checkpoint).iterdir()}
        assert files_two == files_one - {"rng_state.pth"} | {"rng_state_0.pth", "rng_state_1.pth"}
        torch.testing.assert_close(
            load_file(two / checkpoint / "model.safetensors"),
            load_file(one / checkpoint / "model.safetensors"),
            rtol=1e-4,
            atol=1e-5,
        )
    assert log.count("cached reference log-probs of 96 pairs") == 1
    assert log.count("cached reference log-probs of 32 pairs") == 1
    assert "reusing cached reference log-probs" not in log
    files = {cache: sorted((cache / "ref_logps").iterdir()) for cache in caches.values()}
    assert [p.name for p in files[caches[two]]] == [p.name for p in files[caches[one]]]
    assert len(files[caches[two]]) == 2
    for a, b in zip(files[caches[one]], files[caches[two]]):
        cached_one, cached_two = load_file(a), load_file(b)
        assert torch.equal(cached_one["offsets"], cached_two["offsets"])
        torch.testing.assert_close(cached_two["logps"], cached_one["logps"], rtol=0, atol=1e-5)


def test_two_processes_train_a_lora_adapter_against_its_disabled_self(tiny_model_dir, toy_data_files, tmp_path):
    """LoRA with the live reference (the policy with its adapter disabled, inside DDP) in 2 processes."""
    args = [
        "train",
        "--model_name_or_path",
        tiny_model_dir,
        "--dataset_name",
        toy_data_files[0],
        "--loss_type",
        "dpo",
        "--precompute_ref_log_probs",
        "false",
        *LORA_FLAGS,
        "--lora_dropout",
        "0",  # dropout masks depend on how the batch is split
        "--max_steps",
        "4",
        "--learning_rate",
        "1e-2",
        "--logging_steps",
        "1",
        *COMMON,
    ]
    single(*args, "--per_device_train_batch_size", "8", "--output_dir", tmp_path / "one")
    log = launch(*args, "--per_device_train_batch_size", "4", "--output_dir", tmp_path / "two")
    assert_both_ranks_ran(log)
    one, two = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two"))
    assert set(one) == set(two) and any(one[name].abs().max() > 0 for name in one if "lora_B" in name)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)
    margins = [[e["rewards/margins"] for e in log_history(tmp_path / name, "loss")] for name in ("one", "two")]
    assert margins[1] == pytest.approx(margins[0], rel=1e-4, abs=1e-6) and margins[0][-1] > 0


def test_two_processes_write_the_same_weights_file_byte_for_byte(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(23, seed=4))
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    # parts of 4 rows: 6 parts, the last one short: 3 for each process
    flags = ["--rows_per_part", "4", "--batch_size", "3", "--max_length", "64"]
    single(*prompt_weights_args(tiny_model_dir, data, one, *flags))
    log = launch(*prompt_weights_args(tiny_model_dir, data, two, *flags))
    assert_both_ranks_ran(log)
    assert two.read_bytes() == one.read_bytes()
    assert len(two.read_text().splitlines()) == 23
    meta_one, meta_two = (json.loads(Path(f"{p}.meta.json").read_text()) for p in (one, two))
    assert meta_two == meta_one
    assert not Path(f"{two}.parts").exists()


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory) -> dict:
    """`tisdpo evaluate --generate --preference_metrics` on 7 held-out pairs, in 1 and in 2 processes.

    Greedy decoding one prompt at a time does the same arithmetic in any process, so the
    generations can be compared; the 2-process run reuses the reference cache of the first.
    """
    root = tmp_path_factory.mktemp("evaluate")
    data = write_jsonl(root / "heldout.jsonl", toy_pairs(7, seed=5))  # 7 pairs: 4 + 3 per process
    flags = ["--generate", "--preference_metrics", "--num_samples", "2", "--max_new_tokens", "6", "--temperature", "0"]
    flags += ["--generation_batch_size", "1", "--per_device_eval_batch_size", "4", *COMMON]
    patch = pytest.MonkeyPatch()
    patch.setenv("TISDPO_CACHE", str(root / "cache"))
    try:
        single(*evaluate_args(tiny_model_dir, tiny_model_dir, data, root / "one", *flags))
        log = launch(*evaluate_args(tiny_model_dir, tiny_model_dir, data, root / "two", *flags))
    finally:
        patch.undo()
    outputs = {"log": log}
    for name in ("one", "two"):
        outputs[name] = {
            "metrics": json.loads((root / name / "eval_results.json").read_text()),
            "records": read_jsonl(root / name / "generations.jsonl"),
        }
    return outputs


def test_two_processes_generate_every_prompt_once(evaluated):
    log, one, two = evaluated["log"], evaluated["one"], evaluated["two"]
    assert "7 prompts x 2 samples, on 2 process(es)" in log
    records = two["records"]
    assert [(r["prompt_index"], r["sample"]) for r in records] == [(i, s) for i in range(7) for s in range(2)]
    for key in ("prompt", "response", "baseline_response"):
        assert [r[key] for r in records] == [r[key] for r in one["records"]], key
    assert two["metrics"]["gen/num_prompts"] == 7
    assert two["metrics"]["gen/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is its own reference
    # the reference log-probs cached by the first run are read by both processes
    assert log.count("reusing cached reference log-probs") == 2 and "cached reference log-probs of" not in log


def test_two_processes_evaluate_an_uneven_heldout_set_exactly(evaluated):
    one, two = evaluated["one"]["metrics"], evaluated["two"]["metrics"]
    for key in ("eval_loss", "eval_logps/chosen", "eval_logps/rejected", "eval_logits/chosen"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key


def test_precompute_with_weights_sharded_at_load_scores_a_full_copy(
    tiny_model_dir, toy_data_files, tmp_path, monkeypatch
):
    """Under FSDP's CPU-RAM-efficient loading (or ZeRO-3 init) the policy holds no weights before the
    Trainer prepares it; the reference log-probs are then scored with a full copy loaded for the purpose."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import deepspeed as hf_deepspeed

    from tisdpo import reference
    from tisdpo.config import DataArguments, ModelArguments, TisdpoConfig, parse_config
    from tisdpo.data.load import load_pairs
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.errors import UserError
    from tisdpo.modeling import load_model, load_tokenizer_for, unsharded_loading, weights_materialized
    from tisdpo.reference import with_reference_logps

    flags = ["--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "out", "--report_to", "none"]
    model_args, data_args, config = parse_config([ModelArguments, DataArguments, TisdpoConfig], [str(f) for f in flags])
    tokenizer = load_tokenizer_for(model_args)
    dataset = load_pairs(toy_data_files[1], "train", data_args, PairTokenizer(tokenizer, 64), False, None)
    with torch.device("meta"):
        sharded = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    assert not weights_materialized(sharded) and weights_materialized(load_model(model_args, tiny_model_dir))
    with pytest.raises(UserError, match="sharded across processes"):
        with_reference_logps([dataset], sharded, tiny_model_dir, tokenizer, config)

    class ZeroThree:  # what transformers consults to partition parameters at load (ZeRO-3 zero.Init)
        def is_zero3(self) -> bool:
            return True

    zero3 = ZeroThree()
    hf_deepspeed.set_hf_deepspeed_config(zero3)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    seen = []

    def loading(args, name):
        seen.append((os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"], hf_deepspeed.is_deepspeed_zero3_enabled()))
        return load_model(args, name)

    monkeypatch.setattr(reference, "load_model", loading)
    try:
        monkeypatch.setenv("TISDPO_CACHE", str(tmp_path / "sharded"))
        (from_copy,) = reference.precompute_reference(model_args, tiny_model_dir, sharded, tokenizer, config, [dataset])
        assert seen == [("false", False)]  # the copy was loaded whole
        assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and hf_deepspeed.is_deepspeed_zero3_enabled()
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()
    with unsharded_loading():
        policy = load_model(model_args, tiny_model_dir)
    monkeypatch.setenv("TISDPO_CACHE", str(tmp_path / "plain"))
    (from_policy,) = reference.precompute_reference(model_args, tiny_model_dir, policy, tokenizer, config, [dataset])
    assert seen == [("false", False)]  # the policy itself was the reference: nothing more loaded
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        assert from_copy[column] == from_policy[column]
