"""The model pool: loads models on demand and runs one generation at a time per model.

Import from here: ``ModelPool`` (``model_pool.py``), ``Lease`` (``lease.py``), and the store
contract, errors and status (``types.py``).
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
