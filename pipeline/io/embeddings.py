"""Sentence embeddings from a model that ships inside its PyPI package (the select stage's ``diverse_top_k``).

``wordllama`` (MIT): WordLlama's 256-dimensional "l2_supercat" model and its tokenizer sit in the package folder;
it is loaded from there with downloads disabled (its plain ``load()`` would fetch the tokenizer). About 0.03 s per
1,000 texts on one CPU core.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError

Embed = Callable[[list[str]], np.ndarray]


def load_embedder(name: str = "wordllama") -> Embed:
    """A function from texts to a float32 array (one unit-length row per text)."""
    if name != "wordllama":
        raise InputError("select.embedding", f"unknown embedding model {name!r} (known: wordllama)",
                         field="embedding")
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError:
        raise InputError("select.embedding", "needs the wordllama package: pip install wordllama",
                         field="embedding") from None
    model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)

    def embed(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 256), dtype=np.float32)
        return np.asarray(model.embed(list(texts), norm=True, batch_size=256), dtype=np.float32)

    return embed
