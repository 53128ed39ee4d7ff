"""The names of an export directory's parts and its format version, shared by the writer
(twotower.export_artifacts) and the readers (twotower.serving), so that neither imports the other."""

QUERY_MODEL = "query_model"           # the query SavedModel
ITEM_MODEL = "item_model"             # the item SavedModel: raw item fields -> embedding
INDEX_DIR = "index"                   # the serialized pybind ScaNN searcher
USER_DEFAULTS = "user_defaults.npz"   # per known user: latest features and last L items
ITEM_FEATURES = "item_features.jsonl"   # the item table's raw strings, corpus order
MANIFEST = "manifest.json"            # versions, config, signatures, sha256 of every file
FORMAT = 1
