"""The one typed structure every user behaviour is loaded into.

A history is what a user did (watched, bought, sent) in order, plus optionally
the item PMG should generate for (the *target*) and a conversation. Loaders in
:mod:`pmg_core.loaders` fill it; :mod:`pmg_core.render` turns it into text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Scene = Literal["movie", "clothing", "sticker", "generic"]
SCENES: tuple[str, ...] = ("movie", "clothing", "sticker", "generic")


@dataclass(frozen=True)
class Item:
    """One thing a user interacted with (a movie, a garment, an emoji...)."""

    item_id: str
    title: str
    categories: tuple[str, ...] = ()
    description: str = ""
    keywords: tuple[str, ...] = ()
    image_path: Path | None = None
    timestamp: float | None = None
    rating: float | None = None

    def with_keywords(self, keywords: tuple[str, ...] | list[str]) -> "Item":
        return dataclasses.replace(self, keywords=tuple(keywords))


@dataclass(frozen=True)
class ChatTurn:
    """One turn of a conversation; ``speaker`` is free text ("user", "friend"...)."""

    speaker: str
    text: str


@dataclass(frozen=True)
class UserHistory:
    """A user's behaviours, oldest first, and what to generate for them."""

    user_id: str
    items: tuple[Item, ...]
    scene: Scene = "generic"
    target: Item | None = None
    conversation: tuple[ChatTurn, ...] = field(default_factory=tuple)

    @property
    def images(self) -> list[Path]:
        """Image paths of the history items that have one, in order."""
        return [item.image_path for item in self.items if item.image_path is not None]

    def to_dict(self) -> dict:
        """A JSON-ready dict (paths as strings), the inverse of :meth:`from_dict`."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "UserHistory":
        def item(d: dict) -> Item:
            return Item(
                item_id=str(d["item_id"]),
                title=d["title"],
                categories=tuple(d.get("categories", ())),
                description=d.get("description", ""),
                keywords=tuple(d.get("keywords", ())),
                image_path=Path(d["image_path"]) if d.get("image_path") else None,
                timestamp=d.get("timestamp"),
                rating=d.get("rating"),
            )

        return cls(
            user_id=str(data["user_id"]),
            items=tuple(item(d) for d in data["items"]),
            scene=data.get("scene", "generic"),
            target=item(data["target"]) if data.get("target") else None,
            conversation=tuple(ChatTurn(**t) for t in data.get("conversation", ())),
        )


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
