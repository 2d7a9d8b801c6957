"""GET /api/processes: filter, sort, range with Content-Range, keyset pages (limit, after, Link), ETag and
If-None-Match."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import httpx
import pytest
from support.http import problem, start, wait_status


@pytest.fixture
async def listed(client: httpx.AsyncClient) -> dict[str, str]:
    """Four ended processes: two completed workflows (one by alice), a failed task, an inconsistent task."""
    pids = {
        "simple": await start(client, "tf_simple"),
        "alice": await start(client, "tf_simple", reporter="alice"),
        "task_failed": await start(client, "tf_task_fail"),
        "task_assert": await start(client, "tf_task_assert"),
    }
    for pid in pids.values():
        await wait_status(client, pid)
    return pids


async def ids(client: httpx.AsyncClient, **params: str) -> list[str]:
    response = await client.get("/api/processes", params=params)
    assert response.status_code == 200, response.text
    return [p["process_id"] for p in response.json()]


async def test_list_shape(client: httpx.AsyncClient, listed: dict[str, str]) -> None:
    response = await client.get("/api/processes")
    rows = response.json()
    assert {r["process_id"] for r in rows} == set(listed.values())
    assert all(r["steps"] is None and r["current_state"] is None and r["form"] is None for r in rows)
    assert "Content-Range" not in response.headers


async def test_filter(client: httpx.AsyncClient, listed: dict[str, str]) -> None:
    assert set(await ids(client, filter="lastStatus,completed")) == {listed["simple"], listed["alice"]}
    assert set(await ids(client, filter="last_status,failed-inconsistent_data")) == {
        listed["task_failed"],
        listed["task_assert"],
    }
    assert set(await ids(client, filter="isTask,true,lastStatus,!failed")) == {listed["task_assert"]}
    assert await ids(client, filter="createdBy,ALICE") == [listed["alice"]]
    assert set(await ids(client, filter="createdBy,!alice")) == set(listed.values()) - {listed["alice"]}
    assert set(await ids(client, filter="workflowName,tf_task%")) == {listed["task_failed"], listed["task_assert"]}
    assert await ids(client, filter=f"processId,{listed['alice']}") == [listed["alice"]]
    two = f"{listed['alice']}|{listed['simple']}"
    assert set(await ids(client, filter=f"processId,{two}")) == {listed["alice"], listed["simple"]}
    assert len(await ids(client, filter="startedAt,>=2000-01-01T00:00:00+00:00")) == 4
    assert await ids(client, filter="startedAt,<2000-01-01") == []
    assert len(await ids(client, filter="")) == 4
    assert set(await ids(client, filter="target,CREATE")) == {listed["simple"], listed["alice"]}


BAD_QUERIES = [
    ({"filter": "lastStatus"}, "Invalid number of filter arguments"),
    ({"filter": "colour,red"}, "Invalid filter arguments"),
    ({"filter": "isTask,maybe"}, "Not a valid boolean"),
    ({"filter": "processId,123"}, "Not a valid uuid"),
    ({"filter": "startedAt,yesterday"}, "Not a valid timestamptz"),
    ({"sort": "colour,asc"}, "Invalid sort arguments"),
    ({"sort": "startedAt,sideways"}, "Unknown sort direction"),
    ({"sort": "startedAt,asc,lastStep"}, "Invalid number of sort arguments"),
    ({"range": "5,5"}, "Invalid range"),
    ({"range": "-1,5"}, "Invalid range"),
    ({"range": "a,b"}, "Invalid range"),
    ({"range": "1,2,3"}, "Invalid range"),
    ({"range": "0,99999999999999999999"}, "Invalid range"),
]


async def test_bad_queries_are_400(client: httpx.AsyncClient) -> None:
    for params, detail in BAD_QUERIES:
        assert detail in problem(await client.get("/api/processes", params=params), 400)["detail"], params
    problem(await client.get("/api/processes", params={"filter": "note,\u0000"}), 400)  # PostgreSQL refuses NUL


async def test_sort_and_range(client: httpx.AsyncClient, listed: dict[str, str]) -> None:
    by_creator = await ids(client, sort="createdBy,desc,startedAt,asc")
    assert by_creator[-1] == listed["alice"]  # lower('SYSTEM') > lower('alice')
    assert await ids(client, sort="startedAt") == await ids(client)  # one token: ignored, as orchestrator-core

    ordered = await ids(client, sort="startedAt,asc")
    response = await client.get("/api/processes", params={"sort": "startedAt,asc", "range": "1,3"})
    assert [p["process_id"] for p in response.json()] == ordered[1:3]
    assert response.headers["Content-Range"] == "processes 1-3/4"
    beyond = await client.get("/api/processes", params={"range": "10,20"})
    assert beyond.json() == []
    assert beyond.headers["Content-Range"] == "processes 10-20/4"


async def test_etag(client: httpx.AsyncClient, listed: dict[str, str]) -> None:
    response = await client.get("/api/processes")
    etag = response.headers["ETag"]
    assert etag.startswith('W/"') and etag.endswith('"')
    bare = etag[3:-1]
    for sent in (etag, bare, f'"{bare}"', f'"other", {etag}', "*"):
        unchanged = await client.get("/api/processes", headers={"If-None-Match": sent})
        assert unchanged.status_code == 304, sent
        assert unchanged.content == b""
        assert unchanged.headers["ETag"] == etag
    assert (await client.get("/api/processes", headers={"If-None-Match": "deadbeef"})).status_code == 200

    await client.patch(f"/api/processes/{listed['simple']}", json={"note": "changes the etag"})
    changed = await client.get("/api/processes", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


async def test_total_above_the_exact_limit_is_an_estimate(
    client: httpx.AsyncClient, listed: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past EXACT_TOTAL_UP_TO rows the total is the planner's estimate (never below what was counted), so that a
    first page costs the same on a million processes; the response keeps its shape."""
    from orchestrator.persistence import reads

    monkeypatch.setattr(reads, "EXACT_TOTAL_UP_TO", 2)
    response = await client.get("/api/processes", params={"range": "0,2"})
    assert response.status_code == 200, response.text
    assert len(response.json()) == 2
    total = int(response.headers["Content-Range"].rpartition("/")[2])
    assert total >= 3
    exact = await client.get("/api/processes", params={"range": "0,2", "filter": "lastStatus,failed"})
    assert exact.headers["Content-Range"] == "processes 0-2/1"


