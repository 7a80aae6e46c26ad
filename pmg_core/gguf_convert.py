"""A ``.gguf`` language model written out as a Hugging Face folder, one tensor at a time.

transformers' own GGUF loading de-quantises every tensor to float32 and builds the whole
model in float32 before anything can be saved: a 4.9 GB Q4 8B file needs ≈32 GB of RAM and
becomes ≈32 GB on disk. Here each tensor is de-quantised, renamed and reshaped with
transformers' own name map and tensor processors (the same rules, so the values are the
same), cast to the target precision and added to a shard of at most ``shard_bytes``; a full
shard is written and dropped. Peak RAM is one shard plus one float32 tensor, and the folder
takes 2 bytes per parameter at bf16/fp16.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from .errors import ModelLoadError
from .llm_precision import dtype_name, torch_dtype

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 1 << 30
_INDEX_FILE = "model.safetensors.index.json"

Progress = Callable[[int, int], None]


def convert_gguf(
    gguf: Path,
    out: Path,
    dtype: str = "bf16",
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Progress | None = None,
) -> None:
    """Write ``gguf`` into the new folder ``out``: config, tokenizer and ``dtype`` safetensors shards.

    Raises :class:`ModelLoadError` when the tensors do not cover the model's weights; a file
    the gguf reader cannot parse raises the reader's own error (:func:`pmg_core.llm.open_llm`
    turns it into a :class:`ModelLoadError` naming the fix).
    """
    target = torch_dtype(dtype_name(dtype))
    # The gguf reader raises ValueError/KeyError/struct errors on a bad file; the caller names the fix.
    config = transformers.AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    reader, processor, name_map, expected = _tensor_plan(gguf, config)
    if hasattr(config, "quantization_config"):  # the folder holds plain floats
        del config.quantization_config
    config.dtype = target
    out.mkdir(parents=True)
    written = _write_shards(_converted_tensors(reader, processor, name_map, target, progress), out, shard_bytes)
    missing = sorted(expected - set(written))
    if missing:
        raise ModelLoadError(
            f"{gguf} lacks {len(missing)} weights the {config.model_type!r} model needs (e.g. {missing[0]}); "
            "the file is incomplete or of an unsupported variant. Re-download it or give a Hugging Face folder."
        )
    config.save_pretrained(out)
    transformers.GenerationConfig.from_model_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _tensor_plan(gguf: Path, config) -> tuple:
    """The reader, transformers' tensor processor and GGUF→HF name map, and the names the model needs."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    reader = GGUFReader(str(gguf))
    architecture = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    with torch.device("meta"):  # shapes and names only: no memory for weights
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    name_map = get_gguf_hf_weights_map(skeleton, processor)
    # Tied weights appear once; a tied output layer is not stored (the embedding serves both).
    expected = {name for name, _ in skeleton.named_parameters()}
    if getattr(config, "tie_word_embeddings", False):
        expected -= {name for name in expected if name.startswith("lm_head.")}
    return reader, processor, name_map, expected


def _converted_tensors(reader, processor, name_map, target: torch.dtype, progress: Progress | None) -> Iterator:
    """(HF name, tensor in ``target``) per GGUF tensor the model uses, de-quantised one at a time."""
    from gguf import dequantize

    # Some processors (mixture-of-experts) gather tensors into this dict instead of returning them.
    parsed = {"config": dict(processor.config), "tensors": {}}
    total = len(reader.tensors)
    for index, tensor in enumerate(reader.tensors):
        weights = dequantize(tensor.data, tensor.tensor_type)
        result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=name_map,
                                   parsed_parameters=parsed)
        if result.name in name_map:
            yield name_map[result.name], torch.from_numpy(np.array(result.weights, copy=True)).to(target)
        while parsed["tensors"]:
            yield parsed["tensors"].popitem()
        if progress is not None:
            progress(index + 1, total)


def _write_shards(tensors: Iterator, out: Path, shard_bytes: int) -> dict[str, str]:
    """Save ``tensors`` into shards of at most ``shard_bytes``; the weight map (name → file)."""
    shards: list[list[str]] = []
    current: dict[str, torch.Tensor] = {}
    size = total = 0
    paths: list[Path] = []

    def flush() -> None:
        nonlocal current, size
        if current:
            path = out / f"shard-{len(paths):05d}.safetensors"
            save_file(current, str(path), metadata={"format": "pt"})
            paths.append(path)
            shards.append(list(current))  # names only: the tensors are freed
        current, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > shard_bytes:
            flush()
        current[name] = tensor.contiguous()
        size += nbytes
        total += nbytes
    flush()
    if len(paths) == 1:
        paths[0].rename(out / "model.safetensors")
        return {name: "model.safetensors" for name in shards[0]}
    weight_map = {}
    for number, (path, names) in enumerate(zip(paths, shards, strict=True), start=1):
        final = f"model-{number:05d}-of-{len(paths):05d}.safetensors"
        path.rename(out / final)
        weight_map.update({name: final for name in names})
    (out / _INDEX_FILE).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2), encoding="utf-8"
    )
    return weight_map

