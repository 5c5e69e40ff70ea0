"""Serializable Keras layers of the next-category Transformer."""

from next_category.components.trainer.layers.item_history_embedding import ItemHistoryEmbedding
from next_category.components.trainer.layers.last_position_pooling import LastPositionPooling
from next_category.components.trainer.layers.masked_mean_pooling import MaskedMeanPooling
from next_category.components.trainer.layers.neighbour_contrast import NeighbourContrast
from next_category.components.trainer.layers.recency_weighted_bag import RecencyWeightedBag
from next_category.components.trainer.layers.transformer_encoder import TransformerEncoder

__all__ = [
  "ItemHistoryEmbedding",
  "LastPositionPooling",
  "MaskedMeanPooling",
  "NeighbourContrast",
  "RecencyWeightedBag",
  "TransformerEncoder",
]
