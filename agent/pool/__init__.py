"""The model pool: loads models on demand and runs one generation at a time per model.

Import from here: ``ModelPool`` (``model_pool.py``), ``Lease`` (``lease.py``), and the store
contract, errors and status (``types.py``). Inside: ``residency.py`` keeps the models in memory
(loads, unloads), ``eviction.py`` decides which to unload (pure functions), ``turns.py`` is a
model's FIFO turn queue, ``kinds.py`` picks a model of the kind a route needs.
"""

from agent.pool.lease import Lease
from agent.pool.model_pool import ModelPool
from agent.pool.types import (
    Catalog,
    LoadTimeoutError,
    ModelKindError,
    ModelLoadFailedError,
    ModelUnavailableError,
    PoolClosedError,
    PoolError,
    PoolStatus,
    QueueFullError,
    ResolvedVariant,
    UnknownModelError,
)

__all__ = [
    "Catalog",
    "Lease",
    "LoadTimeoutError",
    "ModelKindError",
    "ModelLoadFailedError",
    "ModelPool",
    "ModelUnavailableError",
    "PoolClosedError",
    "PoolError",
    "PoolStatus",
    "QueueFullError",
    "ResolvedVariant",
    "UnknownModelError",
]
