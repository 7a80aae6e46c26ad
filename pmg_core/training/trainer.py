"""Train PMG's soft-prompt adapter against a frozen LLM and a frozen diffusion model.

The loss (PMG spec section 4, the third-party recipe): for each user, with the
soft embeddings ``s = adapter.encode(llm, soft_prompt_text)``,

    L = MSE(eps_theta(x_t, t, [text(target caption) | s]), eps)              target image
      - w * MSE(eps_theta(x'_t, t, [text(negative caption) | s]), eps)       a random other item

so the soft embeddings learn to help denoise *this* user's target and not an
arbitrary item. On the flow-matching families (SD3, Flux) ``eps_theta`` is the
velocity prediction and the target ``eps - x_0`` (:class:`.components.FlowMatchingSchedule`);
the caption's pooled vector goes to the predictor beside the tokens (SDXL's ADM ``y``,
SD3's and Flux's vector input). ``w = negative_weight`` (0.5 in the recipe, 0 = plain loss).
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
from ..soft_prompt import SoftPromptAdapter
from .checkpoint import TrainingState, save_state
from .components import (
    FlowMatchingSchedule,
    LatentEncoder,
    NoisePredictor,
    NoiseSchedule,
    TrainingSchedule,
    frozen_parameters,
)
from .examples import TrainingExample, check_examples, load_training_image
from .loss_log import LossLog, read_loss_csv
from .outputs import (
    ADAPTER_FILE,
    LOSS_CSV,
    LOSS_CURVE,
    draw_loss_curve,
    save_trained_adapter,
)
from .run_state import restore_run, run_fingerprint
from .step_plan import StepPlan, checkpoint_interval

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_FILE", "LOSS_CSV", "LOSS_CURVE", "SoftPromptTrainer", "TrainConfig", "TrainResult", "autocast_for", "read_loss_csv",
]

_CSV_FIELDS = ("step", "epoch", "loss", "target_loss", "negative_loss", "lr")
# Settings that change the loss curve: a checkpoint only resumes a run with the same ones.
_CURVE_SETTINGS = (
    "learning_rate", "weight_decay", "batch_size", "grad_accum", "resolution", "negative_weight", "seed", "mixed_precision",
)


@dataclass
class TrainConfig:
    """Training settings; defaults are the third-party recipe (spec section 4).

    ``max_steps``: when set, train exactly this many optimizer steps (cycling
    through epochs as needed) instead of ``epochs`` passes over the data.
    ``mixed_precision``: ``"auto"`` = bf16 autocast on CUDA GPUs with native bf16 (Ampere+), fp32
    elsewhere; ``"bf16"`` insists on it (CUDA only); ``"no"`` = fp32 always.
    ``cache_latents``: keep each image's latent in memory after its first
    encoding (the VAE is frozen, so the latent never changes).
    ``checkpoint_every``: steps between checkpoints; ``None`` = a quarter of the run,
    at most 50 (:func:`.step_plan.checkpoint_interval`). The last step is always saved.
    """

    learning_rate: float = 5e-6
    weight_decay: float = 1e-2
    batch_size: int = 6
    grad_accum: int = 4
    epochs: int = 3
    resolution: int = 512
    negative_weight: float = 0.5
    seed: int = 0
    checkpoint_every: int | None = None
    max_steps: int | None = None
    mixed_precision: str = "auto"
    cache_latents: bool = True

    def validate(self) -> None:
        positive_ints = ("batch_size", "grad_accum", "epochs", "resolution", "checkpoint_every")
        for name in positive_ints:
            value = getattr(self, name)
            if name == "checkpoint_every" and value is None:
                continue
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
    adapter: SoftPromptAdapter | None = field(default=None, repr=False, compare=False)  # the trained adapter

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("losses", "adapter")}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


@dataclass
class _Run:
    """What one call of :meth:`SoftPromptTrainer.train` works with."""

    out_dir: Path
    plan: StepPlan
    every: int  # steps between checkpoints
    fingerprint: dict
    optimizer: torch.optim.Optimizer
    noise_rng: torch.Generator
    log: LossLog
    start: int  # the step this run continues from


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
        schedule: TrainingSchedule,
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
        if not isinstance(schedule, (NoiseSchedule, FlowMatchingSchedule)):
            raise TrainingError(
                "schedule must be a NoiseSchedule (NoiseSchedule.from_scheduler(pipeline.scheduler)) or, for SD3/Flux, "
                "a FlowMatchingSchedule (the model's sigma table)."
            )
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
        self._texts: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # caption -> (tokens, pooled)

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
        run = self._prepare(examples, Path(out_dir), resume, progress)
        total, step = run.plan.total_steps, run.start
        self.adapter.train()
        began = time.perf_counter()
        # "clean": adapter, optimizer and `boundary_rng` are exactly the state after `step` steps;
        # "updating": the optimizer is writing parameters, the state is mixed and must not be saved.
        phase = "clean"
        boundary_rng = run.noise_rng.get_state()
        logger.info("Training %d examples for %d optimizer steps (from step %d) into %s", len(examples), total, step, run.out_dir)
        try:
            while step < total:
                record = self._accumulate_gradients(step, examples, run.plan, run.optimizer, run.noise_rng)
                phase = "updating"
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
                record.update(step=step + 1, epoch=run.plan.epoch_at(step), lr=self.config.learning_rate)
                run.log.append(record)
                step += 1
                boundary_rng = run.noise_rng.get_state()
                phase = "clean"
                if step % run.every == 0 or step == total:
                    self._checkpoint(run.out_dir, step, run.optimizer, boundary_rng, run.fingerprint)
                if progress is not None:
                    progress(step, total)
        except BaseException:
            if phase == "clean" and step > self._last_saved:
                self._checkpoint(run.out_dir, step, run.optimizer, boundary_rng, run.fingerprint)
                logger.warning("Training stopped at step %d/%d; checkpoint saved in %s", step, total, run.out_dir)
            elif phase != "clean":
                logger.warning("Training stopped mid-update; the last checkpoint (step %d) is kept", self._last_saved)
            raise
        finally:
            self.adapter.eval()
        return self._finish(run, step, examples, time.perf_counter() - began)

    def _prepare(self, examples, out_dir: Path, resume: bool, progress) -> _Run:
        """The run's plan, optimizer and noise stream, restored from a matching checkpoint; latents encoded."""
        config = self.config
        out_dir.mkdir(parents=True, exist_ok=True)
        plan = StepPlan(len(examples), config)
        fingerprint = run_fingerprint(config, self.adapter, examples, self.generator_identity)
        self.adapter.to(self.llm.device)
        optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        noise_rng = torch.Generator(device="cpu").manual_seed(config.seed)
        start = restore_run(out_dir, resume, fingerprint, self.adapter, optimizer, noise_rng, self.llm.device)
        if config.cache_latents:
            # Encoding can take minutes on a CPU: report "no step done yet" after each image, which
            # also gives the caller's progress callback its chance to interrupt.
            self._encode_all(examples, None if progress is None else lambda: progress(start, plan.total_steps))
        self._last_saved = start
        return _Run(
            out_dir, plan, config.checkpoint_every or checkpoint_interval(plan.total_steps), fingerprint, optimizer,
            noise_rng, LossLog(out_dir / LOSS_CSV, _CSV_FIELDS, keep_until=start), start,
        )

    def _finish(self, run: _Run, step: int, examples, seconds: float) -> TrainResult:
        """Save the adapter and the loss curve; the run's figures."""
        losses = [row["loss"] for row in read_loss_csv(run.out_dir / LOSS_CSV)]
        adapter_path = save_trained_adapter(
            self.adapter, run.out_dir, self.config, step, losses, examples, self.generator_identity
        )
        return TrainResult(
            adapter_path=adapter_path,
            loss_csv=run.out_dir / LOSS_CSV,
            loss_curve=draw_loss_curve(run.out_dir, with_negative=self.config.negative_weight > 0),
            steps=step,
            start_step=run.start,
            final_loss=losses[-1] if losses else float("nan"),
            final_loss_mean=float(np.mean(losses[-10:])) if losses else float("nan"),
            first_loss_mean=float(np.mean(losses[:10])) if losses else float("nan"),
            seconds=seconds,
            seconds_per_step=seconds / max(step - run.start, 1),
            examples=len(examples),
            losses=losses,
            adapter=self.adapter,
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
        with autocast_for(self.config.mixed_precision, self.device):
            soft = self.adapter.encode(self.llm, [e.soft_prompt_text for e in batch])
        soft = soft.to(self.device, torch.float32)
        target_latents = self._encode_images([e.target_image for e in batch])
        target_text, target_pooled = self._encode_texts([e.target_caption for e in batch])
        noise = torch.randn(target_latents.shape, generator=noise_rng).to(self.device)
        timesteps = torch.randint(0, self.schedule.num_train_timesteps, (len(batch),), generator=noise_rng).to(self.device)

        if weight > 0:
            negative_latents = self._encode_images([e.negative_image for e in batch])
            negative_text, negative_pooled = self._encode_texts([e.negative_caption for e in batch])
            latents = torch.cat([target_latents, negative_latents])
            text = torch.cat([target_text, negative_text])
            pooled = None if target_pooled is None else torch.cat([target_pooled, negative_pooled])
            per_sample = self._denoising_errors(
                latents, (text, pooled), soft.repeat(2, 1, 1), noise.repeat(2, 1, 1, 1), timesteps.repeat(2)
            )
            target_loss, negative_loss = per_sample[: len(batch)].mean(), per_sample[len(batch) :].mean()
        else:
            target_loss = self._denoising_errors(
                target_latents, (target_text, target_pooled), soft, noise, timesteps
            ).mean()
            negative_loss = torch.zeros((), device=self.device)
        loss = target_loss - weight * negative_loss
        return loss, target_loss.detach(), negative_loss.detach()

    def _denoising_errors(self, latents, caption, soft, noise, timesteps) -> torch.Tensor:
        """Per-sample MSE between the predictor's output and its training target.

        ``caption`` is ``(tokens [B,T,D], pooled [B,P] or None)``; the soft tokens follow
        the caption's, and the pooled vector is the caption's alone, as in PMG's condition.
        """
        text, pooled = caption
        cond = torch.cat([text.to(soft.dtype), soft], dim=1)
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        # Predictors of families without a pooled input may take three arguments only.
        extra = () if pooled is None else (pooled,)
        with autocast_for(self.config.mixed_precision, self.device):
            prediction = self.noise_predictor(noisy, timesteps, cond, *extra)
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

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens [B,T,D], pooled [B,P] or None)`` of ``texts``, each encoded once."""
        for text in dict.fromkeys(texts):
            if text not in self._texts:
                with torch.no_grad():
                    encoded = self.text_encoder.encode([text])
                pooled = None if encoded.pooled is None else encoded.pooled[0].to(self.device, torch.float32)
                self._texts[text] = (encoded.embeddings[0].to(self.device, torch.float32), pooled)
        tokens = torch.stack([self._texts[t][0] for t in texts])
        pooled = [self._texts[t][1] for t in texts]
        return tokens, (None if any(p is None for p in pooled) else torch.stack(pooled))

    # ------------------------------------------------------------------ state

    def _checkpoint(self, out_dir, step, optimizer, rng_state, fingerprint) -> None:
        save_state(
            out_dir,
            TrainingState(
                step=step,
                weights=self.adapter.state_dict(),
                optimizer=optimizer.state_dict(),
                noise_rng=rng_state,
                fingerprint=fingerprint,
            ),
        )
        self._last_saved = step


def autocast_for(mode: str, device: torch.device):
    """bf16 autocast where ``mode`` asks for it and ``device`` computes bf16 natively, else nothing."""
    if mode in ("auto", "bf16") and _native_bf16(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if mode == "bf16":
        raise TrainingError(
            f"mixed_precision='bf16' needs a CUDA device with native bf16 (Ampere or newer); this run is on "
            f"{device}. Use mixed_precision='auto' or 'no'."
        )
    return contextlib.nullcontext()


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
