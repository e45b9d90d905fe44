"""The `clinaiops` command line."""

from __future__ import annotations

import gc
import getpass
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col

from app.auth import service as auth_service
from app.auth.models import Role, User
from app.core.config import Settings, get_settings
from app.db import get_engine, session_scope
from audit import keys as audit_keys
from audit import service as audit
from device_ingest import service as devices
from device_ingest.models import DeviceClass

cli = typer.Typer(
    help="ClinAIOps: clinical AI operations.", no_args_is_help=True, pretty_exceptions_enable=False
)
users_cli = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
devices_cli = typer.Typer(help="Manage patient devices.", no_args_is_help=True)
audit_cli = typer.Typer(help="Check and prove the audit trail.", no_args_is_help=True)
cli.add_typer(users_cli, name="users")
cli.add_typer(devices_cli, name="devices")
cli.add_typer(audit_cli, name="audit")
models_cli = typer.Typer(help="Train and inspect titration models.", no_args_is_help=True)
loop_cli = typer.Typer(help="Run the patient-AI loop.", no_args_is_help=True)
cli.add_typer(models_cli, name="models")
cli.add_typer(loop_cli, name="loop")
visits_cli = typer.Typer(help="Visit cadence: each patient's next review.", no_args_is_help=True)
cli.add_typer(visits_cli, name="visits")
jobs_cli = typer.Typer(help="Scheduled jobs: list them, run one now.", no_args_is_help=True)
cli.add_typer(jobs_cli, name="jobs")
console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


class CliError(Exception):
    """A failure reported as one line and a non-zero exit."""


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"invalid settings: {first['msg']}") from exc


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _record(session: Any, action: str, **kw: Any) -> None:
    audit.record(session, actor=_actor(), actor_role="operator", action=action, **kw)


@cli.command()
def init() -> None:
    """Migrate the database to the newest schema and create the audit signing key."""
    settings = _settings()
    from app.migrate import upgrade

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True
    ) as progress:
        progress.add_task("Migrating the database", total=None)
        upgrade(settings.database_url)
    assert settings.signing_key_path is not None
    created = audit_keys.create_signing_key(settings.signing_key_path)
    console.print(
        f"database at head; signing key {'created' if created else 'present'} "
        f"at {settings.signing_key_path}"
    )


@cli.command()
def seed(
    demo: Annotated[bool, typer.Option("--demo", help="Seed the synthetic demo cohort.")] = False,
    patients: Annotated[int, typer.Option(min=2, max=500)] = 12,
) -> None:
    """Seed data; `--demo` creates demo users, care teams and patients."""
    if not demo:
        raise CliError("nothing to seed: pass --demo")
    settings = _settings()
    from app.seed import seed_demo

    with session_scope() as session:
        result = seed_demo(session, settings=settings, n_patients=patients)
        if result.already_seeded:
            console.print("demo data already present; nothing changed")
            _print_logins(result.logins, result.password, result.password_generated)
            return
        _record(
            session,
            "seed.demo",
            resource_type="system",
            details={"users": len(result.logins), "patients": result.patients},
        )
        session.commit()
    _print_logins(result.logins, result.password, result.password_generated)
    console.print(f"device keys for the simulator: {result.device_keys_file}")


def _print_logins(logins: list[tuple[str, str]], password: str, generated: bool) -> None:
    staff = [u for u, r in logins if r != "patient"]
    pts = [u for u, r in logins if r == "patient"]
    console.print("demo logins: " + ", ".join(staff) + f", {pts[0]}..{pts[-1]}")
    if generated:
        console.print(
            f"demo password (generated; set CLINAIOPS_DEMO_PASSWORD to choose): {password}"
        )
    else:
        console.print("demo password: the value CLINAIOPS_DEMO_PASSWORD had at the first seed")


@cli.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64)] = 1,
) -> None:
    """Upgrade the database and serve the API and portal."""
    settings = _settings()
    import uvicorn

    from app.migrate import upgrade

    upgrade(settings.database_url)
    assert settings.signing_key_path is not None
    audit_keys.create_signing_key(settings.signing_key_path)
    if workers > 1:
        _share_metrics(settings.data_dir / "prometheus" / str(port))
    console.print(
        f"portal: http://{host}:{port}/portal/  OpenAPI: http://{host}:{port}/openapi.json"
    )
    uvicorn.run(
        "app.main:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,
        server_header=False,
        log_level="info",
    )


def _share_metrics(default_dir: Path) -> None:
    """Let every worker write its request metrics where any worker can sum them."""
    import os
    import shutil

    chosen = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        return
    # Emptied at start: files left by an earlier run's workers would be summed in.
    shutil.rmtree(default_dir, ignore_errors=True)
    default_dir.mkdir(parents=True)
    # Set before the workers start: prometheus_client picks its mode at import.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(default_dir)


