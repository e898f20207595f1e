"""The causal-LM families the shared-prompt check is verified on: a tiny random config for each, built from the
installed transformers' config classes, and what each is expected to get.

One source for two readers: ``tests/test_model_families.py`` asserts every expectation here against the real
models, and ``scripts/model_support_table.py`` writes ``docs/models.md``'s support table from it (a test checks
the committed file is what it writes). A transformers upgrade that changes a verdict fails the matrix test.

Windows, chunks and local spans are set to ``WINDOW`` tokens: shorter than every training pair of the tests (20 to
26 tokens), so a window changes what a rejected token sees in the shared layout, and longer than every row of the
shared-prompt probe (11 tokens), so only the config check can refuse it, as for real models' windows of thousands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import transformers

WINDOW = 12
HIDDEN = 32
LAYERS = 2

# The verdicts: both fast layouts (shared prompt, and pairs packed in a row) or one padded row per response.
PACKED = "packed"
PLAIN = "plain"


@dataclass(frozen=True)
class Family:
    """One row of the matrix: a config class and the fields that make it tiny, and what the family gets."""

    name: str
    config_class: str
    fields: dict[str, Any]
    layout: str  # PACKED or PLAIN
    lora_trains: bool  # LoRA on all-linear modules trains (its adapters move)
    gguf: bool  # transformers' GGUF loader lists the architecture
    note: str = ""  # why the family keeps the plain layout
    lora_note: str = ""  # why LoRA on all-linear does not train
    reason: str = ""  # a fragment of the reason the check logs for a PLAIN family

    def config(self, vocab_size: int, special_ids: dict[str, int]) -> Any:
        config_class = getattr(transformers, self.config_class, None)
        if config_class is None:
            raise LookupError(f"transformers {transformers.__version__} has no {self.config_class}")
        return config_class(**{"vocab_size": vocab_size, **special_ids, **self.fields})


def attention_fields(**extra: Any) -> dict[str, Any]:
    """The Llama-style names of a tiny attention stack."""
    return {
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 256,
        **extra,
    }


SLIDING_TWO_LAYERS = {"sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"]}

FAMILIES: list[Family] = [
    Family("llama", "LlamaConfig", attention_fields(), PACKED, True, True),
    Family(
        "mistral",
        "MistralConfig",
        attention_fields(sliding_window=WINDOW),
        PLAIN,
        True,
        True,
        "sliding window",
        reason="sliding_window=12",
    ),
    Family("mistral (no window)", "MistralConfig", attention_fields(sliding_window=None), PACKED, True, True),
    Family(
        "gemma2",
        "Gemma2Config",
        attention_fields(head_dim=16, **SLIDING_TWO_LAYERS),
        PLAIN,
        True,
        True,
        "sliding window",
        reason="sliding_window=12",
    ),
    Family(
        "gemma3",
        "Gemma3TextConfig",
        attention_fields(head_dim=16, **SLIDING_TWO_LAYERS),
        PLAIN,
        True,
        True,
        "sliding window",
        reason="sliding_window=12",
    ),
    Family(
        "cohere2",
        "Cohere2Config",
        attention_fields(**SLIDING_TWO_LAYERS),
        PLAIN,
        True,
        False,
        "sliding window",
        reason="sliding_window=12",
    ),
    Family(
        "phi3",
        "Phi3Config",
        attention_fields(sliding_window=WINDOW),
        PLAIN,
        True,
        True,
        "sliding window",
        reason="sliding_window=12",
    ),
    Family(
        "gpt_oss",
        "GptOssConfig",
        attention_fields(head_dim=16, num_local_experts=2, num_experts_per_tok=1, **SLIDING_TWO_LAYERS),
        PLAIN,
        True,
        True,
        "sliding window",
        reason="sliding_window=12",
    ),
    Family(
        "llama4",
        "Llama4TextConfig",
        attention_fields(
            head_dim=16,
            intermediate_size_mlp=2 * HIDDEN,
            num_local_experts=2,
            attention_chunk_size=WINDOW,
            layer_types=["chunked_attention", "full_attention"],
        ),
        PLAIN,
        False,
        False,
        "chunked attention",
        lora_note="PEFT fails: 'tuple' object has no attribute 'dtype'",
        reason="attention_chunk_size=12",
    ),
    Family(
        "bloom",
        "BloomConfig",
        {"hidden_size": HIDDEN, "n_layer": LAYERS, "n_head": 2},
        PLAIN,
        True,
        True,
        "ALiBi",
        reason="takes no position_ids",
    ),
    Family(
        "mpt",
        "MptConfig",
        {"d_model": HIDDEN, "n_layers": LAYERS, "n_heads": 2, "max_seq_len": 256},
        PLAIN,
        True,
        False,
        "ALiBi",
        reason="takes no position_ids",
    ),
    Family(
        "opt",
        "OPTConfig",
        {
            "hidden_size": HIDDEN,
            "ffn_dim": 2 * HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": 2,
            "word_embed_proj_dim": HIDDEN,
            "max_position_embeddings": 256,
        },
        PACKED,
        True,
        False,
    ),
    Family(
        "gpt2", "GPT2Config", {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 2, "n_positions": 256}, PACKED, True, True
    ),
    Family(
        "gptj",
        "GPTJConfig",
        {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 2, "n_positions": 256, "rotary_dim": 8},
        PACKED,
        True,
        False,
    ),
    Family(
        "gpt_neo",
        "GPTNeoConfig",
        {
            "hidden_size": HIDDEN,
            "num_layers": LAYERS,
            "num_heads": 2,
            "max_position_embeddings": 256,
            "attention_types": [[["global", "local"], 1]],
            "window_size": WINDOW,
        },
        PLAIN,
        True,
        False,
        "local attention",
        reason="window_size=12",
    ),
    Family(
        "gpt_neox",
        "GPTNeoXConfig",
        {
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": 2,
            "max_position_embeddings": 256,
        },
        PACKED,
        True,
        False,
    ),
    Family(
        "gpt_bigcode",
        "GPTBigCodeConfig",
        {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 2, "n_positions": 256},
        PACKED,
        True,
        False,
    ),
    Family("olmo2", "Olmo2Config", attention_fields(), PACKED, True, False),
    Family("qwen3", "Qwen3Config", attention_fields(head_dim=16), PACKED, True, True),
    Family(
        "qwen3_next",
        "Qwen3NextConfig",
        attention_fields(
            head_dim=16,
            layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=2,
            linear_num_value_heads=2,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            num_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=HIDDEN,
            shared_expert_intermediate_size=HIDDEN,
        ),
        PLAIN,
        False,
        False,
        "linear attention (recurrent)",
        lora_note="PEFT refuses its expert parameters with lora_dropout != 0",
        reason="linear_conv_kernel_dim=4 (a recurrent",
    ),
    Family(
        "mamba",
        "MambaConfig",
        {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "state_size": 4},
        PLAIN,
        False,
        True,
        "state space",
        lora_note="PEFT refuses out_proj and conv1d of Mamba layers",
        reason="takes no position_ids",
    ),
    Family(
        "jamba",
        "JambaConfig",
        attention_fields(
            num_experts=2,
            num_experts_per_tok=1,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=4,
            mamba_dt_rank=4,
            use_mamba_kernels=False,
        ),
        PLAIN,
        True,
        False,
        "state space",
        reason="mamba_d_state=4 (a recurrent",
    ),
    Family(
        "falcon_h1",
        "FalconH1Config",
        attention_fields(
            head_dim=16, mamba_d_ssm=HIDDEN, mamba_n_heads=2, mamba_d_head=16, mamba_d_state=4, mamba_chunk_size=WINDOW
        ),
        PLAIN,
        False,
        False,
        "state space",
        lora_note="PEFT refuses out_proj and conv1d of Mamba layers",
        reason="mamba_d_ssm=32 (a recurrent",
    ),
    Family(
        "lfm2",
        "Lfm2Config",
        {
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 256,
            "layer_types": ["conv", "full_attention"],
        },
        PLAIN,
        True,
        True,
        "short convolutions",
        reason="conv_L_cache=3 (a recurrent",
    ),
    Family(
        "recurrent_gemma",
        "RecurrentGemmaConfig",
        attention_fields(
            head_dim=16,
            lru_width=HIDDEN,
            attention_window_size=WINDOW,
            conv1d_width=2,
            block_types=["recurrent", "attention"],
        ),
        PLAIN,
        True,
        False,
        "recurrent, local attention",
        reason="lru_width=32 (a recurrent",
    ),
    Family("qwen2", "Qwen2Config", attention_fields(), PACKED, True, True),
    Family("gemma", "GemmaConfig", attention_fields(head_dim=16), PACKED, True, False),
    Family("phi", "PhiConfig", attention_fields(), PACKED, True, False),
    Family("phi3 (no window)", "Phi3Config", attention_fields(sliding_window=None), PACKED, True, True),
    Family("starcoder2", "Starcoder2Config", attention_fields(sliding_window=None), PACKED, True, True),
    Family("smollm3", "SmolLM3Config", attention_fields(), PACKED, True, False),
    Family("granite", "GraniteConfig", attention_fields(), PACKED, True, False),
    Family("stablelm", "StableLmConfig", attention_fields(), PACKED, True, True),
    Family(
        "falcon",
        "FalconConfig",
        {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2},
        PACKED,
        True,
        True,
    ),
    Family(
        "falcon (ALiBi)",
        "FalconConfig",
        {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2, "alibi": True},
        PLAIN,
        True,
        True,
        "ALiBi",
        reason="alibi=True",
    ),
]


def families_by_name() -> dict[str, Family]:
    return {family.name: family for family in FAMILIES}


def expected_layouts() -> dict[str, str]:
    """The verdict table: family -> PACKED or PLAIN."""
    return {family.name: family.layout for family in FAMILIES}


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def support_table() -> str:
    """The markdown table of ``docs/models.md``."""
    lines = [
        "| family | config class | fast layout | why not | LoRA `all-linear` trains | GGUF loads |",
        "|---|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        layout = "shared prompt + packing" if family.layout == PACKED else "plain (fallback)"
        lora = yes_no(family.lora_trains) + (f" ({family.lora_note})" if family.lora_note else "")
        lines.append(
            f"| {family.name} | `{family.config_class}` | {layout} | {family.note or '-'} | "
            f"{lora} | {yes_no(family.gguf)} |"
        )
    return "\n".join(lines) + "\n"


ModelBuilder = Callable[[], Any]
