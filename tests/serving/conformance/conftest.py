"""TensorFlow Serving's test models and configs, built once per test session."""

import pytest

from serving.testdata import make_tfs_testdata


@pytest.fixture(scope="session")
def tfs_testdata(tmp_path_factory):
  """The directory holding TensorFlow Serving's testdata models and configs, by upstream name."""
  root = tmp_path_factory.mktemp("tfs_testdata")
  make_tfs_testdata.generate(str(root))
  return root
