"""What a person sees: the libraries' per-model progress bars only with --verbose."""

from __future__ import annotations

import pytest
from conftest import run_cli, train_argv

# transformers 5 draws one of these for every model it loads or saves.
LIBRARY_BARS = ("Loading weights", "Writing model shards")


def train(model: str, data: str, out, *extra: str) -> int:
    flags = ["--loss_type", "sft", "--max_steps", "1", "--per_device_train_batch_size", "4", "--max_samples", "8"]
    flags += ["--max_length", "64", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    return run_cli(*train_argv(model, data, out, *flags, *extra))


@pytest.mark.parametrize("verbose", [False, True])
def test_library_progress_bars_only_with_verbose(tiny_model_dir, toy_data_files, tmp_path, capfd, verbose):
    import transformers

    before = transformers.utils.logging.is_progress_bar_enabled()
    flags = ["--verbose"] if verbose else []
    assert train(tiny_model_dir, toy_data_files[0], tmp_path / "out", *flags) == 0
    err = capfd.readouterr().err
    shown = [bar for bar in LIBRARY_BARS if bar in err]
    if verbose:
        assert shown == list(LIBRARY_BARS), err
    else:
        assert not shown, err
    assert transformers.utils.logging.is_progress_bar_enabled() == before  # restored after the command
