"""Keyword extraction for many users: batched prefetch vs one user per prompt, and a new user's stages.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.bench_keywords [--users 16] [--batch-size 16]
        [--max-new-tokens 48] [--llm PATH] [--json out.json]

In ONE process, with ONE LLM (default: the SmolLM2-135M GGUF that ships offline), on the
same MovieLens users (reference split), each condition with its own empty keyword cache:

* **per prompt**: what a studio queue did before, one ``KeywordExtractor.extract`` per user
  (the PMG Preference Extractor node's call): one user per LLM batch;
* **batched**: ``pmg_core.prefetch.prefetch_keywords`` (``pmg keywords --users all``), ``--batch-size``
  users per LLM batch;
* **resume**: the batched run again on the now-warm cache (what a resumed prefetch pays per user);
* **stages of a new user**: opening the LLM handle (tokenizer, config, identity), reading its
  weights, item keywords + preference keywords (one user), and the untrained soft prompt.

Prints users/s and the ratio batched / per prompt. Not a test: numbers depend on the machine
(on 2 shared CPU cores batching gains far less than on a GPU, where a batch costs about one prompt).
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
from pmg_core.prefetch import prefetch_keywords
from pmg_core.soft_prompt import AdapterSource, encode_cached

log = logging.getLogger("bench_keywords")


def _timed(function):
    began = time.perf_counter()
    result = function()
    return result, time.perf_counter() - began


def benchmark(n_users: int, batch_size: int, max_new_tokens: int, llm_path: Path | None, work: Path) -> dict:
    settings = {"max_new_tokens": max_new_tokens, "seed": 0}
    histories = list(load_histories(movielens_dir(), fmt="movielens", split=SplitRule()).values())
    stage_user, users = histories[0], histories[1 : 1 + n_users]

    llm, open_s = _timed(lambda: open_llm(llm_path or smollm2_gguf()))
    _, weights_s = _timed(lambda: llm.model)
    stages = KeywordExtractor(llm, cache_dir=work / "stages", **settings)
    preference, total_s = _timed(lambda: stages.extract(stage_user))
    # The preference stage alone: another n_preference misses only the preference question (items are cached).
    preference_only = KeywordExtractor(llm, cache_dir=work / "stages", **{**settings, "n_preference": 7})
    preference_s = _timed(lambda: preference_only.extract(stage_user))[1]
    item_s = total_s - preference_s
    _, soft_s = _timed(lambda: encode_cached(llm, [preference.soft_prompt_text], AdapterSource(), 768,
                                             cache_dir=work / "stages"))

    def per_prompt():
        extractor = KeywordExtractor(llm, cache_dir=work / "per_prompt", **settings)
        for history in users:
            extractor.extract(history)
        return extractor.generate_calls

    calls, per_prompt_s = _timed(per_prompt)
    batched, batched_s = _timed(lambda: prefetch_keywords(llm, users, cache_dir=work / "batched",
                                                          batch_size=batch_size, **settings))
    resumed, resume_s = _timed(lambda: prefetch_keywords(llm, users, cache_dir=work / "batched",
                                                         batch_size=batch_size, **settings))
    return {
        "llm": llm.identity, "users": len(users), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "threads": torch.get_num_threads(),
        "per_prompt": {"seconds": round(per_prompt_s, 2), "llm_batches": calls,
                       "users_per_s": round(len(users) / per_prompt_s, 3)},
        "batched": {"seconds": round(batched_s, 2), "llm_batches": batched.llm_batches,
                    "users_per_s": round(len(users) / batched_s, 3)},
        "resume": {"seconds": round(resume_s, 3), "already_cached": resumed.already_cached,
                   "llm_batches": resumed.llm_batches},
        "ratio_batched_over_per_prompt": round(per_prompt_s / batched_s, 2),
        "new_user_stages_s": {"open_handle": round(open_s, 3), "read_weights": round(weights_s, 3),
                              "item_keywords": round(item_s, 2),
                              "preference_keywords": round(preference_s, 2),
                              "soft_prompt_untrained": round(soft_s, 3)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--llm", type=Path, help="default: SmolLM2-135M-Instruct (GGUF, offline)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="pmg-bench-kw-") as temporary:
        result = benchmark(args.users, args.batch_size, args.max_new_tokens, args.llm, Path(temporary))
    out = sys.stdout
    out.write(f"{'condition':34} {'seconds':>9} {'LLM batches':>12} {'users/s':>9}\n")
    for name in ("per_prompt", "batched"):
        row = result[name]
        out.write(f"{name:34} {row['seconds']:9.2f} {row['llm_batches']:12d} {row['users_per_s']:9.3f}\n")
    out.write(f"{'resume (all cached)':34} {result['resume']['seconds']:9.3f} {result['resume']['llm_batches']:12d}\n")
    out.write(f"{'users/s batched / per prompt':34} {result['ratio_batched_over_per_prompt']:9.2f}\n")
    for stage, seconds in result["new_user_stages_s"].items():
        out.write(f"{'new user: ' + stage:34} {seconds:9.3f}\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
