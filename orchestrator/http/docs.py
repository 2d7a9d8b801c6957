"""Interactive API documentation: Swagger UI at `/api/docs`, reading `/api/openapi.json`.

Its assets are served from the `openapi-ui-bundles` wheel (no CDN: the page works offline and behind firewalls), and
the page carries a Content-Security-Policy that allows these assets and nothing else. The page and its script are
not API operations, so the OpenAPI document leaves them out.
"""

from __future__ import annotations

from pathlib import Path

from openapi_ui_bundles import swagger_ui
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from orchestrator.http.problems import Problem

DOCS_PATH = "/api/docs"
ASSET_DIR = Path(swagger_ui.static_path)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
INIT_SCRIPT = "init.js"

# Relative URLs: from /api/docs, `docs/x` is /api/docs/x and `openapi.json` is /api/openapi.json, also under a
# root path (a reverse proxy's prefix).
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>orchestrator-async API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"""
SCRIPT = 'window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true});\n'

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # Swagger UI sets style attributes
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
ASSET_CACHE = "public, max-age=86400"


async def docs_page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


async def docs_asset(request: Request) -> Response:
    name = request.path_params["asset"]
    if name == INIT_SCRIPT:
        return Response(SCRIPT, media_type="text/javascript", headers={"Cache-Control": ASSET_CACHE})
    media_type = ASSETS.get(name)
    if media_type is None:
        return Problem(404, f"No such documentation asset; the page is at {DOCS_PATH}")
    return FileResponse(ASSET_DIR / name, media_type=media_type, headers={"Cache-Control": ASSET_CACHE})


async def to_docs(request: Request) -> Response:
    return RedirectResponse(request.scope.get("root_path", "") + DOCS_PATH)


ROUTES = [
    Route(DOCS_PATH, docs_page, methods=["GET"]),
    Route(DOCS_PATH + "/{asset}", docs_asset, methods=["GET"]),
    Route("/docs", to_docs, methods=["GET"]),
]
"""Routes of the documentation, outside the OpenAPI document."""
