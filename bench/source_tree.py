"""A server from another source tree (a worktree of an earlier commit), for before/after benches.

Trees since the `next_category` namespace (pyproject.toml's `package-dir`)
import their server as this tree does, and the editable install maps
`next_category` onto this tree. For such a tree, a temporary folder holds a
`next_category` package whose folders link to that tree's, and goes first on
the server's PYTHONPATH: a regular package found on `sys.path` wins over the
editable install's finder, which setuptools appends to `sys.meta_path`
(site-packages/__editable___*_finder.py). Older trees import their top-level
`serving` package from the tree itself.
"""

import atexit
import functools
import os
import shutil
import tempfile
import tomllib
from typing import Dict


def _namespace_folders(tree: str) -> Dict[str, str]:
  """`next_category.X` -> its folder in `tree`, from pyproject.toml ({} before the namespace)."""
  pyproject = os.path.join(tree, "pyproject.toml")
  if not os.path.isfile(pyproject):
    return {}
  with open(pyproject, "rb") as f:
    setuptools = tomllib.load(f).get("tool", {}).get("setuptools", {})
  return setuptools.get("package-dir", {})


def server_module(tree: str) -> str:
  """The module `python -m` runs for `tree`'s model server."""
  return "next_category.serving.server" if _namespace_folders(tree) else "serving.server"


@functools.lru_cache(maxsize=None)
def python_path(tree: str) -> str:
  """The PYTHONPATH entry under which `tree`'s packages import (removed when this process ends)."""
  folders = _namespace_folders(tree)
  if not folders:
    return os.path.abspath(tree)
  links = tempfile.mkdtemp(prefix="baseline_tree_")
  atexit.register(shutil.rmtree, links, True)
  namespace = os.path.join(links, "next_category")
  os.mkdir(namespace)
  open(os.path.join(namespace, "__init__.py"), "w").close()
  for package, folder in folders.items():
    name = package.split(".", 1)[1]
    os.symlink(os.path.join(os.path.abspath(tree), folder), os.path.join(namespace, name))
  return links
