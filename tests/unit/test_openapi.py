"""The gateway's contract: a valid OpenAPI 3.1 document, one handler per operation, roles set."""

from __future__ import annotations

import json

from openapi_spec_validator import validate

from services.gateway.app import HANDLERS
from shared.api.openapi import OPERATIONS, document
from shared.codegen import protogen


def test_openapi_document_is_valid_3_1() -> None:
    doc = document()
    validate(doc)
    assert doc["openapi"] == "3.1.0"


def test_committed_copy_is_what_the_gateway_serves() -> None:
    assert json.loads(protogen.render()["openapi.json"]) == document()


def test_every_operation_has_a_handler_and_every_handler_an_operation() -> None:
    assert {op.operation_id for op in OPERATIONS} == set(HANDLERS)


def test_only_health_the_document_and_sign_in_are_public() -> None:
    public = {(op.method, op.path) for op in OPERATIONS if op.role is None}
    assert public == {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json"), ("POST", "/v1/session")}
    for op in OPERATIONS:
        if op.operation_id == "alertmanager_webhook":
            assert op.role == "alerts" and not op.mutating  # deliveries are not people's actions
        elif op.operation_id == "create_session":
            assert not op.mutating  # the token in the body is the credential; sign-in is audited by its handler
        elif op.operation_id == "delete_session":
            assert op.mutating and op.role == "viewer"  # anyone signed in may sign out (audited, CSRF-checked)
        elif op.method in ("POST", "DELETE"):
            assert op.mutating and op.role in ("operator", "approver"), op.operation_id


def test_the_document_names_both_ways_in() -> None:
    doc = document()
    assert doc["security"] == [{"bearer": []}, {"session": []}]
    assert doc["components"]["securitySchemes"]["session"] == {"type": "apiKey", "in": "cookie", "name": "fy_session"}
    assert "X-CSRF-Token" in doc["info"]["description"]


def test_every_protected_operation_documents_auth_errors() -> None:
    doc = document()
    for op in OPERATIONS:
        responses = doc["paths"][op.path][op.method.lower()]["responses"]
        if op.role:
            assert {"401", "403", "429", "503", "500"} <= set(responses), op.operation_id
            assert responses["401"]["content"]["application/problem+json"]
