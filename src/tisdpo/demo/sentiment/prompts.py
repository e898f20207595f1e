"""The sentiment task's prompts: requests for a short review, note or description of a varied subject,
whose context leaves the tone open (a mixed experience, an ordinary object), generated deterministically.

``all_prompts()`` lists every distinct prompt (templates x subjects) in a fixed shuffled order;
``split_prompts(n_train, n_eval)`` returns disjoint training and held-out prompts, the held-out ones
drawn from subjects that no training prompt mentions (so a held-out prompt is new text, not a new
template around a trained subject).
"""

from __future__ import annotations

import random

TEMPLATES: tuple[str, ...] = (
    "Write a short review of {subject}.",
    "Write two sentences about {subject}.",
    "Describe {subject} in a few sentences.",
    "Write a short note to a friend about {subject}.",
    "What do you think of {subject}? Answer in two sentences.",
    "Write a brief customer comment about {subject}.",
    "Give your honest impression of {subject} in a short paragraph.",
    "Write a one-paragraph diary entry about {subject}.",
)

THINGS: tuple[str, ...] = (
    "a small Italian restaurant",
    "a budget hotel near the station",
    "a secondhand bicycle",
    "a new smartphone",
    "a pair of running shoes",
    "a city bus line",
    "a public library",
    "a cooking class",
    "a weekend camping trip",
    "a coffee shop downtown",
    "a science fiction novel",
    "a three-hour opera",
    "a local football match",
    "a rented apartment",
    "a winter jacket",
    "a yoga studio",
    "an online language course",
    "a night train",
    "a museum of modern art",
    "a family car",
    "a vegetarian cookbook",
    "a music festival",
    "a hair salon",
    "a dentist appointment",
    "a board game",
    "a garden centre",
    "a budget airline flight",
    "a neighbourhood bakery",
    "a wireless speaker",
    "a guided city tour",
    "a pizza delivery",
    "a swimming pool",
    "a horror film",
    "a used laptop",
    "a hiking trail",
    "a beach resort",
    "an office chair",
    "a kitchen blender",
    "a comedy show",
    "a school concert",
)

CIRCUMSTANCES: tuple[str, ...] = (
    "",
    " you tried last week",
    " that a friend recommended",
    " you used for the first time",
    " that cost more than expected",
    " on a rainy Monday",
    " you visited with your family",
    " that was busier than usual",
    " you had heard mixed things about",
    " that had just reopened",
    " you chose at the last minute",
    " that was cheaper than expected",
)


def subjects() -> list[str]:
    return [thing + circumstance for thing in THINGS for circumstance in CIRCUMSTANCES]


def split_prompts(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n_train`` training prompts and ``n_eval`` held-out prompts about subjects no training prompt names."""
    rng = random.Random(seed)
    pool = subjects()
    rng.shuffle(pool)
    per_subject = len(TEMPLATES)
    n_eval_subjects = -(-n_eval // per_subject)
    eval_subjects, train_subjects = pool[:n_eval_subjects], pool[n_eval_subjects:]

    def prompts_of(names: list[str]) -> list[str]:
        out = [template.format(subject=name) for name in names for template in TEMPLATES]
        rng.shuffle(out)
        return out

    train, held_out = prompts_of(train_subjects), prompts_of(eval_subjects)
    if n_train > len(train) or n_eval > len(held_out):
        raise ValueError(f"at most {len(train)} training and {len(held_out)} held-out prompts exist")
    return train[:n_train], held_out[:n_eval]
