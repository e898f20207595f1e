"""Formats, the prompt/response seam, truncation, and weight / token-id validation."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import HH_TEST_FILE, write_jsonl

from tisdpo.data.formats import (
    FormatOptions,
    RawRecords,
    load_preference_rows,
    normalize_row,
    split_implicit_prompt,
)
from tisdpo.data.prepare import prepare_pairs
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.errors import UserError
from tisdpo.modeling import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def normalize(row, **options):
    return normalize_row(row, FormatOptions(**options), "data.jsonl", "line 1")


def test_standard_row_passes_through_with_extras():
    row = normalize({"prompt": "Q", "chosen": " a", "rejected": " b", "chosen_weights": [1.0]})
    assert (row["prompt"], row["chosen"], row["rejected"], row["chosen_weights"]) == (
        "Q",
        " a",
        " b",
        [1.0],
    )


def test_implicit_prompt_hh_dialogue_cut_after_last_assistant_tag():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: Sure, here you go."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: Sure? No."
    prompt, c, r = split_implicit_prompt(chosen, rejected)
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant:"
    assert (c, r) == (" Sure, here you go.", " Sure? No.")


def test_implicit_prompt_without_tag_splits_at_whitespace():
    prompt, c, r = split_implicit_prompt("the cat sat", "the cow ran")
    assert (prompt, c, r) == ("the", " cat sat", " cow ran")


def test_implicit_conversational_prompt():
    user = {"role": "user", "content": "hi"}
    chosen = [user, {"role": "assistant", "content": "hello"}]
    rejected = [user, {"role": "assistant", "content": "go away"}]
    row = normalize({"chosen": chosen, "rejected": rejected})
    assert row["prompt"] == [user]
    assert row["chosen"] == [{"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize("key,chosen", [("better", "B"), ("safer", "A")])
def test_pku_saferlhf_rows(key, chosen):
    row = {
        "prompt": "q",
        "response_0": "A",
        "response_1": "B",
        "better_response_id": 1,
        "safer_response_id": 0,
    }
    out = normalize(row, preference_key=key)
    assert out["chosen"] == chosen and out["rejected"] == ("A" if chosen == "B" else "B")


def test_reverse_swaps_every_paired_column():
    row = {
        "prompt": "q",
        "chosen": "c",
        "rejected": "r",
        "chosen_weights": [1],
        "rejected_weights": [2],
        "chosen_token_ids": [3],
    }
    out = normalize(row, reverse=True)
    assert (out["chosen"], out["rejected"], out["chosen_weights"], out["rejected_weights"]) == (
        "r",
        "c",
        [2],
        [1],
    )
    assert out["rejected_token_ids"] == [3] and "chosen_token_ids" not in out


def test_prompt_template_applies_to_text_prompts():
    out = normalize(
        {"prompt": "how?", "chosen": " a", "rejected": " b"},
        prompt_template="\n\nHuman: {prompt}\n\nAssistant:",
    )
    assert out["prompt"] == "\n\nHuman: how?\n\nAssistant:"


@pytest.mark.parametrize(
    "row,message",
    [
        ({"prompt": "q", "rejected": "b"}, "field 'chosen': is missing"),
        ({"prompt": "q", "chosen": None, "rejected": "b"}, "field 'chosen': is missing or null"),
        (
            {"prompt": "q", "chosen": "   ", "rejected": "b"},
            "field 'chosen': is empty or whitespace only",
        ),
        (
            {
                "prompt": "q",
                "chosen": [{"role": "bot", "content": "x"}],
                "rejected": [{"role": "assistant", "content": "y"}],
            },
            "unknown role 'bot'",
        ),
        (
            {"prompt": "q", "response_0": "a", "response_1": "b", "better_response_id": 2},
            "expected 0 or 1",
        ),
    ],
)
def test_bad_rows_name_file_line_and_field(row, message):
    with pytest.raises(UserError) as err:
        normalize(row)
    assert err.value.format().startswith("data.jsonl:line 1")
    assert message in err.value.format()


def test_not_json_line_reports_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{not json}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:line 2: not valid JSON"):
        load_preference_rows(str(path))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_preference_rows(str(tmp_path / "nope.jsonl"))


def test_plain_text_gets_bos_prompt_and_eos_completion(tokenizer):
    pair = PairTokenizer(tokenizer).tokenize(
        {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " safe kind", "rejected": " rude"}
    )
    assert pair.prompt_ids[0] == tokenizer.bos_token_id
    assert pair.chosen_ids[-1] == tokenizer.eos_token_id and pair.rejected_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(pair.prompt_ids + pair.chosen_ids) == "<s>\n\nHuman: hi\n\nAssistant: safe kind</s>"
    # completion ids do not depend on the prompt: the same response under another prompt encodes alike
    other = PairTokenizer(tokenizer).tokenize(
        {"prompt": "something else entirely", "chosen": " safe kind", "rejected": " rude"}
    )
    assert other.chosen_ids == pair.chosen_ids


def test_chat_template_seam(tokenizer):
    row = {
        "prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello"}],
        "chosen": [{"role": "assistant", "content": "hi there"}],
        "rejected": [{"role": "assistant", "content": "go"}],
    }
    pair_tokenizer = PairTokenizer(tokenizer)
    rendered = pair_tokenizer.render(row)
    assert rendered.prompt.endswith("<|assistant|>\n") and rendered.chosen == "hi there</s>\n"
    pair = pair_tokenizer.tokenize(row)
    full = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    assert tokenizer.decode(pair.prompt_ids + pair.chosen_ids) == full
    assert pair.prompt_ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, not a second one


def test_truncation_keeps_prompt_end_and_completion_start(tokenizer):
    row = {
        "prompt": "one two three four five six seven eight",
        "chosen": " safe kind helpful careful",
        "rejected": " rude",
    }
    full = PairTokenizer(tokenizer, max_length=None, max_prompt_length=None).tokenize(row)
    cut = PairTokenizer(tokenizer, max_length=8, max_prompt_length=5).tokenize(row)
    assert cut.prompt_ids == [tokenizer.bos_token_id] + full.prompt_ids[-4:]
    assert cut.chosen_ids == full.chosen_ids[:3]
    assert cut.rejected_ids == full.rejected_ids[:3]
    assert cut.chosen_full_ids == full.chosen_ids


def test_pair_without_room_for_completion_is_dropped_and_counted(tokenizer, caplog):
    rows = [
        {"prompt": "one two three four five six", "chosen": " a", "rejected": " b"},
        {"prompt": "hi", "chosen": " a", "rejected": " b"},
    ]
    records = RawRecords(rows, "x.jsonl", ["line 1", "line 2"])
    prepared = prepare_pairs(rows, records, PairTokenizer(tokenizer, max_length=5, max_prompt_length=None))
    assert prepared.dropped_indices == [0] and prepared.columns["index"] == [1]
    assert "dropped 1 of 2" in caplog.text
    with pytest.raises(UserError, match="no pair left after truncation"):
        prepare_pairs(rows[:1], records, PairTokenizer(tokenizer, max_length=5, max_prompt_length=None))


def weighted_row(tokenizer, **overrides):
    pair = PairTokenizer(tokenizer).tokenize({"prompt": "q", "chosen": " safe kind", "rejected": " rude"})
    row = {
        "prompt": "q",
        "chosen": " safe kind",
        "rejected": " rude",
        "chosen_weights": [1.0] * len(pair.chosen_ids),
        "rejected_weights": [0.5] * len(pair.rejected_ids),
        "chosen_token_ids": pair.chosen_ids,
    }
    row.update(overrides)
    return row


def prepare_one(tokenizer, row, **kwargs):
    return prepare_pairs(
        [row],
        RawRecords([row], "w.jsonl", ["line 7"]),
        PairTokenizer(tokenizer),
        need_weights=True,
        **kwargs,
    )


def test_weights_are_kept_per_completion_token(tokenizer):
    prepared = prepare_one(tokenizer, weighted_row(tokenizer))
    assert prepared.columns["chosen_weights"][0] == [1.0] * len(prepared.columns["chosen_input_ids"][0])


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"chosen_weights": [1.0]},
            "w.jsonl:line 7 field 'chosen_weights': has 1 weights but the completion has",
        ),
        ({"rejected_weights": [float("nan")] * 2}, "field 'rejected_weights': weight 0 is nan"),
        (
            {"chosen_token_ids": [5, 5, 5]},
            "field 'chosen_token_ids': token ids differ from this tokenizer's",
        ),
        ({"rejected_weights": None}, "field 'rejected_weights': is missing"),
    ],
)
def test_weight_and_id_errors_name_the_example(tokenizer, change, message):
    row = weighted_row(tokenizer, **change)
    if change.get("rejected_weights") == [float("nan")] * 2:
        row["rejected_weights"] = [float("nan")] * len(PairTokenizer(tokenizer).tokenize(row).rejected_ids)
    with pytest.raises(UserError) as err:
        prepare_one(tokenizer, row)
    assert message in err.value.format()


def test_negative_weights_refused_for_tisdpo(tokenizer):
    row = weighted_row(tokenizer)
    row["chosen_weights"] = [-1.0] * len(row["chosen_weights"])
    with pytest.raises(UserError, match="negative"):
        prepare_one(tokenizer, row)
    assert prepare_one(tokenizer, row, require_nonnegative_weights=False).columns["chosen_weights"][0][0] == -1.0


def test_weights_for_full_completion_are_truncated_with_it(tokenizer):
    row = weighted_row(tokenizer)
    row["chosen_weights"] = [float(i) for i in range(len(row["chosen_weights"]))]
    prepared = prepare_pairs(
        [row],
        RawRecords([row], "w", ["line 1"]),
        PairTokenizer(tokenizer, max_length=4, max_prompt_length=None),
        need_weights=True,
    )
    kept = len(prepared.columns["chosen_input_ids"][0])
    assert prepared.columns["chosen_weights"][0] == [float(i) for i in range(kept)]


def test_loading_jsonl_gz_and_parquet(tmp_path):
    rows = [{"prompt": "q", "chosen": " a", "rejected": " b"}]
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(rows[0]) + "\n")
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    write_jsonl(tmp_path / "d.jsonl", rows)
    for name in ("d.jsonl.gz", "d.parquet", "d.jsonl"):
        _, loaded = load_preference_rows(str(tmp_path / name))
        assert loaded[0]["chosen"] == " a"


@pytest.mark.skipif(not HH_TEST_FILE.exists(), reason="../shared/data is absent")
def test_real_hh_dialogues_split_and_tokenize_at_the_seam(tokenizer):
    with pytest.raises(
        UserError,
        match=r"line 87 field 'chosen': is empty or whitespace only .*--skip_empty_responses",
    ):
        load_preference_rows(str(HH_TEST_FILE), max_samples=200)
    records, rows = load_preference_rows(str(HH_TEST_FILE), max_samples=200, skip_empty_responses=True)
    assert len(rows) == 199  # line 87's chosen response is empty in the published data
    pair_tokenizer = PairTokenizer(tokenizer, max_length=None, max_prompt_length=None)
    raws = [raw for raw in records.rows if raw["chosen"] != records.rows[86]["chosen"]]
    for raw, row in zip(raws, rows):
        assert row["prompt"].endswith("\n\nAssistant:")
        assert row["prompt"] + row["chosen"] == raw["chosen"] and row["prompt"] + row["rejected"] == raw["rejected"]
        pair = pair_tokenizer.tokenize(row)
        text = tokenizer.decode(pair.prompt_ids + pair.chosen_ids)
        assert text == "<s>" + raw["chosen"] + "</s>"


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json", "d.json.gz"])
def test_utf8_bom_at_the_start_of_a_file_loads(name, tmp_path):
    rows = [{"prompt": "q", "chosen": " a", "rejected": " b"}, {"prompt": "r", "chosen": " c", "rejected": " d"}]
    text = (
        json.dumps(rows) if ".json." in name or name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in rows)
    )
    data = b"\xef\xbb\xbf" + text.encode("utf-8")  # what spreadsheet and Windows exports write
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    records, loaded = load_preference_rows(str(path))
    assert [row["prompt"] for row in loaded] == ["q", "r"] and list(records.rows[0]) == ["prompt", "chosen", "rejected"]


def test_reverse_negates_the_dlma_score():
    row = {"prompt": "q", "chosen": " a", "rejected": " b", "dlma_score": 2.5}
    assert normalize(row, reverse=True)["dlma_score"] == -2.5
    assert normalize(row)["dlma_score"] == 2.5


def test_reversed_pairs_train_with_the_negated_dlma_score(tokenizer):
    rows = [{"prompt": "q", "chosen": " safe", "rejected": " rude", "dlma_score": 3.0}]
    records = RawRecords(rows, "d.jsonl", ["line 1"])
    reversed_rows = [{**normalize(rows[0], reverse=True), "source_index": 0}]
    prepared = prepare_pairs(reversed_rows, records, PairTokenizer(tokenizer))
    assert prepared.columns["dlma_score"] == [-3.0]
    assert prepared.columns["chosen_input_ids"][0] == PairTokenizer(tokenizer).tokenize(rows[0]).rejected_ids
