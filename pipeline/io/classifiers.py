"""Text classifiers that ship their model inside their PyPI package (the ``[safety]`` filter).

``alt-profanity-check`` (MIT, the ``safety`` extra): a linear SVM over word n-grams, calibrated, trained on
offensive and clean text; ``predict_prob`` gives the probability that a text is offensive. Word level: it flags
slurs and insults, not subtle harm. Its vectorizer and model are joblib files inside the package, loaded when
``profanity_check`` is imported: nothing is downloaded.

Importing it takes about 2 s (measured 1.8-2.5 s, almost all of it importing scikit-learn; the two joblib files
load in under 0.1 s); scoring is about 0.02 s per call for a few texts. With the versions it pins (scikit-learn
1.9.1, joblib 1.6.0 beside alt-profanity-check 1.9.1) the import and a prediction emit no warning at all, even
under ``-W always``, so nothing is silenced here: a warning that does appear (e.g. scikit-learn's
InconsistentVersionWarning after a forced upgrade) is one the user should see.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

from ..errors import InputError

Score = Callable[[list[str]], list[float]]

_EXTRA = "pip install 'instruct-pipeline[safety]'"


def load_toxicity_scorer() -> Score:
    """A function from texts to the probability that each is offensive (alt-profanity-check). Raises InputError
    when the ``safety`` extra is not installed, or is installed but cannot be imported."""
    if importlib.util.find_spec("profanity_check") is None:
        raise InputError("safety.enabled", f"the toxicity filter needs the safety extra: {_EXTRA}")
    try:
        from profanity_check import predict_prob
    except ImportError as e:  # installed, but a dependency is missing or does not match (e.g. scikit-learn)
        raise InputError("safety.enabled", f"alt-profanity-check is installed but cannot be imported "
                         f"({type(e).__name__}: {e}); reinstall the safety extra: {_EXTRA}") from None

    def score(texts: list[str]) -> list[float]:
        return [float(p) for p in predict_prob(list(texts))] if texts else []

    return score
