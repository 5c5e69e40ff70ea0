"""A labelled document of a corpus, and the one tokenizer every corpus uses."""

import dataclasses
import re
from typing import List
from typing import Mapping
from typing import Tuple

# A URL says little about a topic and much about who posted it (link
# shorteners name the outlet), so each one becomes the single word "url".
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
# Words: runs of letters or digits (any script), with an inner apostrophe kept.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def words(text: str) -> List[str]:
  """The lowercased words of `text`, in reading order; each URL becomes "url"."""
  return _WORD.findall(_URL.sub(" url ", text.lower()))


@dataclasses.dataclass(frozen=True)
class Document:
  """One labelled document, as a reader yields it.

  Attributes:
    key: a name unique in the corpus (file or row id), stable across releases.
    words: the document's words in reading order (`words(text)`).
    context: categorical context values by feature name (e.g. an e-mail's
      content type); empty when the corpus has none.
    label: the class name.
  """

  key: str
  words: Tuple[str, ...]
  context: Mapping[str, str]
  label: str
