"""What a browser test watches on a page: console errors, uncaught exceptions, failed
requests and assets answered with an error."""

from __future__ import annotations

from typing import Any


class Watched:
    """A page's problems: console errors, page errors, failed or erroring requests."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        self.expected_statuses: set[int] = set()
        page.on("console", lambda msg: self.problems.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _failed(self, request: Any) -> None:
        # ERR_ABORTED: the browser dropped the request because the page navigated away
        # (the favicon of a page left at once); a missing or broken asset is an error
        # response, caught below, or another failure.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"request failed: {request.url} ({request.failure})")

    def _response(self, response: Any) -> None:
        kind = response.request.resource_type
        if kind in ("stylesheet", "script", "image", "font") and response.status >= 400:
            self.problems.append(f"asset {response.url}: {response.status}")

    def assert_clean(self) -> None:
        assert self.problems == []
