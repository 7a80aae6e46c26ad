"""Keywords from a served LLM: requests counted at the server, and the same users asked locally.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.bench_served_keywords [--users 2]
        [--max-new-tokens 32] [--json out.json]

In ONE process: ``transformers serve`` (the pinned transformers) on the offline SmolLM2 saved
as a folder, and the same SmolLM2 loaded locally. For new MovieLens users (reference split),
each condition with its own empty keyword cache:

* **served, new users**: requests the server logged vs the questions asked (each history item
  and target to describe, once, plus one preference per user): the target is one request per
  question (a retry adds one for an answer that does not parse);
* **served, returning users**: a fresh source and extractor on the warm cache: the target is
  no request at all;
* **local**: the same users through the local LLM (batched), for the time side by side, and
  whether the keywords are the same (they need not be: a chat API cannot continue PMG's primed
  answer "The keywords are: 1.", so the served model starts its answer itself).

Not a test: timings depend on the machine (2 shared CPU cores here).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from pmg_core.assets import movielens_dir, smollm2_gguf
from pmg_core.keywords import KeywordExtractor
from pmg_core.llm import open_llm
from pmg_core.loaders import SplitRule, load_histories
from pmg_core.served_llm import ServedLLM
from pmg_tools.llm_server import TransformersServe, saved_smollm2_folder
from pmg_tools.report import emit

log = logging.getLogger("bench_served_keywords")


def questions_for(extractor: KeywordExtractor, histories) -> int:
    """Questions a cold extraction asks: each item to describe once, plus one preference per user."""
    described = set()
    for history in histories:
        items = [i for i in history.items if not i.keywords] + ([history.target] if history.target else [])
        described.update((item.item_id, item.title) for item in items)
    return len(described) + len(histories)


def benchmark(n_users: int, max_new_tokens: int, work: Path) -> dict:
    settings = {"max_new_tokens": max_new_tokens, "seed": 0}
    histories = list(load_histories(movielens_dir(), fmt="movielens", split=SplitRule()).values())[:n_users]
    folder = saved_smollm2_folder()
    with TransformersServe(folder) as server:
        source = ServedLLM(server.url, server.model, timeout=900)
        cold = KeywordExtractor(source, cache_dir=work / "served", **settings)
        logged = server.requests_logged()
        began = time.perf_counter()
        served = cold.extract_many(histories)
        served_s = time.perf_counter() - began
        new_requests = server.requests_logged() - logged
        questions = questions_for(cold, histories)

        again_source = ServedLLM(server.url, server.model)
        warm = KeywordExtractor(again_source, cache_dir=work / "served", **settings)
        logged = server.requests_logged()
        began = time.perf_counter()
        returning = warm.extract_many(histories)
        returning_s = time.perf_counter() - began
        returning_requests = server.requests_logged() - logged
    llm = open_llm(smollm2_gguf())
    began = time.perf_counter()
    local = KeywordExtractor(llm, cache_dir=work / "local", **settings).extract_many(histories)
    local_s = time.perf_counter() - began
    same = sum(s.preference_keywords == lo.preference_keywords for s, lo in zip(served, local, strict=True))
    return {
        "model": f"{llm.identity} (served from {folder.name} by transformers serve, CPU)",
        "users": len(histories), "max_new_tokens": max_new_tokens, "threads": torch.get_num_threads(),
        "served_new_users": {"questions": questions, "retried_questions": cold.retries,
                             "requests_at_server": new_requests,
                             "client_requests": source.requests_sent, "seconds": round(served_s, 2)},
        "served_returning_users": {"requests_at_server": returning_requests, "seconds": round(returning_s, 3),
                                   "same_keywords": all(a == b for a, b in zip(served, returning, strict=True))},
        "local_new_users": {"seconds": round(local_s, 2)},
        "users_with_the_same_preference_keywords_served_and_local": same,
        "served": [list(p.preference_keywords) for p in served],
        "local": [list(p.preference_keywords) for p in local],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pmg-bench-served-") as temporary:
        result = benchmark(args.users, args.max_new_tokens, Path(temporary))
    emit(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
