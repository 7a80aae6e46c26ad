"""The prompts PMG sends to the LLM (steps 2-4), per scene, all overridable.

The movie preference prompt is the reference's, verbatim::

    The assistant is helping the human generate keywords of movie lover's interests.
    ### Human: A person watched some movies. Please provide <N> keywords to describe
    his movie interests. The example of output is "The keywords are: 1. Keyword 1.
    2. Keyword 2. 3. Keyword 3." ### Human: The movies and their information are
    "<Items/>". ### Assistant: The keywords are:

Every scene follows that structure: a system line, an instruction, the data, and
an answer primed with "The keywords are:". The defaults replace the reference's
output example ("1. Keyword 1. 2. Keyword 2.") by a request for a numbered list
and prime the answer with "1.": SmolLM2-135M copies the example verbatim, while
it does continue a started list. :data:`REFERENCE_MOVIE_PROMPTS` keeps the
reference text for larger models. A prompt is a :class:`ChatRequest`; :meth:`ChatRequest.for_llm` wraps it in
the model's own chat template (or the plain ``### Human:`` layout when the
tokenizer has none). Templates are :class:`PromptTemplates` (plain strings with
``{placeholders}``, filled by :func:`pmg_core.render.fill`, never evaluated).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InvalidSettingError
from .history import SCENES, Item
from .render import fill

if TYPE_CHECKING:
    from .llm import LocalLLM

_EXAMPLE = 'The example of output is "The keywords are: 1. Keyword 1. 2. Keyword 2. 3. Keyword 3."'

#: Prompt sets: one per scene, plus "chat" for histories that hold a conversation.
PROMPT_SETS: tuple[str, ...] = (*SCENES, "chat")


@dataclass(frozen=True)
class ChatRequest:
    """One prompt: a system line, the user's turns and the start of the answer."""

    system: str
    turns: tuple[str, ...]
    assistant_prefix: str = "The keywords are:"

    def for_llm(self, llm: LocalLLM) -> str:
        """The prompt in ``llm``'s chat format (its template, or the plain layout)."""
        return llm.chat_prompt("\n".join(self.turns), system=self.system or None, assistant_prefix=self.assistant_prefix)

    def plain(self) -> str:
        """The reference's single-string layout: ``system ### Human: ... ### Assistant: prefix``."""
        humans = " ".join(f"### Human: {turn}" for turn in self.turns)
        answer = f"### Assistant: {self.assistant_prefix}".rstrip()
        return " ".join(part for part in (self.system, humans, answer) if part)

    def __str__(self) -> str:
        return self.plain()


@dataclass(frozen=True)
class PromptTemplates:
    """The texts of one prompt set.

    Placeholders: ``{n}`` (number of keywords) and ``{items}`` (the rendered
    history) in the preference and soft-prompt texts; ``{n}``, ``{title}``,
    ``{genres}`` and ``{description}`` in the target texts.
    """

    preference_system: str
    preference_instruction: str
    preference_data: str
    target_system: str
    target_instruction: str
    soft_prompt: str
    assistant_prefix: str = "The keywords are:"

    def instruction_words(self) -> frozenset[str]:
        """Every word the prompts themselves say (placeholders left out), lower case.

        A keyword made only of these words is the model repeating the request
        ("mood", "color", "facial expression"), not something it learnt about the user.
        """
        texts = (self.preference_system, self.preference_instruction, self.preference_data,
                 self.target_system, self.target_instruction, self.assistant_prefix)
        words = re.findall(r"[^\W\d_]+", " ".join(re.sub(r"\{\w+\}", " ", text) for text in texts).casefold())
        return frozenset(words)

    def digest(self) -> str:
        """A short hash of every text: part of the keyword cache keys."""
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True).encode("utf-8")
        return hashlib.sha256(payload).hexdigest()[:16]


_NUMBERED = "Answer with a numbered list, one keyword per line, without explaining."
_PRIMED = "The keywords are:\n1."

#: The reference's movie prompts, verbatim (the format is fixed by an output example).
#: Llama-2-7B follows it; SmolLM2-135M parrots the example ("1. Keyword 1."), hence the defaults below.
REFERENCE_MOVIE_PROMPTS = PromptTemplates(
    preference_system="The assistant is helping the human generate keywords of movie lover's interests.",
    preference_instruction=(
        "A person watched some movies. Please provide {n} keywords to describe his movie interests. " + _EXAMPLE
    ),
    preference_data='The movies and their information are "{items}".',
    target_system="The assistant is helping the human design movie posters.",
    target_instruction=(
        'There is a movie named "{title}" ({genres}). {description} Please design a poster for it '
        "(describe in {n} keywords without explaining). Character names should be excluded. " + _EXAMPLE
    ),
    soft_prompt='A person watched the following movies "{items}". Please describe his movie interests.',
)

