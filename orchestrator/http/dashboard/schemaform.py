"""HTML forms from pydantic-forms JSON schemas, and the submitted form back into the page pydantic validates.

A field's input name carries how to read it back (`count`, `tags:lines`, `ok:bool`, `colors:multi`, `extra:json`;
nested objects as `addr.street`), so parsing needs neither the schema nor any state kept between pages. Values
go to pydantic as typed text (it converts `"3"` for an int field, and says what is wrong otherwise); an empty
input is left out, so that the field's default applies or pydantic reports it as required.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from orchestrator.dsl import jsonutil
from orchestrator.dsl.forms import FormNotCompleteError, FormOverflowError, FormValidationError
from orchestrator.http.dashboard.render import checked_form

SCALARS = {"string": "text", "integer": "integer", "number": "number"}


@dataclass
class FormField:
    name: str
    """The input's name (dotted for nested objects), without its reader suffix."""
    label: str
    kind: str
    """text, integer, number, boolean, choice, multichoice, lines, object, json, label"""
    required: bool = False
    value: Any = None
    description: str = ""
    choices: list[str] = field(default_factory=list)
    children: list[FormField] = field(default_factory=list)
    error: str | None = None

    @property
    def input_name(self) -> str:
        suffix = {"boolean": ":bool", "multichoice": ":multi", "lines": ":lines", "json": ":json"}.get(self.kind, "")
        return self.name + suffix

    @property
    def dom_id(self) -> str:
        return "f-" + self.name.replace(".", "-")


