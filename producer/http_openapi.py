"""The HTTP API described: its endpoints as a table (`Endpoint`, producer/http.py's ROUTES),
the OpenAPI 3.1 document built from that table and the models of producer/http_models.py
(GET /v1/openapi.json), and a page generated from the document (GET /v1/docs).
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from producer import problems
from producer.problems import Problem

SCHEMAS = "#/components/schemas/"
JSON = "application/json"
# What a body or answer is: a model, models one of which it is, or a JSON Schema as it is.
Shape = type[BaseModel] | tuple[type[BaseModel], ...] | Mapping[str, Any]
# `code` in a description.
_CODE_SPAN = re.compile(r"`([^`]+)`")
# Members of a path ("/v1/campaigns/{cid}") between braces.
_PATH_PARAMETER = re.compile(r"{(\w+)}")
# Headers an answer of this status carries, as the document describes them.
_PROBLEM_HEADERS = {
    401: {"WWW-Authenticate": 'Bearer realm="smsq"'},
    503: {"Retry-After": "seconds to wait before trying again"},
}


@dataclass(frozen=True, slots=True)
class Answer:
    """A success answer: what it means, its body per media type, the headers it carries."""

    description: str
    content: Mapping[str, Shape] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route: its handler, and what the document says of it. `problems` are the codes
    it may answer besides those every endpoint may (`COMMON`, and `BODY` for one with a
    body); a public one needs no token."""

    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    summary: str
    answers: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    problems: tuple[str, ...] = ()
    idempotent: bool = False
    public: bool = False

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


# What any endpoint behind the token may answer, and any that reads a JSON body.
COMMON = ("unauthorized", "redis_unavailable", "internal_error", "configuration_error")
BODY = (
    "invalid_json",
    "incomplete_body",
    "body_too_large",
    "unsupported_media_type",
    "invalid_body",
    "unknown_field",
    "missing_field",
    "invalid_field",
)
QUERY = ("unknown_parameter", "invalid_parameter")


def json_answer(model: Shape, description: str, **headers: str) -> Answer:
    """A JSON answer of this shape."""
    return Answer(description, {JSON: model}, {k.replace("_", "-"): v for k, v in headers.items()})


def codes_of(endpoint: Endpoint) -> list[str]:
    """Every problem code this endpoint may answer, in the table's order."""
    found = set(endpoint.problems)
    if not endpoint.public:
        found.update(COMMON)
    if endpoint.body is not None:
        found.update(BODY)
    if endpoint.query is not None:
        found.update(QUERY)
    if endpoint.idempotent:
        found.add("invalid_idempotency_key")
    return [code for code in problems.CODES if code in found]


def _models(endpoints: Iterable[Endpoint]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    found: dict[type[BaseModel], JsonSchemaMode] = {Problem: "serialization"}
    for e in endpoints:
        if e.body is not None:
            found[e.body] = "validation"
        for a in e.answers.values():
            for shape in a.content.values():
                if isinstance(shape, type):
                    found[shape] = "serialization"
                elif isinstance(shape, tuple):
                    found.update(dict.fromkeys(shape, "serialization"))
    return list(found.items())


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": SCHEMAS + model.__name__}


def _schema(shape: Shape) -> Mapping[str, Any]:
    if isinstance(shape, type):
        return _ref(shape)
    if isinstance(shape, tuple):
        return {"oneOf": [_ref(m) for m in shape]}
    return shape


def _codes_schema() -> dict[str, Any]:
    return {
        "type": "string",
        "description": "What went wrong, for a program to match on; `type` is "
        f"`{problems.TYPE_PREFIX}<code>`.",
        "oneOf": [
            {"const": code, "title": spec.title, "description": f"{spec.status}: {spec.when}"}
            for code, spec in problems.CODES.items()
        ],
    }


def _problem_answers(codes: list[str]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(problems.CODES[code].status, []).append(code)
    out: dict[str, Any] = {}
    for status, found in sorted(by_status.items()):
        schema = {
            "allOf": [_ref(Problem), {"properties": {"code": {"enum": found}}}],
        }
        out[str(status)] = {
            "description": ", ".join(f"`{c}`" for c in found),
            "content": {problems.MEDIA_TYPE: {"schema": schema}},
            **_headers(_PROBLEM_HEADERS.get(status, {})),
        }
    return out


def _headers(headers: Mapping[str, str]) -> dict[str, Any]:
    if not headers:
        return {}
    return {
        "headers": {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    }


def _parameters(
    endpoint: Endpoint, path_parameters: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, **path_parameters[name]}
        for name in _PATH_PARAMETER.findall(endpoint.path)
    ]
    if endpoint.query is not None:
        schema = endpoint.query.model_json_schema(ref_template=SCHEMAS + "{model}")
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            prop = dict(prop)
            prop.pop("title", None)
            out.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "description": prop.pop("description", ""),
                    "schema": prop,
                }
            )
    if endpoint.idempotent:
        out.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "the same key and the same request within 24 hours make one "
                "campaign; a repeat answers 200 with `repeated: true`",
                "schema": {"type": "string", "pattern": "^[\\x20-\\x7e]{1,200}$"},
            }
        )
    return out


