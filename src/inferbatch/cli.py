"""The ``inferbatch`` command line: one package, several roles."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from inferbatch.config import Settings

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from inferbatch.blobstore import BlobStore

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys.")
app.add_typer(keys_app, name="keys")
projects_app = typer.Typer(no_args_is_help=True, help="Manage projects and their members.")
app.add_typer(projects_app, name="projects")


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        typer.echo(f"invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from exc


def _blob_store(settings: Settings) -> BlobStore:
    """The configured blob store, checked: a missing bucket, refused credentials or an
    unreachable endpoint stop the process at start with the reason."""
    from inferbatch.blobstore import describe, open_blob_store
    from inferbatch.errors import StorageUnavailable

    blobs = open_blob_store(settings)
    try:
        blobs.check()
    except StorageUnavailable as exc:
        typer.echo(f"file storage {describe(settings)} is not usable: {exc.reason}", err=True)
        raise typer.Exit(2) from exc
    return blobs


@app.command()
def migrate() -> None:
    """Apply database migrations."""
    from inferbatch.db.connector import migrate as run_migrations
    from inferbatch.db.connector import session_url
    from inferbatch.runtime import setup_logging

    settings = _settings()
    setup_logging(settings, "migrate")
    run_migrations(session_url(settings))


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """Serve the REST API, /metrics, /healthz and /readyz."""
    import uvicorn

    from inferbatch.api.app import create_app
    from inferbatch.api.limits import HEADER_SLACK, H11Protocol
    from inferbatch.db.connector import database_url
    from inferbatch.engines.registry import EngineRegistry, load_specs
    from inferbatch.runtime import setup_logging

    settings = _settings()
    setup_logging(settings, "api")
    blobs = _blob_store(settings)
    engines = EngineRegistry.from_specs(
        load_specs(settings), timeout=settings.engine_timeout_seconds
    )
    application = create_app(settings, database_url(settings), blobs, engines)
    uvicorn.run(
        application,
        host=host or settings.host,
        port=port or settings.port,
        log_level="warning",
        timeout_graceful_shutdown=10,
        http=H11Protocol,
        h11_max_incomplete_event_size=settings.max_header_bytes + HEADER_SLACK,
    )


@app.command()
def scheduler(
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics here (default INFERBATCH_METRICS_PORT).")
    ] = None,
) -> None:
    """Run the scheduler duties (one leader at a time across replicas)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from inferbatch.db.connector import database_url, open_pool, session_url
    from inferbatch.metrics import SchedulerMetrics
    from inferbatch.runtime import install_stop_signals, setup_logging
    from inferbatch.scheduler.leadership import Leadership
    from inferbatch.scheduler.service import Scheduler

    settings = _settings()
    setup_logging(settings, "scheduler")
    blobs = _blob_store(settings)
    url = database_url(settings)
    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port is not None:
        start_http_server(port, registry=registry)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        async with open_pool(
            url, max_size=4, name="inferbatch-scheduler", prepare=settings.prepare_statements
        ) as pool:
            sched = Scheduler(
                settings,
                pool,
                blobs,
                Leadership(session_url(settings)),
                metrics=metrics,
            )
            await sched.run(stop)

    asyncio.run(main())


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="spot or dedicated")] = "spot",
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics here (default INFERBATCH_METRICS_PORT).")
    ] = None,
    location: Annotated[
        str | None,
        typer.Option(help="The zone or region this worker runs in (default INFERBATCH_LOCATION)."),
    ] = None,
) -> None:
    """Claim requests of one pool and run them against the engines."""
    from prometheus_client import CollectorRegistry, start_http_server

    from inferbatch import residency
    from inferbatch.db.connector import database_url, open_pool, session_url
    from inferbatch.engines.registry import EngineRegistry, load_specs
    from inferbatch.metrics import WorkerMetrics
    from inferbatch.policy.escalation import policy_by_name
    from inferbatch.runtime import install_stop_signals, setup_logging
    from inferbatch.worker.worker import Worker, WorkerConfig

    if pool not in ("spot", "dedicated"):
        typer.echo("--pool must be spot or dedicated", err=True)
        raise typer.Exit(2)
    settings = _settings()
    if location is not None:
        if not residency.valid_location(location):
            typer.echo("--location: lower-case letters, digits, '-' and '.'", err=True)
            raise typer.Exit(2)
        settings = settings.model_copy(update={"location": location})
    setup_logging(settings, f"worker-{pool}")
    url = database_url(settings)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, settings.price_table)
    metrics.describe(pool, settings.location)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port is not None:
        start_http_server(port, registry=registry)
    config = WorkerConfig(
        pool=pool,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        retry_base_seconds=settings.retry_base_seconds,
        retry_max_seconds=settings.retry_max_seconds,
        drain_seconds=settings.drain_seconds,
        poll_seconds=settings.worker_poll_seconds,
        flush_seconds=settings.result_flush_seconds,
        takes_spot=pool == "dedicated" and settings.dedicated_takes_spot,
        escalation=policy_by_name(settings.policy, settings.escalation).escalation,
        listen_url=session_url(settings),
        location=settings.location,
        fair_share=settings.fair_share,
    )

    async def main() -> None:
        stop, abort = asyncio.Event(), asyncio.Event()
        install_stop_signals(stop, abort)
        engines = EngineRegistry.from_specs(
            load_specs(settings), timeout=settings.engine_timeout_seconds
        )
        if not engines.engines:
            typer.echo("no engine configured: set INFERBATCH_ENGINE_URL or _ENGINES", err=True)
            raise typer.Exit(2)
        # no check round trip per checkout: every worker loop retries a failed statement
        async with open_pool(
            url,
            max_size=4,
            name=f"inferbatch-worker-{pool}",
            check=False,
            prepare=settings.prepare_statements,
        ) as db:
            try:
                await Worker(config, db, engines, metrics).run(stop, abort)
            finally:
                await engines.aclose()

    asyncio.run(main())


