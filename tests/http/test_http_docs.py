"""Interactive API documentation at /api/docs: Swagger UI from the wheel's own assets, under a strict
Content-Security-Policy, rendered by a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable

import httpx
import pytest
from support.http import Served, problem

from orchestrator.http import docs

CHROMIUM = shutil.which("chromium")


async def test_the_page_loads_only_its_own_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/api/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "no asset from another host (no CDN)"
    for asset in re.findall(r"(?:src|href)=\"([^\"]+)\"", page.text):
        assert asset.startswith("docs/")
        served = await client.get(f"/api/{asset}")
        assert served.status_code == 200, asset
        assert served.headers["content-type"].split(";")[0] in ("text/javascript", "text/css", "image/png")
    bundle = await client.get("/api/docs/swagger-ui-bundle.js")
    assert bundle.content == (docs.ASSET_DIR / "swagger-ui-bundle.js").read_bytes()
    assert '"openapi.json"' in (await client.get("/api/docs/init.js")).text


async def test_unknown_assets_and_the_short_address(client: httpx.AsyncClient) -> None:
    problem(await client.get("/api/docs/index.html"), 404)
    problem(await client.get("/api/docs/..%2Fpyproject.toml"), 404)
    problem(await client.post("/api/docs"), 405)
    moved = await client.get("/docs")
    assert moved.status_code == 307 and moved.headers["location"] == "/api/docs"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_a_browser_renders_every_operation(serve_command: Callable[..., Served]) -> None:
    """The scripts run under the page's CSP and load the document: every path is on the rendered page."""
    served = serve_command()
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--dump-dom",
         f"{served.url}/docs"],
        capture_output=True, text=True, timeout=90, check=True,
    ).stdout  # fmt: skip
    documented = httpx.get(f"{served.url}/api/openapi.json").json()["paths"]
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))
    assert rendered == set(documented), dom[:2000]
