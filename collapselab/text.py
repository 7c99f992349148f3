"""Real running English that ships offline, tokenised into sentences of integer ids.

The corpus is the ABC news text in gensim's wheel (`test/test_data/lee_background.cor`, 300
documents, about 66k tokens). Tokenising is deliberately simple and deterministic: lower-case,
words (keeping inner apostrophes, hyphens and the separators of numbers such as 4:00pm, 1,000 or
2.5) and every other non-space character as its own token; a sentence ends at `.`, `!` or `?`
(optionally followed by a closing quote) before whitespace and an upper-case letter, digit or
opening bracket or quote. Sentences are de-duplicated, keeping the first occurrence, so no two
real data points are equal: 2,597 distinct sentences, 24.7 tokens each on average.

Every token gets an id in one fixed vocabulary built from the whole corpus: 0 is the sentence
start <s>, 1 the sentence end </s>, then the words by decreasing frequency (ties alphabetically).
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SENTENCE_START, SENTENCE_END = "<s>", "</s>"
START_ID, END_ID = 0, 1

_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"']))\s+(?=[\"'(\[]?[A-Z0-9])")
_TOKEN = re.compile(r"[a-z0-9]+(?:['.:,/&-][a-z0-9]+)*|[^\sa-z0-9]")
_NO_SPACE_BEFORE = re.compile(r" ([.,!?;:)\]])")
_NO_SPACE_AFTER = re.compile(r"([(\[$]) ")


def corpus_path() -> Path:
    """The ABC news corpus inside the installed gensim wheel, found without importing gensim
    (a slow import that study validation would otherwise pay)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("gensim is not installed: its wheel carries the ABC news corpus")
    return Path(spec.origin).parent / "test" / "test_data" / "lee_background.cor"


def tokenise(sentence: str) -> list[str]:
    """Lower-cased word and punctuation tokens of one sentence."""
    return _TOKEN.findall(sentence.lower())


def split_sentences(document: str) -> list[str]:
    """The sentences of one document, in order."""
    return [part for part in _SENTENCE_BREAK.split(document.strip()) if part]


def detokenise(tokens: list[str] | tuple[str, ...]) -> str:
    """Readable text from tokens: no space before closing punctuation or after opening."""
    return _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", " ".join(tokens)))


@dataclass(frozen=True)
class Corpus:
    """The de-duplicated sentences as id tuples, and the fixed vocabulary that maps ids."""

    #: 1-D object array; each element is one sentence, a tuple of word ids (no <s> or </s>).
    sentences: np.ndarray
    #: id -> token; ids 0 and 1 are <s> and </s>.
    vocabulary: tuple[str, ...]

    @property
    def size(self) -> int:
        """Ids in the vocabulary, <s> and </s> included."""
        return len(self.vocabulary)

    def words(self, sentence: tuple[int, ...]) -> list[str]:
        return [self.vocabulary[i] for i in sentence]


def sentences_from_text(text: str) -> list[tuple[str, ...]]:
    """Every non-empty tokenised sentence of every line (document) of `text`, duplicates kept."""
    return [
        tokens
        for document in text.splitlines()
        for sentence in split_sentences(document)
        if (tokens := tuple(tokenise(sentence)))
    ]


def build_corpus(text: str) -> Corpus:
    """Tokenise, de-duplicate (first occurrence wins), map to frequency-ranked ids."""
    distinct = list(dict.fromkeys(sentences_from_text(text)))
    frequency = Counter(token for sentence in distinct for token in sentence)
    ranked = sorted(frequency, key=lambda token: (-frequency[token], token))
    vocabulary = (SENTENCE_START, SENTENCE_END, *ranked)
    index = {token: i for i, token in enumerate(vocabulary)}
    sentences = np.empty(len(distinct), dtype=object)
    for i, sentence in enumerate(distinct):
        sentences[i] = tuple(index[token] for token in sentence)
    return Corpus(sentences=sentences, vocabulary=vocabulary)


@lru_cache(maxsize=1)
def abc_news_corpus() -> Corpus:
    """The packaged ABC news corpus, read and tokenised once per process."""
    return build_corpus(corpus_path().read_text(encoding="utf-8"))
