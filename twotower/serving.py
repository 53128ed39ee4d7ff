"""The Python serving function: raw user features -> candidates -> (re-ranked) top-k.

``Recommender.load(export_dir)`` checks the export against its manifest (every file's
sha256, the index fingerprint), registers ScaNN's TF ops before loading the query SavedModel
(so "Op type not registered 'Scann>...'" cannot happen), and answers one warm-up query.
A request is a dict of raw features as they appear in the input files::

  rec.recommend({"user_id": "196", "history": ["242", "302"], "age": "49"}, k=10,
                exclude_items=["51"])

Missing fields of a known user come from the export's per-user defaults (latest features,
last L items of the whole log); unknown users and ids fall back to OOV buckets, unknown
history items are dropped, only the L most recent known history items count. Bad requests
(not a dict, unknown field names, wrong types) raise ValueError naming the field.

With ``with_features`` a recommendation also says what the item is: the raw strings of the
export's item table (``item_features.jsonl``, the item file's columns as given, e.g.
MovieLens' ``movie_title``)::

  rec.recommend({"user_id": "196"}, k=3, with_features=["title"])
  # [{"item_id": "50", "score": 4.2, "features": {"movie_title": "Star Wars"}}, ...]

and ``user_history`` lists the items a query is built from, newest first, the same way.

New items join a loaded export without a rebuild: ``add_items`` embeds raw item fields (as
in the item file) with the export's ``item_model`` SavedModel and adds them to the search::

  rec.add_items([{"item_id": "n1", "movie_title": "Space Station (2026)", "class": "Sci-Fi"}])
  rec.recommend({"user_id": "196"}, k=10)   # can return "n1" at once

An id the run never saw reads the item tower's OOV row, so the new item is placed by its
features and text (trained for that with ``--text_features``, whose item id dropout trains
that row). Additions live in this process's memory only; the export on disk is unchanged.

Embedding runs the exported ``embed`` signature (the same graph TF Serving would run);
candidates come from the index (``Index.search`` with the exclusions: the pybind ScaNN
searcher asked for k plus the number of excluded items so that exclusions are removed
before the cut, a row that still comes back short searched exactly). One Recommender
serves many threads: requests only read it, and ``add_items`` changes the corpus while no
request is reading it (a shared lock: requests run side by side, an addition waits for the
requests in flight and holds off new ones while it swaps the corpus in).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from twotower import export_layout, fileio
from twotower import index as index_lib
from twotower.data import types
from twotower.data.itemsets import ItemSets
from twotower.errors import InputError

IntegrityError = index_lib.IntegrityError
# (users, candidate item ids per user) -> a score per candidate, higher is better.
Reranker = Callable[[Sequence[dict], Sequence[Sequence[str]]],
                    Sequence[Sequence[float]] | np.ndarray]
# recommend()'s with_features: False (bare (id, score) pairs), True (every item column), or
# column names / aliases.
WithFeatures = Union[bool, str, Sequence[str], None]

_FIX = "re-export it with twotower-export"
# What a person would call an item table's title / genres column, in order of preference:
# the aliases ``title`` and ``genres`` find the first of these an export has.
TITLE_COLUMNS = ("title", "movie_title", "name", "item_name", "book_title", "product_title")
GENRE_COLUMNS = ("genres", "genre", "class", "categories", "category")
COLUMN_ALIASES = {"title": TITLE_COLUMNS, "genres": GENRE_COLUMNS, "genre": GENRE_COLUMNS}


def _verify_export(export_dir: str, verify: bool) -> dict:
  if not os.path.isdir(export_dir):
    raise FileNotFoundError(f"{export_dir} is not an export directory: create one with "
                            f"twotower-export --workdir=... --export_dir={export_dir}")
  path = os.path.join(export_dir, export_layout.MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: {export_dir} is not a complete export; "
                            f"{_FIX}")
  try:
    manifest = fileio.read_json(path)
    files = {rel: entry["sha256"] for rel, entry in manifest["files"].items()}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise IntegrityError(f"{path} is corrupted ({e!r}); {_FIX}") from None
  if manifest.get("format") != export_layout.FORMAT or "history_length" not in manifest:
    raise IntegrityError(f"{path}: unsupported export format {manifest.get('format')!r}")
  _refuse_unlisted(export_dir, set(files) | {export_layout.MANIFEST})
  if verify:
    fileio.verify_files(export_dir, files, "export", _FIX)
  else:
    for rel in files:
      try:
        path = fileio.resolve_inside(export_dir, rel)
      except ValueError as e:
        raise IntegrityError(f"export: {e}; {_FIX}") from None
      if not os.path.isfile(path):
        raise FileNotFoundError(f"export: {path} is missing; {_FIX}")
  return manifest


def _refuse_unlisted(export_dir: str, listed: set) -> None:
  """Every file of an export is in its manifest, and none is a link: what the loader reads
  is exactly what was fingerprinted, never something a link points to elsewhere."""
  for directory, subdirs, names in os.walk(export_dir):
    for name in subdirs + names:
      path = os.path.join(directory, name)
      rel = os.path.relpath(path, export_dir).replace(os.sep, "/")
      if os.path.islink(path):
        raise IntegrityError(f"export: {path} is a symbolic link; {_FIX}")
      if name in names and rel not in listed:
        raise IntegrityError(f"export: {path} is not listed in the manifest; {_FIX}")


def _load_item_features(export_dir: str, manifest: dict,
                        item_ids: np.ndarray) -> Optional[dict]:
  """Column -> raw strings in corpus order, from the export's item table (None without
  one). One JSON parse of the whole file keeps loading fast."""
  entry = manifest.get("item_features")
  if not entry:
    return None
  try:
    path = fileio.resolve_inside(export_dir, entry["path"])
    with open(path, encoding="utf-8") as f:
      rows = json.loads("[" + ",".join(line for line in f if line.strip()) + "]")
    ids = np.array([row["item_id"] for row in rows], dtype=object)
    columns = {name: np.array([row[name] for row in rows], dtype=object)
               for name in entry["columns"]}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise IntegrityError(f"export {export_dir}: its item feature table is unreadable "
                         f"({type(e).__name__}: {e}); {_FIX}") from None
  if not np.array_equal(ids, item_ids):
    raise IntegrityError(f"export {export_dir}: {entry['path']} does not list the index's "
                         f"items in corpus order; {_FIX}")
  return columns


def _as_token(value, field: str) -> str:
  """A raw id or categorical value: a string, or an int (file values are strings)."""
  if isinstance(value, str):
    return value
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return str(value)
  raise InputError(f"{field} must be a string (or an integer id), got "
                   f"{type(value).__name__}: {value!r}")


def _as_list(value, field: str, what: str = "item ids") -> list:
  if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or isinstance(
      value, Mapping):
    raise InputError(f"{field} must be a list of {what}, got {type(value).__name__}: "
                     f"{value!r:.80}")
  return list(value)


def _raw_value(value, kind: str, field: str) -> str:
  """A raw feature value as the SavedModels take it: a string (an int is one); for a
  multi-valued feature also a list of tokens, joined as the item file would hold them."""
  if kind == types.TOKEN_SEQ and not isinstance(value, str):
    return " ".join(_as_token(v, field) for v in _as_list(value, field, "tokens"))
  return _as_token(value, field)


class _SharedLock:
  """Many readers at once or one writer; a waiting writer holds off new readers (so a
  steady stream of requests cannot starve it). A thread already reading may read again."""

  def __init__(self):
    self._cond = threading.Condition()
    self._readers = 0
    self._writing = False
    self._writers_waiting = 0
    self._local = threading.local()

  @contextlib.contextmanager
  def reading(self):
    depth = getattr(self._local, "depth", 0)
    if depth == 0:
      with self._cond:
        while self._writing or self._writers_waiting:
          self._cond.wait()
        self._readers += 1
    self._local.depth = depth + 1
    try:
      yield
    finally:
      self._local.depth = depth
      if depth == 0:
        with self._cond:
          self._readers -= 1
          if self._readers == 0:
            self._cond.notify_all()

  @contextlib.contextmanager
  def writing(self):
    with self._cond:
      self._writers_waiting += 1
      while self._writing or self._readers:
        self._cond.wait()
      self._writers_waiting -= 1
      self._writing = True
    try:
      yield
    finally:
      with self._cond:
        self._writing = False
        self._cond.notify_all()


class Recommender:
  """Top-k recommendations from an export; see the module docstring."""

  def __init__(self, *, query_model, index: index_lib.Index, item_ids: np.ndarray,
               defaults: Mapping[str, np.ndarray], manifest: dict,
               reranker: Optional[Reranker] = None, rerank_candidates: int = 100,
               item_features: Optional[Mapping[str, np.ndarray]] = None,
               export_dir: Optional[str] = None):
    self.query_model = query_model
    self.export_dir = export_dir   # where add_items finds the item_model (None: nowhere)
    self.index = index
    self.manifest = manifest
    self.item_ids = np.asarray(item_ids, dtype=object)
    self.history_length = int(manifest["history_length"])
    self._features = [(f["name"], f["kind"]) for f in manifest["user_features"]]
    # Signature input of each feature column (exports before "input": the column's name).
    self._inputs_of = {f["name"]: f.get("input", f["name"]) for f in manifest["user_features"]}
    self._fields = {"user_id", "history"} | {name for name, _ in self._features}
    self._embed = query_model.signatures["embed"]
    self._item_index = pd.Index(self.item_ids)
    # Per known user: raw latest features and last L items (see export.user_defaults).
    self.defaults = {key: np.asarray(value) for key, value in defaults.items()}
    self._user_index = pd.Index(self.defaults["user_id"].astype(object))
    if rerank_candidates < 1:
      raise InputError(f"rerank_candidates must be positive, got {rerank_candidates}")
    self.reranker = reranker
    self.rerank_candidates = int(rerank_candidates)
    # Item table column -> raw strings in corpus order (None: the export has no item table).
    self.item_features = None if item_features is None else {
        name: np.asarray(values, dtype=object) for name, values in item_features.items()}
    self._item_fields = [(f["name"], f["kind"], f["input"])
                         for f in (manifest.get("item_model") or {}).get("features", [])]
    self._item_model = None   # the item SavedModel's signature, loaded by the first add_items
    self._item_model_lock = threading.Lock()
    self._lock = _SharedLock()   # requests read; add_items writes

  @classmethod
  def load(cls, export_dir: str, *, reranker: Optional[Reranker] = None,
           rerank: bool = True, rerank_candidates: int = 100,
           verify: bool = True) -> "Recommender":
    """Loads and checks an export (clear errors if missing, corrupt or mismatched).

    With ``rerank`` and no ``reranker`` given, an export holding a ranking head re-ranks
    the top ``rerank_candidates`` retrieved items with it (two-stage); ``rerank=False``
    serves the retrieval order.
    """
    export_dir = os.path.abspath(export_dir)
    manifest = _verify_export(export_dir, verify)
    index = index_lib.load_index(export_dir, verify=verify, check_files=False)
    recorded = manifest.get("index") or {}
    if index.fingerprint != recorded.get("fingerprint") or index.kind != recorded.get("kind"):
      raise IntegrityError(f"export {export_dir}: the index does not match the manifest "
                           f"(fingerprint or kind differ); {_FIX}")
    try:
      with np.load(os.path.join(export_dir, export_layout.USER_DEFAULTS),
                   allow_pickle=False) as npz:
        defaults = {key: npz[key] for key in npz.files}
    except (ValueError, OSError) as e:
      raise IntegrityError(f"export {export_dir}: {export_layout.USER_DEFAULTS} is unreadable "
                           f"({e}); {_FIX}") from None
    import scann  # noqa: F401  (registers the Scann>* TF ops the SavedModel uses)
    import tensorflow as tf
    try:
      query_model = tf.saved_model.load(os.path.join(export_dir, export_layout.QUERY_MODEL))
    except Exception as e:  # pylint: disable=broad-except
      raise IntegrityError(f"export {export_dir}: the query SavedModel does not load "
                           f"({type(e).__name__}: {str(e)[:300]}); {_FIX}") from e
    ranking_entry = manifest.get("ranking_model")
    if reranker is None and rerank and ranking_entry:
      from twotower.model.ranking_reranker import SavedModelReranker
      try:
        path = fileio.resolve_inside(export_dir, ranking_entry["path"])
        reranker = SavedModelReranker(path)
      except Exception as e:  # pylint: disable=broad-except
        raise IntegrityError(f"export {export_dir}: the ranking SavedModel does not load "
                             f"({type(e).__name__}: {str(e)[:300]}); {_FIX}") from e
    if index.item_ids is None:
      raise IntegrityError(f"export {export_dir}: its index lists no item ids; {_FIX}")
    rec = cls(query_model=query_model, index=index, item_ids=index.item_ids,
              defaults=defaults, manifest=manifest, reranker=reranker,
              rerank_candidates=rerank_candidates,
              item_features=_load_item_features(export_dir, manifest, index.item_ids),
              export_dir=export_dir)
    rec._warm_up()
    return rec

  # ------------------------------------------------------------------ requests

  def normalize(self, user) -> dict:
    """A request with defaults filled in: {'user_id': str, 'history': [str] (the L most
    recent known items), feature: str}."""
    with self._lock.reading():
      return self._normalize(user)

  def _normalize(self, user) -> dict:
    if not isinstance(user, Mapping):
      raise InputError(f"a user must be a dict of raw features, got {type(user).__name__}")
    unknown = set(user) - self._fields
    if unknown:
      raise InputError(f"unknown user field(s) {sorted(map(str, unknown))}; this model "
                       f"takes {sorted(self._fields)}")
    value = user.get("user_id")
    user_id = "" if value is None else _as_token(value, "user_id")
    row = self._user_index.get_indexer([user_id])[0] if user_id else -1
    out: dict = {"user_id": user_id}
    value = user.get("history")
    history: list[str]
    if value is not None:
      history = [_as_token(h, "history item") for h in _as_list(value, "history")]
    elif row >= 0:
      history = [h for h in self.defaults["history"][row].tolist() if h]
    else:
      history = []
    if history:
      known = self._item_index.get_indexer(history) >= 0
      history = [h for h, ok in zip(history, known) if ok]
    out["history"] = history[-self.history_length:] if self.history_length else []
    for name, kind in self._features:
      value = user.get(name)
      if value is None:
        value = str(self.defaults[f"feature/{name}"][row]) if row >= 0 else ""
      else:
        value = _raw_value(value, kind, name)
      out[name] = value
    return out

  def _inputs(self, users: list[dict]) -> dict:
    import tensorflow as tf
    history = np.full((len(users), self.history_length), "", dtype=object)
    for b, u in enumerate(users):
      if u["history"]:
        history[b, self.history_length - len(u["history"]):] = u["history"]
    out = {"user_id": np.array([u["user_id"] for u in users], dtype=object),
           "history": history}
    for name, _ in self._features:
      out[self._inputs_of[name]] = np.array([u[name] for u in users], dtype=object)
    return {key: tf.constant(value.astype(str)) for key, value in out.items()}

  def embed(self, users: Sequence[Mapping], batch_size: int = 1024) -> np.ndarray:
    """User embeddings [B, D] of raw requests."""
    normalized = [self.normalize(u) for u in self._as_users(users)]
    return self._embed_normalized(normalized, batch_size)

  def _embed_normalized(self, users: list[dict], batch_size: int = 1024) -> np.ndarray:
    out = [self._embed(**self._inputs(users[s:s + batch_size]))["embedding"].numpy()
           for s in range(0, len(users), batch_size)]
    dim = self.index.embeddings.shape[1]
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

  @staticmethod
  def _as_users(users) -> list:
    if isinstance(users, Mapping) or isinstance(users, (str, bytes)):
      raise ValueError("users must be a list of user dicts (use recommend() for one user)")
    return list(users)

  # ------------------------------------------------------------------ item features

  @property
  def item_columns(self) -> tuple:
    """The export's item table columns (as in the item file, item_id aside)."""
    return tuple(self.item_features or ())

  @property
  def title_column(self) -> Optional[str]:
    """The item table's title-like column (see TITLE_COLUMNS), or None."""
    return self._find_column(TITLE_COLUMNS)

  def _find_column(self, candidates: Sequence[str]) -> Optional[str]:
    by_lower = {name.lower(): name for name in reversed(self.item_columns)}
    return next((by_lower[c] for c in candidates if c in by_lower), None)

  def resolve_item_columns(self, columns: WithFeatures = True) -> list[str]:
    """Item table columns named by ``with_features``: True for all, else names as in the
    item file or an alias of COLUMN_ALIASES ('title', 'genres'); an unknown name is a
    ValueError that lists the available columns."""
    if columns is True:
      return list(self.item_columns)
    if isinstance(columns, str):
      columns = [columns]
    if not isinstance(columns, Iterable) or isinstance(columns, Mapping):
      raise InputError(f"with_features must be True or item column names, got {columns!r}")
    out = []
    for name in columns:
      if not isinstance(name, str):
        raise InputError(f"item column names must be strings, got {name!r}")
      real = name if name in self.item_columns else self._find_column(
          COLUMN_ALIASES.get(name.lower(), (name.lower(),)))
      if real is None:
        raise InputError(f"unknown item feature column {name!r}; {self._available_columns()}")
      if real not in out:
        out.append(real)
    return out

  def _available_columns(self) -> str:
    if self.item_features is None:
      return ("this export has no item table (its run had no item features file, or it was "
              f"exported before item tables were kept: {_FIX})")
    aliases = [f"{alias} -> {self._find_column(names)}" for alias, names in
               COLUMN_ALIASES.items() if self._find_column(names)]
    return (f"the item table has {', '.join(self.item_columns) or 'no columns'}"
            + (f" (aliases: {', '.join(aliases)})" if aliases else ""))

  def describe_items(self, item_ids: Iterable, columns: WithFeatures = True) -> list[dict]:
    """Per item id, {column: raw value as in the item file} (None for an item the table
    has no row for, or an id the export does not know)."""
    with self._lock.reading():
      return self._describe([_as_token(i, "item id")
                             for i in _as_list(item_ids, "item_ids")],
                            self.resolve_item_columns(columns))

  def _describe(self, item_ids: list, columns: list[str]) -> list[dict]:
    rows = self._item_index.get_indexer(item_ids) if item_ids else np.zeros(0, np.int64)
    table = self.item_features or {}   # columns is empty when the export has no item table
    return [{name: (table[name][r] if r >= 0 else None) for name in columns}
            for r in rows]

  def _feature_columns(self, with_features: WithFeatures) -> Optional[list[str]]:
    """None for bare results, else the resolved columns (checked before any work)."""
    if with_features is None or with_features is False:
      return None
    return self.resolve_item_columns(with_features)

  def is_known_user(self, user_id) -> bool:
    """Whether the export holds this user's defaults (latest features and history)."""
    return bool(self._user_index.get_indexer([_as_token(user_id, "user_id")])[0] >= 0)

  def user_history(self, user, with_features: WithFeatures = False) -> list:
    """The history a request's query is built from, NEWEST FIRST: the request's own
    'history', or for a known user the export's stored latest L items (user_defaults.npz);
    known items only, at most L. ``user`` is a user id or a request dict; an unknown user
    without a 'history' has none. Item ids, or with ``with_features`` (as in recommend)
    {"item_id", "features"} dicts."""
    columns = self._feature_columns(with_features)
    request = user if isinstance(user, Mapping) else {"user_id": _as_token(user, "user_id")}
    with self._lock.reading():
      history = self._normalize(request)["history"][::-1]
      if columns is None:
        return history
      return [{"item_id": item, "features": features}
              for item, features in zip(history, self._describe(history, columns))]

  # ------------------------------------------------------------------ new items

  @property
  def item_fields(self) -> tuple:
    """The raw fields an item is given by (add_items, embed_items): item_id, then the item
    table's feature columns as in the item file."""
    return ("item_id", *(name for name, _, _ in self._item_fields))

  def embed_items(self, items: Sequence[Mapping], batch_size: int = 1024) -> np.ndarray:
    """Item embeddings [B, D] of raw item dicts (see add_items), through the export's
    item_model: a corpus item gets its indexed vector (within float noise)."""
    normalized = self._normalize_items(items)
    return self._embed_items(normalized, batch_size)

  def add_items(self, items: Sequence[Mapping]) -> dict:
    """Embeds new items and adds them to this Recommender's search, without a rebuild: a
    list of dicts of raw item fields as in the item file (``item_id`` required; a missing
    or None field is an empty value; a multi-valued one may be a list of tokens).

    ScaNN takes them through its pybind mutator (each vector to its nearest leaf, hash
    codes computed; the tree and codebook stay as trained, so add a large share of the
    corpus by re-indexing instead); brute force appends. From return on, ``recommend`` can
    return them and ``describe_items`` shows their fields. An id already in the corpus is
    REPLACED: its vector and its fields become the new ones (an updated title, say); an id
    given twice in one call is an InputError, as is a missing item_id, an unknown field or a
    value that is not a string. The additions live in memory only: the export on disk is
    unchanged, so a new Recommender (or a LiveRecommender reload) starts without them; to
    keep them, add them to the item file and re-export. Returns {"added": [ids],
    "replaced": [ids]}.
    """
    normalized = self._normalize_items(items)
    ids = [item["item_id"] for item in normalized]
    seen: set = set()
    for where, item_id in enumerate(ids):
      if item_id in seen:
        raise InputError(f"items[{where}]: item_id {item_id!r} is given twice in one call")
      seen.add(item_id)
    vectors = self._embed_items(normalized)   # the item model only: no lock needed
    with self._lock.writing():
      rows = (self._item_index.get_indexer(ids) if ids else np.zeros(0, np.int64))
      self.index.upsert(rows, vectors, np.asarray(ids, dtype=object))
      self.item_ids = np.asarray(self.index.item_ids, dtype=object)
      self._item_index = pd.Index(self.item_ids)
      if self.item_features is not None:
        old, added = rows >= 0, np.flatnonzero(rows < 0)
        for name, column in list(self.item_features.items()):
          values = np.empty(len(normalized), dtype=object)
          values[:] = [item.get(name) for item in normalized]
          column = np.concatenate([column, values[added]])
          column[rows[old]] = values[old]
          self.item_features[name] = column
    return {"added": [i for i, r in zip(ids, rows) if r < 0],
            "replaced": [i for i, r in zip(ids, rows) if r >= 0]}

  def _normalize_items(self, items) -> list[dict]:
    """Checked item dicts: {"item_id": str, field: str or None}."""
    if isinstance(items, (Mapping, str, bytes)) or not isinstance(items, Iterable):
      raise InputError(f"items must be a list of item dicts, got {type(items).__name__}")
    fields = set(self.item_fields)
    out = []
    for where, item in enumerate(items):
      if not isinstance(item, Mapping):
        raise InputError(f"items[{where}] must be a dict of raw item fields, got "
                         f"{type(item).__name__}")
      unknown = set(item) - fields
      if unknown:
        raise InputError(f"items[{where}]: unknown item field(s) {sorted(map(str, unknown))}; "
                         f"this export's items take {list(self.item_fields)}")
      if item.get("item_id") is None or item.get("item_id") == "":
        raise InputError(f"items[{where}]: item_id is required")
      entry: dict = {"item_id": _as_token(item["item_id"], f"items[{where}].item_id")}
      for name, kind, _ in self._item_fields:
        value = item.get(name)
        entry[name] = None if value is None else _raw_value(value, kind,
                                                            f"items[{where}].{name}")
      out.append(entry)
    return out

  def _embed_items(self, items: list[dict], batch_size: int = 1024) -> np.ndarray:
    import tensorflow as tf
    embed = self._item_signature()
    out = []
    for start in range(0, len(items), batch_size):
      chunk = items[start:start + batch_size]
      inputs = {key: tf.constant(np.array([item[name] or "" for item in chunk], dtype=str))
                for name, key in [("item_id", "item_id")] + [
                    (name, key) for name, _, key in self._item_fields]}
      out.append(embed(**inputs)["embedding"].numpy())
    dim = self.index.embeddings.shape[1]
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

  def _item_signature(self):
    """The item_model's serving signature, loaded on first use from the export this
    Recommender was loaded from, after checking its files are still the ones the manifest
    listed at load (a re-export to the same directory must not mix two runs)."""
    with self._item_model_lock:
      if self._item_model is None:
        entry = self.manifest.get("item_model")
        if not entry or self.export_dir is None:
          raise IntegrityError(f"export {self.export_dir}: it holds no item_model (exported "
                               f"before item encoders); {_FIX}")
        prefix = entry["path"].rstrip("/") + "/"
        files = {rel: e["sha256"] for rel, e in self.manifest["files"].items()
                 if rel.startswith(prefix)}
        try:
          fileio.verify_files(self.export_dir, files, f"export {self.export_dir}",
                              "did it change since this Recommender loaded it? load it again")
          import tensorflow as tf
          model = tf.saved_model.load(fileio.resolve_inside(self.export_dir, entry["path"]))
        except (IntegrityError, FileNotFoundError):
          raise
        except Exception as e:  # pylint: disable=broad-except
          raise IntegrityError(f"export {self.export_dir}: the item SavedModel does not load "
                               f"({type(e).__name__}: {str(e)[:300]}); {_FIX}") from e
        self._item_model = (model, model.signatures["serving_default"])
      return self._item_model[1]

  # ------------------------------------------------------------------ recommend

  def recommend(self, user: Mapping, k: int = 10, exclude_items: Iterable = (),
                with_features: WithFeatures = False) -> list:
    """The top-k (item_id, score) for one user, best first, excluded items removed before
    the cut (k results whenever the corpus has k non-excluded items).

    ``with_features``: True (every item table column), or column names as in the item file
    (aliases: 'title', 'genres'), returns {"item_id", "score", "features": {column: raw
    value}} dicts instead of pairs; an unknown column is a ValueError listing the columns.
    """
    return self.recommend_batch([user], k, [exclude_items], with_features=with_features)[0]

  def recommend_batch(self, users: Sequence[Mapping], k: int = 10,
                      exclude_items: Optional[Sequence[Iterable]] = None,
                      with_features: WithFeatures = False) -> list[list]:
    """recommend() for many users at once (one embedding call, one batched search)."""
    with self._lock.reading():
      return self._recommend_batch(users, k, exclude_items, with_features)

  def _recommend_batch(self, users, k: int, exclude_items, with_features) -> list[list]:
    columns = self._feature_columns(with_features)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
      raise InputError(f"k must be a non-negative integer, got {k!r}")
    users = self._as_users(users)
    if exclude_items is None:
      exclude_items = [()] * len(users)
    else:
      if isinstance(exclude_items, (str, bytes, Mapping)):
        raise ValueError("exclude_items must be a list with one iterable of item ids per user")
      exclude_items = list(exclude_items)
      if len(exclude_items) != len(users):
        raise ValueError(f"exclude_items has {len(exclude_items)} entries for {len(users)} "
                         f"users; pass one iterable of item ids per user")
    normalized = [self._normalize(u) for u in users]
    excluded = [self._rows(ex) for ex in exclude_items]
    if not users or k == 0:
      return [[] for _ in users]
    queries = self._embed_normalized(normalized)
    depth = max(k, self.rerank_candidates) if self.reranker else k
    rows, scores = self._retrieve(queries, depth, excluded)
    if self.reranker is not None:
      recs = self._rerank(normalized, rows, k)
    else:
      recs = [[(self.item_ids[r], float(s)) for r, s in zip(rr[:k], ss[:k])]
              for rr, ss in zip(rows, scores)]
    return recs if columns is None else [self._readable(r, columns) for r in recs]

  def _readable(self, recs: list, columns: list[str]) -> list[dict]:
    features = self._describe([item for item, _ in recs], columns)
    return [{"item_id": item, "score": score, "features": f}
            for (item, score), f in zip(recs, features)]

  def _rows(self, items) -> np.ndarray:
    items = [_as_token(i, "excluded item") for i in _as_list(items, "exclude_items entry")]
    if not items:
      return np.zeros(0, np.int64)
    rows = self._item_index.get_indexer(items)
    return np.unique(rows[rows >= 0])   # unknown items cannot be recommended anyway

  def _retrieve(self, queries: np.ndarray, n: int, excluded: list[np.ndarray]):
    """Per user, the best min(n, available) corpus rows and scores, exclusions removed."""
    rows, scores = self.index.search(queries, n, exclude=ItemSets.from_lists(excluded))
    found = [(rr >= 0) & np.isfinite(ss) for rr, ss in zip(rows, scores)]
    return ([rr[ok] for rr, ok in zip(rows, found)],
            [ss[ok] for ss, ok in zip(scores, found)])

  def _rerank(self, users: list[dict], rows: list[np.ndarray], k: int):
    assert self.reranker is not None, "_rerank needs a reranker"
    candidates = [[self.item_ids[r] for r in rr] for rr in rows]
    scores = self.reranker(users, candidates)
    if len(scores) != len(users):
      raise ValueError(f"the reranker returned {len(scores)} score lists for {len(users)} users")
    out = []
    for cand, row_scores in zip(candidates, scores):
      sc = np.asarray(row_scores, np.float64).reshape(-1)
      if len(sc) != len(cand):
        raise ValueError(f"the reranker returned {len(sc)} scores for {len(cand)} candidates")
      order = np.argsort(-sc, kind="stable")[:k]
      out.append([(cand[i], float(sc[i])) for i in order])
    return out

  def _warm_up(self) -> None:
    """One query through every stage, so the first real request pays no tracing or
    hash-table construction."""
    user = {"user_id": str(self.defaults["user_id"][0])} if len(self._user_index) else {}
    self._item_index.get_indexer(self.item_ids[:1])
    self._user_index.get_indexer([""])
    self.recommend(user, k=min(10, self.index.num_items),
                   exclude_items=list(self.item_ids[:1]))