# The defaults keep the reference's structure (system line, instruction, data, primed
# answer) but ask for a numbered list and start it ("1."), which small models follow.
DEFAULT_PROMPTS: dict[str, PromptTemplates] = {
    "movie": PromptTemplates(
        preference_system=REFERENCE_MOVIE_PROMPTS.preference_system,
        preference_instruction="A person watched some movies. Please provide {n} keywords to describe his movie interests.",
        preference_data=(
            'The movies and their information are "{items}". ' + _NUMBERED
        ),
        target_system=REFERENCE_MOVIE_PROMPTS.target_system,
        target_instruction=(
            'There is a movie named "{title}" ({genres}). {description} Please design a poster for it '
            "(describe in {n} keywords without explaining). Character names should be excluded. " + _NUMBERED
        ),
        soft_prompt=REFERENCE_MOVIE_PROMPTS.soft_prompt,
        assistant_prefix=_PRIMED,
    ),
    "clothing": PromptTemplates(
        preference_system="The assistant is helping the human generate keywords of shoppers' interests.",
        preference_instruction=(
            "A shopper clicked some clothes. Please provide {n} distinctive keywords in English that describe "
            "the shopper's interests in theme, color, material, or appearance style, excluding specific "
            "product types."
        ),
        preference_data='The clothes are "{items}". ' + _NUMBERED,
        target_system="The assistant is helping the human design clothes.",
        target_instruction=(
            'There is a garment named "{title}" ({genres}). {description} Please describe its appearance '
            "in {n} keywords about theme, color, material and style. " + _NUMBERED
        ),
        soft_prompt='A shopper clicked the following clothes "{items}". Please describe the shopper\'s fashion interests.',
        assistant_prefix=_PRIMED,
    ),
    "sticker": PromptTemplates(
        preference_system="The assistant is helping the human generate keywords of a sticker user's taste.",
        preference_instruction=(
            "A person sent some emoji stickers. Please provide {n} keywords to describe the style of "
            "stickers the person likes, such as mood, color, character and expression."
        ),
        preference_data='The stickers are "{items}". ' + _NUMBERED,
        target_system="The assistant is helping the human design emoji stickers.",
        target_instruction=(
            'A sticker should express "{title}". {description} Please describe its facial expression or '
            "posture in {n} keywords. " + _NUMBERED
        ),
        soft_prompt='A person sent the following stickers "{items}". Please describe the person\'s sticker taste.',
        assistant_prefix=_PRIMED,
    ),
    "chat": PromptTemplates(
        preference_system="The assistant is helping the human choose stickers for a chat.",
        preference_instruction=(
            "Here is a conversation. Please provide {n} keywords to describe the emotion and the style of "
            "sticker the person would like to send next."
        ),
        preference_data='The conversation is "{items}". ' + _NUMBERED,
        target_system="The assistant is helping the human design emoji stickers.",
        target_instruction=(
            'A sticker should express "{title}". {description} Please describe its facial expression or '
            "posture in {n} keywords. " + _NUMBERED
        ),
        soft_prompt='A person had the following conversation "{items}". Please describe the sticker the person would send.',
        assistant_prefix=_PRIMED,
    ),
    "generic": PromptTemplates(
        preference_system="The assistant is helping the human generate keywords of a user's interests.",
        preference_instruction="A person liked some items. Please provide {n} keywords to describe the person's interests.",
        preference_data='The items and their information are "{items}". ' + _NUMBERED,
        target_system="The assistant is helping the human design a picture of an item.",
        target_instruction=(
            'There is an item named "{title}" ({genres}). {description} Please describe how it looks in '
            "{n} keywords. " + _NUMBERED
        ),
        soft_prompt='A person liked the following items "{items}". Please describe the person\'s interests.',
        assistant_prefix=_PRIMED,
    ),
}


def prompt_templates(prompt_set: str, templates: PromptTemplates | None = None) -> PromptTemplates:
    """``templates`` if given, else the default set for ``prompt_set`` (a scene or "chat")."""
    if templates is not None:
        return templates
    if prompt_set not in DEFAULT_PROMPTS:
        raise InvalidSettingError(f"Unknown scene {prompt_set!r}; choose one of {', '.join(PROMPT_SETS)}.")
    return DEFAULT_PROMPTS[prompt_set]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidSettingError(f"The number of keywords must be a positive integer, not {n!r}.")


def preference_prompt(scene: str, history_text: str, n: int = 8, templates: PromptTemplates | None = None) -> ChatRequest:
    """The prompt asking for ``n`` keywords of the user's interests (PMG step 2)."""
    _check_n(n)
    chosen = prompt_templates(scene, templates)
    values = {"n": n, "items": history_text}
    return ChatRequest(
        system=fill(chosen.preference_system, values, "preference system prompt"),
        turns=(
            fill(chosen.preference_instruction, values, "preference instruction"),
            fill(chosen.preference_data, values, "preference data prompt"),
        ),
        assistant_prefix=chosen.assistant_prefix,
    )


def target_prompt(scene: str, item: Item, n: int = 10, templates: PromptTemplates | None = None) -> ChatRequest:
    """The prompt asking for ``n`` keywords that describe the item to generate (PMG step 3)."""
    _check_n(n)
    chosen = prompt_templates(scene, templates)
    genres = ", ".join(item.categories)
    values = {"n": n, "title": item.title.strip(), "genres": genres, "description": item.description.strip()}
    instruction = chosen.target_instruction
    if not genres:
        instruction = instruction.replace(" ({genres})", "").replace("({genres})", "")
    text = fill(instruction, values, "target instruction")
    return ChatRequest(
        system=fill(chosen.target_system, values, "target system prompt"),
        turns=(" ".join(text.split()),),  # an empty description leaves a double space
        assistant_prefix=chosen.assistant_prefix,
    )


def soft_prompt_text(scene: str, history_text: str, templates: PromptTemplates | None = None) -> str:
    """What the soft-prompt adapter reads before its image tokens (PMG step 4)."""
    chosen = prompt_templates(scene, templates)
    return fill(chosen.soft_prompt, {"items": history_text}, "soft prompt")
