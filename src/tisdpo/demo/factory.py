"""Tiny models and tokenizers made from scratch, saved and reloaded like any hub model.

Tests and the embedded demo use them so that nothing is downloaded, yet every model still goes
through ``from_pretrained`` from a ``save_pretrained`` folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}

# A minimal chat template in the style of many instruct models: role headers and an end-of-turn EOS.
SIMPLE_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str,
    kind: str = "bpe",
    vocab_size: int = 512,
    chat_template: str | None = SIMPLE_CHAT_TEMPLATE,
) -> Any:
    """Train a tokenizer with the ``tokenizers`` library and save it as a HF fast tokenizer.

    ``kind="bpe"``: byte-level BPE (any text encodes); ``kind="word"``: one token per
    whitespace-separated word (the demo task, where each word carries a known reward).
    The tokenizer prepends BOS, like Llama's.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values()) + ["<|user|>", "<|assistant|>", "<|system|>"]
    if kind == "word":
        tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1)
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r} (bpe or word)")
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_llama(
    tokenizer: Any,
    out_dir: str,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_positions: int = 1024,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> Any:
    """A randomly initialised Llama-architecture causal LM for ``tokenizer``, saved to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model