def _operation(
    endpoint: Endpoint, path_parameters: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": endpoint.operation_id, "summary": endpoint.summary}
    parameters = _parameters(endpoint, path_parameters)
    if parameters:
        op["parameters"] = parameters
    if endpoint.body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(endpoint.body)}}}
    responses: dict[str, Any] = {}
    for status, a in sorted(endpoint.answers.items()):
        described: dict[str, Any] = {"description": a.description, **_headers(a.headers)}
        if a.content:
            described["content"] = {m: {"schema": _schema(s)} for m, s in a.content.items()}
        responses[str(status)] = described
    responses.update(_problem_answers(codes_of(endpoint)))
    op["responses"] = responses
    if endpoint.public:
        op["security"] = []
    return op


def document(
    endpoints: Iterable[Endpoint],
    path_parameters: Mapping[str, Mapping[str, Any]],
    description: str = "",
) -> dict[str, Any]:
    """The OpenAPI 3.1.0 document of these endpoints; `path_parameters` describes each
    {name} in their paths (a description and a schema)."""
    endpoints = list(endpoints)
    _, defs = models_json_schema(_models(endpoints), ref_template=SCHEMAS + "{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["ProblemCode"] = _codes_schema()
    problem = dict(schemas[Problem.__name__])
    problem["properties"] = {**problem["properties"], "code": {"$ref": SCHEMAS + "ProblemCode"}}
    schemas[Problem.__name__] = problem
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e, path_parameters)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smsq HTTP API",
            "version": metadata.version("smsq"),
            "description": description,
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "SMSQ_API_TOKEN",
                }
            },
        },
        "security": [{"bearer": []}],
    }


# --- the page


