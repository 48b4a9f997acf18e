"""A small validator for responses against ``data/openai-subset.openapi.json`` (OpenAI's own spec).

It checks what a client relies on: required fields, JSON types (``nullable`` and ``{"type": "null"}``
included), enums, and nested objects/arrays through ``$ref``, ``allOf``, ``anyOf`` and ``oneOf``.
Formats and numeric bounds are not checked.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SPEC = Path(__file__).parent / "data" / "openai-subset.openapi.json"
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,),
    "number": (int, float), "boolean": (bool,), "null": (type(None),),
}


@cache
def _spec() -> dict[str, Any]:
    return json.loads(SPEC.read_text())  # type: ignore[no-any-return]


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = _spec()
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def errors(instance: Any, schema: dict[str, Any] | str, path: str = "$") -> list[str]:
    """Every way ``instance`` breaks ``schema`` (a schema or a component name); empty if it conforms."""
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    if instance is None and schema.get("nullable"):  # also beside a $ref
        return []
    schema = _resolve(schema)
    if instance is None and schema.get("nullable"):
        return []
    found: list[str] = []
    for sub in schema.get("allOf", []):
        found += errors(instance, sub, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [errors(instance, sub, path) for sub in schema[key]]
            if all(options):
                found.append(f"{path}: matches none of {key}: {min(options, key=len)}")
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(instance, _TYPES[kind]) and not (kind in ("integer", "number") and isinstance(instance, bool))
        if not ok:
            return found + [f"{path}: expected {kind}, got {type(instance).__name__}"]
    if "enum" in schema and instance not in schema["enum"]:
        found.append(f"{path}: {instance!r} not in {schema['enum']}")
    if isinstance(instance, dict):
        for name in schema.get("required", []):
            if name not in instance:
                found.append(f"{path}: missing required {name!r}")
        for name, sub in schema.get("properties", {}).items():
            if name in instance:
                found += errors(instance[name], sub, f"{path}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in instance.items():
                if name not in schema.get("properties", {}):
                    found += errors(value, extra, f"{path}.{name}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            found += errors(item, schema["items"], f"{path}[{i}]")
    return found
