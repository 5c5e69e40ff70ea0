"""Model hyperparameters, in one place, as named presets.

Sizes that follow from the data (the id range, the longest sequence, the
vocabularies, the number of classes) are not hyperparameters: the model reads
them from the data contract (`contract`).
"""

import dataclasses
from typing import Dict


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of the next-category Transformer.

  Attributes:
    num_layers: Transformer encoder blocks.
    hidden_dim: the model width (d_model).
    num_heads: attention heads per block.
    intermediate_dim: width of each block's feed-forward network.
    dropout: dropout rate inside the blocks.
    batch_size: per-replica training batch size.
    learning_rate: peak Adam learning rate (after warmup; see
      `next_category.components.trainer.budget`).
    weight_decay: decoupled weight decay of every weight, per step, times
      the learning rate.
    label_smoothing: mass spread over all classes in the training targets.
    neighbour_loss_weight: weight of the auxiliary loss that pulls
      neighbouring items' embeddings together (`layers.NeighbourContrast`);
      0 leaves it out.
    cooccurrence_dim: width of the frozen item vectors the Trainer makes
      from the train split's co-occurrences (`cooccurrence.item_vectors`),
      projected and added to the item embeddings; 0 leaves them out.
  """

  num_layers: int = 2
  hidden_dim: int = 32
  num_heads: int = 2
  intermediate_dim: int = 64
  dropout: float = 0.1
  batch_size: int = 256
  learning_rate: float = 3e-3
  weight_decay: float = 0.0
  label_smoothing: float = 0.0
  neighbour_loss_weight: float = 0.0
  cooccurrence_dim: int = 0

  def __post_init__(self):
    if self.cooccurrence_dim < 0:
      raise ValueError(f"cooccurrence_dim must be 0 or more, got {self.cooccurrence_dim}.")
    if self.hidden_dim % self.num_heads:
      raise ValueError(
        f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})."
      )


PRESETS: Dict[str, TransformerConfig] = {
  # Tests: trains in seconds, still a real Transformer.
  "tiny": TransformerConfig(
    num_layers=1,
    hidden_dim=8,
    num_heads=2,
    intermediate_dim=16,
    batch_size=32,
    learning_rate=1e-2,
  ),
  # The default: close to the best possible on the default data within a couple
  # of minutes on 2 CPU cores (docs/model.md). One block is as accurate as two
  # there; what the data needs is regularisation of the 10,000 item rows
  # against memorising the few histories a rare item ends: dropout 0.2,
  # decoupled weight decay, the neighbour loss, and frozen co-occurrence
  # vectors that tell a rare item's neighbours (docs/model.md).
  "small": TransformerConfig(
    num_layers=1, dropout=0.2, weight_decay=1.0, neighbour_loss_weight=1.0, cooccurrence_dim=32
  ),
  # The reference size.
  "base": TransformerConfig(
    num_layers=6,
    hidden_dim=512,
    num_heads=8,
    intermediate_dim=2048,
    batch_size=64,
    learning_rate=3e-4,
  ),
}


def get(name: str, **overrides) -> TransformerConfig:
  """Returns the preset called `name`, with any fields in `overrides` replaced.

  Raises:
    ValueError: if there is no such preset or field.
  """
  try:
    config = PRESETS[name]
  except KeyError:
    raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}.") from None
  fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"Unknown hyperparameters {unknown}; expected some of {sorted(fields)}.")
  return dataclasses.replace(config, **overrides)
