"""Structural tokens (what the chat template or tokenizer adds around a response) get weight exactly 1.

Their positions are decided by where a token's characters come from (tisdpo.data.tokenize), checked here
against the decoded tokens; the weights against the transform applied to the content tokens alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_args, prompt_weights_args, read_jsonl, run_cli, run_ok, toy_pairs, write_jsonl

from tisdpo.data.tokenize import PairTokenizer
from tisdpo.demo.factory import SPECIAL_TOKENS, train_tokenizer
from tisdpo.demo.oracle import oracle_weight_rows
from tisdpo.modeling import load_tokenizer
from tisdpo.report.heatmap import HeatmapExample, render_html
from tisdpo.weights.transforms import TRANSFORM_NAMES, WeightTransformConfig, transform_pair

SIDES = ("chosen", "rejected")
EOS = SPECIAL_TOKENS["eos_token"]


def conversation(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> str:
    rows = [conversation(r["prompt"].strip(), r["chosen"].strip(), r["rejected"].strip()) for r in toy_pairs(10, 5)]
    return str(write_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", rows))


def pieces(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


# -- which tokens are structural ------------------------------------------------------------------
def test_the_template_tokens_after_the_response_are_structural(tokenizer):
    # SIMPLE_CHAT_TEMPLATE closes a turn with EOS and a newline: those two, and nothing of the text.
    pair = PairTokenizer(tokenizer).tokenize(conversation("hello", "I am fine thank you", "why"))
    for side in SIDES:
        ids, structural = getattr(pair, f"{side}_ids"), getattr(pair, f"{side}_structural")
        assert pieces(tokenizer, ids)[-2:] == [EOS, "\n"]
        assert structural == [len(ids) - 2, len(ids) - 1]
    assert tokenizer.decode(pair.chosen_ids[:-2]) == "I am fine thank you"


def test_an_eos_spelled_inside_the_response_text_is_content(tokenizer):
    pair_tokenizer = PairTokenizer(tokenizer)
    # Plain text: the EOS that the text spells is encoded as the EOS id, yet only the appended one is format.
    plain = pair_tokenizer.tokenize({"prompt": "Human: hi Assistant:", "chosen": f" fine {EOS} ok", "rejected": " no"})
    ids = plain.chosen_ids
    spelled = [i for i, token in enumerate(ids) if token == tokenizer.eos_token_id]
    assert len(spelled) == 2 and spelled[-1] == len(ids) - 1
    assert plain.chosen_structural == [len(ids) - 1] and plain.rejected_structural == [len(plain.rejected_ids) - 1]
    # Chat: the EOS inside the message is content, the template's EOS and newline are not.
    chat = pair_tokenizer.tokenize(conversation("hello", f"fine {EOS} ok", "no"))
    ids = chat.chosen_ids
    spelled = [i for i, token in enumerate(ids) if token == tokenizer.eos_token_id]
    assert len(spelled) == 2
    assert chat.chosen_structural == [spelled[1], spelled[1] + 1] == [len(ids) - 2, len(ids) - 1]


def test_plain_text_without_a_chat_template(tmp_path):
    texts = [r["prompt"] + r["chosen"] + r["rejected"] for r in toy_pairs(50)]
    tokenizer = train_tokenizer(texts, str(tmp_path / "tok"), kind="bpe", vocab_size=300, chat_template=None)
    assert getattr(tokenizer, "chat_template", None) is None
    pair = PairTokenizer(tokenizer).tokenize(toy_pairs(1)[0])
    for side in SIDES:
        ids = getattr(pair, f"{side}_ids")
        assert ids[-1] == tokenizer.eos_token_id and getattr(pair, f"{side}_structural") == [len(ids) - 1]


def test_truncation_keeps_only_the_structural_positions_still_there(tokenizer):
    row = conversation("hello", "I am fine thank you what why", "why")
    full = PairTokenizer(tokenizer, max_length=None).tokenize(row)
    prompt_length = len(full.prompt_ids)
    cut = PairTokenizer(tokenizer, max_length=prompt_length + len(full.chosen_ids) - 1).tokenize(row)
    assert len(cut.chosen_ids) == len(full.chosen_ids) - 1  # the closing newline is cut away
    assert cut.chosen_structural == [len(cut.chosen_ids) - 1]
    assert cut.rejected_structural == full.rejected_structural


class WithoutOffsets:
    """The tokenizer seen as a slow one: no offset mapping."""

    is_fast = False

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)

    def __call__(self, text: str, **kwargs):
        assert not kwargs.get("return_offsets_mapping")
        return self._tokenizer(text, **kwargs)


def test_a_tokenizer_without_offsets_finds_the_same_positions(tokenizer):
    rows = [conversation("hello", "I am fine thank you", "why what"), conversation("hi", f"ok {EOS} fine", "a b")]
    for row in rows:
        fast = PairTokenizer(tokenizer).tokenize(row)
        slow = PairTokenizer(WithoutOffsets(tokenizer)).tokenize(row)
        assert slow.chosen_ids == fast.chosen_ids
        assert (slow.chosen_structural, slow.rejected_structural) == (fast.chosen_structural, fast.rejected_structural)


def test_a_template_that_rewrites_the_text_falls_back_to_special_tokens(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | upper")
    pair = PairTokenizer(tokenizer).tokenize(conversation("hello", "fine", "why"))
    ids = pair.chosen_ids
    assert pieces(tokenizer, ids)[-2:] == [EOS, "\n"]
    assert pair.chosen_structural == [len(ids) - 2]  # only the special token: the text was not found


# -- weights --------------------------------------------------------------------------------------
def structural_of(row: dict, side: str) -> list[int]:
    return row[f"{side}_structural_positions"]


def expected_weights(row: dict, config: WeightTransformConfig, index: int) -> tuple[list[float], list[float]]:
    """The transform of the content tokens' rewards alone, with 1.0 at the structural positions."""
    content = {side: [i for i in range(len(row[f"{side}_token_rewards"])) if i not in structural_of(row, side)]
               for side in SIDES}  # fmt: skip
    weighted = transform_pair(
        *[[row[f"{side}_token_rewards"][i] for i in content[side]] for side in SIDES], config, index
    )
    out = []
    for side, values in zip(SIDES, weighted):
        weights = [1.0] * len(row[f"{side}_token_rewards"])
        for position, value in zip(content[side], values.tolist()):
            weights[position] = value
        out.append(weights)
    return out[0], out[1]


