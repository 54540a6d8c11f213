"""The `mammoth` command line: ingest a tree of files, and the API's other calls by name.

MAMMOTH_URL (default http://127.0.0.1:8000) and MAMMOTH_API_KEY come from the environment or
--url and --key; MAMMOTH_RETRY_FOR is how long a 503 or a dropped connection is retried
(ingest --retry-for: 300 s; other commands 30 s). Every command takes --json (the API's
answer, or the ingest summary, as JSON on stdout). Exit codes: 0 done, 1 the request or some
files failed, 2 a usage error, 3 the gateway unreachable or unavailable (after retrying), 4
the key refused (401 or 403).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import aiohttp
import orjson
import typer
import uvloop
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from mammoth_cli.client import UNAVAILABLE, ApiFailure, Client
from mammoth_cli.ingest import Ingest
from mammoth_cli.plan import KINDS, walk

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
clusters = typer.Typer(
    help="Clusters: list, show, rename, merge, confirm, reject.", no_args_is_help=True
)
schemas = typer.Typer(
    help="JSON collections' schemas: list, show, approve, reject.", no_args_is_help=True
)
dlq = typer.Typer(help="Dead letters: list, show, requeue, purge.", no_args_is_help=True)
for group, name in ((clusters, "clusters"), (schemas, "schemas"), (dlq, "dlq")):
    app.add_typer(group, name=name, no_args_is_help=True)

out = Console()
err = Console(stderr=True)
T = TypeVar("T")

Url = Annotated[str, typer.Option("--url", envvar="MAMMOTH_URL", help="The gateway's address.")]
Key = Annotated[
    str | None,
    typer.Option("--key", envvar="MAMMOTH_API_KEY", help="An API key.", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]
DEFAULT_URL = "http://127.0.0.1:8000"
# How long a command other than ingest keeps retrying a 503 or a dropped connection.
COMMAND_RETRY_FOR = 30.0


def _run(url: str, key: str | None, work: Callable[[Client], Awaitable[T]], **client: Any) -> T:
    """Run `work` with a client; an ApiFailure ends the command with its message and code."""

    client.setdefault("retry_for", float(os.environ.get("MAMMOTH_RETRY_FOR", COMMAND_RETRY_FOR)))

    async def main() -> T:
        async with Client(url, key, **client) as api:
            return await work(api)

    try:
        return uvloop.run(main())
    except ApiFailure as failure:
        err.print(f"[red]error[/red] {failure}", markup=True, highlight=False)
        raise typer.Exit(failure.code) from None
    except (aiohttp.ClientError, ValueError) as error:  # a bad URL, no answer at all
        err.print(f"[red]error[/red] {error}", markup=True, highlight=False)
        raise typer.Exit(UNAVAILABLE) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _call(
    url: str, key: str | None, as_json: bool, method: str, path: str,
    render: Callable[[Any], None] | None = None, **kwargs: Any,
) -> Any:  # fmt: skip
    """One API call: its JSON printed (with --json or without a renderer) or rendered."""
    answer = _run(url, key, lambda api: api.call(method, path, **kwargs))
    if as_json or render is None:
        _print_json(answer)
    else:
        render(answer)
    return answer


def _table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    out.print(table)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="Files and folders.")],
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Json = False,
    owner: Annotated[str | None, typer.Option(help="Owner of the uploads.")] = None,
    collection: Annotated[str | None, typer.Option(help="Collection for JSON files.")] = None,
    comments: Annotated[str | None, typer.Option(help="Comments stored with each.")] = None,
    kind: Annotated[
        list[str] | None, typer.Option("--type", help=f"Only these kinds: {', '.join(KINDS)}.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests at once.")] = 4,
    batch: Annotated[int, typer.Option(min=1, max=100, help="Files per request.")] = 1,
    no_ignore: Annotated[
        bool, typer.Option("--no-ignore", help="Do not read .mammothignore files.")
    ] = False,
    retry_for: Annotated[
        float,
        typer.Option(
            min=0, envvar="MAMMOTH_RETRY_FOR", help="Seconds to keep retrying a 503 or a drop."
        ),
    ] = 300.0,
) -> None:
    """Upload every file under PATHS (recursively; .mammothignore files use gitignore's
    syntax). A re-run after an interruption uploads only what is missing."""
    kinds = kind or list(KINDS)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise typer.BadParameter(f"unknown type {unknown[0]!r}", param_hint="--type")
    found = walk(paths, kinds, use_ignore=not no_ignore)
    fields = {
        name: value
        for name, value in (("owner", owner), ("collection", collection), ("comments", comments))
        if value is not None
    }
    show = not as_json and err.is_terminal
    progress = Progress(
        TextColumn("{task.description}", style="bold"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not show,
    )

    async def work(api: Client) -> Any:
        with progress:
            run = Ingest(api, fields, batch=batch, concurrency=concurrency, progress=progress)
            return await run.run(found)

    summary = _run(url, key, work, retry_for=retry_for)
    if as_json:
        _print_json(summary.as_json())
    else:
        out.print(summary.text(), highlight=False)
    if summary.stopped is not None:
        err.print(f"[red]error[/red] {summary.stopped}", highlight=False)
    raise typer.Exit(summary.exit_code)


@app.command()
def status(
    job: str,
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Json = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is done or failed.")] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait at most.")] = 600.0,
) -> None:
    """A job's status; with --wait, once it has finished (exit 1 if anything failed)."""

    async def work(api: Client) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            answer = await api.call("GET", f"/api/v1/ingest/{job}/status")
            if not wait or answer["status"] in ("done", "failed", "partial"):
                return answer
            if loop.time() > deadline:
                raise ApiFailure(f"job {job} still {answer['status']} after {timeout:g} s")
            await asyncio.sleep(0.5)

    answer = _run(url, key, work)
    if as_json:
        _print_json(answer)
    else:
        out.print(f"job {answer['job_id']}: {answer['status']}", highlight=False)
        _table(answer.get("uploads", []), ["system_id", "filename", "stage", "error"])
    if answer["status"] in ("failed", "partial"):
        raise typer.Exit(1)