@app.command("engine-sim")
def engine_sim(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8100,
    max_concurrency: Annotated[int, typer.Option(help="Concurrent sequences.")] = 64,
    prefill_tokens_per_s: Annotated[float, typer.Option()] = 20000.0,
    decode_tokens_per_s: Annotated[float, typer.Option()] = 2000.0,
    base_latency_s: Annotated[float, typer.Option()] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Share answered 500.")] = 0.0,
    timeout_rate: Annotated[float, typer.Option(help="Share that hang.")] = 0.0,
    drop_rate: Annotated[float, typer.Option(help="Share of dropped connections.")] = 0.0,
    rate_limit_rate: Annotated[float, typer.Option(help="Share answered 429.")] = 0.0,
    hang_s: Annotated[float, typer.Option(help="How long a timeout hangs.")] = 30.0,
    seed: Annotated[int | None, typer.Option()] = None,
    prefix_cache_tokens: Annotated[
        int, typer.Option(help="Prefix cache capacity in tokens (0: off).")
    ] = 0,
    prefix_block_tokens: Annotated[int, typer.Option(help="Tokens per cache block.")] = 64,
    max_queue: Annotated[
        int | None, typer.Option(help="Most waiting requests; more get 429 (unset: no bound).")
    ] = None,
    batch_slowdown: Annotated[
        float, typer.Option(help="Decode slowdown at a full batch (0: none).")
    ] = 0.0,
    capacity_schedule: Annotated[
        str | None,
        typer.Option(help='max_concurrency over time, "SECONDS:LIMIT,...", e.g. "0:64,60:32".'),
    ] = None,
) -> None:
    """Serve a simulated OpenAI-compatible engine (benchmarks and fault tests)."""
    from inferbatch.engines.sim import SimConfig, parse_capacity_schedule, run

    try:
        schedule = parse_capacity_schedule(capacity_schedule) if capacity_schedule else ()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--capacity-schedule") from exc
    config = SimConfig(
        max_concurrency=max_concurrency,
        prefill_tokens_per_s=prefill_tokens_per_s,
        decode_tokens_per_s=decode_tokens_per_s,
        base_latency_s=base_latency_s,
        error_rate=error_rate,
        timeout_rate=timeout_rate,
        drop_rate=drop_rate,
        rate_limit_rate=rate_limit_rate,
        hang_s=hang_s,
        seed=seed,
        prefix_cache_tokens=prefix_cache_tokens,
        prefix_block_tokens=prefix_block_tokens,
        max_queue=max_queue,
        batch_slowdown=batch_slowdown,
        capacity_schedule=schedule,
    )
    config.validate()
    run(config, host, port)


