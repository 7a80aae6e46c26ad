"""``pmg eval``: does PMG personalise the sticker generator? Table, plots and JSON into one folder.

    pmg eval --generator models/generators/pmg-sticker-generator.safetensors \\
             --judge models/judges/pmg-sticker-judge.safetensors --users 24 --split held-out --out docs/evaluation
    pmg eval --train-judge --judge models/judges/pmg-sticker-judge.safetensors     # the category classifier

Users come from the sticker scene (``builtin:stickers``): the *train* split
(seed 0) is for choosing settings, the *held-out* split (seed 1, other users)
for reporting. Keywords come from the LLM (cached, so a rerun asks it nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SPLIT_SEEDS = {"train": 0, "held-out": 1}
METHOD_CHOICES = ("target only", "history names", "keywords", "keywords + soft (untrained)", "keywords + soft (trained)",
                  "image prompt",
                  "PMG + image prompt", "PMG sweep + z")


def register(subparsers) -> None:
    """Add the ``eval`` subcommand."""
    from ..cli_common import add_llm_source_args

    p = subparsers.add_parser("eval", help="measure PMG on the sticker generator (table, plots, JSON)")
    p.add_argument("--generator", type=Path, help="sticker generator .safetensors (pmg train-generator)")
    p.add_argument("--judge", type=Path, required=True, help="category judge .safetensors (read, or written by --train-judge)")
    p.add_argument("--train-judge", action="store_true", help="train the category judge on the real training emoji and stop")
    p.add_argument("--judge-steps", type=int, default=1200)
    p.add_argument("--out", type=Path, help="folder for evaluation.md, evaluation.json and the PNG plots")
    p.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="held-out", help="train users tune, held-out users report")
    p.add_argument("--users", type=int, default=24)
    default_methods = [m for m in METHOD_CHOICES if ("trained)" not in m or "un" in m) and "image prompt" not in m]
    p.add_argument("--methods", default=",".join(default_methods),
                   help="comma-separated, from: " + "; ".join(METHOD_CHOICES))
    p.add_argument("--adapter", type=Path,
                   help="a soft-prompt adapter trained for this generator (for 'keywords + soft (trained)')")
    p.add_argument("--train-adapter", type=Path, metavar="DIR",
                   help="train a soft-prompt adapter on the train split's users into DIR and stop "
                        "(then pass DIR/adapter.safetensors)")
    p.add_argument("--adapter-users", type=int, default=48)
    p.add_argument("--adapter-steps", type=int, default=150)
    p.add_argument("--adapter-lr", type=float, default=1e-3)
    p.add_argument("--image-prompt", type=Path, help="an image prompt projection for this generator (for 'image prompt' methods; "
                   "with --train-image-prompt, the file the new one is compared with on the validation users)")
    p.add_argument("--train-image-prompt", type=Path, metavar="DIR",
                   help="train the image prompt projection on the train split's users into DIR and stop")
    p.add_argument("--image-prompt-users", type=int, default=200)
    p.add_argument("--image-prompt-steps", type=int, default=300)
    p.add_argument("--image-prompt-tokens", type=int, default=4)
    p.add_argument("--image-prompt-lr", type=float, default=1e-3)
    p.add_argument("--images-per-user", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--weighting", default="scale", help="scale, interpolate or repeat (pmg_core.conditioning.WEIGHTINGS)")
    p.add_argument("--negative", default="", help="negative prompt of every sticker")
    p.add_argument("--upscaler", type=Path,
                   help="a 4x upscale model file spandrel reads (e.g. realesr-animevideov3-x4.safetensors): "
                        "also a 256 px sample grid")
    p.add_argument("--responsiveness", action="store_true", help="also judge stickers for every held-out emoji name")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_llm_source_args(p)
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> dict:
    import torch

    from ..errors import InvalidSettingError

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_judge:
        return _train_judge(args)
    if args.train_adapter:
        return _train_adapter(args)
    if args.train_image_prompt:
        return _train_image_prompt(args)
    if args.generator is None or args.out is None:
        raise InvalidSettingError("pmg eval needs --generator FILE and --out FOLDER (or --train-judge).")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_CHOICES]
    if unknown:
        raise InvalidSettingError(f"Unknown method(s) {unknown}; choose from: {'; '.join(METHOD_CHOICES)}.")
    if "keywords + soft (trained)" in methods and args.adapter is None:
        raise InvalidSettingError(
            "The method 'keywords + soft (trained)' needs --adapter FILE (a soft-prompt adapter for this generator)."
        )
    if any("image prompt" in m for m in methods) and args.image_prompt is None:
        raise InvalidSettingError(
            "The 'image prompt' methods need --image-prompt FILE (pmg eval --train-image-prompt DIR writes one)."
        )
    return _evaluate(args, methods)


def _train_judge(args) -> dict:
    import torch

    from ..sticker_model.dataset import image_tensor, split
    from ..progress import stderr_bar, tqdm_progress
    from .judge import accuracy, save_judge, train_judge

    trained, held_out = split()
    with stderr_bar("judge", "step", args.judge_steps) as bar:
        judge = train_judge(trained, steps=args.judge_steps, progress=tqdm_progress(bar))
    labels = torch.tensor([image.category_index for image in held_out])
    held_out_accuracy = accuracy(judge, image_tensor(held_out, 64), labels)
    record = {"steps": args.judge_steps, "seed": 0, "images": len(trained), "held_out_accuracy": held_out_accuracy}
    save_judge(judge, args.judge, record)
    return {"judge": str(args.judge), "held_out_accuracy": held_out_accuracy}


def _train_adapter(args) -> dict:
    from ..cli_common import load_cli_llm
    from ..errors import InvalidSettingError
    from ..sticker_model.adapter_training import train_sticker_adapter
    from ..sticker_model.text_encoder import WIDTH
    from ..sticker_model.weights import load_sticker_model
    from ..loaders.stickers import build_sticker_histories
    from ..progress import stderr_bar, tqdm_progress
    from ..soft_prompt import SoftPromptAdapter
    from ..training.trainer import TrainConfig

    if args.generator is None:
        raise InvalidSettingError("pmg eval --train-adapter needs --generator FILE (the generator the adapter writes for).")
    llm = load_cli_llm(args)
    config = TrainConfig(learning_rate=args.adapter_lr, batch_size=4, grad_accum=1, resolution=64,
                         max_steps=args.adapter_steps, checkpoint_every=25, mixed_precision="no")
    histories = build_sticker_histories(n_users=args.adapter_users, seed=SPLIT_SEEDS["train"])
    with stderr_bar("adapter", "step", args.adapter_steps) as bar:
        result = train_sticker_adapter(load_sticker_model(args.generator), llm, SoftPromptAdapter.untrained(llm, text_dim=WIDTH),
                                       histories, args.train_adapter, config, progress=tqdm_progress(bar))
    return {"adapter": str(result.adapter_path), "steps": result.steps, "first_loss_mean": result.first_loss_mean,
            "final_loss_mean": result.final_loss_mean, "seconds_per_step": result.seconds_per_step}


def _train_image_prompt(args) -> dict:
    """The image route's projection, trained on train-split users only (their target stickers).

    A tenth of those users (at least 8) is kept aside: the projection is validated on them and keeps its best weights.
    """
    import torch

    from ..errors import InvalidSettingError
    from ..image_prompt import ImagePromptProjection, train_projection
    from ..loaders.stickers import build_sticker_histories
    from ..metrics.lpips import LPIPS
    from ..progress import stderr_bar, tqdm_progress
    from ..sticker_model.sampling import add_noise
    from ..sticker_model.text_encoder import WIDTH, MiniLMTextEncoder
    from ..sticker_model.weights import load_sticker_model
    from .cases import image_prompt_examples

    if args.generator is None:
        raise InvalidSettingError("pmg eval --train-image-prompt needs --generator FILE (the generator the tokens are for).")
    generator, encoder, lpips = load_sticker_model(args.generator), MiniLMTextEncoder(), LPIPS("alex")
    histories = build_sticker_histories(n_users=args.image_prompt_users, seed=SPLIT_SEEDS["train"])
    examples = image_prompt_examples(generator, encoder, lpips, histories)
    held = max(8, len(examples) // 10) if len(examples) >= 16 else 0
    fit, validation = examples[: len(examples) - held], examples[len(examples) - held :]
    scale = float(torch.cat([e.target_states for e in fit]).std())  # the text states' size
    torch.manual_seed(0)
    projection = ImagePromptProjection(fit[0].features.shape[1], args.image_prompt_tokens, WIDTH, scale)
    with stderr_bar("image prompt", "step", args.image_prompt_steps) as bar:
        result = train_projection(projection, fit, generator.denoiser.float(), add_noise, args.image_prompt_steps,
                                  args.image_prompt_lr, progress=tqdm_progress(bar), validation=validation)
    training = {"generator": Path(args.generator).name, "image_size": generator.image_size, "users": len(fit),
                "validation_users": len(validation), "split": "train", "steps": len(result.losses),
                "best_step": result.best_step, "learning_rate": args.image_prompt_lr, "batch_size": 4, "seed": 0}
    written = _write_image_prompt(Path(args.train_image_prompt), projection, training, result)
    if args.image_prompt is not None and validation:  # the file this one would replace, on the same users and noise
        from ..image_prompt import load_image_prompt, validation_loss

        previous = load_image_prompt(args.image_prompt, lpips, width=WIDTH).projection
        written["validation_previous"] = validation_loss(previous, validation, generator.denoiser.float(), add_noise)
    return written


def _write_image_prompt(out: Path, projection, training: dict, result) -> dict:
    """The projection file, its loss.csv and validation.csv; the figures that tell whether it learned."""
    from ..image_prompt import save_image_prompt

    out.mkdir(parents=True, exist_ok=True)
    path = save_image_prompt(out / "image-prompt.safetensors", projection, training)
    losses = result.losses
    (out / "loss.csv").write_text("step,loss\n" + "".join(f"{i + 1},{v:.6f}\n" for i, v in enumerate(losses)), encoding="utf-8")
    (out / "validation.csv").write_text("step,loss\n" + "".join(f"{step},{v:.6f}\n" for step, v in result.validation),
                                        encoding="utf-8")
    first, last = sum(losses[:25]) / len(losses[:25]), sum(losses[-25:]) / len(losses[-25:])
    return {"image_prompt": str(path), "first_loss_mean": first, "final_loss_mean": last, "best_step": result.best_step,
            "validation": result.validation, "validation_text_only": result.text_only}


def _load_upscaler(path: Path):
    """A ``[3, h, w] -> [3, 4h, 4w]`` function from an upscale model file (the one the sticker workflows use)."""
    import torch
    from safetensors.torch import load_file

    from ..errors import ModelLoadError

    try:
        from spandrel import ModelLoader
    except ImportError as exc:
        raise ModelLoadError(f"--upscaler needs spandrel ({exc}); install it: pip install spandrel==0.4.2") from exc
    if not Path(path).is_file() or Path(path).suffix != ".safetensors":
        raise ModelLoadError(
            f"--upscaler {path}: no such .safetensors file; write it with: pmg example-data --comfyui /path/to/ComfyUI "
            "(into models/upscale_models)"
        )
    model = ModelLoader().load_from_state_dict(load_file(str(path))).eval()

    @torch.no_grad()
    def upscale(image: torch.Tensor) -> torch.Tensor:
        return model(image[None].float())[0].clamp(0, 1)

    return upscale


def _evaluate(args, methods: list[str]) -> dict:
    from ..metrics.lpips import LPIPS
    from ..progress import stderr_bar, tqdm_progress
    from ..sticker_model.text_encoder import MiniLMTextEncoder
    from ..sticker_model.weights import load_sticker_model
    from .judge import load_judge
    from .report import markdown_table, paired_changes_table, tradeoff_curve
    from .sticker_eval import EvalSettings, StickerEvaluation, StickerPipeline, summarise

    settings = EvalSettings(
        steps=args.steps, cfg=args.cfg, images_per_user=args.images_per_user, alpha=args.alpha,
        weighting=args.weighting, negative=args.negative,
    )
    pipeline = StickerPipeline(load_sticker_model(args.generator), MiniLMTextEncoder())
    judge, lpips = load_judge(args.judge), LPIPS("alex")
    cases, llm = _eval_cases(args, methods, lpips)
    evaluation = StickerEvaluation(pipeline, judge, settings, lpips)
    with stderr_bar("stickers", "user x method", len(cases) * len(methods)) as bar:
        results = evaluation.run(cases, methods, progress=tqdm_progress(bar))
    summary = summarise(results, seed=0)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "split": args.split,
        "users": len(cases),
        "settings": vars(settings) | {"sweep": list(settings.sweep)},
        "generator": str(args.generator),
        "llm": llm.identity,
        "summary": {method: {k: v.to_dict() for k, v in row.items()} for method, row in summary.items()},
        # Per-user values (user order), so any other paired comparison can be computed afterwards.
        "per_user": {method: result.metrics for method, result in results.items()},
        "keywords": {c.history.user_id: list(c.preference.preference_keywords) for c in cases},
    }
    table = markdown_table(summary) + "\n\nPaired by user:\n\n" + paired_changes_table(record["per_user"])
    tradeoff_curve(summary).save(out / "tradeoff.png")
    _save_sample_grids(args, out, cases, results, methods)
    if args.responsiveness:
        record["responsiveness"] = _responsiveness(args, out, pipeline, judge, lpips)
    (out / "evaluation.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    (out / "evaluation.md").write_text(table + "\n", encoding="utf-8")
    logger.info("Wrote %s", out)
    return {"out": str(out), "table": table, "responsiveness": record.get("responsiveness")}


def _eval_cases(args, methods: list[str], lpips) -> tuple[list, object]:
    """The evaluated users with their keywords, soft embeddings and (if asked) image tokens; and the LLM."""
    from ..cli_common import load_cli_llm
    from ..loaders.stickers import build_sticker_histories
    from ..progress import stderr_bar, tqdm_progress
    from .cases import build_cases

    histories = build_sticker_histories(n_users=args.users, seed=SPLIT_SEEDS[args.split])
    llm = load_cli_llm(args)
    image_prompt = None
    if args.image_prompt is not None:
        from ..image_prompt import load_image_prompt
        from ..sticker_model.text_encoder import WIDTH

        image_prompt = load_image_prompt(args.image_prompt, lpips, width=WIDTH)
    with stderr_bar("keywords + soft embeddings", "user", len(histories)) as bar:
        cases = build_cases(histories, llm, args.cache_dir, methods, args.adapter, progress=tqdm_progress(bar),
                            image_prompt=image_prompt)
    return cases, llm


_SHORT_NAMES = {"target only": "none", "history names": "names", "keywords": "keywords",
                "keywords + soft (untrained)": "+soft (0)", "keywords + soft (trained)": "+soft", "image prompt": "image",
                "PMG + image prompt": "PMG+image", "PMG sweep + z": "sweep + z"}


def _save_sample_grids(args, out: Path, cases: list, results: dict, methods: list[str]) -> None:
    """samples.png (64 px, what is measured) and, with --upscaler, samples_256.jpg (what the workflows save)."""
    from .report import sample_grid

    shown = [m for m in methods if m in results]
    rows = [(case.history.user_id, [*case.history_images[:3], case.target_image[0], *(results[m].samples[i] for m in shown)])
            for i, case in enumerate(cases[:8])]
    titles = ["history", "history", "history", "target", *(_SHORT_NAMES.get(m, m) for m in shown)]
    sample_grid(rows, titles).save(out / "samples.png")
    if args.upscaler is not None:  # the measures stay at 64 px; this grid only shows what the workflows save
        upscale = _load_upscaler(args.upscaler)
        big = [(label, [upscale(image) for image in images]) for label, images in rows]
        sample_grid(big, titles, cell=256).save(out / "samples_256.jpg", quality=90)  # a PNG of it is ~6 MB


def _responsiveness(args, out: Path, pipeline, judge, lpips) -> dict:
    """Stickers for every held-out emoji name, judged; the strips of generated and real ones beside the report."""
    from ..progress import stderr_bar, tqdm_progress
    from ..sticker_model.dataset import split
    from .report import image_strip
    from .responsiveness import responsiveness_report

    with stderr_bar("held-out names", "sticker", None) as bar:
        report = responsiveness_report(pipeline, judge, lpips, split()[1], steps=args.steps, cfg=args.cfg,
                                       progress=tqdm_progress(bar))
    image_strip(report.pop("images")[:64]).save(out / "held_out_generated.png")
    image_strip(report.pop("real")[:64]).save(out / "held_out_real.png")
    report.pop("latents")
    return report
