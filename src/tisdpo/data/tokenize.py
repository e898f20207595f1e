"""The one tokenization path, shared by training, evaluation and token-weight scoring.

A pair is tokenized as ``prompt_ids`` followed by each response's ``completion ids``:

* plain text: the prompt is encoded with the tokenizer's BOS (if it normally adds one) and each
  response is encoded on its own, with EOS appended, so the seam never merges prompt and
  response characters into one token and the completion ids do not depend on the prompt;
* conversational: the chat template renders the prompt (with the generation prompt) and the whole
  conversation; the completion is the text the conversation adds after the prompt, encoded
  without special tokens (the template already closes the turn).

**Structural tokens.** Some completion tokens are format, not content: what the chat template adds
around the response text (end-of-turn marker, the newline after it, role headers that fall inside the
completion) and the EOS appended to plain text. ``TokenizedPair.chosen_structural`` /
``rejected_structural`` list their positions, decided by where each token's characters come from, not
by its id: a token that covers any character of the response text is content, even when its id is the
EOS (a response may spell it). Token weights give these positions weight 1 (docs/method.md, "Structural
tokens").

Truncation keeps the end of the prompt (``max_prompt_length``) and the start of each completion
(``max_length``). A pair left with no completion token on either side is dropped, never trained
as a NaN.

A scoring context under a contrastive prompt (TIS-DPO(P), DLMA) wraps the user's prompt in a
contrastive text. Only the user's prompt is ever cut, to the same ``max_prompt_length`` as for
training, and the contrastive text is added whole afterwards, so such a context is at most
``max_prompt_length`` plus the contrastive text long: plain text keeps the end of the prompt (cut at
the trainer's token boundary); a conversation keeps its system messages and drops its oldest turns,
then the start of its first kept message. The completion ids are the trainer's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tisdpo.data.formats import is_conversation
from tisdpo.errors import UserError
from tisdpo.utils import digest


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # completion tokens as trained (after truncation)
    rejected_ids: list[int]
    chosen_full_ids: list[int]  # completion tokens before truncation
    rejected_full_ids: list[int]
    prompt_cut: bool = False  # the prompt was longer than max_prompt_length and lost its start
    chosen_structural: list[int] = field(default_factory=list)  # positions in chosen_ids that are format
    rejected_structural: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class PromptContext:
    """Prompt ids of a scoring context under a contrastive prompt."""

    ids: list[int]
    cut: bool  # the user's prompt was longer than max_prompt_length and lost its start


# Turns a user's prompt (text or messages) into the prompt a contrastive model sees (ContrastivePrompt.apply).
PromptWrapper = Callable[[Any], Any]


# Character spans [start, end) of the response text inside a rendered completion.
Spans = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RenderedPair:
    prompt: str
    chosen: str
    rejected: str
    chat: bool
    # Chat only: where the response text stands in each completion (None: not found in the rendering).
    chosen_content: Spans | None = None
    rejected_content: Spans | None = None


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
        return RenderedPair(
            prompt_text,
            completions[0],
            completions[1],
            chat=True,
            chosen_content=content_spans(completions[0], chosen),
            rejected_content=content_spans(completions[1], rejected),
        )

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

    def structural_positions(self, text: str, content: Spans | None, ids: list[int], chat: bool) -> list[int]:
        """Positions of ``ids`` (``encode_completion(text, chat)``) that cover no character of the response
        text, whose spans in ``text`` are ``content``. Plain text: the appended EOS only. A chat template
        that changes the response text beyond trimming (``content`` None): the special tokens."""
        if not chat:
            return [len(ids) - 1]
        if content is None:
            special = set(self.tokenizer.all_special_ids)
            return [position for position, token in enumerate(ids) if token in special]
        if self.tokenizer.is_fast:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        else:
            offsets = self._prefix_offsets(text, content, len(ids))
        return [
            position
            for position, (start, end) in enumerate(offsets)
            if not any(start < span_end and end > span_start and end > start for span_start, span_end in content)
        ]

    def _prefix_offsets(self, text: str, content: Spans, count: int) -> list[tuple[int, int]]:
        """Token spans for a tokenizer without offsets: a token belongs to the content span whose text
        encodes to the tokens up to it (counted by encoding the text up to each span boundary)."""
        offsets = [(0, 0)] * count
        for start, end in content:
            first = len(self.tokenizer(text[:start], add_special_tokens=False)["input_ids"])
            last = len(self.tokenizer(text[:end], add_special_tokens=False)["input_ids"])
            for position in range(first, min(last, count)):
                offsets[position] = (start, end)
        return offsets

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
        full_prompt_ids = self.encode_prompt(rendered.prompt, rendered.chat)
        prompt_ids = self.truncate_prompt(full_prompt_ids)
        chosen = self.encode_completion(rendered.chosen, rendered.chat)
        rejected = self.encode_completion(rendered.rejected, rendered.chat)
        budget = self.completion_budget(prompt_ids)
        chosen_kept = chosen if budget is None else chosen[: max(budget, 0)]
        rejected_kept = rejected if budget is None else rejected[: max(budget, 0)]
        if not chosen_kept or not rejected_kept:
            return None
        return TokenizedPair(
            prompt_ids,
            chosen_kept,
            rejected_kept,
            chosen,
            rejected,
            prompt_cut=len(prompt_ids) < len(full_prompt_ids),
            chosen_structural=self._kept_structural(rendered, "chosen", chosen, len(chosen_kept)),
            rejected_structural=self._kept_structural(rendered, "rejected", rejected, len(rejected_kept)),
        )

    def _kept_structural(self, rendered: RenderedPair, side: str, ids: list[int], kept: int) -> list[int]:
        text, content = getattr(rendered, side), getattr(rendered, f"{side}_content")
        return [p for p in self.structural_positions(text, content, ids, rendered.chat) if p < kept]

    # -- contrastive contexts (TIS-DPO(P), DLMA) ----------------------------------------------
    def contrast_prompt(self, prompt: Any, wrap: PromptWrapper) -> PromptContext:
        """Prompt ids of ``wrap(prompt)``, with only the user's prompt cut (see the module docstring)."""
        text, cut = self._contrast_text(prompt, wrap)
        return PromptContext(self.encode_prompt(text, chat=isinstance(prompt, list)), cut)

    def contrast_context(
        self, row: dict[str, Any], wrap: PromptWrapper, trained: TokenizedPair, where: str | None = None
    ) -> PromptContext:
        """The scoring context of a pair under a contrastive prompt; refuses a chat template that would
        render the responses differently there (their ids must stay the trainer's ``trained`` ones)."""
        prompt = row["prompt"]
        if not is_conversation(row["chosen"]):
            return self.contrast_prompt(prompt, wrap)
        kept, cut = self.cut_conversation(prompt)
        rendered = self.render({**row, "prompt": wrap(kept)})
        for side in ("chosen", "rejected"):
            ids = getattr(trained, f"{side}_ids")
            if self.encode_completion(getattr(rendered, side), True)[: len(ids)] != ids:
                raise UserError(
                    f"the chat template renders the {side} response differently under the contrastive prompt",
                    location=where,
                )
        return PromptContext(self.encode_prompt(rendered.prompt, True), cut)

    def _contrast_text(self, prompt: Any, wrap: PromptWrapper) -> tuple[str, bool]:
        if isinstance(prompt, list):
            kept, cut = self.cut_conversation(prompt)
            return self._chat(wrap(kept), add_generation_prompt=True), cut
        kept_text, cut = self.cut_text_prompt(prompt)
        return wrap(kept_text), cut

    def cut_text_prompt(self, text: str) -> tuple[str, bool]:
        """The end of a plain-text prompt that training keeps (cut at the trainer's token boundary)."""
        full = self.encode_prompt(text, chat=False)
        dropped = len(full) - len(self.truncate_prompt(full))
        if dropped <= 0:
            return text, False
        return self._drop_leading_tokens(text, dropped), True

    def cut_conversation(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], bool]:
        """The end of a conversation that fits ``max_prompt_length`` when rendered: its system messages are
        kept, its oldest turns dropped (so that it starts with a user turn), then the start of its first
        kept message is cut. Returns the kept messages and whether anything was cut."""
        limit = self.max_prompt_length
        if limit is None or self._rendered_length(messages) <= limit:
            return list(messages), False
        system = list(messages[: self._leading_system_count(messages)])
        turns = list(messages[len(system) :])
        if not turns:
            return list(messages), False
        while len(turns) > 1 and self._rendered_length(system + turns) > limit:
            turns = turns[1:]
            while len(turns) > 1 and turns[0].get("role") != "user":
                turns = turns[1:]
        first = turns[0]
        # Seams may merge or split a token when the cut message is rendered again: cut until it fits.
        while first["content"] and (overflow := self._rendered_length(system + [first] + turns[1:]) - limit) > 0:
            first = {**first, "content": self._drop_leading_tokens(first["content"], overflow)}
        return system + [first] + turns[1:], True

    @staticmethod
    def _leading_system_count(messages: list[dict[str, str]]) -> int:
        count = 0
        while count < len(messages) and messages[count].get("role") == "system":
            count += 1
        return count

    def _rendered_length(self, messages: list[dict[str, str]]) -> int:
        return len(self.encode_prompt(self._chat(messages, add_generation_prompt=True), chat=True))

    def _drop_leading_tokens(self, text: str, count: int) -> str:
        """``text`` without the characters of its first ``count`` tokens."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
        ids = encoded["input_ids"]
        if count >= len(ids):
            return ""
        # Where the dropped tokens end, so that a kept token's leading space stays with it.
        end = max((span[1] for span in encoded["offset_mapping"][:count]), default=0) if self.tokenizer.is_fast else 0
        return text[end:] if end > 0 else self.tokenizer.decode(ids[count:])


def content_spans(completion: str, response: list[dict[str, Any]]) -> Spans | None:
    """Where each message's text of ``response`` stands in its rendered ``completion``, in order (a
    template that trims the text is followed). None when a message's text cannot be found there."""
    spans, cursor = [], 0
    for message in response:
        text = message.get("content")
        if not isinstance(text, str) or not text:
            continue
        for candidate in (text, text.strip()):
            start = completion.find(candidate, cursor) if candidate else -1
            if start >= 0:
                spans.append((start, start + len(candidate)))
                cursor = start + len(candidate)
                break
        else:
            return None
    return tuple(spans) if spans else None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary and special tokens: two tokenizers with the same one encode alike."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "class": type(tokenizer).__name__,
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return digest(payload)
