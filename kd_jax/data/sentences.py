"""English sentences with real labels, for sentence-encoder distillation (kd_jax/tasks/embedding.py).

Two Debian packages, read offline:

* ``fortunes`` — about 15,000 fortunes filed by collection (:func:`kd_jax.data.text.read_fortunes`).
  The fortunes of :data:`LABELLED_COLLECTIONS`, topical collections such as computers,
  love, food, law and medicine, carry their collection as a label; the rest (people,
  cookie, zippy, ...) are unlabelled transfer text (label ``-1``).
* ``bible-kjv`` — the King James Bible's 31,102 verses, read with its ``bible`` program
  (the text ships compressed in its own format); unlabelled, training only.

A fortune's split is a hash of its text (:func:`split_of`, :data:`TEST_FRACTION` held
out), so train and test never share a fortune, whatever else changes. The held-out
fortunes are the test split: labelled ones score the probe and kNN classifiers, all
of them the fidelity to the teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess

import numpy as np

from kd_jax.data import text
from kd_jax.core.errors import DatasetNotFoundError

# Collections about one topic each: the labels of the probe and kNN evaluations.
LABELLED_COLLECTIONS = ("art", "computers", "drugs", "education", "food", "kids", "law",
                        "linux", "literature", "love", "medicine", "men-women", "pets",
                        "politics", "science", "sports", "startrek", "work")
TEST_FRACTION = 0.2
BIBLE_RANGE = "gen1:1-rev22:21"


@dataclasses.dataclass(frozen=True)
class Sentences:
  """A split: ``texts`` and int32 ``labels`` (index into :data:`LABELLED_COLLECTIONS`, -1: none)."""
  texts: tuple[str, ...]
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.texts)


def _hash(sentence: str) -> int:
  return int(hashlib.sha256(sentence.encode()).hexdigest()[:8], 16)


def split_of(sentence: str) -> str:
  """``"test"`` for about :data:`TEST_FRACTION` of sentences (by a hash of the text), else ``"train"``."""
  return "test" if _hash(sentence) % 1000 < TEST_FRACTION * 1000 else "train"


def read_bible_verses() -> list[str]:
  """Every verse of the King James Bible, without its reference (``Ge1:1 In the ...``).

  Raises:
    DatasetNotFoundError: the ``bible`` program (Debian ``bible-kjv``) is missing.
  """
  program = shutil.which("bible")
  if program is None:
    raise DatasetNotFoundError("no `bible` program for dataset.bible_verses: install it with "
                               "`sudo apt-get install bible-kjv` (or set dataset.bible_verses=0)")
  output = subprocess.run([program, "-f", BIBLE_RANGE], capture_output=True, text=True,
                          check=True).stdout
  return [line.split(" ", 1)[1] for line in output.splitlines() if " " in line]


def load(*, bible_verses: int = 0) -> tuple[Sentences, Sentences]:
  """``(train, test)``: the fortunes split by hash, each in the order of a second hash (so
  that the first N are a sample of every collection, not the first collections); ``train``
  then holds the first ``bible_verses`` verses (unlabelled).

  Raises:
    DatasetNotFoundError: a package is missing, or ``bible_verses`` exceeds the verses.
  """
  label_of = {name: i for i, name in enumerate(LABELLED_COLLECTIONS)}
  splits = {"train": ([], []), "test": ([], [])}
  for document in sorted(text.read_fortunes(), key=lambda d: (_hash(d.text[::-1]), d.text)):
    texts, labels = splits[split_of(document.text)]
    texts.append(document.text)
    labels.append(label_of.get(document.collection, -1))
  if bible_verses:
    verses = read_bible_verses()
    if bible_verses > len(verses):
      raise DatasetNotFoundError(f"dataset.bible_verses={bible_verses}: the Bible has "
                                 f"{len(verses)} verses")
    splits["train"][0].extend(verses[:bible_verses])
    splits["train"][1].extend([-1] * bible_verses)
  train, test = (Sentences(tuple(t), np.asarray(l, np.int32)) for t, l in splits.values())
  return train, test
