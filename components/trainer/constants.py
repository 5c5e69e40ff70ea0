"""Feature names and vocabularies of the data contract, shared by training and serving."""

ITEM_HISTORY_KEY = "item_history"
USER_SEGMENT_KEY = "user_segment"
CITY_TIER_KEY = "city_tier"
LABEL_KEY = "label"

MAX_HISTORY_LENGTH = 50
NUM_CATEGORIES = 10
# Category names returned by classification APIs; index i is category i.
CATEGORY_NAMES = tuple(f"category_{i}" for i in range(NUM_CATEGORIES))
USER_SEGMENTS = ("new", "returning")
CITY_TIERS = ("tier1", "tier2", "tier3", "tier4")

# Model input/output names. The SavedModel's serving signatures and the TFLite
# model use the same names, so clients do not depend on which one they call.
PROBABILITIES_KEY = "probabilities"
SERIALIZED_EXAMPLES_KEY = "examples"
RAW_SIGNATURE_NAME = "serving_raw"
