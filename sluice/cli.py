"""The `sluice` command line."""

from __future__ import annotations

import functools
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sluice.config import REPO_ROOT, ConfigError, SluiceConfig, load_config

app = typer.Typer(help="sluice: PyFlink telemetry pipelines with a Rust hot path.", no_args_is_help=True)
stack_app = typer.Typer(help="The local stack: Kafka (KRaft), Apicurio Registry, Flink standalone.")
schemas_app = typer.Typer(help="Schemas on disk and in the registry.")
dlq_app = typer.Typer(help="The dead-letter topic: what failed and why.")
features_app = typer.Typer(help="The window feature spec (docs/features.md) and the online "
                           "feature store in Redis (docs/feature-store.md).")
devices_app = typer.Typer(help="The device registry on the compacted devices topic "
                          "(docs/reference-data.md).")
app.add_typer(stack_app, name="stack")
app.add_typer(schemas_app, name="schemas")
app.add_typer(dlq_app, name="dlq")
model_app = typer.Typer(help="Anomaly models and the model registry (docs/models.md).")
app.add_typer(features_app, name="features")
app.add_typer(model_app, name="model")
app.add_typer(devices_app, name="devices")
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="sluice YAML (default sluice.yaml)")]


def _config(path: Path | None) -> SluiceConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


F = TypeVar("F", bound=Callable[..., Any])


