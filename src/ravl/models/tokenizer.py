"""A byte-level tokenizer for the built-in tiny CLIP: any unicode text, no vocabulary file.

Text is NFC-normalised, optionally lower-cased and whitespace-collapsed, encoded as UTF-8, and
each byte ``b`` becomes token ``b + 3``. Every row is ``[BOS, bytes..., EOS, PAD, ...]`` of a
fixed context length; too long texts are truncated at a character boundary and keep their
``EOS``, so the text tower always finds it.

Example:
    >>> tok = ByteTokenizer(context_length=8)
    >>> tok(["Hi!"]).tolist()
    [[1, 107, 108, 36, 2, 0, 0, 0]]
    >>> tok.decode(tok(["naïve café, much too long"])[0])
    'naïve'
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import torch

from ravl.exceptions import InvalidParameterError
from ravl.utils.validation import check_int

__all__ = ["ByteTokenizer", "PAD_ID", "BOS_ID", "EOS_ID", "BYTE_OFFSET", "VOCAB_SIZE"]

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
#: 256 byte values plus PAD, BOS and EOS.
VOCAB_SIZE = 256 + BYTE_OFFSET

_WS = re.compile(r"\s+")


class ByteTokenizer:
    """UTF-8 byte tokens with ``BOS``/``EOS``/``PAD`` and a fixed context length.

    Args:
        context_length: T, the length of every token row (at least 3: BOS, one byte, EOS).
        lower: Lower-case the text first (CLIP does; captions and prompts then match regardless
            of case).
        collapse_whitespace: Strip the text and turn every run of whitespace into one space.

    Deterministic and stateless: the same text always gives the same tokens.
    """

    def __init__(self, context_length: int = 32, *, lower: bool = True, collapse_whitespace: bool = True):
        self.context_length = check_int(context_length, "context_length", "ByteTokenizer", low=3)
        self.lower = bool(lower)
        self.collapse_whitespace = bool(collapse_whitespace)

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids (259)."""
        return VOCAB_SIZE

    def normalize(self, text: str) -> str:
        """The text as it is encoded (NFC, optional lower-casing and whitespace collapsing)."""
        text = unicodedata.normalize("NFC", text)
        if self.collapse_whitespace:
            text = _WS.sub(" ", text).strip()
        if self.lower:
            text = text.lower()
        return text

    def encode(self, text: str) -> list[int]:
        """Token ids of one text: ``[BOS, bytes..., EOS]`` (no padding), at most T long."""
        if not isinstance(text, str):
            raise InvalidParameterError(f"Texts must be str, got {type(text).__name__} {text!r}.")
        data = self.normalize(text).encode("utf-8")
        room = self.context_length - 2
        if len(data) > room:
            cut = room
            # Never split a multi-byte character: back up over UTF-8 continuation bytes.
            while cut > 0 and (data[cut] & 0xC0) == 0x80:
                cut -= 1
            data = data[:cut]
        return [BOS_ID, *(b + BYTE_OFFSET for b in data), EOS_ID]

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Tokenize texts into a ``[N, T]`` int64 tensor (a single string gives ``[1, T]``)."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, tokens: torch.Tensor | Sequence[int]) -> str:
        """Text of one token row (special tokens dropped, invalid UTF-8 replaced)."""
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        data = bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < VOCAB_SIZE)
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return (f"ByteTokenizer(context_length={self.context_length}, lower={self.lower}, "
                f"collapse_whitespace={self.collapse_whitespace})")
