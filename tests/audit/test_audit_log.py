"""The audit log in the database: same transaction as the act, append-only, verifiable."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import date

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from app.db import session_factory
from app.patients import service as patients
from app.patients.models import Patient, Sex
from audit import merkle, service, verifier
from audit.keys import load_signing_key, public_key_pem
from audit.models import AuditEntry
from tests.conftest import World, is_postgres


def _record(session: Session, action: str = "test.act", **details: object) -> None:
    service.record(
        session,
        actor="user:1",
        actor_role="clinician",
        action=action,
        resource_type="test",
        details=details,
    )


def _register(session: Session, pseudonym: str) -> Patient:
    return patients.register_patient(
        session,
        pseudonym=pseudonym,
        given_name="G",
        family_name="F",
        birth_date=date(1970, 1, 1),
        sex=Sex.MALE,
    )


def test_entry_when_act_commits_commits_with_it(db: Session) -> None:
    _register(db, "P-X1")
    _record(db, "patient.register")
    db.commit()
    assert db.scalar(select(Patient.id).where(Patient.pseudonym == "P-X1")) is not None
    assert db.scalars(select(AuditEntry.action)).all() == ["patient.register"]


def test_entry_when_act_rolls_back_is_not_written(db: Session) -> None:
    _register(db, "P-X2")
    _record(db, "patient.register")
    db.rollback()
    db.commit()  # a later commit must not resurrect the dropped entry
    assert db.scalar(select(Patient.id).where(Patient.pseudonym == "P-X2")) is None
    assert db.scalars(select(AuditEntry.seq)).all() == []


def test_entry_when_commit_fails_is_not_written(db: Session) -> None:
    _register(db, "P-DUP")
    db.commit()
    db.add(
        Patient(
            pseudonym="P-DUP",
            given_name="G",
            family_name="F",
            birth_date=date(1970, 1, 1),
            sex=Sex.MALE,
        )
    )
    _record(db, "patient.register")
    with pytest.raises(IntegrityError):
        db.commit()
    db.rollback()
    assert db.scalars(select(AuditEntry.seq)).all() == []


def test_audit_table_when_updated_through_app_connection_refuses(db: Session) -> None:
    _record(db)
    db.commit()
    for stmt in (
        "UPDATE audit_entries SET action = 'forged' WHERE seq = 1",
        "DELETE FROM audit_entries WHERE seq = 1",
        "DELETE FROM audit_entries",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            db.execute(text(stmt))
        db.rollback()
    assert db.scalar(select(AuditEntry.action)) == "test.act"


@pytest.mark.postgres
def test_audit_table_when_truncated_refuses(db: Session) -> None:
    _record(db)
    db.commit()
    for table in ("audit_entries", "signed_tree_heads", "safety_envelopes"):
        with pytest.raises(DBAPIError, match="append-only"):
            db.execute(text(f"TRUNCATE {table}"))
        db.rollback()
    assert db.scalar(select(AuditEntry.action)) == "test.act"


def test_tree_heads_and_envelopes_when_updated_refuse(db: Session, world: World) -> None:
    from loops import service as loops
    from policies.envelope import EnvelopeRules

    assert world.settings.signing_key_path is not None
    service.checkpoint(db, key=load_signing_key(world.settings.signing_key_path))
    loops.add_envelope_version(
        db,
        patient_id=world.patients["pa1"].id,
        rules=EnvelopeRules(),
        author_id=world.users["clina"].id or 0,
        reason="start",
    )
    db.commit()
    for stmt in (
        "UPDATE signed_tree_heads SET root_hash = 'x'",
        "UPDATE safety_envelopes SET reason = 'rewritten'",
        "DELETE FROM safety_envelopes",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            db.execute(text(stmt))
        db.rollback()


def _tamper(engine: Engine, stmt: str) -> None:
    """Change a row behind the app's back, as a superuser or file owner could."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only")
            )
            conn.execute(text(stmt))
            conn.execute(text("ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_append_only"))
        else:
            conn.execute(text("DROP TRIGGER audit_entries_no_update"))
            conn.execute(text("DROP TRIGGER audit_entries_no_delete"))
            conn.execute(text(stmt))


def _log(db: Session, world: World, n: int) -> None:
    for i in range(n):
        _record(db, "test.act", i=i)
        db.commit()
    assert world.settings.signing_key_path is not None
    service.checkpoint(db, key=load_signing_key(world.settings.signing_key_path))
    db.commit()


