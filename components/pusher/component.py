"""The Pusher component: TFX's Pusher running `components.pusher.executor`."""

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from components.pusher import executor


class Pusher(tfx.components.Pusher):
  """TFX's Pusher (same inputs, outputs and parameters), pushing each distinct model once.

  Example:

    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))

  See `executor` for what a push does.
  """

  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, model, model_blessing, push_destination: tfx.proto.PushDestination):
    """Constructs a Pusher.

    Args:
      model: the Trainer's model.
      model_blessing: the Evaluator's blessing.
      push_destination: a filesystem destination (its `base_directory` is
        where TensorFlow Serving looks for versions).

    Raises:
      ValueError: for a destination other than a filesystem base directory.
    """
    if (
      not isinstance(push_destination, tfx.proto.PushDestination)
      or push_destination.WhichOneof("destination") != "filesystem"
      or not push_destination.filesystem.base_directory
    ):
      raise ValueError(
        "push_destination must be a tfx.proto.PushDestination with a filesystem "
        f"base_directory; got {push_destination!r}."
      )
    super().__init__(model=model, model_blessing=model_blessing, push_destination=push_destination)
