"""The Pusher component: TFX's Pusher running `next_category.components.pusher.executor`."""

from typing import Optional

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from next_category.components import version_signing
from next_category.components.pusher import executor


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

  def __init__(
    self,
    model,
    model_blessing,
    push_destination: tfx.proto.PushDestination,
    infra_blessing=None,
    model_signing_key: Optional[str] = None,
  ):
    """Constructs a Pusher.

    Args:
      model: the Trainer's model.
      model_blessing: the Evaluator's blessing.
      push_destination: a filesystem destination (its `base_directory` is
        where TensorFlow Serving looks for versions).
      infra_blessing: InfraValidator's blessing; a model it did not bless is
        not pushed.
      model_signing_key: an ECDSA private key file (`make keygen`); every
        version pushed is signed with it (OpenSSF model signing, for the
        base directory's name as model name) before it becomes visible. It
        must be readable where the executor runs.

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
    if model_signing_key is not None and not model_signing_key.strip():
      raise ValueError(
        "model_signing_key is empty; pass the path of a private key, or None to push unsigned."
      )
    super().__init__(
      model=model,
      model_blessing=model_blessing,
      infra_blessing=infra_blessing,
      push_destination=push_destination,
      custom_config=(
        {version_signing.MODEL_SIGNING_KEY: model_signing_key} if model_signing_key else None
      ),
    )
