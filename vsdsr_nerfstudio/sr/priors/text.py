"""Prompt -> token ids -> embeddings, including a vocabulary-free byte tokenizer for the random-weight presets.

The real upscaler ships a ``CLIPTokenizer`` (``tokenizer/vocab.json`` + ``merges.txt``). The ``tiny`` and
``sd-x4-random`` presets have random text encoders, for which any deterministic tokenizer is as good as BPE, and
no vocabulary file can be fetched offline. :class:`ByteTokenizer` maps UTF-8 bytes to ids 0-255 and adds BOS,
EOS and padding to a fixed length (77, CLIP's context). A saved random-weight folder marks itself with
``tokenizer/byte_tokenizer.json`` so that loading it back goes through the same code path as a real folder.

Torch only at import time; ``transformers`` is imported inside :func:`load_tokenizer`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
"""Marker file inside a diffusers folder's ``tokenizer/`` subfolder that selects :class:`ByteTokenizer`."""


@dataclass
class ByteTokenizer:
    """Deterministic byte-level tokenizer: ``[BOS] utf8-bytes [EOS] [PAD]...`` truncated/padded to ``max_length``.

    Ids: byte ``b`` -> ``b`` (0-255), ``bos_token_id`` 256, ``eos_token_id`` 257, ``pad_token_id`` 258, so the
    vocabulary has 259 entries and fits any text encoder with ``vocab_size >= 259``.
    """

    max_length: int = 77
    """Sequence length of every encoding (CLIP's 77-token context)."""
    bos_token_id: int = 256
    """Id of the begin-of-sequence token."""
    eos_token_id: int = 257
    """Id of the end-of-sequence token (always kept, also after truncation)."""
    pad_token_id: int = 258
    """Id of the padding after EOS."""

    @property
    def vocab_size(self) -> int:
        """Number of ids this tokenizer can emit."""
        return max(self.bos_token_id, self.eos_token_id, self.pad_token_id, 255) + 1

    @property
    def model_max_length(self) -> int:
        """Alias of ``max_length`` (the name Hugging Face tokenizers use)."""
        return self.max_length

    def encode(self, text: str) -> List[int]:
        """One prompt -> ``max_length`` ids."""
        body = list(text.encode("utf-8"))[: self.max_length - 2]
        ids = [self.bos_token_id, *body, self.eos_token_id]
        return ids + [self.pad_token_id] * (self.max_length - len(ids))

    def __call__(self, prompts: Union[str, Sequence[str]]) -> Int[Tensor, "B L"]:
        """Prompts -> ``(B, max_length)`` int64 ids."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return torch.tensor([self.encode(p) for p in prompts], dtype=torch.long)

    def save(self, folder: Union[str, Path]) -> None:
        """Write the marker file ``folder/byte_tokenizer.json`` (``folder`` is the ``tokenizer/`` subfolder)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"tokenizer_class": "ByteTokenizer", "package": "vsdsr_nerfstudio", **asdict(self)}
        (folder / BYTE_TOKENIZER_FILE).write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "ByteTokenizer":
        """Read a marker written by :meth:`save`."""
        payload = json.loads((Path(folder) / BYTE_TOKENIZER_FILE).read_text())
        return cls(**{k: payload[k] for k in ("max_length", "bos_token_id", "eos_token_id", "pad_token_id")})


TokenizeFn = Callable[[Sequence[str]], Int[Tensor, "B L"]]
"""Prompts -> padded ``(B, L)`` token ids."""


def load_tokenizer(model_path: str, local_files_only: bool = False, max_length: int = 77) -> TokenizeFn:
    """The tokenizer of a diffusers upscaler folder or hub id, as a function ``prompts -> ids``.

    A local folder with ``tokenizer/byte_tokenizer.json`` gets :class:`ByteTokenizer`; anything else loads
    ``CLIPTokenizer`` from the ``tokenizer`` subfolder and pads/truncates to its ``model_max_length`` (77 in the
    x4 upscaler's ``tokenizer_config.json``), exactly like ``StableDiffusionUpscalePipeline.encode_prompt``.
    ``max_length`` (the text encoder's ``max_position_embeddings``) caps it, e.g. when a folder has no
    ``tokenizer_config.json`` and transformers reports a huge ``model_max_length``.
    """
    marker_dir = Path(model_path).expanduser() / "tokenizer"
    if (marker_dir / BYTE_TOKENIZER_FILE).is_file():
        return ByteTokenizer.load(marker_dir)

    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model_path, subfolder="tokenizer", local_files_only=local_files_only)
    length = min(int(tokenizer.model_max_length), max_length)

    def tokenize(prompts: Sequence[str]) -> Int[Tensor, "B L"]:
        out = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        )
        return out.input_ids

    return tokenize


@torch.no_grad()
def encode_prompts(
    text_encoder: Any, tokenize: TokenizeFn, prompts: Sequence[str], device: Optional[torch.device] = None
) -> Float[Tensor, "B L D"]:
    """Prompts -> CLIP ``last_hidden_state`` (after the final layer norm), float32.

    Same as the upscale pipeline: no attention mask (the SD 2 text encoder config has no ``use_attention_mask``),
    padding tokens included in the 77 embeddings.
    """
    device = device if device is not None else next(text_encoder.parameters()).device
    ids = tokenize(list(prompts)).to(device)
    return text_encoder(ids)[0].float()
