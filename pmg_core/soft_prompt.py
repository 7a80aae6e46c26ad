"""Implicit soft preference embeddings: a frozen LLM read through learnable tokens.

PMG (spec section 4) turns a user's behaviours into k vectors in the diffusion
model's text-embedding space:

1. the soft-prompt text ("A person watched ... Please describe his movie
   interests.") is tokenized and embedded by the LLM;
2. k learnable *image tokens* are appended in the input-embedding slots;
3. a P-Tuning v2 *prefix* of m learnable key/value vectors per layer is given
   to every attention layer as an already-filled KV cache;
4. the LLM's last hidden state at the k image-token positions goes through the
   *bridge* ``Linear(hidden -> text_dim)``.

Only the image tokens, the prefix and the bridge are parameters; the LLM stays
frozen. ``text_dim`` always comes from the target text encoder (768 SD1.x,
1024 SD2.x, 2048 SDXL), never from a constant.

The LLM is any object with ``model`` (a transformers causal LM), ``tokenizer``,
``identity``, ``weights_identity``, ``hidden_size``, ``num_layers``, ``num_kv_heads``,
``head_dim`` and ``device``, i.e. :class:`pmg_core.llm.LocalLLM`. An adapter binds to
the LLM's weights (``weights_identity``), not its precision: its own weights stay fp32 and
are cast to the LLM's dtype where they enter it (image tokens, prefix keys/values), and the
LLM's hidden states are cast back to fp32 before the bridge. Cached soft embeddings key on
``identity``, which includes the precision (bf16 gives slightly different embeddings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import atomic_path
from .conditioning import check_finite
from .errors import AdapterMismatchError, EmbeddingValueError, InvalidSettingError, ModelLoadError
from .weights_file import read_weights

logger = logging.getLogger(__name__)

__all__ = [
    "AdapterConfig", "AdapterSource", "SoftEmbeddings", "SoftPromptAdapter", "encode_cached", "load_adapter",
    "load_soft_embeddings", "save_adapter", "save_soft_embeddings", "FORMAT_NAME", "FORMAT_VERSION",
]

FORMAT_NAME = "pmg-soft-prompt-adapter"
FORMAT_VERSION = 1
_EXTRA_PREFIX = "meta."  # free-form metadata keys are stored under this prefix in the file header
_INT_FIELDS = (
    "llm_hidden_size",
    "llm_num_layers",
    "llm_num_kv_heads",
    "llm_head_dim",
    "text_dim",
    "num_image_tokens",
    "num_prefix",
    "format_version",
)


@dataclass
class AdapterConfig:
    """What an adapter was built for; stored as strings in the safetensors header."""

    llm_identity: str  # LocalLLM.identity: model name + content hash
    llm_hidden_size: int
    llm_num_layers: int
    llm_num_kv_heads: int
    llm_head_dim: int
    text_dim: int  # width of the target text encoder's output
    num_image_tokens: int = 4  # k
    num_prefix: int = 4  # m
    format_version: int = FORMAT_VERSION
    generator: str = ""  # free text: the diffusion family it was trained for, e.g. "SD1.5"
    metadata: dict[str, str] = field(default_factory=dict)  # free-form training metadata

    @classmethod
    def for_llm(cls, llm, text_dim: int, num_image_tokens: int = 4, num_prefix: int = 4, **extra: Any) -> AdapterConfig:
        """The config of an adapter for ``llm`` producing ``text_dim``-wide embeddings."""
        return cls(
            llm_identity=str(llm.weights_identity),
            llm_hidden_size=int(llm.hidden_size),
            llm_num_layers=int(llm.num_layers),
            llm_num_kv_heads=int(llm.num_kv_heads),
            llm_head_dim=int(llm.head_dim),
            text_dim=int(text_dim),
            num_image_tokens=int(num_image_tokens),
            num_prefix=int(num_prefix),
            **extra,
        )

    def validate(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidSettingError(f"Adapter setting {name} = {value!r} must be a positive integer.")

    @property
    def prefix_width(self) -> int:
        """Size of one prefix row: a key and a value for every layer and KV head."""
        return self.llm_num_layers * 2 * self.llm_num_kv_heads * self.llm_head_dim

    def to_metadata(self) -> dict[str, str]:
        """All fields as strings (safetensors headers hold only strings)."""
        header = {"format": FORMAT_NAME}
        for f in dataclasses.fields(self):
            if f.name != "metadata":
                header[f.name] = str(getattr(self, f.name))
        for key, value in self.metadata.items():
            header[_EXTRA_PREFIX + str(key)] = str(value)
        return header

    @classmethod
    def from_metadata(cls, header: dict[str, str], source: Path | str = "<adapter>") -> AdapterConfig:
        """Rebuild a config from a file header; :class:`ModelLoadError` if fields are missing or malformed."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("metadata", "generator")]
        missing = [name for name in names if name not in header]
        if missing:
            raise ModelLoadError(
                f"{source} lacks adapter metadata {missing}; it was not written by pmg_core.save_adapter. "
                f"Re-save the adapter with save_adapter or train it again."
            )
        values: dict[str, Any] = {"llm_identity": header["llm_identity"], "generator": header.get("generator", "")}
        for name in _INT_FIELDS:
            try:
                values[name] = int(header[name])
            except ValueError:
                raise ModelLoadError(
                    f"{source}: adapter metadata {name}={header[name]!r} is not an integer; the file is corrupted. "
                    f"Re-save or retrain the adapter."
                ) from None
        values["metadata"] = {
            key[len(_EXTRA_PREFIX) :]: value for key, value in header.items() if key.startswith(_EXTRA_PREFIX)
        }
        return cls(**values)


