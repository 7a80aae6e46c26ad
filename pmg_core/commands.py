"""``pmg keywords|embed|generate|score``: the method's steps from the command line, JSON on stdout.

``pmg_core.cli`` assembles these with the other subcommands (:func:`register`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .cli_common import (
    BUILTIN_MOVIELENS,
    BUILTIN_STICKERS,
    add_llm_source_args,
    keyword_llm,
    load_cli_llm,
)
from .errors import ImageValueError, InvalidSettingError
from .progress import scaled_progress, stderr_bar, tqdm_progress

log = logging.getLogger("pmg")


def register(sub) -> None:
    """Add ``keywords``, ``embed``, ``generate`` and ``score`` to an ``argparse`` sub-parser set."""
    keywords = sub.add_parser("keywords", help="preference and target keywords for users (JSON)")
    _add_history_args(keywords)
    _add_llm_args(keywords)
    keywords.add_argument("--batch-size", type=int, default=16,
                          help="users per LLM batch (default 16); users already cached are skipped, so a "
                               "stopped run resumes. Pass the server's <ComfyUI user dir>/pmg_cache as "
                               "--cache-dir to warm the cache PMG's nodes read")
    keywords.add_argument("--model-cache-dir", type=Path, default=None,
                          help="where a .gguf LLM is converted (default: --cache-dir, else ~/.cache/pmg)")
    keywords.set_defaults(run=_run_keywords)

    embed = sub.add_parser("embed", help="soft preference embeddings for a user (safetensors)")
    _add_history_args(embed)
    _add_llm_args(embed)
    embed.add_argument("--adapter", default="none", help="adapter .safetensors, or 'none' for an untrained one")
    embed.add_argument("--text-dim", type=int, default=768, help="text width of the target generator (untrained adapter only)")
    embed.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    embed.set_defaults(run=_run_embed)

    generate = sub.add_parser("generate", help="images for an alpha sweep (PNG files + JSON)")
    _add_history_args(generate)
    _add_llm_args(generate)
    generate.add_argument(
        "--checkpoint",
        type=Path,
        help="SD1.x single-file checkpoint (.safetensors, as in ComfyUI's models/checkpoints) or a local "
        "diffusers folder (from a clone, ./pmg defaults to a tiny random pipeline)",
    )
    generate.add_argument("--adapter", default="none", help="adapter .safetensors, or 'none' for an untrained one")
    generate.add_argument("--alphas", default="0.33,0.5,0.67", help="comma-separated preference weights in [0, 1]")
    generate.add_argument("--steps", type=int, default=20)
    generate.add_argument("--guidance", type=float, default=7.5)
    generate.add_argument("--size", type=int, default=512, help="image height and width")
    generate.add_argument("--out", type=Path, required=True, help="output folder")
    generate.set_defaults(run=_run_generate)

    score = sub.add_parser("score", help="score images against a user's history and target (JSON)")
    score.add_argument("images", nargs="+", type=Path, help="candidate images, in alpha order")
    score.add_argument("--history-images", nargs="*", type=Path, default=[], help="images of the user's history")
    score.add_argument("--history", help="history file (its items' images are used) or builtin:stickers")
    score.add_argument("--user", help="user id in --history")
    score.add_argument("--format", default="auto")
    score.add_argument("--target-image", type=Path)
    score.add_argument("--target-text")
    score.add_argument("--preference-text")
    score.add_argument("--alpha", type=float, default=2 / 3, help="trade-off: alpha*log d_pref + (1-alpha)*log d_target")
    score.add_argument("--alphas", help="the alphas the images were generated with, comma-separated (for the report)")
    score.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex")
    score.add_argument("--clip", type=Path, help="local CLIP model folder for CLIP scores")
    score.set_defaults(run=_run_score)


def _add_history_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--history",
        required=True,
        help=f"history file, or {BUILTIN_MOVIELENS} (MovieLens-100K from recbole) or {BUILTIN_STICKERS} (Twemoji users)",
    )
    p.add_argument("--format", default="auto", help="auto, jsonl, csv, chat, movielens, sticker")
    p.add_argument("--user", "--users", dest="user", required=True,
                   help="user id, or several separated by commas, or 'all' (every user of the file)")
    p.add_argument("--max-items", type=int, default=None, help="keep at most this many history items")
    p.add_argument(
        "--split",
        choices=("reference", "file"),
        default=None,
        help="'reference': ratings>=4, sort by rating then recency, 3 history items + the next as target "
        "(default for MovieLens); 'file': use the file's own target",
    )


def _add_llm_args(p: argparse.ArgumentParser) -> None:
    add_llm_source_args(p, served=True)
    p.add_argument("--n-preference", type=int, default=8)
    p.add_argument("--n-target", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--no-cache", action="store_true", help="ask the LLM again instead of reusing cached keywords")


# --- shared steps -------------------------------------------------------------


def _users(args) -> list:
    from .loaders import SplitRule, load_user
    from .loaders.stickers import build_sticker_histories

    ids = [u.strip() for u in args.user.split(",") if u.strip()]
    if ids == ["all"]:
        ids = _all_users(args)
    if not ids:
        raise InvalidSettingError("--user is empty; give a user id such as --user 1")
    if args.history == BUILTIN_STICKERS:
        stickers = {h.user_id: h for h in build_sticker_histories(seed=0)}
        missing = [u for u in ids if u not in stickers]
        if missing:
            raise InvalidSettingError(
                f"unknown sticker user(s) {missing}; known: {', '.join(sorted(stickers)[:8])} ..."
            )
        return [stickers[u] for u in ids]
    if args.history == BUILTIN_MOVIELENS:
        from .assets import movielens_dir

        path, fmt = movielens_dir(), "movielens"
    else:
        path, fmt = Path(args.history), args.format
    is_movielens = fmt == "movielens" or args.history == BUILTIN_MOVIELENS
    split = SplitRule() if args.split == "reference" or (args.split is None and is_movielens) else None
    return [load_user(path, u, fmt=fmt, max_items=args.max_items, split=split) for u in ids]


def _all_users(args) -> list[str]:
    from .loaders import list_users
    from .loaders.stickers import build_sticker_histories

    if args.history == BUILTIN_STICKERS:
        return [h.user_id for h in build_sticker_histories(seed=0)]
    if args.history == BUILTIN_MOVIELENS:
        from .assets import movielens_dir

        return list_users(movielens_dir(), fmt="movielens")
    return list_users(Path(args.history), fmt=args.format)


def _preferences(args, histories, llm) -> list:
    from .keywords import KeywordExtractor

    extractor = KeywordExtractor(
        llm,
        cache_dir=args.cache_dir,
        n_preference=args.n_preference,
        n_target=args.n_target,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        use_cache=not args.no_cache,
    )
    # The LLM work is batched across users, so the bar shows its share done, in users.
    with stderr_bar("keywords", "user", total=len(histories)) as bar:
        return extractor.extract_many(histories, progress=scaled_progress(bar))


def _adapter_source(args):
    from .soft_prompt import AdapterSource

    if args.adapter == "none":
        log.warning("using an UNTRAINED soft-prompt adapter (train one with `pmg train`)")
        return AdapterSource(seed=args.seed)
    return AdapterSource(Path(args.adapter))


# --- subcommands -----------------------------------------------------------------


def _run_keywords(args) -> list[dict]:
    from .prefetch import prefetch_keywords

    histories = _users(args)
    # A handle (when every user is cached already, the weights are never read), or a server.
    llm = keyword_llm(args)
    preferences: list = []
    with stderr_bar("keywords", "user", total=len(histories)) as bar:
        summary = prefetch_keywords(
            llm, histories, cache_dir=args.cache_dir, batch_size=args.batch_size, progress=tqdm_progress(bar),
            preferences=preferences, n_preference=args.n_preference, n_target=args.n_target,
            max_new_tokens=args.max_new_tokens, seed=args.seed, use_cache=not args.no_cache,
        )
    log.info("pmg keywords: %s", summary.to_dict())
    return [_preference_dict(p) for p in preferences]


def _preference_dict(preference) -> dict:
    import dataclasses

    return dataclasses.asdict(preference)


def _run_embed(args) -> dict:
    from .soft_prompt import encode_cached, save_soft_embeddings

    histories = _users(args)
    llm = load_cli_llm(args)
    preferences = _preferences(args, histories, keyword_llm(args, local=llm))
    result = encode_cached(llm, [p.soft_prompt_text for p in preferences], _adapter_source(args), args.text_dim,
                           cache_dir=args.cache_dir, use_cache=not args.no_cache)
    metadata = {
        **result.metadata,
        "users": ",".join(p.user_id for p in preferences),
        "adapter": str(args.adapter),
        "text_dim": str(result.embeddings.shape[-1]),
    }
    save_soft_embeddings(args.out, result.embeddings, metadata)
    return {"path": str(args.out), "shape": list(result.embeddings.shape), "cached": list(result.cached), **metadata}


def _run_generate(args) -> dict:
    from .conditioning import ConditionWeights, build_conditions, parse_alphas
    from .sd_runner import SDRunner
    from .soft_prompt import encode_cached

    alphas = parse_alphas(args.alphas)
    histories = _users(args)
    if len(histories) != 1:
        raise InvalidSettingError("generate takes one --user at a time; pass a single user id and run generate once per user")
    if args.checkpoint is None:
        # The checkout's ./pmg supplies a tiny random pipeline; the installed package has none.
        fallback = getattr(args, "fallback_pipeline", None)
        if fallback is None:
            raise InvalidSettingError(
                "generate needs --checkpoint (an SD1.x .safetensors or diffusers folder); without one, "
                "./pmg generate from a clone of the repository uses a tiny random pipeline."
            )
        log.warning("no --checkpoint given: using a TINY RANDOM pipeline; its images are noise (mechanics only)")
        generator = SDRunner(fallback(seed=args.seed))
    else:
        from .sd_checkpoint import load_sd_components

        generator = SDRunner(load_sd_components(args.checkpoint).pipeline())
    encoder = generator.text_encoder

    llm = load_cli_llm(args)
    (preference,) = _preferences(args, histories, keyword_llm(args, local=llm))
    soft = encode_cached(llm, [preference.soft_prompt_text], _adapter_source(args), encoder.width,
                         cache_dir=args.cache_dir, use_cache=not args.no_cache).embeddings
    conditions = build_conditions(
        encoder, preference.target_text, preference.preference_text, soft, ConditionWeights(), alphas
    )
    images = generator.generate(
        conditions,
        negative_prompt=preference.negative_prompt,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance,
        height=args.size,
        width=args.size,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for alpha, image in zip(alphas, images, strict=True):
        path = args.out / f"{preference.user_id}_alpha{alpha:.2f}.png"
        image.save(path)
        paths.append(str(path))
    return {"user_id": preference.user_id, "alphas": alphas, "images": paths, "preference": _preference_dict(preference)}


def _run_score(args) -> dict:
    import torch

    from .conditioning import parse_alphas
    from .metrics import LPIPS
    from .metrics.images import load_image
    from .scoring import choose_target, score_sweep

    candidates = [load_image(p) for p in args.images]
    size = tuple(candidates[0].shape[-2:])
    for path, image in zip(args.images, candidates, strict=True):
        if tuple(image.shape[-2:]) != size:
            raise ImageValueError(
                f"candidate {path} is {image.shape[-2]}x{image.shape[-1]} pixels but {args.images[0]} is "
                f"{size[0]}x{size[1]}; score candidates of one size (the images of one generate run)."
            )
    history_paths = list(args.history_images)
    history = None
    if args.history:
        if not args.user:
            raise InvalidSettingError("--history needs --user; add --user <id> (one of the file's user ids)")
        (history,) = _users(argparse.Namespace(**{**vars(args), "max_items": None, "split": "file"}))
        history_paths += history.images
    target, target_source = choose_target(
        load_image(args.target_image) if args.target_image else None, history, lambda path: (load_image(path), str(path))
    )
    clip = None
    if args.clip:
        from .metrics import CLIPScorer

        clip = CLIPScorer.from_folder(args.clip)
    _, result = score_sweep(
        torch.cat(candidates),
        alphas=parse_alphas(args.alphas) if args.alphas else None,
        history_images=[load_image(p) for p in history_paths] or None,
        target_image=target,
        target_source=str(args.target_image) if args.target_image else target_source,
        target_text=args.target_text,
        preference_text=args.preference_text,
        user_id=args.user,
        alpha=args.alpha,
        lpips=LPIPS(net=args.lpips_net),
        clip=clip,
    )
    result["images"] = [str(p) for p in args.images]
    return result