class LiveRecommender:
  """A Recommender that can be replaced by a newer export while it serves.

  ``reload(export_dir)`` loads and verifies the new export completely (checks, SavedModels,
  warm-up query) *before* one reference swap makes it current; a bad export raises and the
  old one keeps serving. A request runs entirely on the Recommender that was current when
  it started, so no answer mixes two exports.
  """

  def __init__(self, recommender: Recommender, **load_options):
    self._current = recommender
    self._load_options = load_options
    self._lock = threading.Lock()   # one reload at a time; requests never wait on it

  @classmethod
  def load(cls, export_dir: str, **load_options) -> "LiveRecommender":
    """``load_options`` (reranker, rerank, rerank_candidates, verify) apply to reloads too."""
    return cls(Recommender.load(export_dir, **load_options), **load_options)

  @property
  def current(self) -> Recommender:
    return self._current

  def reload(self, export_dir: str) -> Recommender:
    """Makes ``export_dir`` current once it has loaded; returns the previous Recommender."""
    with self._lock:
      fresh = Recommender.load(export_dir, **self._load_options)
      previous, self._current = self._current, fresh
    return previous

  def recommend(self, user: Mapping, k: int = 10, exclude_items: Iterable = (),
                with_features: WithFeatures = False):
    return self._current.recommend(user, k=k, exclude_items=exclude_items,
                                   with_features=with_features)

  def recommend_batch(self, users: Sequence[Mapping], k: int = 10, exclude_items=None,
                      with_features: WithFeatures = False):
    return self._current.recommend_batch(users, k=k, exclude_items=exclude_items,
                                         with_features=with_features)

  def user_history(self, user, with_features: WithFeatures = False):
    return self._current.user_history(user, with_features=with_features)

  def add_items(self, items: Sequence[Mapping]) -> dict:
    """Recommender.add_items on the current export. A reload starts from the new export's
    corpus: additions made before it are not carried over (re-export with them instead)."""
    with self._lock:   # never lands on an export a reload is replacing
      return self._current.add_items(items)
