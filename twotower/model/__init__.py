"""Towers, the retrieval loss with its cross-batch queue, and the ranking head."""
