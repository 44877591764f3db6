"""The outermost middleware: counts the SQL statements of each request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connection
from django.http import HttpRequest
from django.http.response import HttpResponseBase

HEADER = "X-Bench-Queries"


class _Counter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


class CountQueries:
    """Every statement sent through a cursor, SAVEPOINTs included (not BEGIN or COMMIT,
    which the driver sends without a cursor), in the ``X-Bench-Queries`` header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        counter = _Counter()
        with connection.execute_wrapper(counter):
            response = self.get_response(request)
        response[HEADER] = str(counter.count)
        return response