def _fail_fast(fn: F) -> F:
    """Wrong credentials, untrusted certificates, a missing secret file or a broker that
    does not answer end the command at once with one clear line (exit 1), no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sluice.auth import SluiceAuthError

        try:
            return fn(*args, **kwargs)
        except (SluiceAuthError, TimeoutError) as exc:
            console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(1) from None
        except ConfigError as exc:
            console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _preflight(cfg: SluiceConfig, registry: bool = True) -> None:
    from sluice.kafka_util import preflight

    preflight(cfg, registry=registry)


def _preflight_registry_only(cfg: SluiceConfig) -> None:
    from sluice.auth import check_registry_login

    check_registry_login(cfg.registry.client_conf())


def _ports(cfg: SluiceConfig):  # type: ignore[no-untyped-def]
    from sluice.stack import StackPorts

    # The config's ports, shifted by SLUICE_STACK_PORT_OFFSET like the test suite's stack.
    s = cfg.stack
    return StackPorts(
        kafka=s.kafka_port, kafka_controller=s.kafka_controller_port, registry=s.registry_port,
        registry_management=s.registry_management_port, flink_rest=s.flink_rest_port,
        flink_rpc=s.flink_rpc_port, redis=s.redis_port,
    ).shifted(StackPorts.env_offset())


def _status_table(st) -> Table:  # type: ignore[no-untyped-def]
    t = Table(title="sluice local stack" + (" (secured)" if getattr(st, "secure", False) else ""))
    for col in ("component", "state", "pid", "endpoint", "log"):
        t.add_column(col)
    for name, c in st.components.items():
        state = "[green]healthy" if c.healthy else ("[yellow]running" if c.running else "[red]down")
        t.add_row(name, state, str(c.pid or "-"), c.endpoint or "-", str(c.log_file or "-"))
    return t


@stack_app.command("up")
def stack_up(
    flink: Annotated[bool, typer.Option(help="also start a standalone Flink cluster")] = False,
    secure: Annotated[bool, typer.Option(
        help="secured mode: Kafka SASL_SSL (SCRAM-SHA-512), registry HTTPS + basic auth; "
             "certificates and passwords generated into <run_dir>/secrets (docs/security.md)",
    )] = False,
    redis: Annotated[bool, typer.Option(
        help="also start redis-server, the online feature store (docs/feature-store.md)",
    )] = True,
    config: ConfigOpt = None,
) -> None:
    """Start the local stack in the background (idempotent)."""
    from sluice.stack import StackError, up

    cfg = _config(config)
    try:
        with console.status("starting the local stack") as spinner:
            st = up(cfg.path(cfg.stack.run_dir), _ports(cfg), flink=flink, secure=secure,
                    redis=redis, progress=lambda m: spinner.update(m))
    except StackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(_status_table(st))
    if st.secure:
        # Paths of the secret files only, never a secret.
        console.print("# secured mode: point sluice at it with")
        for k, v in st.client_env().items():
            console.print(f"export {k}={shlex.quote(v)}", soft_wrap=True, markup=False)
        return
    console.print(f"BOOTSTRAP_SERVERS={st.bootstrap_servers}  SCHEMA_REGISTRY_URL={st.registry_url}")
    if st.components["redis"].running:
        console.print(f"SLUICE__FEATURE_STORE__REDIS_URL={st.redis_url}")
    if st.flink_rest_url:
        console.print(f"FLINK_CONF_DIR={st.flink_conf_dir}  Flink UI: {st.flink_rest_url}")


@stack_app.command("down")
def stack_down(config: ConfigOpt = None) -> None:
    """Stop everything `stack up` started (and nothing else)."""
    from sluice.stack import down

    cfg = _config(config)
    stopped = down(cfg.path(cfg.stack.run_dir))
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack_app.command("status")
def stack_status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """What runs, where, healthy or not, and its log file."""
    from sluice.stack import status

    cfg = _config(config)
    st = status(cfg.path(cfg.stack.run_dir))
    if as_json:
        print(json.dumps(st.to_dict(), indent=2, default=str))
    else:
        console.print(_status_table(st))


@schemas_app.command("register")
@_fail_fast
def schemas_register(config: ConfigOpt = None) -> None:
    """Register every schema version (oldest first) and set each subject's compatibility level."""
    from sluice.registry import RegistryUnavailable, register_all

    cfg = _config(config)
    _preflight_registry_only(cfg)
    try:
        ids = register_all(cfg)
    except (RegistryUnavailable, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    for subject, versions in ids.items():
        console.print(f"{subject}: ids {versions}")


@schemas_app.command("check")
def schemas_check(
    config: ConfigOpt = None,
    registry: Annotated[str | None, typer.Option(
        "--registry", help="also ask this registry (Confluent API URL) whether each latest version passes",
    )] = None,
    base: Annotated[str | None, typer.Option(
        "--base", help="git ref: versions published there must not change; new ones are checked against them",
    )] = None,
) -> None:
    """Check every schema version against its predecessors under the subject's compatibility level."""
    from rich.markup import escape

    from sluice.schemas_check import SchemasCheckError, check, summary

    cfg = _config(config)
    try:
        result = check(cfg, registry_url=registry, base=base)
    except SchemasCheckError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    if result.findings:
        t = Table(title="sluice schemas check")
        for col in ("subject", "versions", "rule", "message"):
            t.add_column(col, overflow="fold")
        colour = {"error": "red", "warning": "yellow", "info": "green"}
        for f in result.findings:
            t.add_row(escape(f.subject), ", ".join(f"v{v}" for v in f.versions) or "-",
                      f"[{colour[f.severity]}]{f.rule}[/]", escape(f.message))
        console.print(t)
    console.print(("[red]" if result.failures else "[green]") + summary(result))
    if result.failures:
        raise typer.Exit(1)


@dlq_app.command("inspect")
@_fail_fast
def dlq_inspect(
    config: ConfigOpt = None,
    reason: Annotated[str | None, typer.Option(help="only this reason, e.g. bad-magic")] = None,
    limit: Annotated[int, typer.Option(help="rows to show (the counts cover all)")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line, all rows")] = False,
) -> None:
    """Show dead letters: source topic/partition/offset, reason, detail, original bytes."""
    from sluice.dlq import as_json as to_json
    from sluice.dlq import by_reason, preview, read_dead_letters

    cfg = _config(config)
    _preflight(cfg)
    letters = read_dead_letters(cfg, reason=reason)
    if as_json:
        for d in letters:
            print(json.dumps(to_json(d)))
        return
    t = Table(title=f"{cfg.topics.dlq}: {len(letters)} dead letter(s) {by_reason(letters)}")
    # DeadLetter v2 fields; v1 records lack them, and empty columns are left out.
    with_key = any(d.get("original_key") is not None for d in letters[:limit])
    with_exp = any(d.get("failed_expectations") for d in letters[:limit])
    cols = ["dlq", "source", "reason", "error", "schema id", "detail", "original value"]
    cols += ["original key"] * with_key + ["failed expectations"] * with_exp
    for col in cols:
        t.add_column(col, overflow="fold")
    for d in letters[:limit]:
        row = [
            f'{d["dlq_partition"]}@{d["dlq_offset"]}',
            f'{d["source_topic"]}/{d["source_partition"]}@{d["source_offset"]}', d["reason"],
            d["error_class"], str(d["schema_id"] if d["schema_id"] is not None else "-"),
            escape(d["detail"][:120]), escape(preview(d["original_value"])),
        ]
        if with_key:
            key = d.get("original_key")
            row.append(escape(preview(key, width=16)) if key is not None else "-")
        if with_exp:
            row.append(escape(", ".join(d.get("failed_expectations") or []) or "-"))
        t.add_row(*row)
    console.print(t)


@dlq_app.command("replay")
@_fail_fast
def dlq_replay(
    config: ConfigOpt = None,
    reason: Annotated[list[str] | None, typer.Option(
        help="only this reason (repeatable), e.g. unknown-schema")] = None,
    source_topic: Annotated[str | None, typer.Option(help="only dead letters read from this topic")] = None,
    partition: Annotated[int | None, typer.Option(help="only this partition of the DLQ topic")] = None,
    from_offset: Annotated[int | None, typer.Option(
        help="DLQ offset to start at (needs --partition)")] = None,
    to_offset: Annotated[int | None, typer.Option(
        help="last DLQ offset, inclusive (needs --partition)")] = None,
    since: Annotated[str | None, typer.Option(
        help="dead-lettered at or after: 2h (ago), epoch ms, or ISO 8601 (UTC if no offset)")] = None,
    until: Annotated[str | None, typer.Option(help="dead-lettered before (same forms as --since)")] = None,
    limit: Annotated[int | None, typer.Option(
        help="replay at most this many (not yet replayed) ones")] = None,
    to_topic: Annotated[str | None, typer.Option(
        help="replay into this topic instead of each dead letter's source topic")] = None,
    include_tombstones: Annotated[bool, typer.Option(help="also replay null values")] = False,
    timestamp: Annotated[str, typer.Option(
        help="record timestamp: 'original' (the source record's) or 'now'")] = "original",
    again: Annotated[bool, typer.Option(
        help="also replay dead letters that are failed replays (skipped by default)")] = False,
    dry_run: Annotated[bool, typer.Option(
        help="show what would be replayed and skipped; write nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON only")] = False,
    show: Annotated[int, typer.Option(help="rows of the plan table to show")] = 50,
) -> None:
    """Re-inject dead letters into their source topic after a fix, each at most once.

    Records and their entries in the ledger topic (topics.dlq_replays) are written in
    one Kafka transaction; dead letters already in the ledger are skipped."""
    from sluice.dlq_replay import ReplayError, Selection, replay_dead_letters

    cfg = _config(config)
    if timestamp not in ("original", "now"):
        console.print(f"[red]--timestamp must be 'original' or 'now', not {timestamp!r}[/red]")
        raise typer.Exit(2)
    if as_json and not (yes or dry_run):
        console.print("[red]--json needs --yes or --dry-run (there is no prompt in JSON mode)[/red]")
        raise typer.Exit(2)
    try:
        sel = Selection.parse(
            reasons=reason or (), source_topic=source_topic, partition=partition,
            from_offset=from_offset, to_offset=to_offset, since=since, until=until, limit=limit,
            include_tombstones=include_tombstones,
        )
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    opts = {"to_topic": to_topic, "timestamp": timestamp, "again": again}
    try:
        plan = replay_dead_letters(cfg, sel, dry_run=True, **opts)  # type: ignore[arg-type]
        if as_json and dry_run:
            print(json.dumps(plan.summary()))
            return
        if not as_json:
            console.print(_replay_plan_table(plan, show))
            for w in plan.warnings:
                console.print(f"[yellow]{escape(w)}[/yellow]")
        if dry_run:
            console.print(_replay_summary_table(plan))
            return
        if not plan.replayed:
            if as_json:
                print(json.dumps(plan.summary()))
            else:
                console.print(_replay_summary_table(plan))
            return
        if not yes:
            typer.confirm(f"Replay {len(plan.replayed)} record(s)?", abort=True)
        if as_json:
            report = replay_dead_letters(cfg, sel, **opts)  # type: ignore[arg-type]
            print(json.dumps(report.summary()))
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress("replaying", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("replay", total=len(plan.replayed))

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = replay_dead_letters(cfg, sel, on_progress=advance, **opts)  # type: ignore[arg-type]
    except (ReplayError, ValueError, TimeoutError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    console.print(_replay_summary_table(report))


def _replay_plan_table(plan, show: int) -> Table:  # type: ignore[no-untyped-def]
    from sluice.dlq import preview

    t = Table(title=f"{plan.dlq_topic}: {plan.selected} dead letter(s) selected")
    for col in ("dlq", "source", "reason", "original value", "action"):
        t.add_column(col, overflow="fold")
    rows = [(r.letter, f"[green]replay → {r.topic}" + (f"/{r.partition}" if r.partition >= 0 else ""))
            for r in plan.replayed]
    rows += [(d, f"[yellow]skip: {why}") for d, why in plan.skipped]
    rows.sort(key=lambda x: (x[0].dlq_partition, x[0].dlq_offset))
    for d, action in rows[:show]:
        t.add_row(f"{d.dlq_partition}@{d.dlq_offset}",
                  f"{d.source_topic}/{d.source_partition}@{d.source_offset}", d.reason,
                  escape(preview(d.value)), action)
    if len(rows) > show:
        t.caption = f"{len(rows) - show} more not shown (--show N)"
    return t


def _replay_summary_table(report) -> Table:  # type: ignore[no-untyped-def]
    t = Table(title="dry run: nothing written" if report.dry_run else
              f"replay committed in {report.transactions} transaction(s)")
    t.add_column("")
    t.add_column("records", justify="right")
    t.add_row("selected", str(report.selected))
    t.add_row("would replay" if report.dry_run else "[green]replayed", str(len(report.replayed)))
    for why, n in report.skipped_by_reason().items():
        t.add_row(f"[yellow]skipped: {why}", str(n))
    t.add_row("ledger", report.ledger_topic)
    return t


def _registry(cfg: SluiceConfig):  # type: ignore[no-untyped-def]
    from sluice.model import Registry

    return Registry(cfg.path(cfg.models.dir))


@model_app.command("train")
@_fail_fast
def model_train(
    window: Annotated[str, typer.Option("--window", "-w", help="window of the feature spec")],
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", help="FeatureVector JSON lines (default: read the features topic)")] = None,
    name: Annotated[str | None, typer.Option(help="model name (default iforest-<window>)")] = None,
    n_estimators: Annotated[int, typer.Option(min=1)] = 100,
    contamination: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.01,
    holdout: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.2,
    seed: int = 0,
    config: ConfigOpt = None,
) -> None:
    """Train an IsolationForest on one window's FeatureVectors and publish the next version."""
    from sluice.model import ModelError, TrainParams, read_jsonl, read_topic, train

    cfg = _config(config)
    spec = cfg.feature_spec()
    if spec is None:
        console.print("[red]no feature spec: set features.spec in the config[/red]")
        raise typer.Exit(2)
    try:
        if from_file is not None:
            rows = read_jsonl(from_file)
        else:
            _preflight(cfg)
            rows = read_topic(cfg)
        mv = train(rows, spec, window, _registry(cfg), name,
                   TrainParams(n_estimators=n_estimators, contamination=contamination,
                               holdout=holdout, seed=seed))
    except (ModelError, OSError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    meta = mv.metadata
    console.print(f"[green]{escape(mv.name)} version {mv.version}[/green] → {escape(str(mv.path))}: "
                  f"{meta['training']['rows']} training rows, holdout anomaly rate "
                  f"{meta['holdout_metrics'].get('anomaly_rate', float('nan')):.4f}")


@model_app.command("list")
def model_list(
    name: Annotated[str | None, typer.Argument(help="one model (default: all)")] = None,
    config: ConfigOpt = None,
) -> None:
    """The registry's models and versions."""
    reg = _registry(_config(config))
    t = Table(title=f"models in {escape(str(reg.root))}")
    for col in ("name", "version", "created_at", "window", "feature_spec_version", "rows",
                "holdout anomaly rate", "threshold"):
        t.add_column(col, no_wrap=True)
    for n in [name] if name else reg.names():
        for mv in reg.versions(n):
            m = mv.metadata
            rate = m.get("holdout_metrics", {}).get("anomaly_rate")
            t.add_row(escape(n), str(mv.version), m.get("created_at", ""), escape(m.get("window", "")),
                      m.get("feature_spec_version", ""), str(m["training"]["rows"]),
                      "" if rate is None else f"{rate:.4f}", f"{m['threshold']:.6f}")
    console.print(t)


@model_app.command("show")
def model_show(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int | None, typer.Argument(help="version (default: the latest)")] = None,
    config: ConfigOpt = None,
) -> None:
    """One version's metadata (JSON)."""
    from sluice.model import ModelError

    try:
        mv = _registry(_config(config)).get(name, version)
    except ModelError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    print(json.dumps({"path": str(mv.path), **mv.metadata}, indent=2, sort_keys=True))


@model_app.command("publish")
@_fail_fast
def model_publish(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int | None, typer.Option(help="version (default: the latest)")] = None,
    previous: Annotated[str | None, typer.Option(
        help="previous_version to state (default: the last one announced on the topic)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Announce a registry version on the model-updates topic (hot swap; docs/drift.md)."""
    from sluice.model import ModelError
    from sluice.model_updates import announce

    cfg = _config(config)
    try:
        mv = _registry(cfg).get(name, version)
        _preflight(cfg)
        rec = announce(cfg, mv) if previous is None else announce(cfg, mv, previous)
    except (ModelError, RuntimeError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    console.print(f"[green]announced {escape(mv.name)} version {mv.version}[/green] on "
                  f"{escape(cfg.topics.model_updates)} (previous: {rec['previous_version'] or '-'}, "
                  f"sha256 {rec['artifact_sha256'][:12]}…)")
    print(json.dumps(rec))


@devices_app.command("publish")
def devices_publish(
    csv_path: Annotated[Path | None, typer.Option(
        "--csv", help="device CSV (default: reference.devices_csv)")] = None,
    valid_from: Annotated[str | None, typer.Option(
        help="valid_from of every row (epoch ms or ISO date/time, UTC); default: the row's "
             "valid_from, else its installed_at, else now")] = None,
    config: ConfigOpt = None,
) -> None:
    """Publish device versions as Device Avro upserts (key: device_id, record timestamp:
    valid_from) on the compacted devices topic."""
    from sluice.reference import _epoch_ms, publish_devices, versions_from_csv

    cfg = _config(config)
    path = csv_path or cfg.path(cfg.reference.devices_csv)
    try:
        vf = _epoch_ms(valid_from) if valid_from is not None else None
        versions = versions_from_csv(path, vf)
        n = publish_devices(cfg, versions)
    except (OSError, ValueError, RuntimeError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    console.print(f"published {n} device version(s) of "
                  f"{len({v.device_id for v in versions})} device(s) to {cfg.topics.devices}")


@devices_app.command("delete")
def devices_delete(
    device_ids: Annotated[list[str], typer.Argument(help="the device ids to delete")],
    at: Annotated[str | None, typer.Option(
        help="deletion time (epoch ms or ISO date/time, UTC); default: now")] = None,
    config: ConfigOpt = None,
) -> None:
    """Delete devices: a tombstone (null value, record timestamp: --at) per device on the
    compacted devices topic. Readings at or after that time are unknown devices
    (held, then flagged or dead-lettered) until a later version is published."""
    import time

    from sluice.reference import DeviceDeletion, _epoch_ms, publish_devices

    cfg = _config(config)
    try:
        when = _epoch_ms(at) if at is not None else int(time.time() * 1000)
        n = publish_devices(cfg, [DeviceDeletion(d, when) for d in device_ids])
    except (OSError, ValueError, RuntimeError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    console.print(f"deleted {n} device(s) at {when} on {cfg.topics.devices}")


@features_app.command("check")
def features_check(
    file: Annotated[Path | None, typer.Argument(
        help="spec file (default: features.spec of the config)")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print the aggregation lists the Rust side takes, per window")] = False,
) -> None:
    """Validate a feature spec; list its windows and output feature names, or its errors."""
    from sluice.features import FeatureSpecError, format_duration, load_feature_spec

    cfg = _config(config) if file is None or config is not None else None
    if file is None:
        assert cfg is not None
        if cfg.features.spec is None:
            console.print("[red]no spec: pass FILE, or set features.spec in the config[/red]")
            raise typer.Exit(2)
        file = cfg.path(cfg.features.spec)
    schema = cfg.schema_path(cfg.schemas.enriched) if cfg is not None else None
    try:
        spec = load_feature_spec(file, schema_path=schema)
    except FeatureSpecError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        print(spec.to_json())
        return
    t = Table(title=f"{escape(str(file))}: {len(spec.windows)} window(s), "
                    f"feature_spec_version {spec.spec_version()}")
    for col in ("window", "kind", "size/slide/gap", "lateness", "source"):
        t.add_column(col, no_wrap=True)
    t.add_column("field", no_wrap=True)
    t.add_column("features", overflow="fold")
    for w in spec.windows:
        extent = " / ".join(format_duration(v) for v in (w.size, w.slide, w.gap) if v is not None)
        for i, f in enumerate(w.features):
            head = (escape(w.name), w.window_kind, extent, format_duration(w.allowed_lateness),
                    "\n".join(w.source)) if i == 0 else ("",) * 5
            t.add_row(*head, escape(f.field), escape(", ".join(n[len(f.field) + 1:] for n in f.names())),
                      end_section=i == len(w.features) - 1)
    console.print(t)
    console.print(f"[green]OK[/green]: {sum(len(w.feature_names()) for w in spec.windows)} features")


@features_app.command("materialize")
@_fail_fast
def features_materialize(
    config: ConfigOpt = None,
    once: Annotated[bool, typer.Option(
        "--once", help="stop at the end offsets seen (bounded: tests, the demo); default: "
        "run until SIGTERM")] = False,
    max_wait: Annotated[float | None, typer.Option(
        "--max-wait", metavar="SECONDS", help="stop after this long whatever happened")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON only")] = False,
    log: Annotated[bool, typer.Option("--log", help="one line per batch, retry and reset")] = False,
) -> None:
    """Materialise the latest FeatureVector per device and window into Redis
    (docs/feature-store.md).

    Consumes topics.features read_committed in the group feature_store.consumer_group,
    upserts idempotently (newer window wins; replays change nothing) and commits the
    offsets after Redis acknowledged. While Redis is down it backs off and keeps its
    position; SIGTERM finishes the batch in flight and exits 0."""
    import logging

    from rich.logging import RichHandler

    from sluice.feature_store import FeatureStoreError, Materializer

    cfg = _config(config)
    _preflight(cfg)
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    live = None
    if not as_json and console.is_terminal and not log:
        live = console.status("waiting for feature vectors")
        live.start()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        s = m.summary
        if log:
            detail = " ".join(f"{k}={v}" for k, v in data.items() if k != "summary")
            console.print(f"{kind:<12} {escape(detail)}", highlight=False, soft_wrap=True)
        if live is not None:
            live.update(f"read {s.read} · written {s.written} · stale {s.stale} · "
                        f"retries {s.redis_retries} · resets {s.store_resets}")

    try:
        m = Materializer(cfg, on_event=on_event)
        m.install_signal_handlers()
        summary = m.run(bounded=once, max_wait_s=max_wait)
    except FeatureStoreError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    finally:
        if live is not None:
            live.stop()
    if as_json:
        print(json.dumps(summary.to_dict()), flush=True)
        return
    t = Table(title=f"sluice features materialize ({cfg.topics.features} → "
                    f"{cfg.feature_store.redis_url})")
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in summary.to_dict().items():
        t.add_row(k, escape(str(v)))
    console.print(t)


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "no expiry"
    v = float(v)
    if abs(v) < 120:
        return f"{v:.1f} s"
    if abs(v) < 7200:
        return f"{v / 60:.1f} min"
    if abs(v) < 172800:
        return f"{v / 3600:.1f} h"
    return f"{v / 86400:.1f} d"


@features_app.command("get")
def features_get(
    device: Annotated[str, typer.Argument(help="device id")],
    window: Annotated[str | None, typer.Option("--window", "-w", help="one window of the spec")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """The device's latest features from the online store (one table per window), with
    their age and the TTL left."""
    import time as _time

    from sluice.feature_store import FeatureStore, StoreUnavailable, UnknownDevice

    cfg = _config(config)
    try:
        vectors = FeatureStore(cfg.feature_store).get(device, window)
    except UnknownDevice as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except StoreUnavailable as exc:
        console.print(f"[red]{escape(str(exc))}[/red] (is it running? `sluice stack status`)")
        raise typer.Exit(2) from None
    now = int(_time.time() * 1000)
    if as_json:
        print(json.dumps([v.to_dict(now) for v in vectors], indent=2))
        return
    from datetime import UTC, datetime

    def ts(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")

    for v in vectors:
        t = Table(title=f"{escape(v.device_id)} · {escape(v.window)} ({v.window_kind}) · "
                        f"{ts(v.window_start)} → {ts(v.window_end)}",
                  caption=f"{v.event_count} event(s) · site {escape(v.site_id or '-')} · age "
                          f"{_fmt_s(v.age_s(now))} · TTL left {_fmt_s(v.ttl_left_s)} · "
                          f"spec {escape(v.feature_spec_version)} · from {escape(v.source)}")
        t.add_column("feature")
        t.add_column("value", justify="right")
        for name, value in sorted(v.features.items()):
            t.add_row(escape(name), f"{value:.6g}")
        console.print(t)


@app.command()
@_fail_fast
def actions(
    config: ConfigOpt = None,
    until_idle: Annotated[float | None, typer.Option(
        "--until-idle", metavar="SECONDS",
        help="stop when no alert arrived for this long (tests, batch runs); "
        "default: run until SIGTERM")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON only")] = False,
    log: Annotated[bool, typer.Option("--log", help="one line per delivery, retry and dead letter")] = False,
) -> None:
    """Turn alerts into webhook calls, effectively once (docs/actions.md).

    Consumes topics.alerts read_committed and POSTs each alert to every configured
    webhook with Idempotency-Key: <alert_id>; retries with backoff; dead-letters what
    cannot be delivered to topics.action_dlq. SIGTERM finishes the call in flight,
    commits what is done and exits 0."""
    from sluice.actions import ActionsError, ActionService

    cfg = _config(config)
    _preflight(cfg)
    quiet = as_json and not log
    live = None
    if not quiet and console.is_terminal and not log:
        live = console.status("waiting for alerts")
        live.start()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if log:
            detail = " ".join(f"{k}={v}" for k, v in data.items())
            console.print(f"{kind:<14} {escape(detail)}", highlight=False, soft_wrap=True)
        if live is not None:
            s = service.summary
            live.update(f"alerts {s.alerts} · delivered {s.delivered} · dead-lettered "
                        f"{s.dead_lettered} · retries {s.retries} · already {s.already_delivered}")

    try:
        service = ActionService(cfg, on_event=on_event)
        service.install_signal_handlers()
        summary = service.run(until_idle=until_idle)
    except ActionsError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    finally:
        if live is not None:
            live.stop()
    if as_json:
        print(json.dumps(summary.as_dict()), flush=True)
        return
    t = Table(title=f"sluice actions ({cfg.actions.consumer_group})")
    t.add_column("what")
    t.add_column("count", justify="right")
    for k, v in summary.as_dict().items():
        t.add_row(k, escape(str(v)))
    console.print(t)


@app.command()
@_fail_fast
def demo(
    config: ConfigOpt = None,
    records: Annotated[int | None, typer.Option(help="readings to produce")] = None,
    rate: Annotated[float | None, typer.Option(help="events per second (0 = unthrottled)")] = None,
    keep_stack: Annotated[bool, typer.Option(help="leave the stack running afterwards")] = False,
) -> None:
    """Run the main job end to end on the local stack and print its summary."""
    from sluice.demo import DemoError, run_demo
    from sluice.stack import StackError, down, status, up

    cfg = _config(config)
    gen = {}
    if records is not None:
        gen["records"] = records
    if rate is not None:
        gen["rate_eps"] = rate
    if gen:
        cfg = cfg.with_overrides(generator=gen)
    run_dir = cfg.path(cfg.stack.run_dir)
    started = not status(run_dir).healthy
    try:
        with console.status("starting the local stack (Kafka + registry + Redis)") as spinner:
            st = up(run_dir, _ports(cfg), progress=lambda m: spinner.update(m))
        cfg = cfg.with_overrides(
            kafka={"bootstrap_servers": st.bootstrap_servers}, registry={"url": st.registry_url},
            feature_store={"redis_url": st.redis_url},
        )
        summary = run_demo(cfg, out_dir=REPO_ROOT / "out" / "demo", console=console)
    except (StackError, DemoError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        if started and not keep_stack:
            stopped = down(run_dir)
            if stopped:
                console.print(f"stopped what this demo started: {', '.join(stopped)}")
    if not summary["balanced"] or summary["records_out"] == 0:
        console.print("[red]the demo's output does not balance its input[/red]")
        raise typer.Exit(1)


@app.command()
@_fail_fast
def bench(
    config: ConfigOpt = None,
    records: Annotated[int, typer.Option(help="telemetry records of the shared input")] = 30_000,
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", help="run only these (rust_eo, rust_alo, rust_thread, python, sql, sql_json, "
                          "kafka, paced_low_latency, paced_throughput, paced_kafka)")
    ] = None,
    paced_rate: Annotated[float | None, typer.Option(
        "--paced-rate", help="events/s of the paced variants (default: half of rust_eo's)")] = None,
    paced_seconds: Annotated[float, typer.Option(
        "--paced-seconds", help="how long each paced variant is fed (measured)")] = 20.0,
    warmup_seconds: Annotated[float, typer.Option(
        "--warmup-seconds", help="how long each paced variant is fed before that (not measured)")
    ] = 30.0,
    out: Annotated[Path, typer.Option(help="folder for results.json and results.png")] = (
        REPO_ROOT / "out" / "bench"),
    keep_stack: Annotated[bool, typer.Option(help="leave the stack running afterwards")] = False,
) -> None:
    """Variants of the ingest path side by side on the same input, in one run: Rust vs
    pure-Python UDFs vs Flink SQL vs the raw Kafka consume rate, exactly-once vs
    at-least-once, process vs thread mode; then the low-latency and throughput profiles
    fed at half of the Rust variant's rate, with their p99 against the targets
    (docs/performance.md)."""
    import os

    from sluice.bench import PACED, VARIANTS, micro_table, ratio_table, run
    from sluice.stack import StackError, StackPorts, down, status, up

    cfg = _config(config)
    run_dir = cfg.path(cfg.stack.run_dir)
    started = not status(run_dir).healthy
    try:
        # SLUICE_STACK_PORT_OFFSET (as the tests use it) shifts the stack's ports.
        ports = StackPorts.from_env() if os.environ.get("SLUICE_STACK_PORT_OFFSET") else _ports(cfg)
        with console.status("starting the local stack (Kafka + registry)") as spinner:
            st = up(run_dir, ports, progress=lambda m: spinner.update(m))
        cfg = cfg.with_overrides(
            kafka={"bootstrap_servers": st.bootstrap_servers}, registry={"url": st.registry_url},
            feature_store={"redis_url": st.redis_url},
        )
        with console.status("bench") as spinner:
            results = run(cfg, records=records, names=list(variant or [*VARIANTS, *PACED]),
                          out_dir=out, say=lambda m: (console.log(m), spinner.update(m)),
                          rate=paced_rate, paced_seconds=paced_seconds,
                          warmup_seconds=warmup_seconds)
    except StackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        if started and not keep_stack:
            down(run_dir)
    console.print(ratio_table(results))
    console.print(micro_table(results))
    console.print(f"data: {out / 'results.json'}   chart: {out / 'results.png'}")
    # A drained variant must output every record once; a paced one that has not output
    # every record in time missed its latency target (the table says so), but exactly-once
    # output must never hold a duplicate.
    bad = [k for k, f in results["variants"].items()
           if (not f["counts_match"] and not f.get("paced"))
           or (f.get("paced") and f.get("delivery_guarantee") == "exactly-once" and f["duplicates"])]
    if bad:
        console.print(f"[red]these variants did not output every input record once: {bad}[/red]")
        raise typer.Exit(1)


@app.command()
@_fail_fast
def report(
    config: ConfigOpt = None,
    flink_url: Annotated[str | None, typer.Option(
        "--flink-url", help="Flink REST URL (default: the local stack's, stack.flink_rest_port)")] = None,
    job_id: Annotated[str | None, typer.Option(
        "--job-id", help="job id (default: the newest job named job.name)")] = None,
    since: Annotated[str, typer.Option(help="start of the range: 15m, 2h, an ISO time or epoch ms")] = "15m",
    until: Annotated[str | None, typer.Option(help="end of the range (default: now)")] = None,
    sample_seconds: Annotated[float | None, typer.Option(
        "--sample-seconds", help="how long to sample lag, CPU and memory (default report.sample_s)")] = None,
    pid: Annotated[list[int] | None, typer.Option(
        "--pid", help="another process of the job to measure (and its children), e.g. a mini-cluster")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for report.html and report.json")] = (
        REPO_ROOT / "out" / "report"),
) -> None:
    """Throughput per partition, lag, latency per stage, checkpoints, dead letters and
    cost per million events of a running or finished job: tables here, a page with
    charts in OUT/report.html (docs/observability.md)."""
    import time as _time

    from sluice.report import AlertEvent, collect, emit_alerts, parse_time, print_report, write_html

    cfg = _config(config)
    _preflight(cfg)
    now = int(_time.time() * 1000)
    since_ms = parse_time(since, now)
    assert since_ms is not None
    url = flink_url or f"http://127.0.0.1:{cfg.stack.flink_rest_port}"
    with console.status("collecting") as spinner:
        rep = collect(cfg, since_ms=since_ms, until_ms=parse_time(until, now), flink_url=url,
                      job_id=job_id, sample_s=sample_seconds or cfg.report.sample_s,
                      pids=list(pid or []), on_progress=spinner.update)
    print_report(console, rep)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    page = write_html(rep, out / "report.html")
    alerts_file = emit_alerts(cfg, [AlertEvent(**a) for a in rep["alerts"]])
    console.print(f"page: {page}   data: {out / 'report.json'}"
                  + (f"   alerts: {alerts_file}" if alerts_file else ""))


@app.command()
@_fail_fast
def submit(
    config: ConfigOpt = None,
    detached: Annotated[bool, typer.Option("--detached", "-d", help="return once submitted")] = False,
    dry_run: Annotated[bool, typer.Option(help="print the `flink run` command only")] = False,
) -> None:
    """Submit jobs/pipeline.py with `flink run` to the cluster FLINK_CONF_DIR names
    (default: the local stack's standalone cluster)."""
    import os
    import shlex
    import subprocess

    from sluice.config import dump_config
    from sluice.flink import flink_run_command
    from sluice.stack import status

    cfg = _config(config)
    conf_dir = os.environ.get("FLINK_CONF_DIR") or status(cfg.path(cfg.stack.run_dir)).flink_conf_dir
    if not conf_dir:
        console.print("[red]no Flink cluster: set FLINK_CONF_DIR or run `sluice stack up --flink`[/red]")
        raise typer.Exit(2)
    # The job reads the config on the client; pass the validated one (secrets stay in env).
    cfg_path = config.resolve() if config else dump_config(cfg, cfg.path(cfg.stack.run_dir) / "submit.yaml")
    cmd = flink_run_command(cfg, cfg_path, detached=detached)
    console.print(f"FLINK_CONF_DIR={conf_dir} {shlex.join(cmd)}", soft_wrap=True)
    if dry_run:
        return
    raise typer.Exit(subprocess.call(cmd, env={**os.environ, "FLINK_CONF_DIR": str(conf_dir)}))


@app.command()
def package(
    config: ConfigOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (replaced)")] = Path("out/package"),
    compatibility: Annotated[str, typer.Option(
        help="manylinux tag of the wheel (maturin --compatibility)")] = "manylinux_2_34",
    zig: Annotated[bool, typer.Option(
        help="link with zig (maturin --zig; needs the ziglang package)")] = False,
) -> None:
    """Build everything `flink run` needs to run the pipeline on any Flink 2.2 cluster whose
    workers lack our Python: the wheel (Rust module included), a relocatable Python 3.11
    environment archive, the connector jars, job files, config, manifest.json, and the
    command to submit it (docs/deploy.md)."""
    from sluice.package import DEFAULT_OUT, PackageError, build_package

    with console.status("packaging") as status:
        try:
            res = build_package(config, out if out != Path("out/package") else DEFAULT_OUT,
                                compatibility=compatibility, zig=zig,
                                progress=lambda msg: status.update(escape(msg)))
        except (PackageError, ConfigError) as exc:
            console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(1) from None
    t = Table(title=f"sluice package: {res.out}", show_header=True)
    t.add_column("part")
    t.add_column("file")
    t.add_column("MB", justify="right")
    for part, path in (("wheel", res.wheel), ("Python env", res.archive),
                       *(("jar", j) for j in sorted((res.out / "jars").glob("*.jar"))),
                       ("config", res.out / "sluice.yaml"), ("manifest", res.manifest)):
        t.add_row(part, str(path.relative_to(res.out)), f"{path.stat().st_size / 1e6:.1f}")
    console.print(t)
    how = "from cache" if res.archive_cached else "built"
    console.print(f"wheel {res.timings['wheel_s']:.0f} s, environment {how} in "
                  f"{res.timings['environment_s']:.0f} s")
    # Plain lines, no markup or wrapping: they are meant to be copied.
    print(f"\nRun from {res.out} with a Flink 2.2 `flink` on PATH (FLINK_CONF_DIR or -m host:port "
          "names the cluster; secrets only in the environment):\n")
    for line in res.command_lines():
        print(line)


@app.command()
@_fail_fast
def verify(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the machine-readable report")] = False,
    idle_timeout: Annotated[float, typer.Option(help="seconds without records that end a read")] = 5.0,
) -> None:
    """Check a finished run against its own inputs: every input record accounted for
    exactly once (canonical event or dead letter), each device's sequence numbers without
    gaps and carried over, in = out + dlq + late, windows and
    alerts consistent with the canonical events, no hanging transactions. Exit code 1
    when anything is off."""
    import json

    from sluice.verify import verify as run_verify

    cfg = _config(config)
    _preflight(cfg)
    rep = run_verify(cfg, idle_timeout=idle_timeout)
    if as_json:
        print(json.dumps(rep.as_dict(), default=str))
    else:
        t = Table(title=f"sluice verify: {'OK' if rep.ok else 'FAILED'}", show_header=False)
        t.add_column(style="bold")
        t.add_column(justify="right")
        for topic, n in rep.inputs.items():
            t.add_row(f"in: {topic}", str(n))
        t.add_row("out: canonical events", str(rep.enriched))
        t.add_row("out: dead letters", f"{rep.dead_letters}  {rep.dlq_by_reason}")
        t.add_row("late", str(rep.late))
        t.add_row("in = out + dlq + late", "yes" if rep.balanced else "NO")
        t.add_row("inputs with a sequence number", str(rep.sequenced_inputs))
        for name in ("missing", "duplicated", "duplicate_event_ids", "invented",
                     "input_sequence_errors", "sequence_gaps", "wrong_seq",
                     "missing_windows", "unexpected_windows", "wrong_windows", "wrong_alerts"):
            items = getattr(rep, name)
            example = f"  e.g. {items[0]}" if items else ""
            t.add_row(name.replace("_", " "), f"{len(items)}{example}")
        t.add_row("windows checked", str(rep.windows))
        t.add_row("hanging transactions", str(rep.hanging_transactions or 0))
        console.print(t)
    if not rep.ok:
        raise typer.Exit(1)


@app.command()
@_fail_fast
def generate(
    config: ConfigOpt = None,
    records: Annotated[int | None, typer.Option(help="readings to produce")] = None,
    live: Annotated[bool, typer.Option(help="stamp readings with the wall clock, paced at rate_eps")] = True,
    anomalies: Annotated[bool, typer.Option(
        help="inject labelled anomalies (generator.anomalies, or its defaults when unset)")] = False,
    labels: Annotated[Path | None, typer.Option(
        help="write the labelled anomalies here (JSON lines: device_id, kind, start_ts, end_ts, ...)")
    ] = None,
) -> None:
    """Produce the seeded synthetic input: Avro telemetry (v1+v2+v3), binary sensor frames
    and JSON work orders, with the corrupt records of every kind mixed in."""
    import time

    from sluice.config import AnomalyConfig
    from sluice.generator import aligned_start, plan, plan_with_labels, produce
    from sluice.kafka_util import ensure_topics

    cfg = _config(config)
    if records is not None:
        cfg = cfg.with_overrides(generator={"records": records})
    if anomalies and cfg.generator.anomalies is None:
        cfg = cfg.with_overrides(generator={"anomalies": AnomalyConfig().model_dump()})
    _preflight(cfg)
    ensure_topics(cfg)
    step = 1000 / cfg.generator.rate_eps if cfg.generator.rate_eps else 1.0
    items = plan(cfg, start_ms=0, step_ms=step)
    start = int(time.time() * 1000) if live else aligned_start(cfg, int(len(items) * step))
    items, planned_labels = plan_with_labels(cfg, start_ms=start, step_ms=step)
    gen = produce(cfg, items, live=live, labels=planned_labels)
    console.print(f"produced {len(gen.readings)} readings, {len(gen.frames)} sensor frames, "
                  f"{len(gen.work_orders)} work orders and {len(gen.corrupt)} corrupt records "
                  f"({', '.join(f'{t}: {n}' for t, n in gen.by_input().items())}) "
                  f"in {gen.produce_seconds:.1f} s")
    if labels is not None:
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("".join(json.dumps(a.as_json()) + "\n" for a in gen.anomalies))
        console.print(f"{len(gen.anomalies)} labelled anomalies → {escape(str(labels))}")


@app.command("eval")
def eval_cmd(
    devices: Annotated[int, typer.Option(min=1, help="devices per stream")] = 20,
    records: Annotated[int, typer.Option(min=100, help="telemetry readings per stream")] = 100_000,
    hours: Annotated[float, typer.Option(min=0.1, help="event-time span of each stream")] = 4.0,
    seed: Annotated[int, typer.Option(help="generator seed of the labelled stream")] = 2,
    baseline_seed: Annotated[int, typer.Option(help="generator seed of the clean baseline")] = 1,
    anomaly_seed: Annotated[int, typer.Option(help="seed of the injected anomalies")] = 7,
    rate: Annotated[float, typer.Option(min=0.01, help="labelled anomalies per device-hour")] = 0.5,
    window: Annotated[list[str] | None, typer.Option(
        "--window", "-w", help="spec window(s) to evaluate (default: every tumble/hop window)")] = None,
    contamination: Annotated[float, typer.Option(min=0.0001, max=0.5)] = 0.01,
    raw: Annotated[bool, typer.Option(help="also run River's HST over raw events")] = True,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out/eval"),
    config: ConfigOpt = None,
) -> None:
    """Detection quality against a peer: sluice's Rust-scored IsolationForest (fixed and
    per-device adaptive threshold) vs River's HalfSpaceTrees, on a generated stream with
    labelled anomalies (docs/evaluation.md). Writes results.json and results.png to OUT."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from sluice.evaluation import EvalParams, run_eval, write_chart

    cfg = _config(config)
    params = EvalParams(devices=devices, records=records, hours=hours, seed=seed,
                        baseline_seed=baseline_seed, anomaly_seed=anomaly_seed, anomaly_rate=rate,
                        windows=tuple(window) if window else None, contamination=contamination,
                        raw=raw)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:

        @contextmanager
        def stage(name: str, total: int):  # type: ignore[no-untyped-def]
            task = progress.add_task(name, total=total)
            yield lambda: progress.advance(task)
            progress.update(task, completed=total)

        try:
            results = run_eval(cfg, params, out, stage=stage)
        except ValueError as exc:
            console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(1) from None
    chart = write_chart(results, out / "results.png")
    console.print(eval_table(results))
    lab = results["streams"]["labelled"]
    kinds = ", ".join(f"{k} {n}" for k, n in lab["by_kind"].items())
    console.print(f"labelled stream: {lab['events']} events, {lab['vectors']} window vectors, "
                  f"{lab['anomalies']} anomalies ({kinds}); "
                  f"{results['seconds']} s → {escape(str(out / 'results.json'))}, {escape(str(chart))}")


def eval_table(results: dict[str, Any]) -> Table:
    """The rich table of `sluice eval` (one row per detector)."""
    from sluice.generator import ANOMALY_KINDS

    det = results["detectors"]
    kinds = [k for k in ANOMALY_KINDS if any(k in m["per_kind"] for m in det.values())]
    t = Table(title="detection quality: window-level precision / recall / F1; per kind: share of "
                    "anomalies detected; TTD: time to detect (event time); FA/dev-h: false alerts "
                    "per device-hour")
    for col in ("detector", "P", "R", "F1", *kinds, "TTD p50", "TTD p90", "alerts", "FA/dev-h"):
        t.add_column(col, justify="left" if col == "detector" else "right", no_wrap=True)

    def minutes(s: float | None) -> str:
        return "—" if s is None else f"{s / 60:.1f}m"

    for name, m in det.items():
        per = [m["per_kind"].get(k) for k in kinds]
        t.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                  *["—" if k is None else f"{k['detected']}/{k['anomalies']}" for k in per],
                  minutes(m["ttd_median_s"]), minutes(m["ttd_p90_s"]), str(m["alerts"]),
                  f"{m.get('false_alerts_per_device_hour', 0.0):.2f}")
    return t


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["app", "REPO_ROOT", "eval_table"]