def _describe_llm(identity: str, hidden: int, layers: int, kv_heads: int, head_dim: int) -> str:
    return f"{identity!r} (hidden {hidden}, {layers} layers, {kv_heads} KV heads of {head_dim})"


class SoftPromptAdapter(nn.Module):
    """Image tokens + P-Tuning v2 prefix + bridge: the trainable part of PMG's soft embeddings."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        config.validate()
        self.config = config
        # Built as zeros without touching the global RNG; untrained() or load_adapter() fill them.
        self.image_tokens = nn.Parameter(torch.zeros(config.num_image_tokens, config.llm_hidden_size))
        self.prefix = nn.utils.skip_init(nn.Embedding, config.num_prefix, config.prefix_width)
        self.bridge = nn.utils.skip_init(nn.Linear, config.llm_hidden_size, config.text_dim)
        with torch.no_grad():
            self.prefix.weight.zero_()
            self.bridge.weight.zero_()
            self.bridge.bias.zero_()

    @classmethod
    def untrained(
        cls, llm, text_dim: int, num_image_tokens: int = 4, num_prefix: int = 4, seed: int = 0
    ) -> SoftPromptAdapter:
        """A deterministically initialised adapter for ``llm`` (the starting point of training).

        - image tokens: drawn from a normal distribution with the per-dimension mean
          and spread of the LLM's token embeddings, so they look like ordinary tokens;
        - prefix: small (std 0.02), so the untrained prefix barely perturbs the LLM;
        - bridge: weights N(0, 1/hidden), bias 0, so each output dimension has
          roughly the scale of the LLM's (normalised) last hidden state.
        """
        adapter = cls(AdapterConfig.for_llm(llm, text_dim, num_image_tokens, num_prefix))
        generator = torch.Generator().manual_seed(seed)
        token_table = llm.model.get_input_embeddings().weight.detach().float().cpu()
        mean, std = token_table.mean(dim=0), token_table.std(dim=0)
        hidden = adapter.config.llm_hidden_size
        with torch.no_grad():
            noise = torch.randn(adapter.image_tokens.shape, generator=generator)
            adapter.image_tokens.copy_(mean + std * noise)
            adapter.prefix.weight.copy_(0.02 * torch.randn(adapter.prefix.weight.shape, generator=generator))
            adapter.bridge.weight.copy_(torch.randn(adapter.bridge.weight.shape, generator=generator) / math.sqrt(hidden))
            adapter.bridge.bias.zero_()
        return adapter

    def check_compatible(self, llm) -> None:
        """Raise :class:`AdapterMismatchError` unless ``llm`` is the model this adapter was built for."""
        c = self.config
        ours = (c.llm_identity, c.llm_hidden_size, c.llm_num_layers, c.llm_num_kv_heads, c.llm_head_dim)
        theirs = (str(llm.weights_identity), int(llm.hidden_size), int(llm.num_layers), int(llm.num_kv_heads), int(llm.head_dim))
        if ours != theirs:
            raise AdapterMismatchError(
                f"This soft-prompt adapter was trained for the LLM {_describe_llm(*ours)}, but the loaded LLM is "
                f"{_describe_llm(*theirs)}. Choose the adapter trained for this LLM and checkpoint, "
                f"or train one for it (pmg train)."
            )

    def prefix_key_values(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> list[tuple[Tensor, Tensor]]:
        """Per layer, the prefix keys and values ``[batch, kv_heads, m, head_dim]``.

        They go into the attention layers as past keys/values, after rotary
        position encoding would have been applied: the prefix has no position.
        """
        c = self.config
        rows = self.prefix.weight.to(device=device, dtype=dtype)  # [m, layers*2*kv*hd]
        rows = rows.view(c.num_prefix, c.llm_num_layers, 2, c.llm_num_kv_heads, c.llm_head_dim)
        per_layer = rows.permute(1, 2, 3, 0, 4)  # [layers, 2, kv, m, hd]
        per_layer = per_layer.unsqueeze(2).expand(-1, -1, batch_size, -1, -1, -1)  # [layers, 2, B, kv, m, hd]
        return [(layer[0], layer[1]) for layer in per_layer]

    def encode(self, llm, texts: list[str]) -> Tensor:
        """Soft embeddings ``[B, k, text_dim]`` (float32) for a batch of soft-prompt texts.

        Differentiable with respect to the adapter's parameters (the LLM's own
        parameters must have ``requires_grad=False``, as ``LocalLLM`` sets them).
        For inference, call it under ``torch.no_grad()``. Rows are left-padded so
        that the image tokens sit at the true end of every text; a batch gives
        the same embeddings as each text alone.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise InvalidSettingError("No soft-prompt text given; pass at least one text to encode.")
        self.check_compatible(llm)
        c = self.config
        model = llm.model
        device = torch.device(llm.device)
        token_table = model.get_input_embeddings()
        dtype = token_table.weight.dtype

        token_ids = self._tokenize(llm, texts)
        text_length = max(len(ids) for ids in token_ids)
        batch = len(texts)
        rows, masks = [], []
        image = self.image_tokens.to(device=device, dtype=dtype)
        for ids in token_ids:
            pad = text_length - len(ids)
            text = token_table(torch.tensor(ids, dtype=torch.long, device=device))
            rows.append(torch.cat([text.new_zeros(pad, text.shape[-1]), text, image], dim=0))
            masks.append([0] * pad + [1] * (len(ids) + c.num_image_tokens))
        inputs_embeds = torch.stack(rows)
        new_mask = torch.tensor(masks, dtype=torch.long, device=device)
        # The mask covers prefix + text + image tokens; prefix positions are always visible.
        attention_mask = torch.cat([new_mask.new_ones(batch, c.num_prefix), new_mask], dim=1)
        # Positions count real tokens only and start after the prefix, so a left-padded
        # row sees exactly the positions it would see alone.
        position_ids = (attention_mask.cumsum(dim=1) - 1)[:, c.num_prefix :].clamp(min=0)

        cache = _prefix_cache(self.prefix_key_values(batch, device, dtype), model.config)
        decoder = model.base_model
        output = decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{_cache_argument(decoder): cache},
        )
        at_image_tokens = output.last_hidden_state[:, -c.num_image_tokens :, :].float()
        weight = self.bridge.weight.to(at_image_tokens.device)
        bias = self.bridge.bias.to(at_image_tokens.device)
        embeddings = nn.functional.linear(at_image_tokens, weight, bias)
        check_finite(
            embeddings,
            "The soft preference embeddings",
            "an LLM in float16 can overflow (load it in float32 or bfloat16), or the adapter weights are corrupted.",
        )
        return embeddings

    def _tokenize(self, llm, texts: list[str]) -> list[list[int]]:
        c = self.config
        context = getattr(llm, "context_length", None) or getattr(llm.model.config, "max_position_embeddings", None)
        limit = (int(context) - c.num_prefix - c.num_image_tokens) if context else None
        token_ids = []
        for text in texts:
            ids = list(llm.tokenizer(text)["input_ids"])
            if limit is not None and len(ids) > limit:
                # Keep the end: it holds the request the image tokens answer.
                logger.warning(
                    "Soft-prompt text has %d tokens, more than the %d the LLM context leaves; "
                    "dropping the first %d tokens. Shorten the history to keep them.",
                    len(ids),
                    limit,
                    len(ids) - limit,
                )
                ids = ids[-limit:]
            token_ids.append(ids)
        return token_ids


