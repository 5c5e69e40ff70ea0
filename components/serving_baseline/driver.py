"""The ServingBaseline driver: fingerprints the model serving now before the cache lookup.

ServingBaseline reads state outside the pipeline (the push destination), so
its inputs and parameters alone are the same on every run. TFX's portable
launcher runs a component's custom driver before it looks for a cached
execution, and keys the cache on the execution properties the driver returns
(tfx/orchestration/portable/launcher.py, `_prepare_execution`: "If there is a
custom driver, runs it", then "Check cached result" with `parameters=
exec_properties`), as ImportExampleGen's driver does with its input
fingerprint (tfx/components/example_gen/driver.py). This driver puts what
serves now (`serving_versions.serving_fingerprint`: version, directory,
SavedModel singleprint) into `serving_fingerprint`: an unchanged push
destination reuses the earlier baseline artifact, so the Evaluator's inputs
are unchanged too and it is served from cache; a new version makes a new
baseline.

The Kubeflow V2 compiler compiles no driver other than ImportExampleGen's
(tfx/orchestration/kubeflow/v2/step_builder.py, `_build_file_based_example_gen_spec`),
so on Kubeflow the step stays uncached (`next_category.pipeline.caching.uncached_node_ids`).
"""

from tfx.dsl.components.base import base_driver
from tfx.orchestration import metadata
from tfx.orchestration.portable import base_driver as ir_base_driver
from tfx.orchestration.portable import data_types
from tfx.proto.orchestration import driver_output_pb2

from next_category.components import serving_versions
from next_category.components.serving_baseline import executor


class Driver(base_driver.BaseDriver, ir_base_driver.BaseDriver):
  """Adds `serving_fingerprint` to ServingBaseline's execution properties."""

  def __init__(self, metadata_handle: metadata.Metadata):
    # As tfx.components.example_gen.driver.Driver: usable by either launcher.
    base_driver.BaseDriver.__init__(self, metadata_handle)
    ir_base_driver.BaseDriver.__init__(self, metadata_handle)

  def run(self, execution_info: data_types.ExecutionInfo) -> driver_output_pb2.DriverOutput:
    """Returns the execution properties with the push destination's fingerprint."""
    result = driver_output_pb2.DriverOutput()
    fingerprint = serving_versions.serving_fingerprint(
      execution_info.exec_properties[executor.SERVING_MODEL_DIR_KEY]
    )
    result.exec_properties[executor.SERVING_FINGERPRINT_KEY].string_value = fingerprint
    return result
