"""Sentence embeddings from a model that ships inside its PyPI package (the select stage's ``diverse_top_k``).

``wordllama`` (MIT): WordLlama's 256-dimensional "l2_supercat" model (weights and tokenizer) sits in the package
folder; it is loaded from there with downloads disabled (its plain ``load()`` looks in a user cache and would
fetch what is missing), so it works offline (``HF_HUB_OFFLINE=1``, no network). An embedding is the mean of the
tokens' static vectors: about 0.14 s per 1,000 texts of ~60 words on one CPU (measured: 20,000 in 2.8 s).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError

Embed = Callable[[list[str]], np.ndarray]
EMBEDDERS = ("wordllama",)


def load_embedder(name: str = "wordllama") -> Embed:
    """A function from texts to a float32 array, one unit-length row per text (an all-zero row for a text with no
    tokens, e.g. "": WordLlama's own ``norm=True`` divides by zero there and returns NaN, so the rows are
    normalised here instead). Raises InputError for an unknown name or a missing package or model file."""
    if name not in EMBEDDERS:
        raise InputError("select.embedding", f"unknown embedding model {name!r} (known: {', '.join(EMBEDDERS)})")
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as e:
        raise InputError("select.embedding", f"the wordllama package cannot be imported ({type(e).__name__}: {e}); "
                         "install it: pip install 'wordllama>=0.4.0.post1'") from None
    try:
        model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
    except FileNotFoundError as e:  # a wordllama build without its model files (downloads are off on purpose)
        raise InputError("select.embedding", f"wordllama is installed without its model files ({e}); reinstall "
                         "it: pip install --force-reinstall 'wordllama>=0.4.0.post1'") from None
    dim = int(model.embedding.shape[1])

    def embed(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        vecs = np.asarray(model.embed(list(texts), norm=False, batch_size=256), dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.where(norms > 0, norms, 1.0)

    return embed
