"""Behaviour retrieval: a few target demos select the relevant steps of a large unlabeled store.

`retrieve(prior, target, RetrievalConfig(method=...))` scores every prior step (`br`, `strap`,
`importance`; see `methods`), `write_retrieval_store` writes target + prior with the mask,
scores and sampling weights that `robolearn train ... data.mix=retrieval` trains on.
"""

from robolearn.retrieval.core import METHODS, RetrievalConfig, RetrievalError, RetrievalResult, retrieve
from robolearn.retrieval.store_io import retrieval_summary, write_retrieval_store

__all__ = ["METHODS", "RetrievalConfig", "RetrievalError", "RetrievalResult", "retrieve", "retrieval_summary",
           "write_retrieval_store"]