@cli.command()
def demo(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
) -> None:
    """Initialise, seed the demo cohort, train model v1, simulate four weeks, and serve."""
    init()
    settings = _settings()
    from app.seed import DEMO_SEED
    from mlops import serving

    with session_scope(readonly=True) as session:
        first_run = session.scalars(select(col(User.id))).first() is None
        # A usable one: a model trained on an earlier feature set is refused, so train anew.
        has_model = serving.production(session) is not None
    seed(demo=True)
    if not has_model:
        models_train_initial(patients=120, days=70, seed=7, epsilon=3.0)
    if first_run:
        # Four weeks of home readings for the demo patients, with the loop running, so the
        # portal and the patient API open on proposals in both routes and some alerts.
        simulate(
            patients=_demo_patients(settings),
            days=28,
            seed=DEMO_SEED,
            firmware_drift=None,
            drift_day=14,
            no_loop=False,
        )
    # Every demo patient opens with a next visit (and the due list with work).
    visits_recompute(patient=None)
    serve(host=host, port=port)


def _demo_patients(settings: Settings) -> int:
    from app.patients.models import Patient

    with session_scope(readonly=True) as session:
        return len(session.scalars(select(col(Patient.id))).all())


@users_cli.command("create")
def users_create(
    username: Annotated[str, typer.Option()],
    role: Annotated[Role, typer.Option()],
    full_name: Annotated[str, typer.Option("--full-name")],
    patient_id: Annotated[str | None, typer.Option("--patient-id")] = None,
    clinical_lead: Annotated[bool, typer.Option("--clinical-lead")] = False,
    password: Annotated[
        str | None,
        typer.Option(envvar="CLINAIOPS_NEW_USER_PASSWORD", help="Prompted for when not given."),
    ] = None,
) -> None:
    """Create a user account."""
    settings = _settings()
    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with session_scope() as session:
        try:
            user = auth_service.create_user(
                session,
                username=username,
                password=password,
                full_name=full_name,
                role=role,
                settings=settings,
                patient_id=patient_id,
                is_clinical_lead=clinical_lead,
            )
        except auth_service.UserError as exc:
            raise CliError(str(exc)) from exc
        _record(
            session,
            "user.create",
            resource_type="user",
            resource_id=str(user.id),
            details={"role": str(role)},
        )
        session.commit()
        typer.echo(
            json.dumps({"user_id": user.id, "username": user.username, "role": str(user.role)})
        )


@users_cli.command("disable")
def users_disable(username: Annotated[str, typer.Option()]) -> None:
    """Disable a user account at once."""
    with session_scope() as session:
        user = session.scalars(select(User).where(col(User.username) == username.lower())).first()
        if user is None:
            raise CliError(f"no user {username}")
        auth_service.disable_user(session, user=user)
        _record(session, "user.disable", resource_type="user", resource_id=str(user.id))
        session.commit()
    console.print(f"disabled {username}")


@devices_cli.command("create")
def devices_create(
    patient: Annotated[str, typer.Option("--patient", help="Patient id.")],
    device_class: Annotated[DeviceClass, typer.Option("--device-class")],
    manufacturer: Annotated[str, typer.Option()] = "",
    model: Annotated[str, typer.Option()] = "",
    firmware: Annotated[str, typer.Option()] = "",
) -> None:
    """Register a device; prints its id, patient and API key (shown this once) as JSON."""
    with session_scope() as session:
        try:
            device, key = devices.register(
                session,
                patient_id=patient,
                device_class=device_class,
                manufacturer=manufacturer,
                model=model,
                firmware_version=firmware,
            )
        except devices.DeviceError as exc:
            raise CliError(str(exc)) from exc
        _record(
            session,
            "device.register",
            resource_type="device",
            resource_id=device.id,
            patient_id=device.patient_id,
            details={"device_class": str(device_class)},
        )
        session.commit()
        typer.echo(
            json.dumps(
                {
                    "device_id": device.id,
                    "patient_id": device.patient_id,
                    "device_class": str(device.device_class),
                    "api_key": key,
                }
            )
        )


@devices_cli.command("revoke")
def devices_revoke(device: Annotated[str, typer.Option("--device", help="Device id.")]) -> None:
    """Revoke a device's key at once."""
    with session_scope() as session:
        try:
            found = devices.revoke(session, device_id=device)
        except devices.DeviceError as exc:
            raise CliError(str(exc)) from exc
        _record(
            session,
            "device.revoke",
            resource_type="device",
            resource_id=found.id,
            patient_id=found.patient_id,
        )
        session.commit()
    console.print(f"revoked {device}")


def _signing_key(settings: Settings) -> Any:
    assert settings.signing_key_path is not None
    try:
        return audit_keys.load_signing_key(settings.signing_key_path)
    except audit_keys.SigningKeyMissing as exc:
        raise CliError(str(exc)) from exc


@audit_cli.command("verify")
def audit_verify() -> None:
    """Recompute every leaf, link, root and signature; name the first bad entry."""
    settings = _settings()
    key = _signing_key(settings)
    with session_scope(readonly=True) as session:
        result = audit.verify_log(session, public_key=key.public_key())
    if not result.ok:
        where = f" at seq {result.first_bad_seq}" if result.first_bad_seq is not None else ""
        raise CliError(f"audit verification FAILED{where}: {result.reason}")
    typer.echo(
        f"OK: {result.entries} entries, {result.tree_heads} signed tree heads, "
        f"root {result.root_hash}"
    )


