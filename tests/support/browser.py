"""What a browser test holds: the served dashboard's URL, its browser page, and what went wrong in the page."""

from __future__ import annotations

from dataclasses import dataclass, field

from playwright.async_api import Page


@dataclass
class Dashboard:
    url: str
    page: Page
    problems: list[str] = field(default_factory=list)
    """Console errors (a Content-Security-Policy violation is one) and failed page scripts."""
