"""Conversation transcripts: the behaviour PMG reads in its chat/sticker scenario.

Three spellings (see docs/HISTORY_FORMATS.md):

- a JSON file: one record or a list of records, each ``{"user_id", "turns": [...]}``
  plus optionally ``items``, ``target`` and ``scene`` (the JSONL record shape,
  with ``turns`` as another name for ``conversation``);
- a JSONL file of such records, one per line;
- plain text for one user: ``speaker: text`` lines; a line starting with
  whitespace continues the previous turn; ``#`` lines are comments, except the
  headers ``# user_id: ...``, ``# scene: ...``, ``# target: ...`` and
  ``# target_keywords: a, b``.

A chat's scene is ``"sticker"`` unless the record or header says otherwise.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HistoryFormatError
from ..history import ChatTurn, Item, UserHistory
from .jsonl import read_jsonl
from .records import ImagePolicy, RecordParser, Where, parse_scene, parse_title
from .textfile import parse_json, read_text

CHAT_SCENE = "sticker"
_HEADERS = ("user_id", "scene", "target", "target_keywords")
_CHAT_EXAMPLE = '{"user_id": "alice", "turns": [{"speaker": "alice", "text": "I passed my exam!"}]}'


def read_chat(path: Path, image_root: Path | None = None) -> list[UserHistory]:
    """The users of a chat file (JSON, JSONL or a plain-text transcript)."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return read_jsonl(path, image_root, default_scene=CHAT_SCENE)
    text = read_text(path, "chat file")
    if path.suffix.lower() == ".json" or (path.suffix.lower() != ".txt" and text.lstrip()[:1] in ("{", "[")):
        return _read_json_chat(path, text, image_root)
    return [_read_transcript(path, text)]


def _read_json_chat(path: Path, text: str, image_root: Path | None) -> list[UserHistory]:
    data = parse_json(text, path, _CHAT_EXAMPLE)
    records = data if isinstance(data, list) else [data]
    if not records:
        raise HistoryFormatError(f"{path} holds an empty list; add at least one record like {_CHAT_EXAMPLE}")
    parser = RecordParser(ImagePolicy(base_dir=path.parent.resolve(), root=image_root), default_scene=CHAT_SCENE)
    places = ((Where(path, record=index), record) for index, record in enumerate(records))
    return parser.histories(places, path, fix="keep one record per user.")


def _read_transcript(path: Path, text: str) -> UserHistory:
    headers: dict[str, str] = {}
    turns: list[tuple[int, str, list[str]]] = []  # (line, speaker, text lines)
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            key, sep, value = line.lstrip()[1:].partition(":")
            if sep and key.strip().lower() in _HEADERS:
                headers[key.strip().lower()] = value.strip()
            continue
        if line[0].isspace():
            if not turns:
                raise HistoryFormatError(
                    f"{path}, line {number}: an indented line continues the previous turn, but there is none yet; "
                    "start the transcript with a 'speaker: text' line."
                )
            turns[-1][2].append(line.strip())
            continue
        speaker, sep, rest = line.partition(":")
        if not sep or not speaker.strip():
            raise HistoryFormatError(
                f"{path}, line {number}: {line[:60]!r} is not 'speaker: text'. Write each turn as e.g. "
                "'alice: I passed my exam!', indent continuation lines, and start comments with '#'."
            )
        turns.append((number, speaker.strip(), [rest.strip()] if rest.strip() else []))
    conversation = []
    for number, speaker, lines in turns:
        if not lines:
            raise HistoryFormatError(f"{path}, line {number}: {speaker!r} says nothing; write the message after the colon.")
        conversation.append(ChatTurn(speaker=speaker, text="\n".join(lines)))
    if not conversation:
        raise HistoryFormatError(f"{path} holds no 'speaker: text' lines; a transcript needs at least one turn.")
    user_id = headers.get("user_id") or path.stem
    return UserHistory(
        user_id=user_id,
        items=(),
        scene=parse_scene(headers.get("scene", CHAT_SCENE), Where(path)),
        target=_target(headers, Where(path)),
        conversation=tuple(conversation),
    )


def _target(headers: dict[str, str], where: Where) -> Item | None:
    title = headers.get("target")
    if not title:
        return None
    parse_title(title, "the target header", where)
    keywords = tuple(k.strip() for k in headers.get("target_keywords", "").split(",") if k.strip())
    return Item(item_id="target", title=title, keywords=keywords)