@pytest.fixture(scope="module")
def p_file(tiny_model_dir, chat_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("p") / "p.jsonl"
    run_ok(*prompt_weights_args(tiny_model_dir, chat_file, out))
    return out


def test_p_weights_with_default_flags_are_one_on_the_template_tokens(p_file, tokenizer):
    rows = read_jsonl(p_file)
    for index, row in enumerate(rows):
        for side in SIDES:
            ids = row[f"{side}_token_ids"]
            assert structural_of(row, side) == [len(ids) - 2, len(ids) - 1]
            assert pieces(tokenizer, ids)[-2:] == [EOS, "\n"]
            assert [row[f"{side}_weights"][p] for p in structural_of(row, side)] == [1.0, 1.0]
        assert (row["chosen_weights"], row["rejected_weights"]) == expected_weights(row, WeightTransformConfig(), index)
    # the model's rewards on those tokens are kept in the file, and they are not 0
    assert any(abs(row["chosen_token_rewards"][-2]) > 1e-3 for row in rows)


@pytest.mark.parametrize("transform", TRANSFORM_NAMES)
def test_every_transform_leaves_structural_tokens_at_one(transform, p_file, tmp_path):
    out = tmp_path / "w.jsonl"
    run_ok("weights", "--from_rewards", p_file, "--weight_transform", transform, "--output_file", out)
    config = WeightTransformConfig(name=transform)
    for index, row in enumerate(read_jsonl(out)):
        for side in SIDES:
            assert {row[f"{side}_weights"][p] for p in structural_of(row, side)} == {1.0}
        assert (row["chosen_weights"], row["rejected_weights"]) == expected_weights(row, config, index)


def test_the_estimated_option_weights_structural_tokens_like_words(p_file, tmp_path):
    out = tmp_path / "w.jsonl"
    run_ok("weights", "--from_rewards", p_file, "--weight_structural", "estimated", "--output_file", out)
    rows = read_jsonl(out)
    for index, row in enumerate(rows):
        chosen, rejected = transform_pair(
            row["chosen_token_rewards"], row["rejected_token_rewards"], WeightTransformConfig(), index
        )
        assert (row["chosen_weights"], row["rejected_weights"]) == (chosen.tolist(), rejected.tolist())
    assert any(abs(row["chosen_weights"][-2] - 1.0) > 1e-3 for row in rows)
    assert json.loads(Path(str(out) + ".meta.json").read_text())["transform"]["structural"] == "estimated"


@pytest.mark.parametrize("mode", ["response", "dataset"])
def test_normalisation_averages_over_content_tokens_only(mode, p_file, tmp_path):
    out = tmp_path / "w.jsonl"
    run_ok("weights", "--from_rewards", p_file, "--weight_normalize", mode, "--output_file", out)
    rows = read_jsonl(out)
    content = []
    for row in rows:
        for side in SIDES:
            weights = row[f"{side}_weights"]
            assert {weights[p] for p in structural_of(row, side)} == {1.0}
            kept = [w for i, w in enumerate(weights) if i not in structural_of(row, side)]
            if mode == "response":
                assert np.mean(kept) == pytest.approx(1.0, abs=1e-5)
            content += kept
    assert np.mean(content) == pytest.approx(1.0, abs=1e-5)


def test_two_model_weights_are_one_on_the_template_tokens(tiny_model_dir, chat_file, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    out = tmp_path / "d.jsonl"
    models = ["--positive_model_name_or_path", tiny_model_dir, "--negative_model_name_or_path", tmp_path / "other"]
    run_ok(*cli_args("weights", *models, "--dataset_name", chat_file, "--output_file", out))
    rows = read_jsonl(out)
    for index, row in enumerate(rows):
        for side in SIDES:
            assert [row[f"{side}_weights"][p] for p in structural_of(row, side)] == [1.0, 1.0]
        assert (row["chosen_weights"], row["rejected_weights"]) == expected_weights(row, WeightTransformConfig(), index)
    assert any(abs(row["chosen_token_rewards"][-2]) > 1e-3 for row in rows)


def test_oracle_weights_leave_the_eos_at_one():
    row = {
        "chosen_true_rewards": [1.0, -1.0],
        "rejected_true_rewards": [-1.0],
        "chosen_token_ids": [5, 6, 2],
        "rejected_token_ids": [7, 2],
        "chosen_token_rewards": [0.1, 0.2, 0.3],
        "rejected_token_rewards": [0.1, 0.2],
        "chosen_structural_positions": [2],
        "rejected_structural_positions": [1],
    }
    config = WeightTransformConfig(name="rank_based")
    (weighted,) = oracle_weight_rows([row], "oracle", config)
    assert weighted["chosen_weights"] == pytest.approx([1.3, 0.7, 1.0]) and weighted["chosen_weights"][2] == 1.0
    assert weighted["rejected_weights"] == pytest.approx([1.0, 1.0])  # one content token: the midpoint; EOS 1
    (literal,) = oracle_weight_rows([row], "oracle", WeightTransformConfig(name="rank_based", structural="estimated"))
    assert literal["chosen_weights"] == pytest.approx([1.3, 0.7, 1.0])  # the EOS's reward 0 ranks in the middle
    assert literal["rejected_weights"] == pytest.approx([1.3, 0.7])  # ranked with the words: the EOS gets the minimum


def test_a_file_without_structural_positions_warns_on_rederivation(p_file, tmp_path, caplog):
    old = [{k: v for k, v in row.items() if not k.endswith("_structural_positions")} for row in read_jsonl(p_file)]
    source = write_jsonl(tmp_path / "old.jsonl", old)
    with caplog.at_level("WARNING"):
        run_ok("weights", "--from_rewards", source, "--output_file", tmp_path / "new.jsonl")
    assert "do not record their structural tokens" in caplog.text


def test_a_bad_structural_mode_is_one_line(p_file, tmp_path, capsys):
    code = run_cli("weights", "--from_rewards", p_file, "--weight_structural", "words", "--output_file", tmp_path / "x")
    err = capsys.readouterr().err
    assert code == 1 and "weight_structural" in err and "Traceback" not in err


# -- heatmaps -------------------------------------------------------------------------------------
def test_heatmaps_mark_structural_tokens(p_file, tmp_path):
    run_ok("visualize", "--weights_file", p_file, "--output_dir", tmp_path)
    page = (tmp_path / "heatmap.html").read_text(encoding="utf-8")
    rows = read_jsonl(p_file)
    marked = sum(len(structural_of(row, side)) for row in rows for side in SIDES)
    assert page.count('class="tok structural"') == marked > 0
    assert page.count("structural token (format, not content)") == marked
    example = HeatmapExample("p", ["a", EOS], [1.5, 1.0], ["b", EOS], [0.5, 1.0], chosen_structural=[1])
    render_html([example], tmp_path / "one.html")
    assert (tmp_path / "one.html").read_text().count('class="tok structural"') == 1
