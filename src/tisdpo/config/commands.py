"""The flags of the other commands: ``dlma generate``, ``visualize``, ``compare``, ``pipeline`` and ``demo``
(with ``demo --real``). Each is parsed by :func:`tisdpo.config.parsing.parse_config`, as the training flags are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DlmaArguments:
    output_file: str | None = field(
        default=None, metadata={"help": "Where the generated pairs go (.jsonl or .parquet)."}
    )
    positive_prompt: str = field(
        default="dlma_harmless", metadata={"help": "Preset name or text (template with {prompt}, or a system text)."}
    )
    negative_prompt: str = field(
        default="dlma_harmful", metadata={"help": "Preset name or text for the negative side."}
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Longest sampled response."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per scoring forward."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N distinct prompts."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "Column holding the prompt (default: prompt / post / the pair's prompt)."}
    )
    seed: int = field(
        default=0, metadata={"help": "Sampling seed (each process and side gets its own, derived from it)."}
    )


@dataclass
class VisualizeArguments:
    weights_file: str | None = field(default=None, metadata={"help": "A file written by `tisdpo weights`."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where heatmap.html, heatmap.png, histogram.png and summary.json go."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to decode tokens (default: the one named in the file's provenance)."}
    )
    value: Literal["weights", "rewards"] = field(
        default="weights", metadata={"help": "Colour tokens by their weight or by their raw reward r_t."}
    )
    max_examples: int = field(default=50, metadata={"help": "Examples on the HTML page."})
    png_examples: int = field(default=4, metadata={"help": "Examples in the PNG figure."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow tokenizer code from the hub."})


@dataclass
class CompareArguments:
    """``tisdpo compare RUN [RUN ...]``: ``runs`` are the positional arguments."""

    runs: list[str] = field(
        default_factory=list,
        metadata={"help": "evaluation output folders (or eval_results.json files)", "metavar": "RUN"},
    )
    output_dir: str | None = field(default=None, metadata={"help": "write compare.md and frontier.png here"})
    labels: str | None = field(default=None, metadata={"help": "comma-separated names of the runs, in order"})
    title: str | None = field(default=None, metadata={"help": "title of the plot"})


@dataclass
class PipelineArguments:
    """``tisdpo pipeline``: its ``--config`` is the recipe, not a file of flags."""

    config: str | None = field(default=None, metadata={"help": "The recipe (YAML): its stages and their flags."})
    run_dir: str | None = field(
        default=None, metadata={"help": "Where the stages' folders go (instead of the recipe's run_dir)."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Check the recipe and print the plan; run nothing."})


@dataclass
class DemoArguments:
    quick: bool = field(
        default=False,
        metadata={
            "help": "The smaller demo (the recipe's quick_overrides); with --study, the study's smoke-test "
            "variant (its plan's quick overrides: one explore seed, two confirmation seeds, about 5 min)."
        },
    )
    output_dir: str = field(default="demo_out", metadata={"help": "Where the stages and the report go."})
    dry_run: bool = field(default=False, metadata={"help": "Print the plan; run nothing."})
    real: bool = field(
        default=False,
        metadata={
            "help": "The tour on a real pretrained model and real HH dialogues instead "
            "(its flags: tisdpo demo --real --help)."
        },
    )
    study: bool = field(
        default=False,
        metadata={
            "help": "The evidence study instead: DPO and TIS-DPO with oracle/D/P weights, one training budget, "
            "four regimes, beta sweeps over seeds with a task draw per seed, every arm confirmed on fresh seeds "
            "(about an hour on 2 CPU cores, estimate printed first; resumable). Writes study.json, study.md and "
            "frontier plots."
        },
    )
    real_study: bool = field(
        default=False,
        metadata={
            "help": "The real-model study instead: SmolLM2-135M-Instruct learns to write critical reviews, VADER's "
            "compound score is the gold reward and its word valences the token oracle; DPO and TIS-DPO with "
            "oracle/D/P/random weights, 2 betas x 3 seeds, frontiers at equal KL (needs: pip install "
            "vaderSentiment; resumable; --quick: one seed and beta). Writes study.json, study.md, frontier.png "
            "and samples.jsonl."
        },
    )
    study_config: str | None = field(
        default=None,
        metadata={
            "help": "--study / --real-study: a YAML file whose keys replace the packaged plan's (e.g. fewer betas)."
        },
    )
    workers: int | None = field(
        default=None,
        metadata={"help": "--study / --real-study: runs trained side by side (default: the plan's, 2)."},
    )


@dataclass
class RealTourArguments:
    """``tisdpo demo --real``."""

    output_dir: str = field(default="real_demo_out", metadata={"help": "Where the stages and the report go."})
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Anthropic HH dialogues, hh-rlhf-harmless-base-test.jsonl.gz (when not given: the one in "
            "../shared/data/ beside the project)."
        },
    )
    dry_run: bool = field(default=False, metadata={"help": "Print the plan; run nothing."})