def _verify(db: Session, world: World) -> service.LogVerification:
    assert world.settings.signing_key_path is not None
    key = load_signing_key(world.settings.signing_key_path)
    result = service.verify_log(db, public_key=key.public_key())
    db.rollback()
    return result


def test_verify_when_untouched_passes(db: Session, world: World) -> None:
    _log(db, world, 20)
    result = _verify(db, world)
    assert result.ok
    assert result.entries == 20


def test_verify_when_row_altered_names_its_seq(db: Session, world: World, engine: Engine) -> None:
    _log(db, world, 20)
    _tamper(engine, "UPDATE audit_entries SET outcome = 'denied' WHERE seq = 7")
    result = _verify(db, world)
    assert not result.ok
    assert result.first_bad_seq == 7


def test_verify_when_row_and_hash_rewritten_breaks_the_chain(
    db: Session, world: World, engine: Engine
) -> None:
    _log(db, world, 10)
    row = db.get(AuditEntry, 4)
    assert row is not None
    fields = service.entry_fields(row)
    db.rollback()
    fields["action"] = "forged"
    from audit.canonical import entry_leaf_hash

    forged = entry_leaf_hash(fields).hex()
    _tamper(
        engine, f"UPDATE audit_entries SET action = 'forged', leaf_hash = '{forged}' WHERE seq = 4"
    )
    result = _verify(db, world)
    assert not result.ok
    assert result.first_bad_seq == 5
    assert "4" in (result.reason or "")


def test_verify_when_tail_deleted_after_checkpoint_fails(
    db: Session, world: World, engine: Engine
) -> None:
    _log(db, world, 10)
    _tamper(engine, "DELETE FROM audit_entries WHERE seq > 8")
    result = _verify(db, world)
    assert not result.ok
    assert "removed" in (result.reason or "")


def _writers(engine: Engine, writers: int, per_writer: int) -> list[BaseException]:
    errors: list[BaseException] = []
    factory = session_factory(engine)
    barrier = threading.Barrier(writers)

    def work(w: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                with factory() as session:
                    _record(session, "test.concurrent", writer=w, i=i)
                    session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _assert_gap_free(db: Session, world: World, expected: int) -> None:
    seqs = db.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq)).all()
    db.rollback()
    assert list(seqs) == list(range(1, expected + 1))
    result = _verify(db, world)
    assert result.ok, result.reason


def test_concurrent_writers_when_racing_leave_no_gap(
    engine: Engine, db: Session, world: World
) -> None:
    before = len(db.scalars(select(AuditEntry.seq)).all())
    db.rollback()
    assert _writers(engine, 8, 40) == []
    _assert_gap_free(db, world, before + 8 * 40)


@pytest.mark.postgres
@pytest.mark.slow
def test_concurrent_writers_when_8x500_on_postgres_leave_no_gap(
    engine: Engine, db: Session, world: World
) -> None:
    assert is_postgres()
    before = len(db.scalars(select(AuditEntry.seq)).all())
    db.rollback()
    assert _writers(engine, 8, 500) == []
    _assert_gap_free(db, world, before + 8 * 500)


def test_proofs_when_fetched_from_api_verify(client: TestClient, world: World, db: Session) -> None:
    _log(db, world, 9)
    auditor = world.auth("auditor")
    sth1 = client.get("/api/v1/audit/sth", headers=auditor).json()
    client.get("/api/v1/me", headers=auditor)
    sth2 = client.post("/api/v1/audit/checkpoints", headers=world.auth("admin")).json()
    assert sth2["tree_size"] > sth1["tree_size"]
    for seq in (1, 5, sth1["tree_size"]):
        p = client.get(
            f"/api/v1/audit/proofs/inclusion?seq={seq}&tree_size={sth2['tree_size']}",
            headers=auditor,
        ).json()
        merkle.verify_inclusion(
            seq - 1,
            sth2["tree_size"],
            bytes.fromhex(p["leaf_hash"]),
            [bytes.fromhex(h) for h in p["proof"]],
            bytes.fromhex(sth2["root_hash"]),
        )
    c = client.get(
        f"/api/v1/audit/proofs/consistency?first={sth1['tree_size']}&second={sth2['tree_size']}",
        headers=auditor,
    ).json()
    merkle.verify_consistency(
        sth1["tree_size"],
        sth2["tree_size"],
        bytes.fromhex(sth1["root_hash"]),
        bytes.fromhex(sth2["root_hash"]),
        [bytes.fromhex(h) for h in c["proof"]],
    )
    bad = client.get("/api/v1/audit/proofs/inclusion?seq=999&tree_size=1000", headers=auditor)
    assert bad.status_code == 422
    assert bad.json()["code"] == "proof_unavailable"


