"""The admin's pages in the browser: proposals accepted and dismissed, clusters merged,
given a threshold and rejected; a collection approved and its documents shown; a dead letter
inspected and purged. Each change is checked through the API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg
from playwright.async_api import Browser, expect

from clusterer.handlers import ClustererDeps
from schemer.deps import SchemerDeps
from tests.clusterer.test_recluster import file_all, recluster_now, seed
from tests.integration.conftest import Gateway
from tests.ui.test_browser import WAIT, api, open_page, shot, url_of


async def test_proposals_merge_threshold_and_reject_on_the_clusters_pages(
    browser: Browser,
    gateway: Gateway,
    start_clusterer: Callable[..., AbstractAsyncContextManager[ClustererDeps]],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    seeded = await seed(db, storage_path, 2, 4)
    async with start_clusterer(cluster_threshold=0.9999) as deps:
        await file_all(deps, seeded)  # eight singletons
        proposed = await recluster_now(gateway)
        assert proposed["total"] == 2
        errors: list[str] = []
        page = await open_page(browser, url_of(gateway) + "/#/clusters", errors)
        accept = page.locator("button:has-text('Accept')")
        await expect(accept).to_have_count(2, timeout=WAIT)
        await shot(page, "proposals")
        await accept.first.click()
        await expect(page.locator("button:has-text('Accept')")).to_have_count(1, timeout=WAIT)
        await page.locator("button:has-text('Dismiss')").click()
        await expect(page.locator("text=No re-clustering proposals.")).to_be_visible(timeout=WAIT)
        decided = await api(gateway, "/api/v1/clusters/proposals?status=all")
        assert sorted(p["status"] for p in decided["proposals"]) == ["accepted", "dismissed"]

        # Merge two clusters by selecting them.
        before = await api(gateway, "/api/v1/clusters?limit=100")
        cards = page.locator("[data-cluster]")
        await expect(cards).to_have_count(before["total"])
        first = await cards.nth(0).get_attribute("data-cluster")
        second = await cards.nth(1).get_attribute("data-cluster")
        sizes = {c["id"]: c["member_count"] for c in before["clusters"]}
        await cards.nth(0).locator("input[type=checkbox]").check()
        await cards.nth(1).locator("input[type=checkbox]").check()
        await page.click("button:has-text('Merge selected')")
        await expect(page.locator("#toast")).to_contain_text("Merged")
        await expect(page.locator("[data-cluster]")).to_have_count(before["total"] - 1)
        merged = await api(gateway, f"/api/v1/clusters/{first}")
        assert merged["member_count"] == sizes[first] + sizes[second]

        # A threshold of its own, then rejected: its members are filed again.
        await page.locator(f"[data-cluster='{first}'] h3 a").click()
        await page.fill("#cluster-threshold", "0.5")
        await page.click("button:has-text('Set threshold')")
        await expect(page.locator("main")).to_contain_text("threshold 0.5", timeout=WAIT)
        shown = await api(gateway, f"/api/v1/clusters/{first}")
        assert (shown["threshold"], shown["threshold_source"]) == (0.5, "cluster")
        await page.click("button:has-text('Reject')")
        await expect(page.locator("main h2").first).to_have_text("Clusters", timeout=WAIT)
        gone = await gateway.client.get(f"/api/v1/clusters/{first}")
        assert gone.status == 404
        assert errors == []


async def test_a_collection_approved_and_a_dead_letter_purged_in_the_browser(
    browser: Browser,
    gateway: Gateway,
    schemer: SchemerDeps,
    db: asyncpg.Connection,
) -> None:
    documents = [{"sku": f"S{i}", "price": i, "colour": "red"} for i in range(5)]
    response = await gateway.client.post("/api/v1/ingest?collection=orders", json=documents)
    assert response.status == 202, await response.text()
    job = (await response.json())["job_id"]
    for _ in range(200):
        if (await api(gateway, "/api/v1/schemas"))["schemas"]:
            break
        await asyncio.sleep(0.05)
    await db.execute(
        """INSERT INTO dead_letters (message_id, queue, routing_key, body, error, job_id)
           VALUES ('m-1', 'embedder.media-ingested', 'media.ingested.v1', '\\x7b7d',
                   'decode failed: truncated image', $1)""",
        uuid.UUID(job),
    )
    errors: list[str] = []
    page = await open_page(browser, url_of(gateway) + "/#/collections", errors)
    card = page.locator("[data-schema]")
    await expect(card).to_have_count(1, timeout=WAIT)
    await expect(card).to_contain_text("orders")
    await card.locator("button:has-text('Approve table')").click()
    schema_id = await card.get_attribute("data-schema")

    async def approved() -> bool:
        schema = await api(gateway, f"/api/v1/schemas/{schema_id}")
        return bool(schema["status"] == "approved")

    for _ in range(200):
        if await approved():
            break
        await asyncio.sleep(0.05)
    assert await approved()
    await page.reload()
    await page.locator("[data-schema] button:has-text('Documents')").click()
    table = page.locator("[data-schema] table")
    await expect(table.locator("tbody tr")).to_have_count(5, timeout=WAIT)
    await expect(table.locator("thead")).to_contain_text("sku")
    await shot(page, "collections-approved")

    await page.goto(url_of(gateway) + "/#/dlq")
    await expect(page.locator("main")).to_contain_text("decode failed: truncated image")
    await page.click("button:has-text('Inspect')")
    await expect(page.locator("pre[aria-label='Dead letter']")).to_contain_text("m-1")
    await page.locator("td button:has-text('Purge')").click()
    await expect(page.locator("#no-letters")).to_be_visible(timeout=WAIT)
    assert await api(gateway, "/api/v1/admin/dlq?state=all") == []

    await page.goto(url_of(gateway) + f"/#/system/{job}")
    await expect(page.locator("pre[aria-label='Timeline']")).to_contain_text("store", timeout=WAIT)
    assert errors == []
