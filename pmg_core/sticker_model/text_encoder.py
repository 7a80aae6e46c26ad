"""The sticker generator's text encoder: all-MiniLM-L6-v2 token states, chunked as ComfyUI chunks them.

Inside ComfyUI the generator's CLIP is ComfyUI's own BERT wrapper
(``comfy.sd1_clip.SDClipModel`` with ``comfy.text_encoders.bert.BertModel``, the
family HunyuanDiT's encoder belongs to) over the same weights. This module gives
the library the identical condition without ComfyUI: a prompt's word pieces are
cut into chunks of ``CHUNK - 2`` tokens, each chunk framed by ``[CLS]``/``[SEP]``
and padded with ``[PAD]`` to ``CHUNK``, the chunks encoded with attention masks
and concatenated along the token axis. Because the denoiser never sees an
attention mask (ComfyUI's ``BaseModel`` drops it), it is trained on exactly these
padded states, pad positions included.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..assets import minilm_dir
from ..conditioning import EncodedText

CHUNK = 32  # tokens per chunk, [CLS] and [SEP] included
START, END, PAD = 101, 102, 0  # BERT's [CLS], [SEP], [PAD]
WIDTH = 384


class MiniLMTextEncoder:
    """A :class:`pmg_core.conditioning.TextEncoder` giving ``[B, 32 * chunks, 384]`` MiniLM token states."""

    width = WIDTH

    def __init__(self, folder: Path | None = None, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder) if folder is not None else minilm_dir()
        self.folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        self.model.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def chunks(self, text: str) -> list[list[int]]:
        """The prompt's token ids as ComfyUI's tokenizer frames them: one padded list per chunk."""
        pieces = self.tokenizer(text)["input_ids"][1:-1]
        size = CHUNK - 2
        groups = [pieces[i : i + size] for i in range(0, len(pieces), size)] or [[]]
        return [[START, *group, END] + [PAD] * (size - len(group)) for group in groups]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> EncodedText:
        """Token states of each text; texts with fewer chunks are padded with the empty prompt's chunk."""
        if isinstance(texts, str):
            raise TypeError("MiniLMTextEncoder.encode takes a list of texts, not a single string.")
        per_text = [self.chunks(text) for text in texts]
        longest = max((len(chunks) for chunks in per_text), default=1)
        empty = self.chunks("")[0]
        rows = [chunk for chunks in per_text for chunk in chunks + [empty] * (longest - len(chunks))]
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        states = self.model(input_ids=ids, attention_mask=(ids != PAD).long()).last_hidden_state
        return EncodedText(states.reshape(len(texts), longest * CHUNK, WIDTH).float(), None)