def test_export_when_period_exported_verifies_offline_and_locates_change(
    client: TestClient, world: World, db: Session
) -> None:
    _log(db, world, 12)
    auditor = world.auth("auditor")
    sth = client.get("/api/v1/audit/sth", headers=auditor).json()
    assert world.settings.signing_key_path is not None
    pem = public_key_pem(load_signing_key(world.settings.signing_key_path))
    export = client.get("/api/v1/audit/export?from_seq=3&to_seq=9", headers=auditor)
    assert export.status_code == 200
    lines = export.text.splitlines()
    assert [json.loads(line)["entry"]["seq"] for line in lines] == list(range(3, 10))
    assert verifier.verify_export(lines, sth, pem).ok
    changed = lines[:]
    changed[4] = changed[4].replace('"i":', '"j":', 1)
    result = verifier.verify_export(changed, sth, pem)
    assert not result.ok
    assert result.first_bad_seq == 7


def test_read_when_patient_viewed_writes_one_entry_with_request_id(
    client: TestClient, world: World, count_audit: Callable[..., int], db: Session
) -> None:
    pid = world.patients["pa1"].id
    before = count_audit()
    r = client.get(f"/api/v1/patients/{pid}", headers=world.auth("clina"))
    assert r.status_code == 200
    assert count_audit() == before + 1
    entry = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).one()
    db.rollback()
    assert (entry.action, entry.patient_id, entry.outcome) == ("patient.read", pid, "success")
    assert entry.actor == f"user:{world.users['clina'].id}"
    assert entry.request_id == r.headers["x-request-id"]


def test_act_when_audit_write_fails_is_not_committed(
    db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(session: Session, entries: list[service.PendingEntry]) -> list[AuditEntry]:
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(service, "append", broken)
    _register(db, "P-NOAUDIT")
    _record(db, "patient.register")
    with pytest.raises(RuntimeError, match="audit store unavailable"):
        db.commit()
    db.rollback()
    monkeypatch.undo()
    assert db.scalar(select(Patient.id).where(Patient.pseudonym == "P-NOAUDIT")) is None
    assert db.scalars(select(AuditEntry.seq)).all() == []


def test_granted_act_when_it_fails_is_audited_as_failure(
    client: TestClient, world: World, db: Session
) -> None:
    body = {
        "username": "clina",
        "password": "long-enough-pw",
        "full_name": "X",
        "role": "clinician",
    }
    r = client.post("/api/v1/admin/users", headers=world.auth("admin"), json=body)
    assert r.status_code == 409
    entry = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).one()
    db.rollback()
    assert (entry.action, entry.outcome) == ("user.create", "failure")
    assert json.loads(entry.details) == {"code": "username_taken"}
    assert entry.request_id == r.headers["x-request-id"]


def test_readonly_session_when_open_does_not_block_writers(engine: Engine, db: Session) -> None:
    from app.db import session_scope

    _record(db)
    db.commit()
    with session_scope(engine, readonly=True) as reader:
        assert service.tree_size(reader) == 1
        with session_factory(engine)() as writer:  # would wait 30 s on a locked SQLite
            _record(writer)
            writer.commit()
        if engine.dialect.name == "sqlite":
            assert service.tree_size(reader) == 1  # the reader keeps its WAL snapshot
    assert service.tree_size(db) == 2


def test_entries_when_factories_come_and_go_are_always_written(engine: Engine) -> None:
    import gc

    for i in range(60):
        factory = session_factory(engine)  # a new factory each time, as session_scope makes
        with factory() as session:
            _record(session, "test.factory", i=i)
            session.commit()
        del factory
        gc.collect()  # freed factories' ids get reused; no session may go unaudited
    with session_factory(engine)() as session:
        assert service.tree_size(session) == 60
