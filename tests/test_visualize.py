"""`tisdpo visualize` on a real weights file: a page with one coloured span per token, PNGs, statistics."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from conftest import prompt_weights_args, read_jsonl, toy_pairs, write_jsonl

from tisdpo.cli import main


class SpanCounter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.titled_spans = 0
        self.external = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "title" in attrs and "background" in (attrs.get("style") or ""):
            self.titled_spans += 1
        for key in ("src", "href"):
            if attrs.get(key, "").startswith("http"):
                self.external.append(attrs[key])


def test_visualize_weights_file(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(5, seed=9))
    weights = tmp_path / "w.jsonl"
    assert main(prompt_weights_args(tiny_model_dir, data, weights)) == 0
    out = tmp_path / "vis"
    assert main(["visualize", "--weights_file", str(weights), "--output_dir", str(out)]) == 0
    rows = read_jsonl(weights)

    parser = SpanCounter()
    parser.feed((out / "heatmap.html").read_text())
    assert parser.titled_spans == sum(len(r["chosen_token_ids"]) + len(r["rejected_token_ids"]) for r in rows)
    assert parser.external == []

    import matplotlib.image

    for name in ("heatmap.png", "histogram.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01  # not a blank canvas

    summary = json.loads((out / "summary.json").read_text())
    chosen = np.concatenate([r["chosen_weights"] for r in rows])
    assert summary["chosen"]["count"] == len(chosen)
    assert abs(summary["chosen"]["mean"] - chosen.mean()) < 1e-6


def test_visualize_needs_a_weights_file(tiny_model_dir, tmp_path, capsys):
    plain = write_jsonl(tmp_path / "plain.jsonl", toy_pairs(2))
    args = ["visualize", "--weights_file", str(plain), "--output_dir", str(tmp_path / "o")]
    assert main(args) == 1
    assert "no tokenizer named in the file's provenance; pass --tokenizer_name_or_path" in capsys.readouterr().err
    assert main([*args, "--tokenizer_name_or_path", tiny_model_dir]) == 1
    assert "plain.jsonl:line 1 field 'chosen_token_ids': is missing" in capsys.readouterr().err
    assert not Path(tmp_path / "o" / "heatmap.html").exists()
