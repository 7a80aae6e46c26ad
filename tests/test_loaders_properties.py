"""Property tests (hypothesis): round trips for arbitrary histories, and no crash but PMGError on any bytes.

These check mechanics: generated histories with unicode text, empty optional
fields and odd numbers must survive to_dict/from_dict, JSONL and CSV unchanged,
and any file content must end in a history or a PMGError, never another exception.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmg_core.errors import PMGError
from pmg_core.history import SCENES, ChatTurn, Item, UserHistory
from pmg_core.loaders import list_users, load_histories, write_csv, write_jsonl
from pmg_core.loaders.records import HISTORY_FIELDS, ITEM_FIELDS

EXAMPLES = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=30)
non_blank = st.text(min_size=1, max_size=30).filter(lambda s: s.strip())
optional_paths = st.none() | st.text(min_size=1, max_size=20).map(Path)
finite = st.floats(allow_nan=False, allow_infinity=False)
optional_number = st.none() | finite | st.integers(-(10**12), 10**12).map(float)


def items(
    ids=non_blank,
    list_element=text,
    image_paths=optional_paths,
):
    return st.builds(
        Item,
        item_id=ids,
        title=non_blank,
        categories=st.lists(list_element, max_size=3).map(tuple),
        description=text,
        keywords=st.lists(list_element, max_size=3).map(tuple),
        image_path=image_paths,
        timestamp=optional_number,
        rating=optional_number,
    )


def histories(item_strategy=None, with_conversation=True, min_items=0):
    item_strategy = items() if item_strategy is None else item_strategy
    turns = st.lists(st.builds(ChatTurn, speaker=text, text=text), max_size=3).map(tuple) if with_conversation else st.just(())
    return st.builds(
        UserHistory,
        user_id=non_blank,
        items=st.lists(item_strategy, min_size=min_items, max_size=4).map(tuple),
        scene=st.sampled_from(SCENES),
        target=st.none() | item_strategy,
        conversation=turns,
    )


def unique_users(strategy):
    return st.lists(strategy, min_size=1, max_size=4, unique_by=lambda h: h.user_id)


@EXAMPLES
@given(histories())
def test_to_dict_from_dict_round_trip_through_json(history):
    data = json.loads(json.dumps(history.to_dict(), ensure_ascii=False))
    assert UserHistory.from_dict(data) == history


@EXAMPLES
@given(unique_users(histories(items(image_paths=st.none()))).filter(lambda hs: all(h.items or h.conversation for h in hs)))
def test_jsonl_write_read_round_trip(users):
    with tempfile.TemporaryDirectory() as folder:
        path = write_jsonl(Path(folder) / "h.jsonl", users)
        assert load_histories(path) == {h.user_id: h for h in users}


@EXAMPLES
@given(st.lists(st.sampled_from(["a.png", "sub/b.png"]), min_size=1, max_size=4))
def test_jsonl_round_trip_with_real_images(names):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder).resolve()
        (root / "sub").mkdir()
        for name in ("a.png", "sub/b.png"):
            (root / name).write_bytes(b"\x89PNG")
        user = UserHistory("u", tuple(Item(str(i), "t", image_path=root / n) for i, n in enumerate(names)))
        path = write_jsonl(root / "h.jsonl", [user])
        assert str(root) not in path.read_text(encoding="utf-8")  # written relative
        assert load_histories(path) == {"u": user}


# A CSV list cell joins with "|" and strips: elements must be non-empty, stripped, "|"-free.
csv_element = st.text(min_size=1, max_size=15).filter(lambda s: s == s.strip() and s and "|" not in s)


@EXAMPLES
@given(unique_users(histories(items(list_element=csv_element, image_paths=st.none()), with_conversation=False, min_items=1)))
def test_csv_write_read_round_trip(users):
    with tempfile.TemporaryDirectory() as folder:
        path = write_csv(Path(folder) / "h.csv", users)
        assert load_histories(path) == {h.user_id: h for h in users}


# --- arbitrary input never escapes as anything but a PMGError ----------------------------------

SUFFIXES = [".jsonl", ".json", ".csv", ".txt", "", ".inter", ".item"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
json_keys = st.sampled_from(ITEM_FIELDS + HISTORY_FIELDS + ("turns", "image", "speaker", "text")) | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=6),
    max_leaves=20,
)
# Records close to valid ones reach the field checks deep inside the parser.
mostly_valid_id = st.text(min_size=1, max_size=5) | st.integers() | st.just("u1") | json_values
item_like = st.fixed_dictionaries(
    {"item_id": mostly_valid_id, "title": st.text(max_size=5) | st.just("A title") | json_values},
    optional={key: json_values for key in ITEM_FIELDS[2:] + ("image",)},
)
turn_like = (st.fixed_dictionaries({"speaker": st.text(max_size=3) | json_values, "text": st.text(max_size=3)})
             | st.text(max_size=6))
record_like = st.fixed_dictionaries(
    {"user_id": mostly_valid_id, "items": st.lists(item_like | item_like | json_values, max_size=3) | json_values},
    optional={
        "target": item_like | json_values,
        "scene": st.sampled_from(SCENES) | json_values,
        "turns": st.lists(turn_like | json_values, max_size=3) | json_values,
        "conversation": st.lists(turn_like, max_size=2),
    },
)
structured = (st.lists(record_like, min_size=1, max_size=2) | st.lists(json_values, min_size=1, max_size=2)).map(
    lambda values: "\n".join(json.dumps(v) for v in values).encode("utf-8")
)
csv_like = st.lists(
    st.lists(st.sampled_from(["user_id", "item_id", "title", "rating", "role", "target", "4", "x", "", '"', "\t"]), max_size=6),
    max_size=5,
).map(lambda rows: "\n".join(",".join(r) for r in rows).encode("utf-8"))
atomic_like = st.lists(
    st.lists(st.sampled_from(["user_id:token", "item_id:token", "rating:float", "movie_title:token_seq", "1", "2", "x", ""]),
             max_size=5),
    max_size=5,
).map(lambda rows: "\n".join("\t".join(r) for r in rows).encode("utf-8"))
any_bytes = st.binary(max_size=300) | st.text(max_size=200).map(str.encode) | structured | csv_like | atomic_like


def _assert_only_pmg_errors(call):
    with contextlib.suppress(PMGError):
        call()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=any_bytes, suffix=st.sampled_from(SUFFIXES),
       fmt=st.sampled_from(["auto", "auto", "jsonl", "csv", "chat", "sticker", "movielens"]))
def test_loaders_raise_only_pmg_errors_on_arbitrary_bytes(content, suffix, fmt):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"ds{suffix}"
        path.write_bytes(content)
        if suffix in (".inter", ".item"):  # the partner file gets the same bytes
            (Path(folder) / ("ds.item" if suffix == ".inter" else "ds.inter")).write_bytes(content)
        _assert_only_pmg_errors(lambda: load_histories(path, fmt=fmt))
        _assert_only_pmg_errors(lambda: list_users(path, fmt=fmt))
        _assert_only_pmg_errors(lambda: load_histories(path, fmt=fmt, image_root=folder))


@EXAMPLES
@given(content=structured, suffix=st.sampled_from([".jsonl", ".json"]))
def test_record_parser_raises_only_pmg_errors_on_arbitrary_json(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"records{suffix}"
        path.write_bytes(content)
        _assert_only_pmg_errors(lambda: load_histories(path))