def _next(response: httpx.Response) -> str | None:
    """The URL of the `Link: <...>; rel="next"` header, if any."""
    link = response.headers.get("Link")
    if link is None:
        return None
    url, _, rel = link.partition(";")
    assert rel.strip() == 'rel="next"', link
    return url.strip().removeprefix("<").removesuffix(">")


async def _walk(client: httpx.AsyncClient, url: str, **params: str) -> list[str]:
    """Every row from `url` on, following the next links to the end."""
    seen: list[str] = []
    response = await client.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text
        assert "Content-Range" not in response.headers or "range" in params
        seen += [p["process_id"] for p in response.json()]
        following = _next(response)
        if following is None:
            return seen
        response = await client.get(following)
        params = {}


SORTS = [
    "",
    "startedAt,asc",
    "createdBy,desc,startedAt,asc",
    "note,asc",
    "note,desc",
    "isTask,desc,lastStatus,asc",
    "workflowName,asc",
    "lastModifiedAt,desc",
]


async def test_keyset_pages_follow_every_order(client: httpx.AsyncClient, listed: dict[str, str]) -> None:
    """Following `Link: rel="next"` page by page yields exactly the rows of the unpaged listing, in its order,
    for every sort (NULLs where PostgreSQL puts them: two processes have notes, two none), from `limit` or from a
    `range` page."""
    await client.patch(f"/api/processes/{listed['alice']}", json={"note": "b note"})
    await client.patch(f"/api/processes/{listed['task_failed']}", json={"note": "A note"})
    for sort in SORTS:
        params = {"sort": sort} if sort else {}
        everything = await ids(client, **params)
        assert len(everything) == 4
        assert await _walk(client, "/api/processes", limit="1", **params) == everything, sort
        assert await _walk(client, "/api/processes", range="0,3", **params) == everything, sort
    failed = {"filter": "lastStatus,failed-inconsistent_data", "sort": "startedAt,asc"}
    assert await _walk(client, "/api/processes", limit="1", **failed) == await ids(client, **failed)
    last = await client.get("/api/processes", params={"limit": "4"})
    assert len(last.json()) == 4 and "Link" not in last.headers and "Content-Range" not in last.headers