@audit_cli.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a tree head over the log as it stands; prints it as JSON."""
    settings = _settings()
    key = _signing_key(settings)
    with session_scope() as session:
        sth = audit.checkpoint(session, key=key)
        _record(
            session,
            "audit.checkpoint",
            resource_type="audit",
            details={"tree_size": sth.tree_size, "root_hash": sth.root_hash},
        )
        session.commit()
        typer.echo(json.dumps(audit.sth_document(sth)))


@audit_cli.command("prove")
def audit_prove(
    seq: Annotated[int | None, typer.Option(help="Inclusion proof for this entry.")] = None,
    tree_size: Annotated[int | None, typer.Option("--tree-size")] = None,
    first: Annotated[int | None, typer.Option(help="Consistency proof from this size.")] = None,
    second: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Print an inclusion (--seq --tree-size) or consistency (--first --second) proof."""
    with session_scope(readonly=True) as session:
        try:
            if seq is not None and tree_size is not None:
                out: dict[str, Any] = {
                    "leaf_index": seq - 1,
                    "tree_size": tree_size,
                    "proof": audit.inclusion(session, seq=seq, size=tree_size),
                }
            elif first is not None and second is not None:
                out = {
                    "first": first,
                    "second": second,
                    "proof": audit.consistency(session, first=first, second=second),
                }
            else:
                raise CliError("give --seq and --tree-size, or --first and --second")
        except audit.ProofUnavailable as exc:
            raise CliError(str(exc)) from exc
    typer.echo(json.dumps(out))


@audit_cli.command("export")
def audit_export(out: Annotated[Path, typer.Option(help="Folder to write into.")]) -> None:
    """Write entries.jsonl, sth.json and public_key.pem for the standalone verifier."""
    settings = _settings()
    key = _signing_key(settings)
    out.mkdir(parents=True, exist_ok=True)
    with session_scope(readonly=True) as session:
        sth = audit.latest_sth(session)
        if sth is None:
            raise CliError("no signed tree head yet: run `clinaiops audit checkpoint`")
        count = 0
        with (out / "entries.jsonl").open("w") as fh:
            for line in audit.export_lines(session, sth=sth, from_seq=1, to_seq=sth.tree_size):
                fh.write(json.dumps(line, sort_keys=True) + "\n")
                count += 1
        head = audit.sth_document(sth)
    (out / "sth.json").write_text(json.dumps(head, indent=2))
    (out / "public_key.pem").write_bytes(audit_keys.public_key_pem(key))
    try:
        with session_scope() as session:
            _record(
                session,
                "audit.export",
                resource_type="audit",
                details={"entries": count, "tree_size": head["tree_size"]},
            )
            session.commit()
    except Exception:
        # An export that could not be audited is not released.
        for name in ("entries.jsonl", "sth.json", "public_key.pem"):
            (out / name).unlink(missing_ok=True)
        raise
    console.print(
        f"wrote {count} entries to {out}; verify with: python -m audit.verifier "
        f"--entries {out}/entries.jsonl --sth {out}/sth.json "
        f"--public-key {out}/public_key.pem"
    )


@cli.command()
def simulate(
    patients: Annotated[int, typer.Option(min=1, max=5000)] = 50,
    days: Annotated[int, typer.Option(min=1, max=730)] = 28,
    seed: Annotated[int, typer.Option()] = 1,
    firmware_drift: Annotated[
        str | None,
        typer.Option(help="Device model whose readings rise by 10 mmHg from --drift-day on."),
    ] = None,
    drift_day: Annotated[int, typer.Option(min=0)] = 14,
    no_loop: Annotated[bool, typer.Option("--no-loop", help="Only send readings.")] = False,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Compare usual care with the ClinAIOps loops instead (in memory, "
            "180 days by default); prints a table.",
        ),
    ] = False,
) -> None:
    """Send a synthetic cohort's readings, day by day up to today, through the ingest API."""
    settings = _settings()
    if compare:
        _compare(patients=patients, days=max(days, 180) if days == 28 else days, seed=seed)
        return
    from app.simulate import run
    from device_ingest.simulator import FirmwareDrift, Scenario

    scenario = Scenario(
        firmware_drift=FirmwareDrift(firmware_drift, drift_day) if firmware_drift else None
    )
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True
    ) as bar:
        task = bar.add_task("simulating", total=days)
        report = run(
            get_engine(),
            settings,
            n_patients=patients,
            days=days,
            seed=seed,
            scenario=scenario,
            evaluate=not no_loop,
            progress=lambda day: bar.update(
                task, completed=day + 1, description=f"day {day + 1}/{days}"
            ),
        )
    typer.echo(
        json.dumps(
            {
                "patients": report.patients,
                "days": report.days,
                "requests": report.posted,
                "status_counts": report.status_counts,
                "symptom_reports": report.symptom_reports,
                "evaluations": report.evaluations,
            }
        )
    )


def _compare(*, patients: int, days: int, seed: int) -> None:
    from loops.compare import run_arm, table
    from mlops import serving

    with session_scope(readonly=True) as session:
        served = serving.production(session)
    if served is None:
        raise CliError("no production model: run `clinaiops models train-initial` first")
    arms = []
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True
    ) as bar:
        for name, scorer in (("usual care", None), ("ClinAIOps", served.predict_proba)):
            bar.add_task(f"simulating {name}", total=None)
            arms.append(run_arm(name, n_patients=patients, days=days, seed=seed, scorer=scorer))
    typer.echo(table(arms))