# Inline only: the page loads nothing, from here or elsewhere (its Content-Security-Policy
# says so too).
_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}
code,.path{font-family:ui-monospace,monospace;font-size:.93em}
h2{border-bottom:1px solid #ccc;margin-top:2em}h3{margin:1.6em 0 .4em}
table{border-collapse:collapse;margin:.4em 0 1em;width:100%}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.method{font-weight:bold;text-transform:uppercase}
.public{color:#666;font-size:.9em}
"""
DOCS_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def _e(text: Any) -> str:
    return html.escape(str(text))


def _md(text: Any) -> str:
    """Text escaped, its `code` spans (the descriptions' Markdown) set as code."""
    return _CODE_SPAN.sub(r"<code>\1</code>", _e(text))


def _code_link(code: str) -> str:
    return f'<a href="#{_e(code)}"><code>{_e(code)}</code></a>'


def _type(schema: Mapping[str, Any]) -> str:
    """A schema as a short phrase, models linked to their section."""
    if "$ref" in schema:
        name = str(schema["$ref"]).removeprefix(SCHEMAS)
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    for key in ("anyOf", "oneOf"):
        if key in schema and all("const" not in s for s in schema[key]):
            return " or ".join(_type(s) for s in schema[key])
    if "allOf" in schema:
        return " and ".join(_type(s) for s in schema["allOf"])
    if "const" in schema:
        return f"<code>{_e(_json_text(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_e(_json_text(v))}</code>" for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " or ".join(_e(k) for k in kind)
    if kind == "array":
        return "array of " + _type(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "object of " + _type(schema["additionalProperties"])
    return _e(kind)


def _json_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def _bounds(schema: Mapping[str, Any]) -> str:
    notes = [f"{k} {schema[k]}" for k in ("minimum", "maxLength", "pattern") if k in schema]
    for option in schema.get("anyOf", ()):
        notes.extend(f"{k} {option[k]}" for k in ("minimum", "maxLength") if k in option)
    return f" ({_e(', '.join(notes))})" if notes else ""


def _table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    top = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{top}</tr>{body}</table>"


def _endpoint_html(path: str, method: str, op: Mapping[str, Any]) -> str:
    out = [
        f'<h3 id="op-{_e(op["operationId"])}"><span class="method">{_e(method)}</span> '
        f'<span class="path">{_e(path)}</span></h3><p>{_md(op["summary"])}'
    ]
    if op.get("security") == []:
        out.append(' <span class="public">(no token)</span>')
    out.append("</p>")
    parameters = op.get("parameters", [])
    if parameters:
        rows = [
            (
                f"<code>{_e(p['name'])}</code>",
                _e(p["in"]),
                _type(p["schema"]) + _bounds(p["schema"]),
                "yes" if p.get("required") else "",
                _md(p.get("description", "")),
            )
            for p in parameters
        ]
        out.append(_table(("parameter", "in", "type", "required", ""), rows))
    body = op.get("requestBody")
    if body:
        out.append(f"<p>Body (<code>{JSON}</code>): {_type(body['content'][JSON]['schema'])}</p>")
    rows = []
    for status, r in op["responses"].items():
        content = r.get("content", {})
        shapes = "; ".join(
            f"<code>{_e(media)}</code> {_type(c['schema'])}"
            for media, c in content.items()
            if media != problems.MEDIA_TYPE
        )
        if problems.MEDIA_TYPE in content:
            codes = content[problems.MEDIA_TYPE]["schema"]["allOf"][1]["properties"]["code"]
            text = "problem: " + ", ".join(_code_link(c) for c in codes["enum"])
        else:
            text = _md(r["description"]) + (f": {shapes}" if shapes else "")
        rows.append((_e(status), text))
    out.append(_table(("status", "answer"), rows))
    return "".join(out)


def _schema_html(name: str, schema: Mapping[str, Any]) -> str:
    out = [f'<h3 id="schema-{_e(name)}">{_e(name)}</h3>']
    if schema.get("description"):
        out.append(f"<p>{_md(schema['description'])}</p>")
    properties = schema.get("properties")
    if properties:
        required = set(schema.get("required", ()))
        rows = [
            (
                f"<code>{_e(prop)}</code>",
                _type(s) + _bounds(s),
                "yes" if prop in required else "",
                _md(s.get("description", "")),
            )
            for prop, s in properties.items()
        ]
        out.append(_table(("field", "type", "required", ""), rows))
    elif all("const" in option for option in schema.get("oneOf", [{}])):
        out.append('<p>One of the <a href="#errors">error codes</a>.</p>')
    else:
        out.append(f"<p>{_type(schema)}</p>")
    return "".join(out)


def page(doc: Mapping[str, Any]) -> str:
    """The document as one HTML page: endpoints, error codes (each row's id the code, where
    a problem's `type` points), and schemas."""
    info = doc["info"]
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(info['title'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(info['title'])} <small>{_e(info['version'])}</small></h1>",
        f"<p>{_md(info.get('description', ''))}</p>",
        '<p>The same as an OpenAPI 3.1 document: <a href="/v1/openapi.json">'
        "/v1/openapi.json</a>. Every request but those marked (no token) needs "
        "<code>Authorization: Bearer &lt;SMSQ_API_TOKEN&gt;</code>.</p>",
        "<h2>Endpoints</h2>",
    ]
    for path, methods in doc["paths"].items():
        parts.extend(_endpoint_html(path, m, op) for m, op in methods.items())
    parts.append(
        '<h2 id="errors">Errors</h2><p>Every error is <code>application/problem+json</code> '
        "(RFC 9457): <code>type</code> (this page's anchor of the code), <code>title</code>, "
        "<code>status</code>, <code>detail</code>, <code>code</code>, <code>errors</code> (the "
        "offending items) and <code>errors_count</code>. See "
        '<a href="#schema-Problem">Problem</a>.</p>'
    )
    rows = [
        f'<tr id="{_e(code)}"><td><code>{_e(code)}</code></td><td>{spec.status}</td>'
        f"<td>{_e(spec.title)}</td><td>{_md(spec.when)}</td></tr>"
        for code, spec in problems.CODES.items()
    ]
    parts.append(
        "<table><tr><th>code</th><th>status</th><th>title</th><th>when</th></tr>"
        + "".join(rows)
        + "</table><h2>Schemas</h2>"
    )
    schemas = doc["components"]["schemas"]
    parts.extend(_schema_html(name, s) for name, s in schemas.items())
    parts.append("</body></html>")
    return "".join(parts)
