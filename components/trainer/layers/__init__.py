"""Serializable Keras layers of the next-category Transformer."""

from components.trainer.layers.item_history_embedding import ItemHistoryEmbedding
from components.trainer.layers.last_position_pooling import LastPositionPooling
from components.trainer.layers.masked_mean_pooling import MaskedMeanPooling
from components.trainer.layers.neighbour_contrast import NeighbourContrast
from components.trainer.layers.recency_weighted_bag import RecencyWeightedBag
from components.trainer.layers.transformer_encoder import TransformerEncoder

__all__ = [
  "ItemHistoryEmbedding",
  "LastPositionPooling",
  "MaskedMeanPooling",
  "NeighbourContrast",
  "RecencyWeightedBag",
  "TransformerEncoder",
]