@models_cli.command("train-initial")
def models_train_initial(
    patients: Annotated[int, typer.Option(min=20, max=5000)] = 200,
    days: Annotated[int, typer.Option(min=28, max=730)] = 84,
    seed: Annotated[int, typer.Option()] = 7,
    epsilon: Annotated[float, typer.Option(min=0.1, max=20.0)] = 3.0,
) -> None:
    """Train version 1 with DP on protocol-labelled simulated data and put it in production."""
    settings = _settings()
    from mlops.training import InitialTraining, train_initial

    config = InitialTraining(n_patients=patients, days=days, seed=seed, target_epsilon=epsilon)
    # Opacus warns that secure_mode is off on every run; it is off on purpose (torchcsprng
    # does not install here; see docs and the model's privacy record), so say it once here.
    warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
    console.print(
        "note: Opacus secure_mode is off (no cryptographically secure RNG); "
        "recorded in the model's privacy record"
    )
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True
    ) as bar:
        bar.add_task("simulating, labelling and training", total=None)
        with session_scope() as session:
            version = train_initial(
                session, models_dir=settings.data_dir / "models", created_by=_actor(), config=config
            )
            _record(
                session,
                "model.register",
                resource_type="model",
                resource_id=f"{version.name}:v{version.version}",
                details={
                    "status": version.status,
                    "data_hash": version.data_hash,
                    "artifact_sha256": version.artifact_sha256,
                    "epsilon": version.privacy.get("epsilon"),
                },
            )
            session.commit()
            typer.echo(
                json.dumps(
                    {
                        "model": f"{version.name}:v{version.version}",
                        "status": version.status,
                        "metrics": version.metrics,
                        "privacy": version.privacy,
                    },
                    default=str,
                )
            )


@models_cli.command("list")
def models_list() -> None:
    """Registered model versions with status, aliases, lineage and privacy spent."""
    from mlops import lineage
    from mlops.models import ModelVersion

    with session_scope(readonly=True) as session:
        listing = lineage.listing(session, limit=10_000)
        for v in reversed(listing.items):  # oldest first, as before
            row = session.scalars(
                select(ModelVersion).where(
                    col(ModelVersion.name) == v.name, col(ModelVersion.version) == v.version
                )
            ).one()
            typer.echo(
                json.dumps(
                    {
                        "model": v.label,
                        "status": v.status,
                        "aliases": v.aliases,
                        "parent_version": v.parent_version,
                        "data_hash": v.data_hash,
                        "code_version": v.code_version,
                        "created_at": str(v.created_at),
                        "epsilon": v.epsilon,
                        "accuracy": row.metrics.get("dp", {}).get("accuracy"),
                    }
                )
            )


@models_cli.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="The model, e.g. titration.")],
    version: Annotated[int, typer.Argument(min=1, help="The version.")],
) -> None:
    """A version's lineage as JSON: parents, snapshot, code, parameters, metrics, privacy,
    validation runs, sign-offs (signatures verified), transitions, what it still lacks."""
    from mlops import lifecycle, lineage

    settings = _settings()
    with session_scope(readonly=True) as session:
        try:
            found = lifecycle.get_version(session, name=name, version=version)
        except lifecycle.ModelNotFound as exc:
            raise CliError(str(exc)) from exc
        shown = lineage.lineage(session, found, public_key=lifecycle.signing_public_key(settings))
        typer.echo(json.dumps(shown.model_dump(mode="json")))


@models_cli.command("validate")
def models_validate(
    name: Annotated[str, typer.Argument(help="The model, e.g. titration.")],
    version: Annotated[int, typer.Argument(min=1, help="The candidate version.")],
) -> None:
    """Run every validation gate on a candidate; all passing makes it validated. Exits 1
    when a gate failed, naming which check failed and by how much."""
    from app.core import clock
    from mlops import lifecycle
    from validation import gates

    settings = _settings()
    with session_scope() as session:
        try:
            run = gates.run_gates(
                session=session,
                name=name,
                version=version,
                actor=_actor(),
                now=clock.utcnow(),
                data_dir=settings.data_dir,
                settings=settings,
            )
        except lifecycle.ModelNotFound as exc:
            raise CliError(str(exc)) from exc
        except lifecycle.LifecycleRefused as exc:
            raise CliError(f"{exc.code}: {exc.detail}") from exc
        session.commit()
        typer.echo(
            json.dumps(
                {
                    "model": f"{name}:v{version}",
                    "run_id": run.run_id,
                    "passed": run.passed,
                    "champion_version": run.champion_version,
                    "gates": [
                        {"gate": r.gate, "passed": r.passed, "detail": r.detail}
                        for r in run.results
                    ],
                }
            )
        )
    if not run.passed:
        failed = [f"{r.gate}: {r.detail}" for r in run.results if not r.passed]
        raise CliError(f"{name}:v{version} failed {len(failed)} gate(s): " + " | ".join(failed))


