"""Checks of a run report as a person would see it: every section, every image drawn."""

import base64
import html.parser
import io
from typing import Dict
from typing import List

import numpy as np
from PIL import Image

from next_category.pipeline.reports import html_report as run_report

_DATA_PNG = "data:image/png;base64,"


class _ReportParser(html.parser.HTMLParser):
  """Collects sections (id -> heading, images) and every external reference."""

  def __init__(self):
    super().__init__()
    self.sections: Dict[str, Dict[str, object]] = {}
    self.images_outside_sections: List[str] = []
    self.external: List[str] = []
    self.scripts = 0
    self._section = None
    self._in_h2 = False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    for name in ("src", "href"):
      value = attrs.get(name) or ""
      if value.startswith(("http:", "https:", "//")):
        self.external.append(value)
    if tag == "script":
      self.scripts += 1
    if tag == "section":
      self._section = attrs.get("id")
      self.sections[self._section] = {"heading": "", "images": []}
    elif tag == "h2" and self._section:
      self._in_h2 = True
    elif tag == "img":
      image = (attrs.get("alt", ""), attrs.get("src", ""))
      if self._section:
        self.sections[self._section]["images"].append(image)
      else:
        self.images_outside_sections.append(image[0])

  def handle_endtag(self, tag):
    if tag == "h2":
      self._in_h2 = False
    elif tag == "section":
      self._section = None

  def handle_data(self, data):
    if self._in_h2 and self._section:
      self.sections[self._section]["heading"] += data


def decode_png(src: str) -> np.ndarray:
  """The pixels of an embedded PNG (raises if it is not one)."""
  assert src.startswith(_DATA_PNG), f"not an embedded PNG: {src[:40]}"
  image = Image.open(io.BytesIO(base64.b64decode(src[len(_DATA_PNG) :])))
  assert image.format == "PNG"
  return np.asarray(image.convert("L"))


def is_blank(pixels: np.ndarray) -> bool:
  """A drawing with nothing on it: (almost) a single colour."""
  return pixels.size == 0 or float(pixels.std()) < 2.0


def check_report(page: str) -> Dict[str, List[str]]:
  """Checks a report page; returns {section id: [image alt texts]}.

  Every section of `run_report.SECTIONS` is there, in order, with its title;
  every image is an embedded PNG that is not blank; nothing is loaded from the
  network and there is no script.
  """
  parser = _ReportParser()
  parser.feed(page)
  assert list(parser.sections) == [i for i, _ in run_report.SECTIONS]
  for section_id, title in run_report.SECTIONS:
    assert parser.sections[section_id]["heading"] == title
  assert not parser.external, parser.external
  assert parser.scripts == 0
  assert not parser.images_outside_sections
  found = {}
  for section_id, section in parser.sections.items():
    found[section_id] = []
    for alt, src in section["images"]:
      assert not is_blank(decode_png(src)), f"blank image {alt!r} in {section_id}"
      found[section_id].append(alt)
  return found