async def test_bad_cursors_are_400(client: httpx.AsyncClient, listed: dict[str, str]) -> None:
    from orchestrator.http import listing

    first = await client.get("/api/processes", params={"limit": "1", "filter": "isTask,false"})
    following = _next(first)
    assert following is not None
    cursor = httpx.URL(following).params["after"]
    ok = await client.get("/api/processes", params={"after": cursor, "filter": "isTask,false"})
    assert ok.status_code == 200 and len(ok.json()) == 1  # without limit: DEFAULT_LIMIT rows
    started = datetime.now(UTC)
    forged = [
        listing.encode_cursor([str(started), uuid4()], [], []),  # text where the start time goes
        listing.encode_cursor([started], [], []),  # too short
        listing.encode_cursor([started, None], [], []),  # no process id
        listing.encode_cursor([uuid4(), started], [], []),
    ]
    bad = [
        ({"after": cursor}, "Invalid cursor"),  # made for another filter
        ({"after": cursor, "filter": "isTask,false", "sort": "startedAt,asc"}, "Invalid cursor"),  # another sort
        ({"after": "not a cursor"}, "Invalid cursor"),
        ({"after": ""}, "Invalid cursor"),
        ({"after": "W1swLDFd"}, "Invalid cursor"),
        ({"after": cursor, "filter": "isTask,false", "range": "0,5"}, "does not combine"),
        ({"limit": "5", "range": "0,5"}, "does not combine"),
        ({"limit": "0"}, "Invalid limit"),
        ({"limit": "10001"}, "Invalid limit"),
        ({"limit": "many"}, "Invalid limit"),
        *(({"after": f}, "Invalid cursor") for f in forged),
    ]
    for params, detail in bad:
        assert detail in problem(await client.get("/api/processes", params=params), 400)["detail"], params


async def test_total_by_status_and_kind_is_exact_from_the_counters(
    client: httpx.AsyncClient, listed: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing filtered on status and kind only (wildcards and negations included) has its exact total from the
    status counters, past EXACT_TOTAL_UP_TO too, in the page's own statement; an empty page keeps its total."""
    from orchestrator.persistence import reads

    monkeypatch.setattr(reads, "EXACT_TOTAL_UP_TO", 1)
    expected = {
        "": 4,
        "lastStatus,completed": 2,
        "lastStatus,!completed": 2,
        "isTask,true": 2,
        "isTask,true,lastStatus,inconsistent%": 1,
        "lastStatus,failed-completed,isTask,false": 2,
        "lastStatus,running": 0,
    }
    for filter_, total in expected.items():
        response = await client.get("/api/processes", params={"range": "0,1", "filter": filter_})
        assert response.status_code == 200, response.text
        assert response.headers["Content-Range"] == f"processes 0-1/{total}", filter_
        assert len(response.json()) == min(total, 1)
        beyond = await client.get("/api/processes", params={"range": "5,9", "filter": filter_})
        assert beyond.json() == [] and beyond.headers["Content-Range"] == f"processes 5-9/{total}", filter_
