"""Management REST API (/v1), metrics and the OpenAPI document."""

from quotaflow.api.app import ManagementApi, error_response, json_response
from quotaflow.api.openapi import openapi_document

__all__ = ["ManagementApi", "error_response", "json_response", "openapi_document"]
