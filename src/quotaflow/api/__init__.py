"""Management REST API (/v1), metrics and the OpenAPI document."""

from quotaflow.api.app import Handler, ManagementApi, error_response, guarded, json_response
from quotaflow.api.openapi import openapi_document

__all__ = [
    "Handler",
    "ManagementApi",
    "error_response",
    "guarded",
    "json_response",
    "openapi_document",
]
