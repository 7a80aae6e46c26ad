"""Train PMG's soft-prompt adapter against a frozen LLM and a frozen diffusion model.

The loss (PMG spec section 4, the third-party recipe): for each user, with the
soft embeddings ``s = adapter.encode(llm, soft_prompt_text)``,

    L = MSE(eps_theta(x_t, t, [text(target caption) | s]), eps)              target image
      - w * MSE(eps_theta(x'_t, t, [text(negative caption) | s]), eps)       a random other item

so the soft embeddings learn to help denoise *this* user's target and not an
arbitrary item. ``w = negative_weight`` (0.5 in the recipe, 0 = plain loss).
The target and the negative share the noise and the timestep, so their
difference measures the condition and the image, not the noise draw; both go
through the UNet as one batch.

Only the adapter's image tokens, prefix and bridge are optimised (AdamW). The
run is reproducible from ``seed``: the data order per epoch comes from
``(seed, epoch)``, noise and timesteps from one CPU ``torch.Generator`` whose
state is checkpointed, so a resumed run continues the very same loss curve.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..conditioning import TextEncoder
from ..errors import AdapterMismatchError, InvalidSettingError, TrainingError
from ..soft_prompt import SoftPromptAdapter, save_adapter
from .checkpoint import TrainingState, find_checkpoint, load_state, remove_checkpoints, save_state
from .components import LatentEncoder, NoisePredictor, NoiseSchedule, frozen_parameters
from .examples import TrainingExample, check_examples, examples_fingerprint, load_training_image
from .plot import loss_curve_image, save_loss_curve

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "SoftPromptTrainer", "TrainResult", "read_loss_csv", "LOSS_CSV", "LOSS_CURVE", "ADAPTER_FILE"]

LOSS_CSV = "loss.csv"
LOSS_CURVE = "loss_curve.png"
ADAPTER_FILE = "adapter.safetensors"
_CSV_FIELDS = ("step", "epoch", "loss", "target_loss", "negative_loss", "lr")
# Settings that change the loss curve: a checkpoint only resumes a run with the same ones.
_CURVE_SETTINGS = ("learning_rate", "weight_decay", "batch_size", "grad_accum", "resolution", "negative_weight", "seed", "mixed_precision")


@dataclass
class TrainConfig:
    """Training settings; defaults are the third-party recipe (spec section 4).

    ``max_steps``: when set, train exactly this many optimizer steps (cycling
    through epochs as needed) instead of ``epochs`` passes over the data.
    ``mixed_precision``: ``"auto"`` = bf16 autocast on CUDA GPUs with native bf16 (Ampere+), fp32
    elsewhere; ``"bf16"`` insists on it (CUDA only); ``"no"`` = fp32 always.
    ``cache_latents``: keep each image's latent in memory after its first
    encoding (the VAE is frozen, so the latent never changes).
    """

    learning_rate: float = 5e-6
    weight_decay: float = 1e-2
    batch_size: int = 6
    grad_accum: int = 4
    epochs: int = 3
    resolution: int = 512
    negative_weight: float = 0.5
    seed: int = 0
    checkpoint_every: int = 50
    max_steps: int | None = None
    mixed_precision: str = "auto"
    cache_latents: bool = True

    def validate(self) -> None:
        positive_ints = ("batch_size", "grad_accum", "epochs", "resolution", "checkpoint_every")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidSettingError(f"Training setting {name} = {value!r} must be a positive integer.")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise InvalidSettingError(f"max_steps = {self.max_steps!r} must be a positive integer or None (use epochs).")
        if self.resolution % 8:
            raise InvalidSettingError(
                f"resolution = {self.resolution} must be a multiple of 8 (the VAE downsamples by 8); try 512 or 256."
            )
        for name in ("learning_rate", "weight_decay", "negative_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidSettingError(f"Training setting {name} = {value!r} must be a finite number >= 0.")
        if self.learning_rate == 0:
            raise InvalidSettingError("learning_rate = 0 would train nothing; the recipe uses 5e-6.")
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise InvalidSettingError(f"mixed_precision = {self.mixed_precision!r}; choose 'auto', 'bf16' or 'no'.")

    def curve_settings(self) -> dict:
        return {name: getattr(self, name) for name in _CURVE_SETTINGS}


@dataclass
class TrainResult:
    """Where the outputs went and how the run ended."""

    adapter_path: Path
    loss_csv: Path
    loss_curve: Path
    steps: int  # optimizer steps completed in total
    start_step: int  # 0, or the checkpoint step this run resumed from
    final_loss: float  # loss of the last step
    final_loss_mean: float  # mean loss over the last (up to) 10 steps
    first_loss_mean: float  # mean loss over the first (up to) 10 steps
    seconds: float  # wall time of this run
    seconds_per_step: float
    examples: int
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("losses")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


class _Schedule:
    """Which examples each optimizer step uses: a stream of per-epoch permutations.

    Step ``s`` consumes stream positions ``[s*S, (s+1)*S)`` with ``S = batch * grad_accum``;
    position ``p`` is example ``perm(epoch = p // N)[p % N]``. Everything follows from
    the step number, so resuming needs no data-loader state.
    """

    def __init__(self, count: int, config: TrainConfig):
        self.count = count
        self.seed = config.seed
        self.batch = config.batch_size
        self.per_step = config.batch_size * config.grad_accum
        if config.max_steps is not None:
            self.total_steps = config.max_steps
            self.end = config.max_steps * self.per_step
        else:
            self.end = config.epochs * count
            self.total_steps = math.ceil(self.end / self.per_step)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.count)
        return self._perms[epoch]

    def micro_batches(self, step: int) -> list[list[int]]:
        start = step * self.per_step
        stop = min(start + self.per_step, self.end)
        positions = list(range(start, stop))
        indices = [int(self._perm(p // self.count)[p % self.count]) for p in positions]
        return [indices[i : i + self.batch] for i in range(0, len(indices), self.batch)]

    def epoch_at(self, step: int) -> float:
        return min((step + 1) * self.per_step, self.end) / self.count


class SoftPromptTrainer:
    """Optimise a :class:`SoftPromptAdapter` so its embeddings help the frozen generator denoise each user's target.

    All components are injected (see :mod:`pmg_core.training.components`);
    the LLM, the text encoder, the noise predictor and the latent encoder are
    never updated. ``generator_identity`` (checkpoint name + hash) is written into
    the adapter's metadata.
    """

    def __init__(
        self,
        llm,
        adapter: SoftPromptAdapter,
        text_encoder: TextEncoder,
        noise_predictor: NoisePredictor,
        latent_encoder: LatentEncoder,
        schedule: NoiseSchedule,
        config: TrainConfig | None = None,
        generator_identity: str = "",
    ):
        self.config = config or TrainConfig()
        self.config.validate()
        adapter.check_compatible(llm)
        if int(adapter.config.text_dim) != int(text_encoder.width):
            raise AdapterMismatchError(
                f"The adapter produces {adapter.config.text_dim}-wide embeddings but the generator's text encoder is "
                f"{text_encoder.width}-wide; build the adapter with text_dim={text_encoder.width} "
                "(SoftPromptAdapter.untrained(llm, text_encoder.width))."
            )
        if not isinstance(schedule, NoiseSchedule):
            raise TrainingError("schedule must be a NoiseSchedule (NoiseSchedule.from_scheduler(pipeline.scheduler)).")
        # The LLM is frozen by contract; make sure no LLM weight can receive a gradient.
        frozen_parameters(llm.model)
        self.llm = llm
        self.adapter = adapter
        self.text_encoder = text_encoder
        self.noise_predictor = noise_predictor
        self.latent_encoder = latent_encoder
        self.schedule = schedule
        self.generator_identity = generator_identity
        self.device = torch.device(getattr(noise_predictor, "device", "cpu"))
        self._latents: dict[str, torch.Tensor] = {}
        self._texts: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ public

    def train(
        self,
        examples: list[TrainingExample],
        out_dir: str | Path,
        progress: Callable[[int, int], None] | None = None,
        resume: bool = True,
    ) -> TrainResult:
        """Train, checkpoint every ``checkpoint_every`` steps, save the adapter; returns a :class:`TrainResult`.

        With ``resume=True`` a checkpoint in ``out_dir`` from a run with the same
        settings and examples is continued; ``resume=False`` starts over and
        discards it. ``progress(done, total)`` is called after each optimizer
        step and may raise to stop; on a stop (or Ctrl-C) the last complete step
        is checkpointed when the state is consistent, and the exception propagates.
        """
        check_examples(examples)
        config = self.config
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        schedule = _Schedule(len(examples), config)
        fingerprint = self._fingerprint(examples)
        self.adapter.to(self.llm.device)
        optimizer = torch.optim.AdamW(
            self.adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        noise_rng = torch.Generator(device="cpu").manual_seed(config.seed)
        start = self._restore(out_dir, resume, fingerprint, optimizer, noise_rng)
        if config.cache_latents:
            # Encoding can take minutes on a CPU: report "no step done yet" after each image, which
            # also gives the caller's progress callback its chance to interrupt.
            self._encode_all(examples, None if progress is None else lambda: progress(start, schedule.total_steps))
        log = _LossLog(out_dir / LOSS_CSV, keep_until=start)
        self._last_saved = start

        total = schedule.total_steps
        self.adapter.train()
        began = time.perf_counter()
        step = start
        # "clean": adapter, optimizer and `boundary_rng` are exactly the state after `step` steps;
        # "updating": the optimizer is writing parameters, the state is mixed and must not be saved.
        phase = "clean"
        boundary_rng = noise_rng.get_state()
        logger.info("Training %d examples for %d optimizer steps (from step %d) into %s", len(examples), total, start, out_dir)
        try:
            while step < total:
                record = self._accumulate_gradients(step, examples, schedule, optimizer, noise_rng)
                phase = "updating"
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                record.update(step=step + 1, epoch=schedule.epoch_at(step), lr=config.learning_rate)
                log.append(record)
                step += 1
                boundary_rng = noise_rng.get_state()
                phase = "clean"
                if step % config.checkpoint_every == 0 or step == total:
                    self._checkpoint(out_dir, step, optimizer, boundary_rng, fingerprint)
                if progress is not None:
                    progress(step, total)
        except BaseException:
            if phase == "clean" and step > self._last_saved:
                self._checkpoint(out_dir, step, optimizer, boundary_rng, fingerprint)
                logger.warning("Training stopped at step %d/%d; checkpoint saved in %s", step, total, out_dir)
            elif phase != "clean":
                logger.warning("Training stopped mid-update; the last checkpoint (step %d) is kept", self._last_saved)
            raise
        finally:
            self.adapter.eval()

        seconds = time.perf_counter() - began
        losses = [row["loss"] for row in read_loss_csv(out_dir / LOSS_CSV)]
        adapter_path = self._save_adapter(out_dir, step, losses, examples)
        curve = self._draw_curve(out_dir)
        done_now = max(step - start, 1)
        return TrainResult(
            adapter_path=adapter_path,
            loss_csv=out_dir / LOSS_CSV,
            loss_curve=curve,
            steps=step,
            start_step=start,
            final_loss=losses[-1] if losses else float("nan"),
            final_loss_mean=float(np.mean(losses[-10:])) if losses else float("nan"),
            first_loss_mean=float(np.mean(losses[:10])) if losses else float("nan"),
            seconds=seconds,
            seconds_per_step=seconds / done_now,
            examples=len(examples),
            losses=losses,
        )

    # ------------------------------------------------------------------ one step

    def _accumulate_gradients(self, step, examples, schedule, optimizer, noise_rng) -> dict:
        """Backward over the step's micro-batches (parameters untouched); returns the step's mean losses."""
        optimizer.zero_grad(set_to_none=True)
        micro_batches = schedule.micro_batches(step)
        samples = sum(len(m) for m in micro_batches)
        sums = {"loss": 0.0, "target_loss": 0.0, "negative_loss": 0.0}
        for indices in micro_batches:
            batch = [examples[i] for i in indices]
            loss, target_loss, negative_loss = self.micro_batch_loss(batch, noise_rng)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"The training loss became {loss.item()} at step {step + 1}; lower the learning rate or use "
                    "mixed_precision='no'. The last checkpoint is kept."
                )
            # Each micro-batch's mean weighted by its share of the step's samples = mean over the step.
            (loss * (len(batch) / samples)).backward()
            share = len(batch) / samples
            sums["loss"] += loss.item() * share
            sums["target_loss"] += target_loss.item() * share
            sums["negative_loss"] += negative_loss.item() * share
        return sums

    def micro_batch_loss(
        self, batch: list[TrainingExample], noise_rng: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, target_loss, negative_loss)`` for one micro-batch; ``loss`` carries the graph.

        Noise and timesteps are drawn from ``noise_rng`` (CPU) so runs on any
        device consume the same random stream.
        """
        weight = float(self.config.negative_weight)
        with self._autocast():
            soft = self.adapter.encode(self.llm, [e.soft_prompt_text for e in batch])
        soft = soft.to(self.device, torch.float32)
        target_latents = self._encode_images([e.target_image for e in batch])
        target_text = self._encode_texts([e.target_caption for e in batch])
        noise = torch.randn(target_latents.shape, generator=noise_rng).to(self.device)
        timesteps = torch.randint(0, self.schedule.num_train_timesteps, (len(batch),), generator=noise_rng).to(self.device)

        if weight > 0:
            negative_latents = self._encode_images([e.negative_image for e in batch])
            negative_text = self._encode_texts([e.negative_caption for e in batch])
            latents = torch.cat([target_latents, negative_latents])
            text = torch.cat([target_text, negative_text])
            per_sample = self._denoising_errors(
                latents, text, soft.repeat(2, 1, 1), noise.repeat(2, 1, 1, 1), timesteps.repeat(2)
            )
            target_loss, negative_loss = per_sample[: len(batch)].mean(), per_sample[len(batch) :].mean()
        else:
            target_loss = self._denoising_errors(target_latents, target_text, soft, noise, timesteps).mean()
            negative_loss = torch.zeros((), device=self.device)
        loss = target_loss - weight * negative_loss
        return loss, target_loss.detach(), negative_loss.detach()

    def _denoising_errors(self, latents, text, soft, noise, timesteps) -> torch.Tensor:
        """Per-sample MSE between the predictor's output and its training target."""
        cond = torch.cat([text.to(soft.dtype), soft], dim=1)
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        with self._autocast():
            prediction = self.noise_predictor(noisy, timesteps, cond)
        target = self.schedule.target(latents, noise, timesteps)
        return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(dim=1)

    # ------------------------------------------------------------------ frozen encodings (cached)

    def _encode_all(self, examples: list[TrainingExample], after_each: Callable[[], None] | None = None) -> None:
        """Encode every image and caption once, before the first step.

        The frozen VAE and text encoder then never run between UNet steps (in
        ComfyUI that avoids swapping models in and out of GPU memory each step).
        ``after_each`` runs after every newly encoded image (and may raise to interrupt).
        """
        began = time.perf_counter()
        self._encode_images([p for e in examples for p in (e.target_image, e.negative_image)], after_each)
        self._encode_texts([t for e in examples for t in (e.target_caption, e.negative_caption)])
        logger.info(
            "Encoded %d images and %d captions in %.1f s", len(self._latents), len(self._texts), time.perf_counter() - began
        )

    # Each image and caption is encoded alone, then cached: batched convolutions and matmuls
    # round differently with the batch size, and a resumed run must see bit-identical inputs.
    def _encode_images(self, paths: list[Path], after_each: Callable[[], None] | None = None) -> torch.Tensor:
        for path in dict.fromkeys(str(p) for p in paths):
            if path not in self._latents:
                pixels = load_training_image(Path(path), self.config.resolution).unsqueeze(0)
                with torch.no_grad():
                    self._latents[path] = self.latent_encoder(pixels)[0].to(self.device, torch.float32)
                if after_each is not None:
                    after_each()
        batch = torch.stack([self._latents[str(p)] for p in paths])
        if not self.config.cache_latents:
            self._latents.clear()
        return batch

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        for text in dict.fromkeys(texts):
            if text not in self._texts:
                with torch.no_grad():
                    self._texts[text] = self.text_encoder.encode([text]).embeddings[0].to(self.device, torch.float32)
        return torch.stack([self._texts[t] for t in texts])

    def _autocast(self):
        mode = self.config.mixed_precision
        if mode in ("auto", "bf16") and _native_bf16(self.device):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if mode == "bf16":
            raise TrainingError(
                f"mixed_precision='bf16' needs a CUDA device with native bf16 (Ampere or newer); this run is on "
                f"{self.device}. Use mixed_precision='auto' or 'no'."
            )
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ state

    def _fingerprint(self, examples: list[TrainingExample]) -> dict:
        c = self.adapter.config
        return {
            "settings": self.config.curve_settings(),
            "examples": examples_fingerprint(examples),
            "adapter": {
                "llm_identity": c.llm_identity,
                "text_dim": c.text_dim,
                "num_image_tokens": c.num_image_tokens,
                "num_prefix": c.num_prefix,
            },
            "generator": self.generator_identity,
        }

    def _restore(self, out_dir, resume, fingerprint, optimizer, noise_rng) -> int:
        folder = find_checkpoint(out_dir)
        if folder is None:
            return 0
        if not resume:
            logger.info("resume=False: discarding the checkpoint in %s and starting over", out_dir)
            remove_checkpoints(out_dir)
            (out_dir / LOSS_CSV).unlink(missing_ok=True)
            return 0
        state = load_state(folder)
        if state.fingerprint != fingerprint:
            differing = sorted(k for k in fingerprint if state.fingerprint.get(k) != fingerprint[k])
            raise TrainingError(
                f"The checkpoint in {out_dir} comes from a run with other {', '.join(differing)}; resuming would not "
                "continue the same run. Train into another output (pmg train --out, or another adapter_name in ComfyUI), "
                "or start over (pmg train --overwrite, or resume off in ComfyUI)."
            )
        self.adapter.load_state_dict({k: v.to(self.llm.device) for k, v in state.adapter.items()})
        optimizer.load_state_dict(state.optimizer)
        noise_rng.set_state(state.noise_rng)
        logger.info("Resuming from step %d (%s)", state.step, folder)
        return state.step

    def _checkpoint(self, out_dir, step, optimizer, rng_state, fingerprint) -> None:
        save_state(
            out_dir,
            TrainingState(
                step=step,
                adapter=self.adapter.state_dict(),
                optimizer=optimizer.state_dict(),
                noise_rng=rng_state,
                fingerprint=fingerprint,
            ),
        )
        self._last_saved = step

    def _save_adapter(self, out_dir: Path, steps: int, losses: list[float], examples) -> Path:
        c = self.config
        if self.generator_identity:
            self.adapter.config.generator = self.generator_identity
        metadata = {
            "trained_steps": str(steps),
            "final_loss": f"{losses[-1]:.6g}" if losses else "nan",
            "final_loss_mean10": f"{np.mean(losses[-10:]):.6g}" if losses else "nan",
            "llm_hidden_size": str(self.adapter.config.llm_hidden_size),
            "generator": self.generator_identity,
            "training_examples": str(len(examples)),
            "training_users": str(len({e.user_id for e in examples})),
            "learning_rate": str(c.learning_rate),
            "batch_size": str(c.batch_size),
            "grad_accum": str(c.grad_accum),
            "negative_weight": str(c.negative_weight),
            "resolution": str(c.resolution),
            "seed": str(c.seed),
        }
        path = out_dir / ADAPTER_FILE
        save_adapter(self.adapter, path, extra_metadata=metadata)
        return path

    def _draw_curve(self, out_dir: Path) -> Path:
        rows = read_loss_csv(out_dir / LOSS_CSV)
        steps = [int(r["step"]) for r in rows]
        series = {"loss": [r["loss"] for r in rows], "target_loss": [r["target_loss"] for r in rows]}
        if self.config.negative_weight > 0:
            series["negative_loss"] = [r["negative_loss"] for r in rows]
        return save_loss_curve(loss_curve_image(steps, series), out_dir / LOSS_CURVE)


def _native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA compute capability 8+, or ROCm).

    ``torch.cuda.is_bf16_supported()`` also answers True on older GPUs that only
    emulate bf16, where autocast would be slower than fp32; it also asks about the
    current device rather than the one the model is on.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


class _LossLog:
    """``loss.csv``: one row per optimizer step; rows past the resumed step are dropped first."""

    def __init__(self, path: Path, keep_until: int):
        self.path = path
        rows = [r for r in read_loss_csv(path) if int(r["step"]) <= keep_until] if path.exists() else []
        if keep_until and len(rows) != keep_until:
            logger.warning("loss.csv holds %d of the %d steps before the checkpoint", len(rows), keep_until)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_CSV_FIELDS)
            for row in rows:
                writer.writerow([_format(row[name]) for name in _CSV_FIELDS])

    def append(self, record: dict) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow([_format(record[name]) for name in _CSV_FIELDS])


def _format(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return format(float(value), ".9g")


def read_loss_csv(path: str | Path) -> list[dict]:
    """Rows of a ``loss.csv`` as dicts of numbers (``step`` as int)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = []
        for row in csv.DictReader(handle):
            rows.append({k: (int(v) if k == "step" else float(v)) for k, v in row.items()})
        return rows