def _cache_argument(decoder: nn.Module) -> str:
    """transformers 5.x calls the KV cache ``cache``; 4.x called it ``past_key_values``."""
    parameters = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _prefix_cache(key_values: list[tuple[Tensor, Tensor]], config):
    """A ``DynamicCache`` pre-filled with the prefix keys/values of every layer."""
    from transformers import DynamicCache

    try:
        return DynamicCache(key_values, config=config)
    except TypeError:  # transformers 4.x: no config argument
        return DynamicCache.from_legacy_cache(tuple(key_values))


def save_adapter(adapter: SoftPromptAdapter, path, extra_metadata: dict[str, str] | None = None) -> None:
    """Write ``adapter`` as safetensors, its config in the header; atomic (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    header = adapter.config.to_metadata()
    for key, value in (extra_metadata or {}).items():
        header[_EXTRA_PREFIX + str(key)] = str(value)
    tensors = {name: value.detach().to("cpu", torch.float32).contiguous() for name, value in adapter.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=header)


def load_adapter(path, llm=None, text_dim: int | None = None) -> SoftPromptAdapter:
    """Read an adapter written by :func:`save_adapter`, checked against ``llm`` and ``text_dim`` when given.

    Raises :class:`ModelLoadError` for a missing, corrupted or foreign file and
    :class:`AdapterMismatchError` when it was built for another LLM or text width.
    """
    path = Path(path)
    tensors, header = read_weights(
        path, f"Soft-prompt adapter {path} does not exist; check the path or train one (pmg train).",
        "re-copy or re-save the adapter.",
    )
    if header.get("format") != FORMAT_NAME:
        raise ModelLoadError(
            f"{path} is a safetensors file but not a PMG soft-prompt adapter (header format "
            f"{header.get('format')!r}); pick a file written by pmg train / save_adapter."
        )
    config = AdapterConfig.from_metadata(header, path)
    if config.format_version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} uses adapter format {config.format_version}, newer than this version of PMG reads "
            f"({FORMAT_VERSION}); update the PMG node pack."
        )
    adapter = SoftPromptAdapter(config)
    expected = {name: tuple(value.shape) for name, value in adapter.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in tensors.items()}
    if expected != found:
        raise ModelLoadError(
            f"{path} holds tensors {found} but its metadata implies {expected}; the file is corrupted. "
            f"Re-save or retrain the adapter."
        )
    for name, value in tensors.items():
        if not torch.isfinite(value).all():
            raise ModelLoadError(f"{path}: tensor {name!r} holds NaN/inf; the adapter is corrupted. Retrain it.")
    adapter.load_state_dict(tensors)
    adapter.eval()
    if llm is not None:
        adapter.check_compatible(llm)
    if text_dim is not None and int(text_dim) != config.text_dim:
        raise AdapterMismatchError(
            f"The adapter {path.name} produces {config.text_dim}-wide embeddings but this checkpoint's text "
            f"encoder is {int(text_dim)}-wide; choose an adapter trained for this LLM and checkpoint family "
            f"(768 SD1.x, 1024 SD2.x, 2048 SDXL)."
        )
    return adapter


# --- soft embeddings on disk: the cache and `pmg embed` write one format ------------------

SOFT_EMBEDDINGS_KEY = "soft_embeddings"
_SOFT_CACHE_VERSION = "pmg-soft-prompt-v2"


@dataclass(frozen=True)
class AdapterSource:
    """Which adapter makes the soft embeddings: a trained file, or (``path=None``) a seeded untrained one.

    The untrained one is a research baseline (its tokens carry no learned preference and, measured,
    degrade the images); a user without a trained adapter gets no soft tokens instead, which is
    the caller's choice (the node's ``none (keywords only)``), not an adapter.
    """

    path: Path | None = None
    num_image_tokens: int = 4  # untrained only: a trained adapter fixes its own k
    seed: int = 0  # untrained only

    def identity(self) -> str:
        """What determines the adapter's weights: the file's hash, or the untrained settings."""
        from .safe_paths import sha256_file

        if self.path is None:
            return f"untrained:seed={self.seed}:k={self.num_image_tokens}"
        return f"sha256:{sha256_file(self.path)}"

    def build(self, llm, text_dim: int) -> SoftPromptAdapter:
        if self.path is None:
            return SoftPromptAdapter.untrained(llm, text_dim=text_dim, num_image_tokens=self.num_image_tokens, seed=self.seed)
        return load_adapter(self.path, llm=llm, text_dim=text_dim)


@dataclass(frozen=True)
class SoftEmbeddings:
    """Soft embeddings ``[B, k, D]`` (float32, CPU) of B texts, with their provenance."""

    embeddings: Tensor
    metadata: dict[str, str]  # llm_identity, adapter_id, text_width, num_image_tokens
    cache_keys: tuple[str, ...]  # one per text
    cached: tuple[bool, ...]  # per text: read from the cache rather than computed


def save_soft_embeddings(path: Path | str, embeddings: Tensor, metadata: dict[str, str]) -> None:
    """Write soft embeddings as safetensors (tensor ``soft_embeddings``, provenance in the header), atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file({SOFT_EMBEDDINGS_KEY: embeddings.detach().float().cpu().contiguous()}, str(temporary),
                  metadata={str(k): str(v) for k, v in metadata.items()})


