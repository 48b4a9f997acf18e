"""Variant keys and the validation of everything a user may name: model ids, revisions, quantizations, devices.

A variant is one downloadable/runnable form of a model: ``huggingface-local/<modelId>::<quant>::<device>``.
Model ids are validated strictly (``org/name`` of safe characters) because they become paths in the
store: no id may reach outside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEY_PREFIX = "huggingface-local/"
QUANTIZATIONS = ("q4", "q8", "fp16", "fp32")
DEVICES = ("auto", "cpu", "gpu", "cuda", "directml", "coreml")
DEVICE_ALIASES = {"webgpu": "gpu", "wasm": "cpu"}

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_-])?"
_MODEL_ID = re.compile(rf"^{_PART}/{_PART}$")
MODEL_ID_PATTERN = _MODEL_ID.pattern
"""What ``validate_model_id`` accepts (besides refusing ``..``), as a regular expression for documents."""


class InvalidNameError(ValueError):
    """A model id, key, quantization or device that is not allowed; the message says what is."""


def validate_model_id(model_id: str) -> str:
    """Return ``model_id`` if it is ``org/name`` of letters, digits, ``.``, ``_``, ``-``; else raise.

    ``..`` anywhere is refused too, so no id can name a parent directory.
    """
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id) or ".." in model_id:
        raise InvalidNameError(
            f"invalid model id {model_id!r}: expected 'org/name' using letters, digits, '.', '_' and '-'"
        )
    return model_id


_REVISION_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^/|/$|\.$|(?:^|/)\.|\.lock(?:/|$)")


def validate_revision(revision: str) -> str:
    """Return ``revision`` if git could name a branch, tag or commit with it (``main``, ``v1.0``,
    ``refs/pr/3``, a sha); else raise.

    The rules of ``git check-ref-format``, at most 255 characters: a revision that breaks them
    names nothing on the Hub, and some (``""``, ``.``, ``..``) would even change the URL asked for,
    so the Hub would answer an unrelated 404 instead of "no such revision".
    """
    if not isinstance(revision, str) or not revision or len(revision) > 255 or revision == "@" \
            or _REVISION_BAD.search(revision):
        raise InvalidNameError(f"invalid revision {revision!r}: expected a branch, tag or commit of the repo "
                               "(for example 'main')")
    return revision


def normalize_quantization(quant: str) -> str:
    q = quant.strip().lower() if isinstance(quant, str) else quant
    if q not in QUANTIZATIONS:
        raise InvalidNameError(f"invalid quantization {quant!r}: use one of {', '.join(QUANTIZATIONS)}")
    return q


def normalize_device(device: str) -> str:
    d = device.strip().lower() if isinstance(device, str) else device
    d = DEVICE_ALIASES.get(d, d)
    if d not in DEVICES:
        allowed = ", ".join(DEVICES + tuple(DEVICE_ALIASES))
        raise InvalidNameError(f"invalid device {device!r}: use one of {allowed}")
    return d


@dataclass(frozen=True, slots=True)
class VariantKey:
    """A parsed, validated variant key."""

    model_id: str
    quantization: str
    device: str

    def __str__(self) -> str:
        return f"{KEY_PREFIX}{self.model_id}::{self.quantization}::{self.device}"

    @classmethod
    def make(cls, model_id: str, quantization: str, device: str = "auto") -> VariantKey:
        return cls(validate_model_id(model_id), normalize_quantization(quantization), normalize_device(device))

    @classmethod
    def parse(cls, key: str) -> VariantKey:
        """Parse ``huggingface-local/org/name::q4::cpu``; the prefix and the device part are optional."""
        if not isinstance(key, str):
            raise InvalidNameError(f"invalid variant key {key!r}")
        body = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
        parts = body.split("::")
        if len(parts) == 2:
            parts.append("auto")
        if len(parts) != 3:
            raise InvalidNameError(
                f"invalid variant key {key!r}: expected '{KEY_PREFIX}<org/name>::<quant>::<device>'"
            )
        return cls.make(*parts)


def looks_like_key(text: str) -> bool:
    """True if ``text`` is meant as a variant key rather than a bare model id."""
    return "::" in text or text.startswith(KEY_PREFIX)
