"""The local causal language model PMG asks for keywords and reads soft prompts with.

:func:`load_llm` accepts either a Hugging Face model folder or a single ``.gguf``
file. GGUF parsing and de-quantisation costs 20-45 s on a small CPU, so a GGUF
file is converted once into an ordinary safetensors folder under
``cache_dir/llm/<name>-<hash>-<dtype>/`` (tensor by tensor, :mod:`pmg_core.gguf_convert`:
a bf16 folder takes 2 bytes per weight) and every later load reads that folder (~0.3 s).

The cache key of a GGUF file is a *fingerprint*, not a full hash: sha256 over the
file size, its first MiB and its last MiB. GGUF headers (architecture, tokenizer,
tensor table) live in the first MiB and tensor data fills the rest, so two
different models practically never share all three; hashing a multi-GiB file in
full on every load would cost more than the load itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from .atomic import atomic_path
from .errors import InvalidSettingError, ModelLoadError
from .gguf_convert import convert_gguf
from .llm_placement import loader_options, parameter_count, plan_placement
from .llm_precision import bytes_per_parameter, dtype_name, resolve_dtype, torch_dtype
from .requirements import require

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

_MIB = 1024 * 1024
# Written next to a converted model: where it came from and the identity to keep.
_SOURCE_FILE = "pmg_source.json"
# Bump when the conversion itself changes so old cached folders are not reused.
_CONVERSION_VERSION = "2"  # 2: tensor by tensor, in the precision asked for
# One weight load at a time per process (two nodes asking at once share one load).
_LOAD_LOCK = threading.RLock()


class LocalLLM:
    """A frozen causal LM with its tokenizer (left padding) and a stable identity.

    Built by :func:`load_llm` (weights loaded) or :func:`open_llm` (a *handle*: tokenizer,
    config and identity are read, the weights only on the first access to :attr:`model`,
    e.g. the first :meth:`generate`). Everything cache keys need (``identity``, the shape
    properties, ``count_tokens``, ``chat_prompt``, ``context_length``) works without weights.
    ``weight_loads`` counts how often this handle read its weights from disk.

    ``identity`` names what the model computes with: its weights (``weights_identity``,
    ``<name>-<hash12>``) and, unless it runs in fp32, its precision (``<name>-<hash12>-bf16``),
    so every cache keyed on it keeps precisions apart while fp32 keys stay as they were
    before precisions existed. A soft-prompt adapter binds to ``weights_identity``: one
    trained in fp32 serves the same weights in bf16.
    """

    def __init__(
        self,
        model: transformers.PreTrainedModel | None = None,
        tokenizer: transformers.PreTrainedTokenizerBase | None = None,
        identity: str = "",
        source: Path | None = None,
        lazy_config: transformers.PretrainedConfig | None = None,
        weights_loader: Callable[..., transformers.PreTrainedModel] | None = None,
        weight_loads: int = 0,
        dtype: str | None = None,
        quantization: str | None = None,
    ):
        self._model = model
        self.tokenizer = tokenizer
        self.weights_identity = identity
        self.source = source
        self.lazy_config = lazy_config
        self.weights_loader = weights_loader
        self.weight_loads = weight_loads
        self.quantization = quantization
        self._compute_device: torch.device | None = None
        if dtype is None:  # an already loaded model says which precision it has
            dtype = dtype_name(next(model.parameters()).dtype) if model is not None else "fp32"
        self.dtype = dtype_name(dtype)

    def __repr__(self) -> str:  # never loads weights
        return f"LocalLLM(identity={self.identity!r}, source={str(self.source)!r}, loaded={self.loaded})"

    @property
    def identity(self) -> str:
        precision = self.quantization or self.dtype
        return self.weights_identity if precision == "fp32" else f"{self.weights_identity}-{precision}"

    # -- lazy weights ----------------------------------------------------------------
    @property
    def model(self) -> transformers.PreTrainedModel:
        """The weights; a handle from :func:`open_llm` reads them on first use (one load at a time)."""
        return self._model if self._model is not None else self.load_weights()

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (an :func:`open_llm` handle starts without them)."""
        return self._model is not None

    def load_weights(self, **placement) -> transformers.PreTrainedModel:
        """Read the weights now (once); ``placement`` (``device_map``, ``max_memory``) goes to the loader."""
        with _LOAD_LOCK:
            if self._model is not None:
                return self._model
            if self.weights_loader is None:
                raise ModelLoadError(f"The LLM {self.identity!r} has no weights and no way to load them.")
            started = time.perf_counter()
            self._model = self.weights_loader(**placement)
            self.weight_loads += 1
            log.info("Loaded the weights of LLM %s in %.2f s", self.identity, time.perf_counter() - started)
            return self._model

    # -- shape of the model, read from its config ---------------------------------
    @property
    def config(self) -> transformers.PretrainedConfig:
        if not self.loaded and self.lazy_config is not None:
            return self.lazy_config
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def num_attention_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.hidden_size // self.num_attention_heads)

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt + answer) the model was built for."""
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(self.config, name, None)
            if value:
                return int(value)
        return 2048

    @property
    def device(self) -> torch.device:
        """Where inputs go: the compute device set by :meth:`compute_on`, else where the weights are.

        The CPU for a handle whose weights are not loaded yet. A model loaded partially
        (some layers kept on the CPU and cast per forward) computes where it was told to.
        """
        if self._compute_device is not None:
            return self._compute_device
        if not self.loaded:
            return torch.device("cpu")
        return self.model.get_input_embeddings().weight.device

    def compute_on(self, device: torch.device | str | None) -> None:
        """Send inputs to ``device`` whatever the weights' placement (``None``: follow the weights)."""
        self._compute_device = torch.device(device) if device is not None else None

    # -- prompts ---------------------------------------------------------------
    def chat_prompt(self, user_text: str, system: str | None = None, assistant_prefix: str = "") -> str:
        """``user_text`` wrapped the way this model expects a conversation turn.

        Uses the tokenizer's chat template when it has one, else the reference's
        plain ``### Human: ... ### Assistant:`` layout. ``assistant_prefix`` starts
        the answer (the reference primes it with "The keywords are:").
        """
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": user_text})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + assistant_prefix
        head = f"{system} " if system else ""
        tail = f" {assistant_prefix}" if assistant_prefix else ""
        return f"{head}### Human: {user_text} ### Assistant:{tail}"

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes as a prompt to :meth:`generate`."""
        return len(self.tokenizer(text, add_special_tokens=self._adds_special_tokens)["input_ids"])

    @property
    def _adds_special_tokens(self) -> bool:
        # A chat template writes the special tokens (BOS, turn markers) itself; the plain
        # "### Human:" layout relies on the tokenizer to add BOS.
        return not getattr(self.tokenizer, "chat_template", None)

    # -- generation --------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int = 100,
        seed: int = 0,
        do_sample: bool = False,
        progress: Progress | None = None,
        batch_size: int = 8,
        temperature: float = 0.7,
    ) -> list[str]:
        """The continuation (new text only) of each prompt, in order.

        Prompts run in batches of ``batch_size`` with left padding; greedy unless
        ``do_sample``. Sampling is seeded per batch (``seed + batch index``) inside
        a forked RNG, so results do not depend on, or disturb, global random state.
        ``progress(done, total)`` counts decoding steps (``total`` = batches x
        ``max_new_tokens``), is called after every step, and may raise to stop.
        """
        if isinstance(prompts, str):
            raise TypeError("generate() takes a list of prompts; wrap a single prompt in a list.")
        if not prompts:
            return []
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
        total = len(batches) * max_new_tokens
        outputs: list[str] = []
        for index, batch in enumerate(batches):
            offset = index * max_new_tokens
            outputs.extend(self._generate_batch(batch, max_new_tokens, seed + index, do_sample, temperature,
                                                progress, offset, total))
            if progress is not None:
                progress(offset + max_new_tokens, total)
        return outputs

    def _generate_batch(self, prompts, max_new_tokens, seed, do_sample, temperature, progress, offset, total):
        tokenizer = self.tokenizer
        encoded = tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=self._adds_special_tokens
        ).to(self.device)
        longest = encoded["input_ids"].shape[1]
        if longest + max_new_tokens > self.context_length:
            raise InvalidSettingError(
                f"A prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the LLM's context "
                f"of {self.context_length} tokens; shorten the prompt (fewer history items) or lower max_new_tokens."
            )
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if do_sample:
            kwargs.update(temperature=temperature, top_p=0.95, top_k=50)
        else:  # explicit, so a model's own sampling defaults cannot leak into greedy decoding
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if progress is not None:
            kwargs["stopping_criteria"] = transformers.StoppingCriteriaList([_ProgressStep(progress, offset, total)])
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            generated = self.model.generate(**encoded, **kwargs)
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    # -- placement (the ComfyUI node moves the model between devices) ------------
    def to(self, device: str | torch.device) -> "LocalLLM":
        self.model.to(device)
        self.compute_on(None)  # inputs follow the weights again
        return self


class _ProgressStep(transformers.StoppingCriteria):
    """Reports each decoding step; never stops generation itself (an exception does)."""

    def __init__(self, progress: Progress, offset: int, total: int):
        self.progress, self.offset, self.total, self.step = progress, offset, total, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.step += 1
        self.progress(min(self.offset + self.step, self.total), self.total)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


# -- loading -------------------------------------------------------------------------


def load_llm(
    path: Path | str,
    cache_dir: Path | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    quantization: str | None = None,
) -> LocalLLM:
    """Load a causal LM from a Hugging Face folder or a ``.gguf`` file (converted once, cached).

    ``dtype`` is ``auto`` (bf16 or fp16 on a GPU that supports it, fp32 on the CPU), ``bf16``,
    ``fp16`` or ``fp32``. On a GPU a model bigger than the free memory is spread over the GPU
    and the CPU by accelerate; ``quantization`` (``int8``/``nf4``) uses bitsandbytes if installed.
    Raises :class:`ModelLoadError` naming the problem and the fix for a missing path, a folder
    without ``config.json``, unreadable files and architectures that are not causal language
    models. :func:`open_llm` is the same without reading the weights yet.
    """
    target = torch.device(device)
    llm = open_llm(path, cache_dir=cache_dir, dtype=resolve_dtype(dtype, target))
    free = torch.cuda.mem_get_info(target)[0] if target.type == "cuda" else 0
    size = parameter_count(llm.config) * bytes_per_parameter(llm.dtype) if target.type != "cpu" else 0
    plan = plan_placement(size, free, target.type, quantization=quantization)  # refuses bitsandbytes on a CPU
    if plan == "cpu":
        llm.load_weights()
        return llm
    log.info("LLM %s: %.2f GB of weights, %.2f GB free on %s: %s placement",
             llm.identity, size / 1e9, free / 1e9, target, plan)
    llm.quantization = quantization  # part of the identity: quantized answers differ
    llm.load_weights(**loader_options(plan, target, torch_dtype(llm.dtype), free, quantization))
    llm.compute_on(target)
    return llm


def open_llm(path: Path | str, cache_dir: Path | None = None, dtype: str = "fp32") -> LocalLLM:
    """A :class:`LocalLLM` handle: tokenizer, config and identity read, weights loaded on first use.

    Checks what :func:`load_llm` checks (config, architecture, safetensors present),
    so a bad model fails here, not at the first cache miss. A ``.gguf`` file is
    converted first if its cached folder for ``dtype`` does not exist yet (once per file
    and precision: bf16/fp16 folders hold 2 bytes per weight; fp32 keeps the exact values).
    """
    dtype = dtype_name(dtype)  # concrete here: "auto" depends on a device, which load_llm knows
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"LLM path {path} does not exist; give a Hugging Face model folder or a .gguf file.")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf model; give a .gguf file or the folder holding config.json."
            )
        folder = _converted_gguf_folder(path, cache_dir, dtype)
    else:
        folder = path
    llm = _open_folder(folder, dtype)
    llm.source = path
    return llm


# What opening a folder reads (tokenizer, config, identity), per folder and the size and mtime of
# its files: a returning user's prompt re-opens the LLM in ~1 ms instead of re-reading the tokenizer.
_OPENED: dict[tuple, tuple] = {}
_OPENED_LIMIT = 8


def _folder_signature(folder: Path) -> tuple:
    stats = []
    for file in sorted(folder.iterdir()):
        if file.is_file():
            info = file.stat()
            stats.append((file.name, info.st_size, info.st_mtime_ns))
    return (str(folder.resolve()), tuple(stats))


def _open_folder(folder: Path, dtype: str) -> LocalLLM:
    signature = _folder_signature(folder) if folder.is_dir() else None
    opened = _OPENED.get(signature) if signature is not None else None
    if opened is None:
        opened = _read_folder(folder)
        if signature is not None:
            if len(_OPENED) >= _OPENED_LIMIT:
                _OPENED.pop(next(iter(_OPENED)))
            _OPENED[signature] = opened
    tokenizer, config, identity = opened
    return LocalLLM(model=None, tokenizer=tokenizer, identity=identity, source=folder, lazy_config=config,
                    weights_loader=lambda **placement: _load_weights(folder, dtype, **placement), dtype=dtype)


def _read_folder(folder: Path) -> tuple:
    if not (folder / "config.json").is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        hint = f" It holds {ggufs[0].name}: pass that file instead." if ggufs else ""
        raise ModelLoadError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder.{hint} "
            "Give a folder saved with save_pretrained() or a .gguf file."
        )
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises ValueError/KeyError/OSError for bad configs
        raise ModelLoadError(
            f"{folder}/config.json is not a usable model config ({_short(exc)}); "
            "re-save the model with save_pretrained() or point to the right folder."
        ) from exc
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(
            f"{folder} holds a {config.model_type!r} model, which is not a causal language model; "
            "PMG needs a decoder LLM such as Llama, Qwen or SmolLM2."
        )
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(
            f"{folder} has no *.safetensors weights; PMG loads weights only from safetensors. Re-save the "
            "model with save_pretrained(safe_serialization=True) or give its .gguf file."
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"Could not load the tokenizer in {folder} ({_short(exc)}); check that its tokenizer files are "
            "complete, or re-save the model with save_pretrained()."
        ) from exc
    tokenizer.padding_side = "left"  # generation continues at the right edge of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, config, _folder_identity(folder)


def _load_weights(folder: Path, dtype: str, **placement) -> transformers.PreTrainedModel:
    # Built directly in `dtype`: a 16-bit model never passes through fp32 (twice the memory).
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=torch_dtype(dtype), use_safetensors=True, **placement
        )
    except Exception as exc:
        raise ModelLoadError(
            f"Could not load the model in {folder} ({_short(exc)}); check that its weights "
            "(*.safetensors) are complete, or re-save it with save_pretrained()."
        ) from exc
    model.eval()
    model.requires_grad_(False)
    return model


def _converted_gguf_folder(gguf: Path, cache_dir: Path | None, dtype: str) -> Path:
    """The cached HF folder for ``gguf`` at ``dtype``, converting it first if needed."""
    from .assets import default_cache_dir

    digest = gguf_fingerprint(gguf)
    name = _safe_name(gguf.stem)
    out = Path(cache_dir or default_cache_dir()) / "llm" / f"{name}-{digest[:12]}-{dtype}"
    if (out / _SOURCE_FILE).is_file():
        return out
    log.info("Converting %s to a cached %s Hugging Face folder %s (once; this takes ~30 s)", gguf.name, dtype, out)
    started = time.perf_counter()
    with atomic_path(out) as tmp:  # a concurrent conversion that finished first is kept
        _convert_gguf(gguf, tmp, dtype)
        (tmp / _SOURCE_FILE).write_text(
            json.dumps({"gguf": gguf.name, "fingerprint": digest, "identity": f"{name}-{digest[:12]}",
                        "dtype": dtype, "conversion": _CONVERSION_VERSION}),
            encoding="utf-8",
        )
    log.info("Converted %s in %.1f s", gguf.name, time.perf_counter() - started)
    return out


def _convert_gguf(gguf: Path, out: Path, dtype: str) -> None:
    # transformers reads GGUF through the gguf package: its absence is no fault of the file.
    require("gguf", f"reading the GGUF language model {gguf.name}")
    try:
        convert_gguf(gguf, out, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # the gguf reader raises ValueError/KeyError/struct errors on garbage
        raise ModelLoadError(
            f"{gguf} could not be read as a GGUF language model ({_short(exc)}); the file may be truncated, "
            "not a GGUF file, or an architecture transformers cannot de-quantise. Re-download it or "
            "give a Hugging Face folder instead."
        ) from exc


def gguf_fingerprint(path: Path) -> str:
    """sha256 over size + first MiB + last MiB of a file (see the module docstring)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_MIB))
        if size > _MIB:
            handle.seek(max(size - _MIB, _MIB))
            digest.update(handle.read())
    return digest.hexdigest()


def _folder_identity(folder: Path) -> str:
    """``<name>-<hash12>``; a converted GGUF folder keeps the identity of its GGUF file."""
    source = folder / _SOURCE_FILE
    if source.is_file():
        with contextlib.suppress(ValueError, KeyError):
            return str(json.loads(source.read_text(encoding="utf-8"))["identity"])
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(weights.name.encode())
        digest.update(gguf_fingerprint(weights).encode())
    return f"{_safe_name(folder.name)}-{digest.hexdigest()[:12]}"


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return cleaned.strip("-.") or "model"


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