@app.command()
def simulate(
    trace: Annotated[
        list[Path],
        typer.Option(help="Spot trace file or folder (repeatable); see shared spot-traces."),
    ],
    policy: Annotated[
        str,
        typer.Option(
            help="all-dedicated, spot-only, greedy, uniform-progress, "
            "deadline-aware, default, a comma-separated list, or all."
        ),
    ] = "default",
    seed: Annotated[int, typer.Option(help="Random seed of the workload.")] = 0,
    workload: Annotated[
        Path | None, typer.Option(help="Workload JSON file (default: the preset).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    jobs: Annotated[int, typer.Option(help="Processes (0: one per CPU).")] = 0,
    multi_zone: Annotated[
        bool, typer.Option("--multi-zone", help="Replay every trace at once, one zone each.")
    ] = False,
    zone_price: Annotated[
        list[str] | None,
        typer.Option(help="ZONE=PRICE: a zone's spot price / dedicated (repeatable)."),
    ] = None,
    zone_boot: Annotated[
        list[str] | None,
        typer.Option(help="ZONE=SECONDS: a spot worker's boot time in a zone (repeatable)."),
    ] = None,
) -> None:
    """Replay spot availability traces against a batch workload with an SLA policy."""
    from inferbatch.simulate.command import run_simulation

    raise typer.Exit(
        run_simulation(
            policy,
            trace,
            seed,
            workload,
            json_output,
            jobs=jobs,
            multi_zone=multi_zone,
            zone_prices=zone_price or (),
            zone_boots=zone_boot or (),
        )
    )


def _run_in_database(work: Callable[[AsyncConnection[dict[str, Any]]], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on the configured database; a refusal (an unknown
    project or user, a bad role) is printed and exits with status 1."""
    from psycopg import AsyncConnection
    from psycopg.rows import dict_row

    from inferbatch.db.connector import database_url
    from inferbatch.errors import InferbatchError

    url = database_url(_settings())

    async def main() -> T:
        async with await AsyncConnection.connect(url, row_factory=dict_row) as conn:
            return await work(conn)

    try:
        return asyncio.run(main())
    except InferbatchError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from exc


@keys_app.command("create")
def keys_create(
    user: Annotated[
        str | None, typer.Option(help="User name (created if new); not with --service-account.")
    ] = None,
    admin: Annotated[bool, typer.Option(help="Give the user admin rights.")] = False,
    project: Annotated[
        str | None, typer.Option(help="Project id or name (default: the default project).")
    ] = None,
    service_account: Annotated[
        str | None,
        typer.Option(help="A key of this service account of the project (created if new)."),
    ] = None,
    role: Annotated[
        str, typer.Option(help="Role of a new member or service account: owner, member, reader.")
    ] = "member",
    expires_in: Annotated[
        str | None, typer.Option(help="The key stops working after this long: 30d, 12h.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name for the key.")] = None,
) -> None:
    """Create an API key and print it (it is stored hashed and cannot be shown again)."""
    from datetime import UTC, datetime

    from inferbatch.config import parse_duration
    from inferbatch.db import audit as audit_rows
    from inferbatch.db.users import ensure_user
    from inferbatch.domain import DEFAULT_PROJECT_ID, ROLES
    from inferbatch.services import audit, projects

    if (user is None) == (service_account is None):
        typer.echo("give exactly one of --user and --service-account", err=True)
        raise typer.Exit(2)
    if role not in ROLES:
        typer.echo(f"--role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    now = datetime.now(UTC)
    try:
        expires_at = now + parse_duration(expires_in) if expires_in else None
    except ValueError as exc:
        typer.echo(f"--expires-in: {exc}", err=True)
        raise typer.Exit(2) from exc

    async def work(conn: AsyncConnection[dict[str, Any]]) -> str:
        project_id = (
            (await projects.resolve_project(conn, project)).id if project else DEFAULT_PROJECT_ID
        )
        if service_account is not None:
            key_id, key = await projects.create_service_account_key(
                conn, project_id, service_account, role=role, expires_at=expires_at, now=now
            )
            holder_data = {"service_account": service_account}
        else:
            assert user is not None
            holder = await ensure_user(conn, user, is_admin=admin)
            key_id, key = await projects.create_user_key(
                conn,
                project_id,
                holder.id,
                name=name,
                expires_at=expires_at,
                role="owner" if admin else role,
            )
            holder_data = {"user_id": holder.id}
        event = audit.cli_event(
            "api_key.created",
            project_id=project_id,
            object_id=key_id,
            command="keys create",
            data=holder_data,
        )
        await audit_rows.append(conn, event)
        return key

    typer.echo(_run_in_database(work))


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id (key_...) or its prefix (ib-xxxx).")],
) -> None:
    """Revoke an API key: the next request with it is refused."""
    from datetime import UTC, datetime

    from inferbatch.db import audit as audit_rows
    from inferbatch.db import projects as project_rows
    from inferbatch.services import audit

    async def work(conn: AsyncConnection[dict[str, Any]]) -> bool:
        found = await project_rows.key_by_prefix_or_id(conn, key)
        if found is None or not await project_rows.revoke_key(conn, found.id, datetime.now(UTC)):
            return False
        event = audit.cli_event(
            "api_key.deleted",
            project_id=found.project_id,
            object_id=found.id,
            command="keys revoke",
        )
        await audit_rows.append(conn, event)
        return True

    if not _run_in_database(work):
        typer.echo(f"no unrevoked key {key!r} (or the prefix names several)", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key}")


@projects_app.command("list")
def projects_list(
    archived: Annotated[bool, typer.Option(help="Include archived projects.")] = False,
) -> None:
    """List projects: id, status, name."""
    from inferbatch.db import projects as project_rows

    async def work(conn: AsyncConnection[dict[str, Any]]) -> list[project_rows.Project]:
        return await project_rows.list_projects(
            conn, after=None, limit=10_000, include_archived=archived
        )

    for p in _run_in_database(work):
        status = "archived" if p.archived_at else "active"
        typer.echo(f"{p.id}\t{status}\t{p.name}")


@projects_app.command("create")
def projects_create(name: Annotated[str, typer.Argument(help="The project's name.")]) -> None:
    """Create a project and print its id."""
    from datetime import UTC, datetime

    from inferbatch.db import audit as audit_rows
    from inferbatch.db import projects as project_rows
    from inferbatch.ids import new_id
    from inferbatch.services import audit

    async def work(conn: AsyncConnection[dict[str, Any]]) -> str:
        created = await project_rows.insert_project(conn, new_id("proj_"), name, datetime.now(UTC))
        event = audit.cli_event(
            "project.created",
            project_id=created.id,
            object_id=created.id,
            command="projects create",
        )
        await audit_rows.append(conn, event)
        return created.id

    typer.echo(_run_in_database(work))


@projects_app.command("add-user")
def projects_add_user(
    project: Annotated[str, typer.Argument(help="Project id or name.")],
    user: Annotated[str, typer.Argument(help="User name (created if new).")],
    role: Annotated[str, typer.Option(help="owner, member or reader.")] = "member",
) -> None:
    """Add a user to a project with a role (or change the role of a member)."""
    from datetime import UTC, datetime

    from inferbatch.db import audit as audit_rows
    from inferbatch.db import projects as project_rows
    from inferbatch.db.users import ensure_user
    from inferbatch.domain import ROLES
    from inferbatch.services import audit, projects

    if role not in ROLES:
        typer.echo(f"--role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)

    async def work(conn: AsyncConnection[dict[str, Any]]) -> str:
        found = await projects.resolve_project(conn, project)
        holder = await ensure_user(conn, user, is_admin=False)
        change = "user.added"
        if not await project_rows.add_member(conn, found.id, holder.id, role, datetime.now(UTC)):
            await project_rows.set_role(conn, found.id, holder.id, role)
            change = "user.updated"
        event = audit.cli_event(
            change,
            project_id=found.id,
            object_id=holder.id,
            command="projects add-user",
            data={"role": role},
        )
        await audit_rows.append(conn, event)
        return f"{holder.id} is {role} of {found.id}"

    typer.echo(_run_in_database(work))


_LIMIT = typer.Option(min=0, help="The limit (0 or more).")


@projects_app.command("quota")
def projects_quota(
    project: Annotated[str, typer.Argument(help="Project id or name.")],
    queued_requests: Annotated[int | None, _LIMIT] = None,
    enqueued_tokens: Annotated[int | None, _LIMIT] = None,
    batches_in_progress: Annotated[int | None, _LIMIT] = None,
    stored_bytes: Annotated[int | None, _LIMIT] = None,
    creates_per_minute: Annotated[int | None, _LIMIT] = None,
    clear: Annotated[
        list[str] | None, typer.Option(help="A quota to make unlimited (repeatable).")
    ] = None,
) -> None:
    """Set a project's quotas (those given; the others stay) and print each quota's limit
    and current use. A limit below the use is accepted: it refuses new work only."""
    from datetime import UTC, datetime

    from inferbatch.db import quotas as quota_rows

    given = {
        "queued_requests": queued_requests,
        "enqueued_tokens": enqueued_tokens,
        "batches_in_progress": batches_in_progress,
        "stored_bytes": stored_bytes,
        "creates_per_minute": creates_per_minute,
    }
    changes: dict[str, int | None] = {k: v for k, v in given.items() if v is not None}
    for name in clear or ():
        if name not in quota_rows.QUOTAS:
            typer.echo(f"--clear takes one of {', '.join(quota_rows.QUOTAS)}", err=True)
            raise typer.Exit(2)
        changes[name] = None

    async def work(conn: AsyncConnection[dict[str, Any]]) -> quota_rows.ProjectQuotas:
        from inferbatch.services import projects

        found = await projects.resolve_project(conn, project)
        now = datetime.now(UTC)
        if changes:
            await quota_rows.set_limits(conn, found.id, changes, now)
        return await quota_rows.read(conn, found.id, now)

    result = _run_in_database(work)
    for name in quota_rows.QUOTAS:
        limit = result.limits[name]
        typer.echo(f"{name}\t{'unlimited' if limit is None else limit}\t{result.usage[name]}")


@app.command()
def up(
    engine: Annotated[
        str, typer.Option(help="local (packaged small models), sim, or an engine base URL.")
    ] = "local",
) -> None:
    """Run everything: database, engine, scheduler, spot and dedicated workers, API."""
    from inferbatch.up import run_all

    sys.exit(run_all(_settings(), engine))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
