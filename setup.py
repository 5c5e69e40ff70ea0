"""The next_category TFX pipeline project.

Dependencies are not declared here: they are installed from the pinned
requirements.lock (`make install`), because resolving TFX 1.16's dependency
tree without pins takes pip a very long time.
"""

import setuptools

setuptools.setup(
  name="next-category-pipeline",
  version="0.1.0",
  description="TFX pipeline: clickstream -> validated, evaluated, served model.",
  python_requires=">=3.11,<3.12",
  packages=setuptools.find_packages(
    include=[
      "dataset",
      "dataset.*",
      "pipeline",
      "pipeline.*",
      "components",
      "components.*",
      "contract",
      "contract.*",
      "serving",
      "serving.*",
    ]
  ),
  package_data={"": ["*.pbtxt", "*.json", "*.yaml", "*.config", "*.txt"]},
)