@models_cli.command("signoff")
def models_signoff(
    name: Annotated[str, typer.Argument(help="The model, e.g. titration.")],
    version: Annotated[int, typer.Argument(min=1, help="The validated version.")],
    username: Annotated[str, typer.Option("--username", help="Who signs (re-authenticated).")],
    role: Annotated[
        str, typer.Option("--role", help="The role signed in: ml_engineer or clinical_lead.")
    ],
    note: Annotated[str, typer.Option("--note", help="Optional note on the record.")] = "",
) -> None:
    """Sign a validated version off for production under an electronic signature: the
    meaning is shown and confirmed, the signer's password is asked for (never an option)."""
    from app.core import clock
    from audit.models import Outcome
    from mlops import lifecycle
    from mlops.models import SignoffRole

    settings = _settings()
    try:
        signoff_role = SignoffRole(role)
    except ValueError as exc:
        raise CliError(f"unknown role {role!r}: ml_engineer or clinical_lead") from exc
    meaning = lifecycle.SIGNOFF_MEANINGS[signoff_role]
    console.print(f"signing {name}:v{version} as {signoff_role}: {meaning}")
    # Asked on stderr and read from stdin, so that stdout holds only the JSON result.
    console.print("Sign with this meaning? [y/N]: ", end="")
    if sys.stdin.readline().strip().lower() not in {"y", "yes"}:
        raise CliError("not signed: the meaning was not confirmed")
    password = typer.prompt("password", hide_input=True, err=True)
    with session_scope() as session:
        signer = session.scalars(
            select(User).where(col(User.username) == username.strip().lower())
        ).first()
        if signer is None:
            raise CliError(f"no such user: {username}")
        try:
            row = lifecycle.signoff(
                session=session,
                name=name,
                version=version,
                signer=signer,
                role=signoff_role,
                meaning=meaning,
                note=note,
                now=clock.utcnow(),
                password=password,
                settings=settings,
            )
        except lifecycle.ModelNotFound as exc:
            raise CliError(str(exc)) from exc
        except lifecycle.SignoffRefused as exc:
            if exc.status == 403:
                # Keep the failed attempt's count (toward lockout) and say who was refused.
                audit.record(
                    session,
                    actor=f"user:{signer.id}",
                    actor_role=str(signer.role),
                    action="model.signoff",
                    resource_type="model",
                    resource_id=f"{name}:v{version}",
                    outcome=Outcome.DENIED,
                    details={"code": exc.code, "role": str(signoff_role), "via": "cli"},
                )
                session.commit()
            raise CliError(f"{exc.code}: {exc.detail}") from exc
        session.commit()
        typer.echo(
            json.dumps(
                {
                    "model": f"{name}:v{version}",
                    "role": row.signoff_role,
                    "signer": row.signer_name,
                    "meaning": row.meaning,
                    "signed_at": str(row.signed_at),
                    "record_sha256": row.record_sha256,
                    "ready_for_rollout": lifecycle.ready_for_rollout(
                        session, name=name, version=version
                    ),
                }
            )
        )


@models_cli.command("rollout")
def models_rollout(
    name: Annotated[str, typer.Argument(help="The model, e.g. titration.")],
    version: Annotated[int, typer.Argument(min=1, help="The signed-off version to roll out.")],
    dwell_minutes: Annotated[
        int | None,
        typer.Option(min=1, max=43_200, help="Minutes per step (default: the setting)."),
    ] = None,
) -> None:
    """Start a validated, signed-off version's rollout: shadow, then canary 10/25/50/100%."""
    from datetime import timedelta

    from app.core import clock
    from mlops import lifecycle, rollout

    settings = _settings()
    minutes = dwell_minutes or settings.canary_dwell_minutes
    with session_scope() as session:
        try:
            started = rollout.start(
                session=session,
                name=name,
                version=version,
                actor=_actor(),
                now=clock.utcnow(),
                dwell=timedelta(minutes=minutes),
            )
        except lifecycle.ModelNotFound as exc:
            raise CliError(str(exc)) from exc
        except (rollout.RolloutRefused, lifecycle.LifecycleRefused) as exc:
            raise CliError(f"{exc.code}: {exc.detail}") from exc
        session.commit()
        typer.echo(
            json.dumps(
                {
                    "rollout": started.id,
                    "model": f"{name}:v{version}",
                    "status": started.status,
                    "champion_version": started.champion_version,
                    "dwell_seconds": started.dwell_seconds,
                }
            )
        )


@models_cli.command("rollback")
def models_rollback(
    reason: Annotated[
        str, typer.Option("--reason", prompt="Why roll back", help="Why (kept on the record).")
    ],
    name: Annotated[str, typer.Option("--name", help="The model.")] = "titration",
) -> None:
    """Roll back by hand: end the running rollout, else restore the previous production
    version (from the serving history). Audited with who and why."""
    from app.core import clock
    from mlops import lifecycle, rollout

    with session_scope() as session:
        try:
            result = rollout.rollback(
                session=session, name=name, actor=_actor(), reason=reason, now=clock.utcnow()
            )
        except (rollout.RolloutRefused, lifecycle.LifecycleRefused) as exc:
            raise CliError(f"{exc.code}: {exc.detail}") from exc
        session.commit()
    if result.artifact_problem is not None:
        console.print(
            f"warning: {name}:v{result.serving} cannot serve ({result.artifact_problem}): "
            "every evaluation goes to clinicians until a usable version is in production"
        )
    typer.echo(
        json.dumps(
            {
                "retired_version": result.retired,
                "serving_version": result.serving,
                "rollout": result.rollout_id,
            }
        )
    )


