"""Planted embedding vectors for the index and evaluation benchmarks.

Uniform noise would make every neighbour search look alike, so the vectors follow a topic
model: topic centroids on the unit sphere, each item a centroid plus noise, each query a
primary plus a weaker secondary topic plus noise, all unit norm, float32.
"""
import numpy as np

_BLOCK = 1 << 18   # items generated at a time: keeps the temporaries small


def normalize(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def topic_centroids(rng: np.random.Generator, num_topics: int, dim: int) -> np.ndarray:
  return normalize(rng.standard_normal((num_topics, dim), np.float32))


def planted_items(rng: np.random.Generator, topics: np.ndarray, num_items: int,
                  noise: float) -> tuple[np.ndarray, np.ndarray]:
  """(items [N, D], topic of each item); ``noise`` is the noise norm relative to a centroid."""
  num_topics, dim = topics.shape
  items = np.empty((num_items, dim), np.float32)
  item_topic = np.empty(num_items, np.int64)
  for start in range(0, num_items, _BLOCK):
    n = min(_BLOCK, num_items - start)
    block_noise = rng.standard_normal((n, dim), np.float32) * (noise / np.sqrt(dim))
    item_topic[start:start + n] = rng.integers(num_topics, size=n)
    items[start:start + n] = normalize(topics[item_topic[start:start + n]] + block_noise)
  return items, item_topic


def planted_queries(rng: np.random.Generator, topics: np.ndarray, num_queries: int,
                    noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(queries [Q, D], primary topic, secondary topic of each query)."""
  num_topics, dim = topics.shape
  primary = rng.integers(num_topics, size=num_queries)
  secondary = rng.integers(num_topics, size=num_queries)
  query_noise = rng.standard_normal((num_queries, dim), np.float32) * (noise / np.sqrt(dim))
  queries = normalize(topics[primary] + 0.5 * topics[secondary] + query_noise)
  return queries.astype(np.float32), primary, secondary
