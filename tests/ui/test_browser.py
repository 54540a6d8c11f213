"""The web UI in a real Chromium against the running system: upload, watch, cluster, rename,
confirm, search, requeue; a read key sees no admin controls; no page logs an error."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from clusterer.handlers import ClustererDeps
from embedder.handlers import EmbedderDeps
from gateway.ui import CSP
from mammoth_export.colour_model import COLOURS
from tests.clusterer.conftest import colour_png
from tests.clusterer.test_pipeline import form
from tests.integration.conftest import Gateway
from tests.ui.conftest import ARTEFACTS

READER = "reader-key-0123456789"
ADMIN = "admin-key-0123456789"
WAIT = 60_000  # ms: the pipeline on two shared cores


def url_of(gw: Gateway) -> str:
    return f"http://{gw.client.host}:{gw.client.port}"


async def open_page(browser: Browser, url: str, errors: list[str], width: int = 1200) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    await page.goto(url)
    return page


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


async def api(gw: Gateway, path: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await gw.client.get(path, headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


@pytest.mark.slow
async def test_upload_watch_cluster_rename_confirm_and_search_in_the_browser(
    browser: Browser,
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    tmp_path: Path,
) -> None:
    errors: list[str] = []
    files = []
    for i in range(3):
        path = tmp_path / f"red{i}.png"
        path.write_bytes(colour_png(COLOURS["red"], seed=40 + i))
        files.append(str(path))
    page = await open_page(browser, url_of(gateway) + "/#/upload", errors)
    await expect(page.locator("#banner")).to_contain_text("Open mode")
    await page.set_input_files("#files", files)
    await expect(page.locator("td .state.ok")).to_have_count(3, timeout=WAIT)
    await expect(page.locator("td .state.ok").first).to_have_text("clustered")
    await shot(page, "upload")

    await page.click("nav >> text=Clusters")
    card = page.locator("[data-cluster]").first
    await expect(card).to_be_visible(timeout=WAIT)
    await expect(card.locator("img").first).to_have_attribute("src", re.compile("^blob:"))
    await shot(page, "clusters")
    cluster_id = await card.get_attribute("data-cluster")
    await card.locator("h3 a").click()
    await page.fill("#cluster-name", "Red things")
    await page.click("button:has-text('Rename')")
    await expect(page.locator("#cluster-title")).to_have_text("Red things", timeout=WAIT)
    await page.click("button:has-text('Confirm')")
    await expect(page.locator("button:has-text('Confirm')")).to_have_count(0, timeout=WAIT)
    await shot(page, "cluster")
    seen = await api(gateway, f"/api/v1/clusters/{cluster_id}")
    assert seen["name"] == "Red things" and seen["provisional"] is False
    assert seen["member_count"] == 3

    await page.click("nav >> text=Search")
    await page.fill("#query", "red")
    await page.click("form[role=search] button[type=submit]")
    await expect(page.locator("[data-result]")).to_have_count(3, timeout=WAIT)
    await shot(page, "search")
    await page.locator("[data-result] >> text=More like this").first.click()
    await expect(page.locator("[data-result]")).to_have_count(2, timeout=WAIT)
    # By an image, and a filter that leaves nothing.
    await page.goto(url_of(gateway) + "/#/search")
    await page.set_input_files("#query-image", files[0])
    await page.click("form[role=search] button[type=submit]")
    await expect(page.locator("[data-result]")).to_have_count(3, timeout=WAIT)
    await page.set_input_files("#query-image", [])
    await page.fill("#query", "red")
    await page.select_option("#kind", "video")
    await page.click("form[role=search] button[type=submit]")
    await expect(page.locator("#no-results")).to_be_visible(timeout=WAIT)

    for name in ("collections", "system", "dlq"):
        await page.goto(url_of(gateway) + f"/#/{name}")
        await expect(page.locator("main h2").first).to_be_visible()
        await expect(page.locator("main")).not_to_contain_text("Loading", timeout=WAIT)
        await shot(page, name)
    await expect(page.locator("#no-letters")).to_be_visible()
    assert errors == []


async def test_a_read_key_sees_no_admin_controls_and_an_admin_requeues_a_dead_letter(
    browser: Browser,
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]],
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
) -> None:
    keys = [f"{READER}:read", f"{ADMIN}:admin"]
    async with start_gateway(api_keys=keys) as gw:
        url = url_of(gw)
        # A picture the embedder cannot decode: parked at once as a permanent failure.
        broken = colour_png(COLOURS["red"], seed=1)[:60]
        response = await gw.client.post(
            "/api/v1/ingest",
            data=form(("broken.png", broken)),
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert response.status == 202, await response.text()
        response = await gw.client.post(
            "/api/v1/ingest",
            data=form(("blue.png", colour_png(COLOURS["blue"], seed=2))),
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert response.status == 202, await response.text()

        errors: list[str] = []
        reader = await open_page(browser, url + "/#/clusters", errors, width=390)  # a phone
        await reader.fill("#api-key", READER)
        await reader.click("button:has-text('Use this key')")
        await expect(reader.locator("#who")).to_contain_text("read key")
        await expect(reader.locator("nav >> text=Dead letters")).to_be_hidden()
        await expect(reader.locator("main h2")).to_have_text("Clusters")
        cluster = reader.locator("[data-cluster] h3 a").first
        await expect(cluster).to_be_visible(timeout=WAIT)
        assert await reader.locator("button:has-text('Merge selected')").count() == 0
        assert await reader.locator("[data-cluster] input[type=checkbox]").count() == 0
        assert await reader.locator("text=Re-clustering proposals").count() == 0
        await cluster.click()
        await expect(reader.locator("[aria-label=Members] img").first).to_be_visible()
        for control in ("Rename", "Confirm", "Reject", "Set threshold"):
            assert await reader.locator(f"button:has-text('{control}')").count() == 0, control
        await reader.goto(url + "/#/upload")
        await expect(reader.locator("main")).to_contain_text("may read only")
        await reader.goto(url + "/#/dlq")
        await expect(reader.locator("main")).to_contain_text("need an admin key")
        await shot(reader, "read-only")

        admin = await open_page(browser, url + "/#/dlq", [])
        await admin.fill("#api-key", ADMIN)
        await admin.click("button:has-text('Use this key')")

        async def parked() -> int:
            letters = await api(gw, "/api/v1/admin/dlq?state=parked", ADMIN)
            return len(letters)

        for _ in range(300):
            if await parked():
                break
            await admin.wait_for_timeout(100)
        await admin.reload()
        requeue = admin.locator("[data-requeue]").first
        await expect(requeue).to_be_visible(timeout=WAIT)
        await shot(admin, "dead-letters")
        await requeue.click()
        await expect(admin.locator("#toast")).to_contain_text("Requeued 1")
        requeued = await api(gw, "/api/v1/admin/dlq?state=requeued", ADMIN)
        assert len(requeued) >= 1
        assert errors == []


async def test_the_page_and_its_assets_carry_their_security_and_cache_headers(
    gateway: Gateway,
) -> None:
    page = await gateway.client.get("/")
    assert page.status == 200 and page.headers["Content-Security-Policy"] == CSP
    assert page.headers["Cache-Control"] == "no-cache"
    html = await page.text()
    assert "<script" in html and "script-src 'self'" in CSP and "inline" not in CSP
    [app] = [part.split('"')[0] for part in html.split('src="')[1:]]
    asset = await gateway.client.get(app)
    assert asset.status == 200 and asset.headers["Content-Type"].startswith("text/javascript")
    assert "immutable" in asset.headers["Cache-Control"]
    stale = await gateway.client.get(app.split("?")[0] + "?v=old")
    assert stale.headers["Cache-Control"] == "no-cache"
    for path in ("/ui/nothing.js", "/ui/index.html", "/ui/../settings.py", "/ui/%2e%2e/app.py"):
        response = await gateway.client.get(path)
        assert response.status == 404, path
        assert "error" in json.loads(await response.text())
    me = await gateway.client.get("/api/v1/me")
    assert await me.json() == {"role": "admin", "owner": None, "open": True}


async def test_me_says_who_a_key_is_and_needs_none_to_say_so(
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]],
) -> None:
    async with start_gateway(api_keys=[f"{READER}:read:alice", f"{ADMIN}:admin"]) as gw:
        for headers, expected in [
            ({}, {"role": None, "owner": None, "open": False}),
            (
                {"Authorization": "Bearer wrong-key-0123456789"},
                {"role": None, "owner": None, "open": False},
            ),
            (
                {"Authorization": f"Bearer {READER}"},
                {"role": "read", "owner": "alice", "open": False},
            ),
            ({"X-API-Key": ADMIN}, {"role": "admin", "owner": None, "open": False}),
        ]:
            response = await gw.client.get("/api/v1/me", headers=headers)
            assert response.status == 200 and await response.json() == expected
