"""The command line's API client: an API that goes away is one line for the operator, not a traceback."""

from __future__ import annotations

import httpx
import pytest

from smartretry.cli_ops import Api, ApiError


def test_an_api_that_stops_answering_while_results_are_awaited_is_one_clear_error() -> None:
    def gone(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    api = Api("http://127.0.0.1:9")
    api.client = httpx.Client(base_url=api.base_url, transport=httpx.MockTransport(gone))
    with pytest.raises(ApiError) as raised:
        api.wait_for("post-1", "cmd-1", timeout=5)
    api.close()
    assert "stopped answering while the results were awaited (ConnectError)" in str(raised.value)
    assert "the command was accepted: `smartretry show post-1`" in str(raised.value)