@models_cli.command("tick")
def models_tick() -> None:
    """Analyse every running rollout's current step once: advance, complete, roll back on a
    breach, or hold (the scheduler does this every few minutes)."""
    from app.core import clock
    from mlops import rollout
    from mlops.canary import Thresholds

    with session_scope() as session:
        done = rollout.tick(
            session=session,
            now=clock.utcnow(),
            thresholds=Thresholds.from_settings(_settings()),
        )
        session.commit()
        for step in done:
            typer.echo(
                json.dumps(
                    {
                        "rollout": step.rollout_id,
                        "stage": step.stage,
                        "percent": step.percent,
                        "decision": step.decision,
                        "reasons": step.reasons,
                    }
                )
            )
    if not done:
        typer.echo(json.dumps({"rollouts": 0}))


@loop_cli.command("run")
def loop_run(
    daily: Annotated[bool, typer.Option("--daily", help="Evaluate every patient now.")] = False,
) -> None:
    """Evaluate patients with new readings (or, with --daily, every patient) once."""
    from app.core import clock
    from app.db import session_factory
    from loops.dispatch import drain, evaluate_all
    from mlops import serving

    if daily:
        # Each chunk of the daily run builds tens of thousands of objects (readings, features):
        # collect as rarely as a server process does (see app/main.py).
        gc.set_threshold(_settings().gc_gen0_threshold, 20, 20)
    factory = session_factory(get_engine())
    now = clock.utcnow()
    report = (
        evaluate_all(factory, now=now, predictor=serving.production)
        if daily
        else drain(factory, now=now, predictor=serving.production)
    )
    typer.echo(json.dumps({"evaluated": len(report.evaluated), "failed": len(report.failed)}))


@visits_cli.command("recompute")
def visits_recompute(
    patient: Annotated[
        str | None, typer.Option("--patient", help="Only this patient (id); default: all.")
    ] = None,
) -> None:
    """Recompute the next visit (cadence rule) of one patient or of every patient."""
    from app.core import clock
    from app.patients.models import Patient
    from loops.visits import service as visits

    now = clock.utcnow()
    with session_scope() as session:
        if patient is not None:
            if session.get(Patient, patient) is None:
                raise CliError(f"no patient with id {patient}")
            done = visits.recompute(session, patient_id=patient, now=now)
            totals = visits.counts([done])
            _record(
                session,
                "visit.recompute",
                resource_type="visit",
                resource_id=done.visit.id,
                patient_id=patient,
                details={"trigger": "cli", **totals},
            )
            session.commit()
            typer.echo(
                json.dumps(
                    {
                        **totals,
                        "patient": patient,
                        "kind": done.visit.kind,
                        "due_by": clock.iso(done.visit.due_by),
                        "reasons": list(done.visit.reasons),
                    }
                )
            )
            return
        totals = visits.recompute_all(session, now=now)
        _record(
            session, "visit.recompute", resource_type="visit", details={"trigger": "cli", **totals}
        )
        session.commit()
    typer.echo(json.dumps(totals))


def _job_run_json(run: Any, now: Any) -> dict[str, Any]:
    from app.core import clock
    from validation.scheduler import lapsed

    return {
        "id": run.id,
        "period": run.period,
        "status": "lapsed" if lapsed(run, now) else run.status,
        "holder": run.holder,
        "attempts": run.attempts,
        "started_at": clock.iso(run.started_at),
        "finished_at": clock.iso(run.finished_at) if run.finished_at else None,
        "details": run.details,
    }


@cli.command()
def scheduler(
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Schedule only this job (repeatable); default: all."),
    ] = None,
) -> None:
    """Run the scheduled jobs in the foreground until SIGTERM or SIGINT. Each firing runs once
    across every scheduler and server process (database leases; docs/scheduler.md)."""
    import logging

    from app.db import session_factory
    from validation import jobs
    from validation.scheduler import Scheduler, run_forever

    settings = _settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # APScheduler logs every firing at INFO; ours say what a run did.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    registry = jobs.registry(settings)
    if only:
        unknown = sorted(set(only) - set(registry))
        if unknown:
            raise CliError(f"no such job: {', '.join(unknown)} (see `clinaiops jobs list`)")
        registry = {name: job for name, job in registry.items() if name in only}
    runner = Scheduler(session_factory(get_engine()), registry, settings)
    if not runner.jobs:
        raise CliError("no job is scheduled: every selected job's schedule is off")
    run_forever(runner)


@jobs_cli.command("list")
def jobs_list() -> None:
    """Each job with its schedule and its latest run (one JSON object per line)."""
    from app.core import clock
    from validation import jobs, service

    now = clock.utcnow()
    registry = jobs.registry(_settings())
    with session_scope(readonly=True) as session:
        for name, job in registry.items():
            last = service.latest_runs(session, job=name, limit=1)
            typer.echo(
                json.dumps(
                    {
                        "job": name,
                        "summary": job.summary,
                        "schedule": job.schedule.describe() if job.schedule else "off",
                        "lease_seconds": int(job.lease.total_seconds()),
                        "last_run": _job_run_json(last[0], now) if last else None,
                    }
                )
            )


