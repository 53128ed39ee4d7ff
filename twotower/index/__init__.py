"""Candidate generation: item embeddings -> a tuned ScaNN searcher (or brute force), on disk.

One job per module: ``searcher`` builds and tunes a searcher over raw arrays (``Index``
answers queries); ``storage`` writes an index directory and loads it back, refusing
mismatched files; ``benchmark`` measures recall and QPS against exact search;
``fingerprints`` ties an index to the vectors it indexes. The workdir-level job that builds
``<workdir>/index/`` is ``twotower.jobs.index.build_index``. The names below are the
package's API.
"""
from twotower.fileio import IntegrityError
from twotower.index.benchmark import measure, recall
from twotower.index.fingerprints import fingerprint
from twotower.index.searcher import BRUTE_FORCE, SCANN, Index, build_searcher, default_num_leaves
from twotower.index.storage import (
                                     EMBEDDINGS,
                                     FORMAT,
                                     INDEX_JSON,
                                     ITEM_IDS,
                                     SEARCHER,
                                     load_index,
                                     load_item_ids,
                                     package_version,
                                     save_index,
                                     save_item_ids,
)

__all__ = ["BRUTE_FORCE", "EMBEDDINGS", "FORMAT", "INDEX_JSON", "ITEM_IDS", "SCANN", "SEARCHER",
           "Index", "IntegrityError", "build_searcher", "default_num_leaves", "fingerprint",
           "load_index", "load_item_ids", "measure", "package_version", "recall", "save_index",
           "save_item_ids"]