@app.command()
def timeline(job: str, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False) -> None:
    """Where each upload of a job is and where its time went."""
    if as_json:
        _call(url, key, True, "GET", f"/api/v1/ingest/{job}/timeline")
        return
    text = _run(
        url,
        key,
        lambda api: api.call(
            "GET", f"/api/v1/ingest/{job}/timeline", params={"format": "text"}, text=True
        ),
    )
    out.print(text, highlight=False, markup=False, end="")


def _results(answer: dict[str, Any]) -> None:
    rows = [
        {**r, "cluster": (r.get("cluster") or {}).get("name"), "score": f"{r['score']:.3f}"}
        for r in answer["results"]
    ]
    _table(rows, ["score", "id", "kind", "filename", "owner", "cluster"])


@app.command()
def search(
    text: Annotated[str | None, typer.Argument(help="What to look for.")] = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Json = False,
    image: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    like: Annotated[str | None, typer.Option(help="An upload id: more like it.")] = None,
    kind: Annotated[str | None, typer.Option(help="image or video.")] = None,
    owner: str | None = None,
    cluster: Annotated[str | None, typer.Option(help="A cluster id.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeat for more).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    threshold: float | None = None,
) -> None:
    """Search by TEXT, by --image FILE or --like UPLOAD."""
    if sum(x is not None for x in (text, image, like)) != 1:
        raise typer.BadParameter("give exactly one of TEXT, --image and --like")
    filters: dict[str, Any] = {
        "kind": kind, "owner": owner, "cluster_id": cluster, "limit": limit,
        "threshold": threshold, "tags": tag or None,
    }  # fmt: skip
    filters = {k: v for k, v in filters.items() if v is not None}
    if image is None:
        body = {**filters, **({"query": text} if text is not None else {"like": like})}
        _call(url, key, as_json, "POST", "/api/v1/search", _results, json=body)
        return
    picture = image

    def form() -> aiohttp.FormData:
        data = aiohttp.FormData(quote_fields=False)
        for name, value in filters.items():
            data.add_field(name, ",".join(value) if isinstance(value, list) else str(value))
        data.add_field("image", picture.read_bytes(), filename=picture.name)
        return data

    _call(url, key, as_json, "POST", "/api/v1/search", _results, data=form)


@app.command()
def health(url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False) -> None:
    """The system's health (exit 1 when it is not healthy)."""

    async def work(api: Client) -> Any:
        async with api.session.get(api.url + "/health") as response:
            return await response.json(content_type=None)

    answer = _run(url, key, work)
    if as_json:
        _print_json(answer)
    else:
        out.print(f"{answer.get('status')}", highlight=False)
        for reason in answer.get("reasons", []):
            out.print(f"  {reason}", highlight=False)
    if answer.get("status") != "healthy":
        raise typer.Exit(1)


# Clusters


def _cluster(answer: dict[str, Any]) -> None:
    c = answer.get("cluster", answer)
    out.print(
        f"{c['id']}  {c['name']!r}  members {c['member_count']}"
        f"  {'provisional' if c['provisional'] else 'confirmed'}",
        highlight=False,
    )
    if "members" in answer:
        _table(answer["members"], ["system_id", "filename", "kind", "owner"])


def _change(url: str, key: str | None, as_json: bool, cluster_id: str, **body: Any) -> None:
    _call(url, key, as_json, "PATCH", f"/api/v1/clusters/{cluster_id}", _cluster, json=body)


@clusters.command("list")
def clusters_list(
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Json = False,
    provisional: Annotated[
        bool | None, typer.Option("--provisional/--confirmed", help="Only these.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Clusters, newest first."""
    params: dict[str, str] = {"limit": str(limit), "offset": str(offset)}
    if provisional is not None:
        params["provisional"] = str(provisional).lower()
    _call(
        url, key, as_json, "GET", "/api/v1/clusters",
        lambda a: _table(a["clusters"], ["id", "name", "member_count", "provisional"]),
        params=params,
    )  # fmt: skip


@clusters.command("show")
def clusters_show(
    cluster_id: str, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False
) -> None:
    """A cluster and its members."""
    _call(url, key, as_json, "GET", f"/api/v1/clusters/{cluster_id}", _cluster)


@clusters.command("rename")
def clusters_rename(
    cluster_id: str, name: str, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False
) -> None:
    """Give a cluster a name (an admin's: analysis no longer replaces it)."""
    _change(url, key, as_json, cluster_id, action="rename", name=name)


@clusters.command("merge")
def clusters_merge(
    target: str,
    sources: Annotated[list[str], typer.Argument(help="Clusters merged into TARGET.")],
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Merge SOURCES into TARGET."""
    _change(url, key, as_json, target, action="merge", source_ids=sources)


@clusters.command("confirm")
def clusters_confirm(
    cluster_id: str, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False
) -> None:
    """A provisional cluster becomes a confirmed one."""
    _change(url, key, as_json, cluster_id, action="confirm")


@clusters.command("reject")
def clusters_reject(
    cluster_id: str, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False
) -> None:
    """The cluster goes; its members are filed again."""
    _change(url, key, as_json, cluster_id, action="reject")


# Schemas


def _schema(s: dict[str, Any]) -> None:
    decision = s.get("decision") or {}
    out.print(
        f"{s['id']}  {s['owner']}/{s['name']}  {s['status']}  {s['storage']}"
        f"  documents {s['document_count']}",
        highlight=False,
    )
    for reason in decision.get("reasons", []):
        out.print(f"  {reason}", highlight=False)


@schemas.command("list")
def schemas_list(
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Json = False,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Collections and their schemas, newest first."""
    _call(
        url, key, as_json, "GET", "/api/v1/schemas",
        lambda a: _table(a if isinstance(a, list) else a.get("schemas", []),
                         ["id", "owner", "name", "status", "storage", "document_count"]),
        params={"limit": str(limit), "offset": str(offset)},
    )  # fmt: skip


@schemas.command("show")
def schemas_show(
    schema_id: str, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False
) -> None:
    """A collection's schema, fields and decision."""
    _call(url, key, as_json, "GET", f"/api/v1/schemas/{schema_id}", _schema)


@schemas.command("approve")
def schemas_approve(
    schema_id: str, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False
) -> None:
    """Create the proposed table and move the documents in."""
    _call(url, key, as_json, "POST", f"/api/v1/schemas/{schema_id}/approve", None)


@schemas.command("reject")
def schemas_reject(
    schema_id: str, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False
) -> None:
    """Keep the collection as JSONB documents instead."""
    _call(url, key, as_json, "POST", f"/api/v1/schemas/{schema_id}/reject", None)


# Dead letters

_LETTER = ["id", "job_id", "queue", "attempts", "error", "failed_at", "requeued_at"]


@dlq.command("list")
def dlq_list(
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Json = False,
    queue: str | None = None,
    state: Annotated[str, typer.Option(help="parked, requeued or all.")] = "parked",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """Dead letters, newest first."""
    params = {"state": state, "limit": str(limit), **({"queue": queue} if queue else {})}
    _call(
        url, key, as_json, "GET", "/api/v1/admin/dlq", lambda a: _table(a, _LETTER), params=params
    )


@dlq.command("show")
def dlq_show(job: str, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False) -> None:
    """A job's dead letters, with their messages."""
    _call(url, key, as_json, "GET", f"/api/v1/admin/dlq/{job}", lambda a: _table(a, _LETTER))


def _one_or_all(job: str | None, every: bool) -> None:
    if (job is not None) == every:
        raise typer.BadParameter("give a JOB or --all, not both or neither")


@dlq.command("requeue")
def dlq_requeue(
    job: Annotated[str | None, typer.Argument(help="The job whose letters go back.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every parked letter.")] = False,
    queue: Annotated[str | None, typer.Option(help="With --all: only this queue's.")] = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Send parked letters back to their queues."""
    _one_or_all(job, every)
    render = lambda a: out.print(f"requeued {a['requeued']}")  # noqa: E731
    if job is not None:
        _call(url, key, as_json, "POST", f"/api/v1/admin/dlq/{job}/requeue", render, json={})
        return
    body = {"all": True, **({"queue": queue} if queue else {})}
    _call(url, key, as_json, "POST", "/api/v1/admin/dlq/requeue", render, json=body)


@dlq.command("purge")
def dlq_purge(
    job: Annotated[str | None, typer.Argument(help="The job whose letters are forgotten.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every parked letter.")] = False,
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Forget parked letters (their content stays failed)."""
    _one_or_all(job, every)
    path = "/api/v1/admin/dlq" + (f"/{job}" if job is not None else "")
    _call(url, key, as_json, "DELETE", path, lambda a: out.print(f"purged {a['purged']}"))


def main() -> None:
    app()
