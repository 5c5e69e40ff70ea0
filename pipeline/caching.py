"""Steps that must never come from cache, and running a pipeline with caching off for them.

TFX 1.16 turns caching on or off for a whole pipeline only
(tfx/dsl/compiler/compiler.py, `_set_node_execution_options` copies
`pipeline.enable_cache` into every node). A step that reads state outside the
pipeline (ServingBaseline reads the push destination) has the same inputs and
parameters on every run, so a cached execution would hand the Evaluator a
stale baseline, unless a custom driver fingerprints that state into its
execution properties before the cache lookup, as TFX's portable launcher runs
it (tfx/orchestration/portable/launcher.py, `_prepare_execution`). For the Beam
and local runners, which run drivers, `run` compiles the pipeline as
`IrBasedRunner.run` does (tfx/orchestration/portable/tfx_runner.py,
`_make_pipeline_proto`) and turns caching off in the nodes with no such driver;
the Kubeflow package, whose compiler drops custom drivers, has per-task
`cachingOptions` off for every such step.
"""

from typing import List

from tfx import v1 as tfx
from tfx.dsl.compiler import compiler
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import base_driver
from tfx.orchestration.portable import tfx_runner
from tfx.proto.orchestration import pipeline_pb2


def uncached_node_ids(pipeline: tfx.dsl.Pipeline, drivers_run: bool = False) -> List[str]:
  """Ids of the components that read state outside the pipeline, and must not be cached.

  Args:
    pipeline: the pipeline.
    drivers_run: whether the orchestrator runs a component's custom driver
      before its cache lookup (TFX's portable launcher, under the Beam and
      local runners, does; the Kubeflow V2 compiler keeps only
      ImportExampleGen's). A component with such a driver fingerprints the
      outside state there, so it may be cached.
  """
  return [
    c.id
    for c in pipeline.components
    if getattr(type(c), "READS_OUTSIDE_STATE", False)
    and not (
      drivers_run
      and getattr(c, "driver_class", base_driver.BaseDriver) is not base_driver.BaseDriver
    )
  ]


def compile_ir(pipeline: tfx.dsl.Pipeline) -> pipeline_pb2.Pipeline:
  """The pipeline's IR, with caching off in `uncached_node_ids`' nodes (drivers run)."""
  for component in pipeline.components:
    # As IrBasedRunner.run does before compiling.
    if isinstance(component, base_component.BaseComponent):
      component._resolve_pip_dependencies(pipeline.pipeline_info.pipeline_root)  # pylint: disable=protected-access
  ir = compiler.Compiler().compile(pipeline)
  uncached = set(uncached_node_ids(pipeline, drivers_run=True))
  for node in ir.nodes:
    if node.pipeline_node.node_info.id in uncached:
      node.pipeline_node.execution_options.caching_options.enable_cache = False
  return ir


def run(dag_runner: tfx_runner.IrBasedRunner, pipeline: tfx.dsl.Pipeline):
  """Runs `pipeline` with `dag_runner` (Beam or local), never reusing the uncached steps."""
  return dag_runner.run_with_ir(compile_ir(pipeline))
