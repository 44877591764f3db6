"""A drf-spectacular postprocessing hook that undoes what the app adds to a schema.

The schemathesis scenario serves the testproject once with it, to show that the
fuzzer fails a schema that leaves out the app's problem responses.
"""

from __future__ import annotations

from typing import Any

from idempotency.problems import CONTENT_TYPE


def drop_problem_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """The schema without ``application/problem+json``: a status that has nothing
    else goes, one that has the view's own content keeps only that."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status in list(responses):
                content = responses[status].get("content", {})
                if content.pop(CONTENT_TYPE, None) is not None and not content:
                    del responses[status]
    return result