@jobs_cli.command("run")
def jobs_run(name: Annotated[str, typer.Argument(help="The job's name.")]) -> None:
    """Run a job now, under its lease for a manual period, recorded like a scheduled run."""
    from app.core import clock
    from app.db import session_factory
    from validation import jobs, service
    from validation.scheduler import FAILED, LOST, SKIPPED, run_job

    settings = _settings()
    job = jobs.registry(settings).get(name)
    if job is None:
        raise CliError(f"no such job: {name} (see `clinaiops jobs list`)")
    now = clock.utcnow()
    period = jobs.manual_period(now)
    result = run_job(
        session_factory(get_engine()),
        job,
        settings=settings,
        now=now,
        period=period,
        holder=service.holder_name(),
    )
    if result.status == SKIPPED:
        raise CliError(f"job {name} is running elsewhere ({result.holder}); try again later")
    with session_scope() as session:
        _record(
            session,
            "job.run",
            resource_type="job",
            resource_id=name,
            details={"period": period, "status": result.status},
        )
        session.commit()
    typer.echo(
        json.dumps(
            {
                "job": name,
                "period": period,
                "status": result.status,
                "run_id": result.run_id,
                "details": result.details,
            }
        )
    )
    if result.status in (FAILED, LOST):
        raise CliError(f"job {name} {result.status}: {result.reason or 'see its run'}")


# ------------------------------------------------------------------ private retraining (part A)
ledger_cli = typer.Typer(
    help="The privacy ledger: each cohort's budget and what training spent.", no_args_is_help=True
)
cli.add_typer(ledger_cli, name="ledger")
drift_cli = typer.Typer(
    help="Drift reports: what the monitoring runs found (run one: jobs run drift_report).",
    no_args_is_help=True,
)
cli.add_typer(drift_cli, name="drift")


