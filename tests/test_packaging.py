"""The project as a Python package: one namespace of our own, console scripts that import.

`pip install .` must put nothing into site-packages under a name another
project uses (PyPI's `dataset`, `pipeline`, `serving`, ...): every package of
ours installs as `next_category.<folder>` (pyproject.toml).
"""

import ast
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FOLDERS = ("components", "contract", "dataset", "pipeline", "serving")
# Folders of data only (no __init__.py) that the package carries.
_DATA_FOLDERS = (
  "schemas",
  "schemas/examples",
  "serving/deploy",
  "serving/deploy/k8s",
  "pipeline/kubeflow/manifests",
)


def _pyproject():
  with open(os.path.join(_ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _python_files(*folders):
  for folder in folders:
    for root, dirs, files in os.walk(os.path.join(_ROOT, folder)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      for name in files:
        if name.endswith(".py"):
          yield os.path.join(root, name)


def _optional_imports(tree):
  """Imports tried inside `try: ... except ImportError:` (a probe with a fallback)."""
  optional = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Try) and any(
      isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
      for h in node.handlers
    ):
      optional |= {id(n) for statement in node.body for n in ast.walk(statement)}
  return optional


def _imported_modules(path):
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  optional = _optional_imports(tree)
  for node in ast.walk(tree):
    if id(node) in optional:
      continue
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module


def test_the_package_list_names_every_folder_of_ours():
  on_disk = set()
  for folder in _FOLDERS:
    for root, dirs, files in os.walk(os.path.join(_ROOT, folder)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      if "__init__.py" in files:
        on_disk.add(os.path.relpath(root, _ROOT))
  on_disk |= set(_DATA_FOLDERS)
  expected = sorted("next_category." + p.replace(os.sep, ".") for p in on_disk)
  assert sorted(_pyproject()["tool"]["setuptools"]["packages"]) == expected, (
    "pyproject.toml [tool.setuptools] packages must list every package folder "
    "(a folder with __init__.py) under next_category."
  )


def test_nothing_imports_our_folders_by_their_bare_names():
  offenders = []
  for path in _python_files(*_FOLDERS, "tests", "bench"):
    for module in _imported_modules(path):
      if module.split(".")[0] in _FOLDERS:
        offenders.append(f"{os.path.relpath(path, _ROOT)}: {module}")
  assert offenders == []


def test_production_code_never_imports_the_tests():
  offenders = []
  for path in _python_files(*_FOLDERS):
    for module in _imported_modules(path):
      if module.split(".")[0] in ("tests", "bench"):
        offenders.append(f"{os.path.relpath(path, _ROOT)}: {module}")
  assert offenders == []


@pytest.mark.parametrize("script", sorted(_pyproject()["project"]["scripts"]))
def test_each_console_script_names_a_main_that_imports(script):
  target = _pyproject()["project"]["scripts"][script]
  module_name, function = target.split(":")
  assert script.startswith("next-category-")
  assert callable(getattr(importlib.import_module(module_name), function))


def test_the_wheel_installs_one_top_level_name(tmp_path):
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--quiet",
      "--no-deps",
      "--no-build-isolation",
      "--wheel-dir",
      str(tmp_path),
      _ROOT,
    ],
    check=True,
    capture_output=True,
  )
  [wheel] = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
  with zipfile.ZipFile(tmp_path / wheel) as z:
    names = z.namelist()
  top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
  assert top_level == {"next_category"}
  # The data the code reads by path travels with it.
  for data in (
    "next_category/schemas/schema.pbtxt",
    "next_category/serving/deploy/models.config",
    "next_category/pipeline/kubeflow/manifests/tfjob.yaml",
  ):
    assert data in names
  # Installed, the defaults write under the working directory, never into
  # site-packages, and read the schema the wheel carries.
  site, work = tmp_path / "site", tmp_path / "work"
  work.mkdir()
  with zipfile.ZipFile(tmp_path / wheel) as z:
    z.extractall(site)
  defaults = subprocess.run(
    [
      sys.executable,
      "-c",
      "from next_category.pipeline import configs; "
      "print(configs.DATA_ROOT, configs.OUTPUT_ROOT, configs.SCHEMA_PATH)",
    ],
    cwd=work,
    env={**os.environ, "PYTHONPATH": str(site)},
    check=True,
    capture_output=True,
    text=True,
  )
  assert defaults.stdout.split() == [
    str(work / "data" / "default"),
    str(work / "artifacts"),
    str(site / "next_category" / "schemas" / "schema.pbtxt"),
  ]


def _requirement_names(*files):
  names = set()
  for name in files:
    with open(os.path.join(_ROOT, name)) as f:
      for line in f:
        line = line.split("#")[0].strip()
        if line:
          names.add(re.split(r"[=<>\[ ;]", line)[0].lower().replace("_", "-"))
  return names


def _module_owners():
  """Import paths (`google/protobuf`, `yaml`) -> the installed distributions that ship them."""
  owners = {}
  for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"].lower().replace("_", "-")
    for file in dist.files or ():
      parts = file.parts
      if not parts or parts[0].endswith((".dist-info", ".data")) or parts[0] == "..":
        continue
      if len(parts) > 1 or parts[0].endswith((".py", ".so")):
        top = parts[0].split(".")[0]
        owners.setdefault(top, set()).add(name)
        if len(parts) > 2:
          owners.setdefault(f"{parts[0]}/{parts[1]}", set()).add(name)
  return owners


def _third_party_imports(*folders):
  found = {}
  for path in _python_files(*folders):
    for module in _imported_modules(path):
      top = module.split(".")[0]
      if top in sys.stdlib_module_names or top in (*_FOLDERS, "next_category", "tests", "bench"):
        continue
      found.setdefault(module, os.path.relpath(path, _ROOT))
  return found


@pytest.mark.parametrize(
  "folders, requirement_files",
  [
    (_FOLDERS, ("requirements.in",)),
    (("tests", "bench"), ("requirements.in", "requirements-dev.in")),
  ],
)
def test_every_directly_imported_package_is_declared(folders, requirement_files):
  declared = _requirement_names(*requirement_files)
  owners = _module_owners()
  undeclared = []
  for module, where in sorted(_third_party_imports(*folders).items()):
    parts = module.split(".")
    shipped_by = owners.get("/".join(parts[:2])) or owners.get(parts[0]) or set()
    if not shipped_by & declared:
      undeclared.append(
        f"{module} ({where}; shipped by {sorted(shipped_by) or 'nothing installed'})"
      )
  assert undeclared == [], f"Declare these in {' or '.join(requirement_files)}."