def load_soft_embeddings(path: Path | str) -> tuple[Tensor, dict[str, str]]:
    """Read a file written by :func:`save_soft_embeddings`: the embeddings and the header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(SOFT_EMBEDDINGS_KEY), dict(handle.metadata() or {})


def soft_cache_key(adapter_id: str, llm_identity: str, text: str, text_dim: int) -> str:
    """The cache key of one text's soft embeddings (:func:`pmg_core.cache.cache_key` of what determines them)."""
    from .cache import cache_key

    return cache_key(_SOFT_CACHE_VERSION, adapter_id, llm_identity, text, int(text_dim))


def encode_cached(
    llm,
    texts: list[str],
    source: AdapterSource,
    text_dim: int,
    cache_dir: Path | str | None = None,
    placement: Callable[[], AbstractContextManager[torch.device]] | None = None,
    use_cache: bool = True,
) -> SoftEmbeddings:
    """The soft embeddings of ``texts``, each read from ``cache_dir/soft_prompts/<key>.safetensors`` or computed.

    The adapter is built (or loaded) only when a text misses the cache. ``placement``
    is a context manager factory that puts the LLM where it computes and yields that
    device (ComfyUI's nodes move it to the GPU and back); by default it computes where
    it is. A damaged cache entry is logged and recomputed. ``cache_dir`` defaults to
    :func:`pmg_core.assets.default_cache_dir`.
    """
    from .assets import default_cache_dir

    folder = Path(cache_dir or default_cache_dir()) / "soft_prompts"
    adapter_id = source.identity()
    keys = tuple(soft_cache_key(adapter_id, llm.identity, text, text_dim) for text in texts)
    found = {i: _read_cached(folder / f"{key}.safetensors") for i, key in enumerate(keys)} if use_cache else {}
    missing = [i for i in range(len(texts)) if found.get(i) is None]
    if missing:
        with (placement or (lambda: contextlib.nullcontext(llm.device)))() as device, torch.no_grad():
            adapter = source.build(llm, text_dim).to(device).eval()
            computed = adapter.encode(llm, [texts[i] for i in missing]).detach().float().cpu()
        if computed.ndim != 3 or computed.shape[-1] != text_dim:
            raise EmbeddingValueError(
                f"The adapter produced embeddings of shape {tuple(computed.shape)}; expected [B, k, {text_dim}]."
            )
        for row, i in enumerate(missing):
            found[i] = computed[row : row + 1]
    rows = [found[i] for i in range(len(texts))]
    if len({tuple(row.shape) for row in rows}) > 1:
        raise EmbeddingValueError(f"Cached soft embeddings of differing shapes {sorted({tuple(r.shape) for r in rows})}.")
    embeddings = torch.cat(rows) if rows else torch.empty(0, source.num_image_tokens, text_dim)
    metadata = {"llm_identity": llm.identity, "adapter_id": adapter_id, "text_width": str(int(text_dim)),
                "num_image_tokens": str(embeddings.shape[1])}
    if use_cache:
        for i in missing:
            save_soft_embeddings(folder / f"{keys[i]}.safetensors", found[i], {**metadata, "cache_key": keys[i]})
    cached = tuple(i not in missing for i in range(len(texts)))
    return SoftEmbeddings(embeddings, metadata, keys, cached)


def _read_cached(path: Path) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        embeddings, _ = load_soft_embeddings(path)
    except Exception as error:  # noqa: BLE001 - a damaged cache entry is recomputed, not fatal
        logger.warning("Ignoring the unreadable soft-prompt cache entry %s (%s); recomputing.", path, error)
        return None
    return embeddings if torch.isfinite(embeddings).all() else None
