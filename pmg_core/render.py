"""Behaviours -> natural language, per scene (PMG step 1), and the per-scene generation texts.

- movie: ``"{i}. {title}({genres}): {kw1, ..., kw5}."`` per item, joined with spaces;
  the keyword part is left out for items without keywords, the parentheses for
  items without genres.
- clothing: the item titles as they are.
- sticker: the emoji names, after the conversation turns when there is a chat.
- generic: like movie, with the item's categories.

Every layout is a :class:`SceneTemplates` a user can replace. Templates use
``{name}`` placeholders filled by plain substitution (``{{`` and ``}}`` give
literal braces); nothing in a template is evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import EmptyHistoryError, InvalidSettingError
from .history import SCENES, ChatTurn, Item, UserHistory

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill(template: str, values: Mapping[str, object], what: str = "template") -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]``; unknown names raise.

    A deliberately tiny substitute for :meth:`str.format`, which would let a
    user-supplied template reach attributes (``{x.__class__}``).
    """

    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = match.group(1)
        if name not in values:
            known = ", ".join("{" + key + "}" for key in values)
            raise InvalidSettingError(f"The {what} uses {{{name}}}, which is not available; use one of {known}.")
        return str(values[name])

    return _PLACEHOLDER.sub(replace, template)


@dataclass(frozen=True)
class SceneTemplates:
    """How one scene writes a history as text.

    ``item`` placeholders: ``{index}`` (1-based), ``{title}``, ``{genres}``
    (categories joined by ", "), ``{keywords}`` (the first ``max_item_keywords``
    item keywords joined by ", "), ``{description}``. ``item_without_keywords``
    is used for items that have none. When an item has no categories, the text
    ``({genres})`` is removed from the template before filling it.
    ``conversation_turn`` has ``{speaker}`` and ``{text}``; ``with_conversation``
    combines ``{conversation}`` and ``{items}`` when a history has both.
    """

    item: str = "{index}. {title}({genres}): {keywords}."
    item_without_keywords: str = "{index}. {title}({genres})."
    joiner: str = " "
    conversation_turn: str = "{speaker}: {text}"
    conversation_joiner: str = " "
    with_conversation: str = "Conversation: {conversation} Stickers used: {items}"
    max_item_keywords: int = 5

    @property
    def uses_item_keywords(self) -> bool:
        """Whether rendering shows item keywords (so the extractor must fill them first)."""
        return "{keywords}" in self.item


DEFAULT_TEMPLATES: dict[str, SceneTemplates] = {
    "movie": SceneTemplates(),
    "clothing": SceneTemplates(item="{title}", item_without_keywords="{title}", joiner="; "),
    "sticker": SceneTemplates(item="{title}", item_without_keywords="{title}", joiner=", "),
    "generic": SceneTemplates(
        item="{index}. {title}({genres}): {keywords}.", item_without_keywords="{index}. {title}({genres})."
    ),
}


def scene_templates(scene: str, templates: SceneTemplates | None = None) -> SceneTemplates:
    """The templates to use for ``scene``: ``templates`` if given, else the scene's default."""
    if templates is not None:
        return templates
    if scene not in DEFAULT_TEMPLATES:
        raise InvalidSettingError(f"Unknown scene {scene!r}; choose one of {', '.join(SCENES)}.")
    return DEFAULT_TEMPLATES[scene]


def render_items(items: tuple[Item, ...] | list[Item], templates: SceneTemplates) -> str:
    """The items as one text, numbered from 1."""
    lines = []
    for index, item in enumerate(items, start=1):
        keywords = item.keywords[: templates.max_item_keywords]
        template = templates.item if keywords else templates.item_without_keywords
        if not item.categories:
            template = template.replace("({genres})", "")
        values = {
            "index": index,
            "title": item.title.strip(),
            "genres": ", ".join(item.categories),
            "keywords": ", ".join(keywords),
            "description": item.description.strip(),
        }
        lines.append(fill(template, values, "item template"))
    return templates.joiner.join(lines)


def render_conversation(turns: tuple[ChatTurn, ...] | list[ChatTurn], templates: SceneTemplates) -> str:
    """A conversation as text, one template-filled line per turn."""
    return templates.conversation_joiner.join(
        fill(templates.conversation_turn, {"speaker": t.speaker, "text": " ".join(t.text.split())}, "conversation template")
        for t in turns
    )


def render_history(history: UserHistory, templates: SceneTemplates | None = None) -> str:
    """The user's behaviours as the natural-language text the LLM prompts embed."""
    chosen = scene_templates(history.scene, templates)
    if not history.items and not history.conversation:
        raise EmptyHistoryError(
            f"User {history.user_id!r} has no history items and no conversation to describe; "
            "check the history file or relax the split rule (e.g. min_rating)."
        )
    items = render_items(history.items, chosen)
    if not history.conversation:
        return items
    conversation = render_conversation(history.conversation, chosen)
    if not history.items:
        return conversation
    return fill(chosen.with_conversation, {"conversation": conversation, "items": items}, "conversation layout")


def render_target_text(item: Item, keywords: tuple[str, ...] | list[str], scene: str) -> str:
    """The generation prompt for the target item (PMG step 3)."""
    keywords = [k for k in keywords if k.strip()]
    title = item.title.strip()
    if scene == "movie":
        return ", ".join(["movie poster", title, f"named '{title}'", *keywords[:5]])
    if scene == "clothing":
        return ", ".join(["costume", *(keywords[:5] or [title])])
    if scene == "sticker":
        # {emotion} is the target's title (an emotion or emoji name), then expression/posture keywords.
        return ", ".join(["a cute emoji", "sticker", "white background", title, *keywords[:3]])
    if scene == "generic":
        return ", ".join([title, *item.categories[:2], *keywords[:5]])
    raise InvalidSettingError(f"Unknown scene {scene!r}; choose one of {', '.join(SCENES)}.")


_NEGATIVE = {
    "movie": "broken text, unclear, twisted",
    "clothing": "person, face, body, mannequin, blurry, deformed, text, watermark",
    "sticker": "photo, realistic, cluttered background, blurry, text, watermark",
    "generic": "blurry, low quality, deformed, text, watermark",
}


def negative_prompt(scene: str) -> str:
    """What the generator should steer away from in ``scene`` (movie: the reference's text)."""
    if scene not in _NEGATIVE:
        raise InvalidSettingError(f"Unknown scene {scene!r}; choose one of {', '.join(SCENES)}.")
    return _NEGATIVE[scene]

