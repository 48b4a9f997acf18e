"""Which model a request of one kind gets: chat routes need a chat model, ``/v1/embeddings`` an
embedding model (``agent.model_kinds``). Plain functions over the catalog, used by ``ModelPool.resolve``."""

from __future__ import annotations

from agent.pool.types import Catalog, ModelKindError, ModelUnavailableError, ResolvedVariant, UnknownModelError

KIND_NAMES = {"chat": "a chat model", "embed": "an embedding model"}
KIND_PLURALS = {"chat": "chat models", "embed": "embedding models"}
KIND_USES = {"chat": " (chat and text completions)", "embed": " (/v1/embeddings)"}


def _what(kind: str) -> str:
    return KIND_NAMES.get(kind, f"a {kind} model")


def check_kind(variant: ResolvedVariant, kind: str | None, *, active: bool = False) -> ResolvedVariant:
    """``variant`` if it is of ``kind`` (or ``kind`` is None); else ``ModelKindError`` saying what
    it is and what the request needs."""
    if kind is None or variant.kind == kind:
        return variant
    if active:
        raise ModelKindError(f"The active model {variant.key} is {_what(variant.kind)}, not {_what(kind)}: "
                             "name one in 'model'")
    raise ModelKindError(f"{variant.key} is {_what(variant.kind)}; this request needs {_what(kind)}"
                         f"{KIND_USES.get(kind, '')}")


def default_of_kind(catalog: Catalog, active_key: str | None, kind: str) -> ResolvedVariant:
    """What a request of ``kind`` that names no model gets: the active model if it is of that kind,
    else the only installed model of that kind. Several: ``ModelKindError`` ``model_required``;
    none: ``UnknownModelError``."""
    if active_key is not None:
        try:
            active: ResolvedVariant | None = catalog.resolve(active_key)
        except (UnknownModelError, ModelUnavailableError):
            active = None
        if active is not None and active.kind == kind:
            return active
    found = [v for v in catalog.installed() if v.kind == kind]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UnknownModelError(None, f"No model is named and none installed is {_what(kind)}{KIND_USES.get(kind, '')}")
    names = ", ".join(v.key for v in found[:5]) + (" ..." if len(found) > 5 else "")
    plural = KIND_PLURALS.get(kind, f"{kind} models")
    raise ModelKindError(f"Several installed models are {plural}: name one in 'model' ({names})",
                         code="model_required")