def _resolve(schema: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow `$ref` (into `$defs`) and collapse `Optional[X]` (`anyOf: [X, null]`) into X."""
    if "$ref" in node:
        target = schema.get("$defs", {}).get(node["$ref"].rsplit("/", 1)[-1], {})
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    options = [o for o in node.get("anyOf", ()) if o.get("type") != "null"]
    if len(options) == 1:
        return {**_resolve(schema, options[0]), **{k: v for k, v in node.items() if k != "anyOf"}}
    allof = node.get("allOf")
    if isinstance(allof, list) and len(allof) == 1:
        return {**_resolve(schema, allof[0]), **{k: v for k, v in node.items() if k != "allOf"}}
    return node


def _kind(schema: Mapping[str, Any], node: Mapping[str, Any]) -> str:
    if node.get("format") in ("label", "divider") or node.get("type") == "null":
        return "label"
    if "enum" in node:
        return "choice"
    kind = node.get("type")
    if kind == "boolean":
        return "boolean"
    if kind in SCALARS:
        return SCALARS[kind]
    if kind == "object" and "properties" in node:
        return "object"
    if kind == "array":
        items = _resolve(schema, node.get("items", {}))
        if "enum" in items:
            return "multichoice"
        if items.get("type") in SCALARS:
            return "lines"
    return "json"


def _display(kind: str, value: Any) -> Any:
    """A default or submitted value as the input shows it."""
    if value is None:
        return "" if kind not in ("boolean", "multichoice") else value
    if kind == "lines" and isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if kind == "json" and not isinstance(value, str):
        return jsonutil.dumps_str(value)
    return value


def build_fields(
    schema: Mapping[str, Any],
    values: Mapping[str, Any] | None = None,
    node: Mapping[str, Any] | None = None,
    prefix: str = "",
) -> list[FormField]:
    """The fields of `node` (the schema itself at the top), showing `values` (nested like the page) or defaults."""
    node = schema if node is None else node
    required = set(node.get("required", ()))
    fields = []
    for key, raw in node.get("properties", {}).items():
        prop = _resolve(schema, raw)
        kind = _kind(schema, prop)
        name = f"{prefix}{key}"
        given = values.get(key) if values is not None and key in values else prop.get("default")
        item = FormField(
            name=name,
            label=str(prop.get("title") or key.replace("_", " ").capitalize()),
            kind=kind,
            required=key in required,
            description=str(prop.get("description") or ""),
        )
        if kind == "object":
            item.children = build_fields(schema, given if isinstance(given, Mapping) else None, prop, f"{name}.")
        else:
            item.value = _display(kind, given)
            source = _resolve(schema, prop.get("items", {})) if kind == "multichoice" else prop
            item.choices = [str(c) for c in source.get("enum", ())]
        fields.append(item)
    return fields


def attach_errors(fields: Sequence[FormField], errors: Sequence[Mapping[str, Any]]) -> list[str]:
    """Put each pydantic error on the field its `loc` names (or the nearest enclosing one); return the rest."""
    by_name: dict[str, FormField] = {}

    def index(items: Sequence[FormField]) -> None:
        for item in items:
            by_name[item.name] = item
            index(item.children)

    index(fields)
    unplaced = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        message = str(error.get("msg", "invalid"))
        for end in range(len(loc), 0, -1):
            target = by_name.get(".".join(loc[:end]))
            if target is not None:
                target.error = f"{target.error}; {message}" if target.error else message
                break
        else:
            unplaced.append(message if not loc else f"{'.'.join(loc)}: {message}")
    return unplaced


def _read(reader: str, values: list[str]) -> Any:
    if reader == "bool":
        return any(v not in ("", "false") for v in values)
    if reader == "multi":
        return [v for v in values if v]
    text = values[-1].strip() if values else ""
    if not text:
        return None
    if reader == "lines":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if reader == "json":
        try:
            return jsonutil.loads(text)
        except ValueError:
            return text  # pydantic names the field and what it expected
    return text


def parse_page(form: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The submitted form (its key/value pairs, repeated keys for checkbox groups) as one page's JSON object."""
    grouped: dict[str, list[str]] = {}
    for key, value in form:
        if not key.startswith("_") and key != "csrf":
            grouped.setdefault(key, []).append(value)
    for name in (v for key, v in form if key == "_bools"):
        grouped.setdefault(f"{name}:bool", [])
    page: dict[str, Any] = {}
    for key, values in grouped.items():
        name, _, reader = key.partition(":")
        value = _read(reader, values)
        if value is None:
            continue
        *parents, last = name.split(".")
        target = page
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return page


@dataclass
class RenderedForm:
    """One page of a (possibly multi-page) form, as the `schema_form` macro shows it."""

    title: str
    fields: list[FormField]
    pages: str
    """The pages already filled in, as JSON: sent again with this one (pydantic-forms validates them all)."""
    page_number: int
    errors: list[str]

    @property
    def status(self) -> int:
        """400 when shown with errors; 200 for a fresh page."""

        def invalid(fields: Sequence[FormField]) -> bool:
            return any(f.error or invalid(f.children) for f in fields)

        return 400 if self.errors or invalid(self.fields) else 200


def render_form(
    schema: Mapping[str, Any] | None,
    previous: Sequence[Mapping[str, Any]] = (),
    values: Mapping[str, Any] | None = None,
    errors: Sequence[Mapping[str, Any]] = (),
) -> RenderedForm:
    fields = build_fields(schema, values) if schema else []
    title = str(schema.get("title") or "") if schema else ""
    unplaced = attach_errors(fields, errors)
    return RenderedForm(
        "" if title == "unknown" else title, fields, jsonutil.dumps_str(list(previous)), len(previous) + 1, unplaced
    )


Submit = Callable[[list[dict[str, Any]]], Awaitable[None]]


def _previous_pages(text: str) -> list[dict[str, Any]]:
    try:
        pages = jsonutil.loads(text or "[]")
    except ValueError:
        pages = None
    if not isinstance(pages, list) or not all(isinstance(p, dict) for p in pages):
        raise FormOverflowError("The form's earlier pages were garbled; start again")
    return pages


async def submit_form(request: Request, submit: Submit) -> RenderedForm | None:
    """Submit the form's pages through `submit` (a start or resume); None when it went through, else the page to
    show: the next one of a multi-page form, or this one again with its errors next to the fields."""
    form = await checked_form(request)
    previous = _previous_pages(str(form.get("_pages", "")))
    current = parse_page([(k, str(v)) for k, v in form.multi_items()])
    try:
        await submit([*previous, current])
    except FormNotCompleteError as exc:
        return render_form(exc.form, [*previous, current])
    except FormValidationError as exc:
        try:
            await submit(previous)
        except FormNotCompleteError as incomplete:
            return render_form(incomplete.form, previous, current, exc.errors)
        raise
    return None
