"""Token heatmaps: token pieces, the HTML page, PNG rendering and summary statistics."""

from __future__ import annotations

import math
import os
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest

from tisdpo.report.heatmap import (
    HeatmapExample,
    render_histogram_png,
    render_html,
    render_png,
    summary_statistics,
    token_pieces,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------------- token_pieces


class JoinTokenizer:
    """decode() concatenates vocabulary strings; '<s>' is special."""

    def __init__(self, vocab: list[str], rewrite: tuple[str, str] | None = None) -> None:
        self.vocab = vocab
        self.rewrite = rewrite

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text = "".join(self.vocab[i] for i in ids if not (skip_special_tokens and self.vocab[i] == "<s>"))
        if self.rewrite:
            text = text.replace(*self.rewrite)
        return text


class ByteTokenizer:
    """Byte-level vocabulary: incomplete UTF-8 decodes to U+FFFD, as in byte-level BPE."""

    def __init__(self, vocab: list[bytes]) -> None:
        self.vocab = vocab

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")


def test_token_pieces_join_to_text_and_keep_special_tokens():
    vocab = ["<s>", "Hello", " world", "\n", "!"]
    tokenizer = JoinTokenizer(vocab)
    ids = [0, 1, 2, 3, 4, 2]
    pieces = token_pieces(tokenizer, ids)
    assert pieces == ["<s>", "Hello", " world", "\n", "!", " world"]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert token_pieces(tokenizer, []) == []


def test_token_pieces_hold_back_incomplete_characters():
    tokenizer = ByteTokenizer([b"caf", b"\xc3", b"\xa9", b"!"])
    pieces = token_pieces(tokenizer, [0, 1, 2, 3])
    assert pieces == ["caf", "", "\u00e9", "!"]
    assert "".join(pieces) == "caf\u00e9!"
    # an incomplete character at the very end is still emitted
    assert token_pieces(tokenizer, [0, 1]) == ["caf", "\ufffd"]


def test_token_pieces_fall_back_when_prefix_property_fails():
    tokenizer = JoinTokenizer(["a", "b", "c"], rewrite=("ab", "X"))
    assert token_pieces(tokenizer, [0, 1, 2]) == ["a", "b", "c"]


# ----------------------------------------------------------------------------- fixtures


def make_examples() -> list[HeatmapExample]:
    return [
        HeatmapExample(
            prompt="Human: what is <script>alert(1)</script> & co?\nAssistant:",
            chosen_tokens=["Hi", " <script>", " &", "\n", "bye"],
            chosen_values=[1.0, 2.0, 0.5, 1.25, 0.75],
            rejected_tokens=["No", "\n\n", " way"],
            rejected_values=[1.5, 1.0, 0.5],
            title="A & B <i>",
            chosen_rewards=[0.0, 0.7, -0.7, 0.2, -0.3],
            rejected_rewards=[-0.4, 0.0, 0.7],
        ),
        HeatmapExample(
            prompt="second",
            chosen_tokens=["ok"],
            chosen_values=[1.0],
            rejected_tokens=[],
            rejected_values=[],
        ),
    ]


class TokenSpans(HTMLParser):
    """Collects (class, style, title, text) of every span whose class contains 'tok'."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, str]] = []
        self.depth = 0  # nesting depth inside the current token span

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if self.depth:
            self.depth += tag == "span"
            if tag == "br":
                self.spans[-1]["text"] += "\n"
        elif tag == "span" and "tok" in (attributes.get("class") or "").split():
            self.spans.append({**attributes, "text": ""})
            self.depth = 1

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if self.depth and tag == "span":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.spans[-1]["text"] += data


# ----------------------------------------------------------------------------- HTML


def test_render_html_is_self_contained_and_escaped(tmp_path):
    path = tmp_path / "out" / "page.html"
    examples = make_examples()
    render_html(examples, path)
    assert os.listdir(path.parent) == ["page.html"]  # no temp file left behind
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page and "&amp; co?" in page
    assert "A &amp; B &lt;i&gt;" in page
    assert "http" not in page.lower()
    assert "<link" not in page and "@import" not in page and "url(" not in page

    parser = TokenSpans()
    parser.feed(page)
    tokens = [t for e in examples for t in e.chosen_tokens + e.rejected_tokens]
    values = [v for e in examples for v in e.chosen_values + e.rejected_values]
    assert len(parser.spans) == len(tokens) == page.count('class="tok')
    for span, token, value in zip(parser.spans, tokens, values):
        assert span["title"].startswith(repr(token))
        assert f"weight = {value:.4g}" in span["title"]
        # newlines are shown as a visible arrow followed by a line break
        assert span["text"] == token.replace("\n", "\u21b5\n")
    assert "reward = 0.7" in parser.spans[1]["title"]
    assert "reward" not in parser.spans[-1]["title"]  # second example has no rewards
    assert "(empty response)" in page
    assert "\u21b5" in page and "<br>" in page


def test_render_html_colours_and_legend(tmp_path):
    example = HeatmapExample("p", ["a", "b", "c"], [0.5, 1.0, 1.5], ["d"], [1.0])
    path = tmp_path / "page.html"
    render_html([example], path)
    parser = TokenSpans()
    parser.feed(path.read_text(encoding="utf-8"))
    backgrounds = [span["style"].split(";")[0] for span in parser.spans]
    assert backgrounds == [
        "background:#2166ac",  # center - max deviation: full blue
        "background:#ffffff",  # center (1.0 for weights): white
        "background:#b2182b",  # center + max deviation: full red
        "background:#ffffff",
    ]
    page = path.read_text(encoding="utf-8")
    assert "<span>0.5</span><span>1</span><span>1.5</span>" in page

    # a non-weight label centres on 0; an explicit center wins
    render_html([example], path, value_label="reward")
    assert "<span>-1.5</span><span>0</span>" in path.read_text(encoding="utf-8")
    render_html([example], path, center=0.75)
    assert "<span>0</span><span>0.75</span><span>1.5</span>" in path.read_text(encoding="utf-8")


def test_render_html_rejects_mismatched_lengths(tmp_path):
    bad = HeatmapExample("p", ["a", "b"], [1.0], [], [], title="t")
    with pytest.raises(ValueError, match="2 chosen tokens but 1 chosen values"):
        render_html([bad], tmp_path / "x.html")
    bad = HeatmapExample("p", ["a"], [1.0], [], [], chosen_rewards=[0.1, 0.2])
    with pytest.raises(ValueError, match="1 chosen tokens but 2 chosen rewards"):
        render_html([bad], tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


# ----------------------------------------------------------------------------- PNG


def test_render_png_writes_an_image(tmp_path):
    many = make_examples() * 3
    one = tmp_path / "one.png"
    four = tmp_path / "four.png"
    render_png(many[:1], one)
    render_png(many, four)  # max_examples=4 caps it
    for path in (one, four):
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        image = matplotlib.image.imread(path)
        height, width = image.shape[:2]
        assert 800 <= width <= 2000 and 150 <= height <= 4000
        assert float(np.std(image[..., :3])) > 0.01  # not blank
    assert matplotlib.image.imread(four).shape[0] > matplotlib.image.imread(one).shape[0]
    assert sorted(os.listdir(tmp_path)) == ["four.png", "one.png"]


def test_render_png_handles_odd_text_and_empty_input(tmp_path):
    odd = HeatmapExample(
        prompt="$x$ costs $5 " * 20,
        chosen_tokens=["x" * 300, "", "\t$a_b$", "\u4e2d\u6587"],
        chosen_values=[1.0, float("nan"), 1.2, 0.9],
        rejected_tokens=[" line\n"] * 40,
        rejected_values=[1.0] * 40,
    )
    path = tmp_path / "odd.png"
    render_png([odd], path, value_label="reward")
    assert path.read_bytes().startswith(PNG_MAGIC)
    render_png([], path)
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_render_histogram_png(tmp_path):
    path = tmp_path / "hist.png"
    render_histogram_png(make_examples(), path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert matplotlib.image.imread(path).shape[1] > 500
    render_histogram_png([], path)
    assert path.read_bytes().startswith(PNG_MAGIC)


# ----------------------------------------------------------------------------- statistics


def test_summary_statistics_by_hand():
    examples = [
        HeatmapExample(
            prompt="p",
            chosen_tokens=[" safe", " the", "\n"],
            chosen_values=[1.0, 2.0, 0.5],
            rejected_tokens=[" harm", " the"],
            rejected_values=[1.5, 0.5],
            chosen_rewards=[0.4, -0.1, 3.0],
        ),
        HeatmapExample(
            prompt="q",
            chosen_tokens=[" safe"],
            chosen_values=[1.5],
            rejected_tokens=[" harm", "harm ", "!"],
            rejected_values=[1.0, 1.0, 2.0],
            chosen_rewards=[0.2],
        ),
    ]
    stats = summary_statistics(examples)

    chosen = stats["chosen"]  # values 1, 2, 0.5, 1.5
    assert chosen["count"] == 4
    assert chosen["mean"] == pytest.approx(1.25)
    assert chosen["std"] == pytest.approx(math.sqrt(1.25 / 4))  # population std
    assert (chosen["min"], chosen["max"]) == (0.5, 2.0)
    edges = chosen["histogram"]["edges"]
    assert len(edges) == 21 and edges[0] == 0.5 and edges[-1] == 2.0
    expected_counts = [0] * 20
    for bin_index in (0, 6, 13, 19):  # 0.5, 1.0, 1.5, 2.0 with bin width 0.075
        expected_counts[bin_index] = 1
    assert chosen["histogram"]["counts"] == expected_counts

    rejected = stats["rejected"]  # values 1.5, 0.5, 1, 1, 2
    assert rejected["count"] == 5
    assert rejected["mean"] == pytest.approx(1.2)
    assert rejected["std"] == pytest.approx(math.sqrt(1.3 / 5))
    assert sum(rejected["histogram"]["counts"]) == 5

    # chosen: every example has rewards -> rewards are ranked; "\n" strips to nothing, skipped.
    # Fewer than 15 tokens occur twice, so tokens seen once are included.
    top = stats["top_tokens"]["chosen"]
    assert top["source"] == "rewards"
    assert top["highest"] == [
        {"token": "safe", "mean": pytest.approx(0.3), "count": 2},
        {"token": "the", "mean": pytest.approx(-0.1), "count": 1},
    ]
    assert [row["token"] for row in top["lowest"]] == ["the", "safe"]

    top = stats["top_tokens"]["rejected"]  # no rewards -> values; " harm" and "harm " merge
    assert top["source"] == "values"
    assert [(r["token"], r["count"]) for r in top["highest"]] == [("!", 1), ("harm", 3), ("the", 1)]
    assert top["highest"][1]["mean"] == pytest.approx(3.5 / 3)
    assert [row["token"] for row in top["lowest"]] == ["the", "harm", "!"]


def test_top_tokens_prefer_repeated_tokens_and_cap_at_15():
    tokens = [f" w{i}" for i in range(20)] * 2 + [" rare_high", " rare_low"]
    values = [float(i) for i in range(20)] * 2 + [100.0, -100.0]
    example = HeatmapExample("p", tokens, values, [], [])
    top = summary_statistics([example])["top_tokens"]["chosen"]
    assert len(top["highest"]) == len(top["lowest"]) == 15
    assert [row["token"] for row in top["highest"][:3]] == ["w19", "w18", "w17"]
    assert [row["token"] for row in top["lowest"][:3]] == ["w0", "w1", "w2"]
    assert all(row["count"] == 2 for row in top["highest"] + top["lowest"])


def test_summary_statistics_empty_side():
    stats = summary_statistics([HeatmapExample("p", ["a"], [1.0], [], [])])
    assert stats["rejected"]["count"] == 0 and stats["rejected"]["mean"] is None
    assert stats["rejected"]["histogram"] == {"edges": [], "counts": []}
    assert stats["top_tokens"]["rejected"]["highest"] == []
