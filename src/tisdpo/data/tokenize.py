"""The one tokenization path, shared by training, evaluation and token-weight scoring.

A pair is tokenized as ``prompt_ids`` followed by each response's ``completion ids``:

* plain text: the prompt is encoded with the tokenizer's BOS (if it normally adds one) and each
  response is encoded on its own, with EOS appended, so the seam never merges prompt and
  response characters into one token and the completion ids do not depend on the prompt;
* conversational: the chat template renders the prompt (with the generation prompt) and the whole
  conversation; the completion is the text the conversation adds after the prompt, encoded
  without special tokens (the template already closes the turn).

Truncation keeps the end of the prompt (``max_prompt_length``) and the start of each completion
(``max_length``). A pair left with no completion token on either side is dropped, never trained
as a NaN.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tisdpo.data.formats import is_conversation
from tisdpo.errors import UserError


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # completion tokens as trained (after truncation)
    rejected_ids: list[int]
    chosen_full_ids: list[int]  # completion tokens before truncation
    rejected_full_ids: list[int]


@dataclass(frozen=True)
class RenderedPair:
    prompt: str
    chosen: str
    rejected: str
    chat: bool


class PairTokenizer:
    """Renders and encodes preference pairs the same way everywhere."""

    def __init__(self, tokenizer: Any, max_length: int | None = 512, max_prompt_length: int | None = 256) -> None:
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer has no EOS token; set one (tokenizer.eos_token) before training")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        bos = tokenizer.bos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.bos_id: int | None = bos if bos is not None and probe[:1] == [bos] else None

    # -- rendering (text level) -------------------------------------------------------------
    def _chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise UserError(
                "conversational data needs a tokenizer with a chat template (tokenizer.chat_template is empty)"
            )
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def render(self, row: dict[str, Any]) -> RenderedPair:
        """Text of the prompt and of each completion, exactly as they will be encoded."""
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        if not is_conversation(chosen):
            return RenderedPair(prompt, chosen, rejected, chat=False)
        prompt_text = self._chat(prompt, add_generation_prompt=True)
        completions = []
        for response in (chosen, rejected):
            full = self._chat(prompt + response, add_generation_prompt=False)
            if not full.startswith(prompt_text):
                raise UserError(
                    "the chat template renders the prompt differently inside the full conversation; cannot split prompt and response"
                )
            completions.append(full[len(prompt_text) :])
        return RenderedPair(prompt_text, completions[0], completions[1], chat=True)

    # -- encoding ---------------------------------------------------------------------------
    def encode_prompt(self, text: str, chat: bool) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not chat and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        if not ids:
            # The first response token needs something to be predicted from.
            ids = [self.bos_id if self.bos_id is not None else self.tokenizer.eos_token_id]
        return ids

    def encode_completion(self, text: str, chat: bool) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids if chat else ids + [self.tokenizer.eos_token_id]

    def truncate_prompt(self, ids: list[int]) -> list[int]:
        limit = self.max_prompt_length
        if limit is None or len(ids) <= limit:
            return ids
        if self.bos_id is not None and ids[:1] == [self.bos_id] and limit > 1:
            return [self.bos_id] + ids[len(ids) - limit + 1 :]
        return ids[len(ids) - limit :]

    def completion_budget(self, prompt_ids: list[int]) -> int | None:
        return None if self.max_length is None else self.max_length - len(prompt_ids)

    def tokenize(self, row: dict[str, Any]) -> TokenizedPair | None:
        """Tokenize one normalized row; None when truncation leaves a side without completion tokens."""
        rendered = self.render(row)
        return self.tokenize_rendered(rendered)

    def tokenize_rendered(self, rendered: RenderedPair) -> TokenizedPair | None:
        prompt_ids = self.truncate_prompt(self.encode_prompt(rendered.prompt, rendered.chat))
        chosen = self.encode_completion(rendered.chosen, rendered.chat)
        rejected = self.encode_completion(rendered.rejected, rendered.chat)
        budget = self.completion_budget(prompt_ids)
        chosen_kept = chosen if budget is None else chosen[: max(budget, 0)]
        rejected_kept = rejected if budget is None else rejected[: max(budget, 0)]
        if not chosen_kept or not rejected_kept:
            return None
        return TokenizedPair(prompt_ids, chosen_kept, rejected_kept, chosen, rejected)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary and special tokens: two tokenizers with the same one encode alike."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "class": type(tokenizer).__name__,
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
