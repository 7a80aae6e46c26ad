"""Keyword quality before and after PMG's keyword filter, on the same LLM answers.

    .venv/bin/python -m scripts.keyword_quality [--stickers 8] [--movies 8] [--json docs/evaluation/keyword_quality.json]
    # the same SmolLM2 behind `transformers serve` (started here), asked through PMG's served source:
    .venv/bin/python -m scripts.keyword_quality --served [--json ...]
    # or any server you run: --llm-url http://127.0.0.1:11434 --llm-model llama3.2 --llm-api ollama

For the first sticker users (the built-in Twemoji scene) and the first MovieLens users (reference
split), the offline LLM (SmolLM2-135M, greedy, no cache) extracts keywords once per user. Every list
the LLM's answer was parsed into is recorded as it reaches the filter (*before*: the parser's output),
and what reaches the prompt is read from the result (*after*: echoes and cut words dropped, metadata
fallbacks in). Each keyword is classed by :mod:`pmg_core.evaluation.keyword_quality`. Prints one
table per scene.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
from pathlib import Path

from pmg_core import keywords as keywords_module
from pmg_core.evaluation.keyword_quality import CLASSES, keyword_classes, quality_table

log = logging.getLogger("keyword_quality")


def sticker_users(count: int):
    from pmg_core.loaders.stickers import build_sticker_histories

    return build_sticker_histories(n_users=count, seed=0)


def movie_users(count: int):
    from pmg_core.assets import movielens_dir
    from pmg_core.loaders import SplitRule, load_user

    return [load_user(movielens_dir(), str(user), fmt="movielens", split=SplitRule()) for user in range(1, count + 1)]


def measure(histories, llm, cache_dir: Path) -> dict:
    """Per user: the parsed lists (before) and the keywords that reach the prompt (after), with their classes."""
    extractor = keywords_module.KeywordExtractor(llm, cache_dir=cache_dir, use_cache=False)
    real_filter = keywords_module.drop_echoes
    parsed: list[list[str]] = []

    def recording_filter(found, *rules):
        parsed.append(list(found))
        return real_filter(found, *rules)

    keywords_module.drop_echoes = recording_filter
    users = []
    try:
        for history in histories:
            parsed.clear()
            preference = extractor.extract(history)
            words = extractor._echo_words(keywords_module.prompt_set_for(history))  # noqa: SLF001 - the filter's own echo set
            # The filter sees the preference list first, then (when the LLM described it) the target's.
            lists = {"preference": (parsed[0], preference.preference_keywords)}
            if len(parsed) > 1:
                lists["target"] = (parsed[1], preference.target_keywords)
            record = {"user_id": history.user_id}
            for kind, (before, after) in lists.items():
                record[kind] = {"before": dict(zip(before, keyword_classes(before, history, words), strict=True)),
                                "after": dict(zip(after, keyword_classes(after, history, words), strict=True))}
            users.append(record)
            log.info("user %s: %s", history.user_id, {k: (len(b), len(a)) for k, (b, a) in lists.items()})
    finally:
        keywords_module.drop_echoes = real_filter
    summary = {kind: {side: quality_table(c for user in users if kind in user for c in user[kind][side].values())
                      for side in ("before", "after")} for kind in ("preference", "target")}
    return {"users": users, **summary}


def table(scene: str, result: dict) -> str:
    lines = [f"### {scene}", "", "| keywords | side | count | " + " | ".join(CLASSES) + " |",
             "|---|---|---:|" + "---:|" * len(CLASSES)]
    for kind in ("preference", "target"):
        for side in ("before", "after"):
            row = result[kind][side]
            if not row["keywords"]:  # e.g. sticker targets: their keywords come from emoji metadata, not the LLM
                continue
            shares = " | ".join(f"{100 * row['shares'][c]:.0f}%" for c in CLASSES)
            lines.append(f"| {kind} | {side} | {row['keywords']} | {shares} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stickers", type=int, default=8)
    parser.add_argument("--movies", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--served", action="store_true",
                        help="serve the offline SmolLM2 with `transformers serve` and ask it over HTTP")
    parser.add_argument("--llm-url", help="ask this LLM server (OpenAI-compatible or Ollama) instead")
    parser.add_argument("--llm-model", help="with --llm-url: the model name the server knows")
    parser.add_argument("--llm-api", default="openai", choices=("openai", "ollama"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)

    import torch

    from pmg_core.assets import smollm2_gguf
    from pmg_core.llm import open_llm

    torch.set_num_threads(1)
    with contextlib.ExitStack() as stack:
        if args.served:
            from pmg_core.served_llm import ServedLLM
            from pmg_tools.llm_server import TransformersServe, saved_smollm2_folder

            server = stack.enter_context(TransformersServe(saved_smollm2_folder()))
            llm = ServedLLM(server.url, server.model, timeout=600)
        elif args.llm_url:
            from pmg_core.served_llm import ServedLLM

            llm = ServedLLM(args.llm_url, args.llm_model or "", api=args.llm_api, timeout=600)
        else:
            llm = open_llm(smollm2_gguf())
        results = {}
        with tempfile.TemporaryDirectory(prefix="pmg-keyword-quality-") as cache:
            for scene, histories in (("stickers", sticker_users(args.stickers)), ("movies", movie_users(args.movies))):
                results[scene] = measure(histories, llm, Path(cache))
                sys.stdout.write(table(scene, results[scene]) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"llm": llm.identity, **results}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