@models_cli.command("train")
def models_train(
    epsilon: Annotated[
        float | None,
        typer.Option("--epsilon", min=0.01, max=20.0, help="This run's target epsilon."),
    ] = None,
    cohort: Annotated[
        str, typer.Option("--cohort", help="clinic (clinician decisions) or simulated.")
    ] = "clinic",
    patients: Annotated[
        int, typer.Option(min=20, max=5000, help="Simulated cohort only: its patients.")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Simulated cohort only: the simulation seed.")] = 7,
) -> None:
    """Retrain with DP on a new snapshot of a cohort and register a candidate (it then waits
    for the validation gates and two sign-offs); refused with the reason otherwise."""
    settings = _settings()
    from app.core import clock
    from mlops import retrain, snapshots

    retrain.quiet_secure_rng_warning()
    console.print(
        "note: Opacus secure_mode is off (no cryptographically secure RNG); "
        "recorded in the model's privacy record"
    )
    with (
        Progress(
            SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True
        ) as bar,
        session_scope() as session,
    ):
        bar.add_task("snapshotting, checking and training", total=None)
        now = clock.utcnow()
        snapshot = None
        if snapshots.COHORTS.get(cohort) == snapshots.SOURCE_SIMULATED:
            snapshot = snapshots.build_simulated(
                session=session,
                now=now,
                actor=_actor(),
                data_dir=settings.data_dir,
                cohort=cohort,
                n_patients=patients,
                seed=seed,
                thresholds=retrain.thresholds_from(settings),
            )
        try:
            result = retrain.retrain(
                session=session,
                settings=settings,
                now=now,
                actor=_actor(),
                actor_role="operator",
                cohort=cohort,
                snapshot=snapshot,
                target_epsilon=epsilon,
                reason="requested from the command line",
            )
        except retrain.RetrainRefused as exc:
            session.commit()  # the refusal's audit entry, and the snapshot with its checks
            raise CliError(f"{exc.code}: {exc.detail}") from exc
        session.commit()
        version = result.version
        typer.echo(
            json.dumps(
                {
                    "model": f"{version.name}:v{version.version}",
                    "status": version.status,
                    "parent_version": version.parent_version,
                    "snapshot": result.snapshot.id,
                    "data_hash": version.data_hash,
                    "epsilon": result.epsilon,
                    "delta": result.delta,
                    "charged_epsilon": result.charged_epsilon,
                    "spent_epsilon": result.spent_after,
                    "budget_epsilon": result.budget,
                    "accuracy": version.metrics["dp"].get("accuracy"),
                    "baseline_accuracy": version.metrics["non_dp_baseline"].get("accuracy"),
                }
            )
        )


@ledger_cli.command("show")
def ledger_show(
    cohort: Annotated[
        str | None, typer.Option("--cohort", help="One cohort (default: every cohort).")
    ] = None,
) -> None:
    """Each cohort's budget, what its runs spent (epsilons and deltas add up), and the runs."""
    settings = _settings()
    from mlops import ledger, snapshots

    if cohort is not None and cohort not in snapshots.COHORTS:
        raise CliError(f"unknown cohort {cohort!r}; known: {', '.join(sorted(snapshots.COHORTS))}")
    budget = settings.privacy_budget_epsilon
    out = []
    with session_scope(readonly=True) as session:
        for name in [cohort] if cohort else sorted(snapshots.COHORTS):
            totals = ledger.totals(session, cohort=name)
            out.append(
                {
                    "cohort": name,
                    "budget_epsilon": budget,
                    "spent_epsilon": totals.epsilon,
                    "spent_delta": totals.delta,
                    "remaining_epsilon": max(budget - totals.epsilon, 0.0),
                    "runs": [
                        {
                            "model": f"{e.model_name}:v{e.model_version}",
                            "snapshot": e.snapshot_id,
                            "epsilon": e.epsilon,
                            "delta": e.delta,
                            "accountant": e.accountant,
                            "by": e.created_by,
                            "at": str(e.created_at),
                        }
                        for e in ledger.entries(session, cohort=name)
                    ],
                }
            )
    typer.echo(json.dumps({"composition": ledger.COMPOSITION, "cohorts": out}))


def _drift_row(report: Any) -> dict[str, Any]:
    return {
        "id": report.id,
        "created_at": str(report.created_at),
        "created_by": report.created_by,
        "window": [str(report.window_start), str(report.window_end)],
        "status": report.status,
        "headline": report.headline,
        "model_version": report.model_version,
        "reference": report.reference,
        "feature_set": report.feature_set,
        "rows": {"reference": report.reference_rows, "current": report.current_rows},
        "drifted_features": report.drifted_features,
    }


@drift_cli.command("list")
def drift_list(
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
) -> None:
    """The newest drift reports: window, status, headline, how many features moved."""
    from validation.models import DriftReport

    with session_scope(readonly=True) as session:
        rows = session.scalars(
            select(DriftReport).order_by(col(DriftReport.id).desc()).limit(limit)
        ).all()
        typer.echo(json.dumps([_drift_row(r) for r in rows]))


@drift_cli.command("show")
def drift_show(report_id: Annotated[int, typer.Argument(help="The report's id.")]) -> None:
    """One drift report with its findings (aggregates only) and where its files are."""
    from validation.models import DriftReport

    with session_scope(readonly=True) as session:
        report = session.get(DriftReport, report_id)
        if report is None:
            raise CliError(f"no drift report with id {report_id}")
        typer.echo(
            json.dumps(
                {
                    **_drift_row(report),
                    "summary": report.summary,
                    "files": {"html": report.html_path, "json": report.json_path},
                },
                default=str,
            )
        )


# ------------------------------------------------------------------ compliance reports (issue 8)
reports_cli = typer.Typer(help="Compliance reports for auditors.", no_args_is_help=True)
cli.add_typer(reports_cli, name="reports")


@reports_cli.command("pack")
def reports_pack(
    month: Annotated[
        str | None, typer.Option(help="The calendar month, YYYY-MM (default: the last one).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Base folder (default: <data_dir>/compliance).")
    ] = None,
) -> None:
    """Write a month's compliance pack: every report in HTML, PDF and CSV, the verifiable
    audit-trail export and FHIR NDJSON, with a manifest signed by the audit signing key."""
    import shutil

    from app.core import clock
    from reports import pack
    from reports.periods import PeriodError, parse_month, previous_month

    settings = _settings()
    now = clock.utcnow()
    try:
        period = previous_month(now) if month is None else parse_month(month)
    except PeriodError as exc:
        raise CliError(exc.detail) from exc
    if period.start >= now:
        raise CliError("that month has not started yet")
    assert settings.signing_key_path is not None
    try:
        key = audit_keys.load_signing_key(settings.signing_key_path)
    except audit_keys.SigningKeyMissing as exc:
        raise CliError(str(exc)) from exc
    base = out if out is not None else pack.default_base(settings.data_dir)
    label = pack.month_label(period)
    with session_scope() as session, session_scope(readonly=True) as reader:
        try:
            built = pack.write_pack(
                session,
                reader=reader,
                period=period,
                base=base,
                signing_key=key,
                generated_by=_actor(),
                now=now,
                settings=settings,
            )
        except pack.PackExists as exc:
            raise CliError(str(exc)) from exc
        try:
            _record(
                session,
                "report.pack",
                resource_type="report",
                resource_id=label,
                details=built.audit_details(label),
            )
            session.commit()
        except Exception:
            # A pack that could not be audited is not released.
            shutil.rmtree(built.folder, ignore_errors=True)
            raise
    if period.end > now:
        console.print(f"note: {label} has not ended; the pack covers it up to now")
    typer.echo(
        json.dumps(
            {
                "month": label,
                "folder": str(built.folder),
                "files": built.files,
                "manifest_sha256": built.manifest_sha256,
                "skipped": list(built.skipped),
            }
        )
    )


def main() -> None:
    """Entry point: one-line reasons and a non-zero exit on failure."""
    try:
        cli()
    except CliError as exc:
        console.print(f"error: {exc}")
        sys.exit(1)
    except ValidationError as exc:  # settings first loaded outside _settings()
        console.print(f"error: invalid settings: {exc.errors()[0]['msg']}")
        sys.exit(1)
    except SQLAlchemyError as exc:
        # The driver's first line only: statements and parameters stay out of the output.
        origin = getattr(exc, "orig", None)
        reason = str(origin).splitlines()[0] if origin is not None else type(exc).__name__
        console.print(f"error: database: {reason} (has `clinaiops init` been run?)")
        sys.exit(1)


if __name__ == "__main__":
    main()
