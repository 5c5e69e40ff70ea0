"""Steps that must never come from cache, and running a pipeline with caching off for them.

TFX 1.16 turns caching on or off for a whole pipeline only
(tfx/dsl/compiler/compiler.py, `_set_node_execution_options` copies
`pipeline.enable_cache` into every node). A step that reads state outside the
pipeline (ServingBaseline reads the push destination) has the same inputs and
parameters on every run, so a cached execution would hand the Evaluator a
stale baseline. For the Beam and local runners, `run` compiles the pipeline as
`IrBasedRunner.run` does (tfx/orchestration/portable/tfx_runner.py,
`_make_pipeline_proto`) and turns caching off in those nodes' IR; the Kubeflow
package has per-task `cachingOptions` for the same ids.
"""

from typing import List

from tfx import v1 as tfx
from tfx.dsl.compiler import compiler
from tfx.dsl.components.base import base_component
from tfx.orchestration.portable import tfx_runner
from tfx.proto.orchestration import pipeline_pb2


def uncached_node_ids(pipeline: tfx.dsl.Pipeline) -> List[str]:
  """Ids of the components whose class says they read state outside the pipeline."""
  return [c.id for c in pipeline.components if getattr(type(c), "READS_OUTSIDE_STATE", False)]


def compile_ir(pipeline: tfx.dsl.Pipeline) -> pipeline_pb2.Pipeline:
  """The pipeline's IR, with caching off in `uncached_node_ids`' nodes."""
  for component in pipeline.components:
    # As IrBasedRunner.run does before compiling.
    if isinstance(component, base_component.BaseComponent):
      component._resolve_pip_dependencies(pipeline.pipeline_info.pipeline_root)  # pylint: disable=protected-access
  ir = compiler.Compiler().compile(pipeline)
  uncached = set(uncached_node_ids(pipeline))
  for node in ir.nodes:
    if node.pipeline_node.node_info.id in uncached:
      node.pipeline_node.execution_options.caching_options.enable_cache = False
  return ir


def run(dag_runner: tfx_runner.IrBasedRunner, pipeline: tfx.dsl.Pipeline):
  """Runs `pipeline` with `dag_runner` (Beam or local), never reusing the uncached steps."""
  return dag_runner.run_with_ir(compile_ir(pipeline))
