"""Interviews: sessions, utterances, a knowledge graph, scoring history and concept elements.

No SQLAlchemy models here, on purpose: this domain came from a service that used raw aiosqlite and
plain .sql migrations. It gets the driver connection from `db.raw()` (aiosqlite with `Row` rows and
foreign keys on, or asyncpg) and runs the same SQL on both: `$1`-style parameters, which SQLite reads
as numbered `?1` parameters once the `$` is swapped.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from dbfoundation import ForeignKeyViolation
from dbfoundation.fastapi import AppDatabase

router = APIRouter(prefix="/interviews", tags=["interviews"])
concepts = APIRouter(prefix="/concepts", tags=["interviews"])


async def fetch_all(connection: Any, query: str, *args: Any) -> list[dict[str, Any]]:
    """Rows as dicts on either driver."""
    if hasattr(connection, "fetch"):  # asyncpg
        return [dict(row) for row in await connection.fetch(query, *args)]
    async with connection.execute(query.replace("$", "?"), args) as cursor:
        return [dict(row) for row in await cursor.fetchall()]


async def execute(connection: Any, query: str, *args: Any) -> None:
    if hasattr(connection, "fetch"):
        await connection.execute(query, *args)
    else:
        await connection.execute(query.replace("$", "?"), args)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _new_id() -> str:
    return uuid.uuid4().hex


class SessionIn(BaseModel):
    candidate: str = Field(min_length=1, max_length=200)
    role: str = Field(min_length=1, max_length=200)


class UtteranceIn(BaseModel):
    speaker: str = Field(min_length=1, max_length=50)
    body: str = Field(min_length=1)


class NodeIn(BaseModel):
    label: str
    kind: str = "concept"


class EdgeIn(BaseModel):
    source_id: str
    target_id: str
    relation: str


class ScoreIn(BaseModel):
    concept: str
    score: float = Field(ge=0, le=10)


class ElementIn(BaseModel):
    element: str
    weight: float = 1.0


async def _require_session(db: Any, session_id: str) -> None:
    async with db.raw(read_only=True) as connection:
        rows = await fetch_all(connection, "SELECT id FROM interview_sessions WHERE id = $1", session_id)
    if not rows:
        raise HTTPException(404, f"interview session {session_id} does not exist")


@router.post("", status_code=201)
async def create_session(body: SessionIn, db: AppDatabase) -> dict[str, Any]:
    session_id = _new_id()
    async with db.raw() as connection:
        await execute(
            connection,
            "INSERT INTO interview_sessions (id, candidate, role, started_at) VALUES ($1, $2, $3, $4)",
            session_id,
            body.candidate,
            body.role,
            _now(),
        )
    return {"id": session_id, "candidate": body.candidate, "role": body.role, "status": "open"}


@router.get("/{session_id}")
async def get_session(session_id: str, db: AppDatabase) -> dict[str, Any]:
    async with db.raw(read_only=True) as connection:
        sessions = await fetch_all(connection, "SELECT * FROM interview_sessions WHERE id = $1", session_id)
        if not sessions:
            raise HTTPException(404, f"interview session {session_id} does not exist")
        utterances = await fetch_all(
            connection,
            "SELECT id, speaker, body, spoken_at FROM utterances WHERE session_id = $1 ORDER BY spoken_at, id",
            session_id,
        )
    return {**sessions[0], "utterances": utterances}


@router.post("/{session_id}/utterances", status_code=201)
async def add_utterance(session_id: str, body: UtteranceIn, db: AppDatabase) -> dict[str, Any]:
    utterance_id = _new_id()
    try:
        async with db.raw() as connection:
            await execute(
                connection,
                "INSERT INTO utterances (id, session_id, speaker, body, spoken_at) VALUES ($1, $2, $3, $4, $5)",
                utterance_id,
                session_id,
                body.speaker,
                body.body,
                _now(),
            )
    except ForeignKeyViolation:  # the database enforces it: no utterance without its session
        raise HTTPException(404, f"interview session {session_id} does not exist") from None
    return {"id": utterance_id, "session_id": session_id}


@router.post("/{session_id}/close")
async def close_session(session_id: str, db: AppDatabase) -> dict[str, Any]:
    await _require_session(db, session_id)
    async with db.raw() as connection:
        await execute(connection, "UPDATE interview_sessions SET status = 'closed' WHERE id = $1", session_id)
    return {"id": session_id, "status": "closed"}


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, db: AppDatabase) -> None:
    async with db.raw() as connection:
        await execute(connection, "DELETE FROM interview_sessions WHERE id = $1", session_id)


@router.post("/{session_id}/graph/nodes", status_code=201)
async def add_node(session_id: str, body: NodeIn, db: AppDatabase) -> dict[str, Any]:
    node_id = _new_id()
    try:
        async with db.raw() as connection:
            await execute(
                connection,
                "INSERT INTO graph_nodes (id, session_id, label, kind) VALUES ($1, $2, $3, $4)",
                node_id,
                session_id,
                body.label,
                body.kind,
            )
    except ForeignKeyViolation:
        raise HTTPException(404, f"interview session {session_id} does not exist") from None
    return {"id": node_id, "label": body.label, "kind": body.kind}


@router.post("/{session_id}/graph/edges", status_code=201)
async def add_edge(session_id: str, body: EdgeIn, db: AppDatabase) -> dict[str, Any]:
    edge_id = _new_id()
    try:
        async with db.raw() as connection:
            await execute(
                connection,
                "INSERT INTO graph_edges (id, session_id, source_id, target_id, relation) VALUES ($1, $2, $3, $4, $5)",
                edge_id,
                session_id,
                body.source_id,
                body.target_id,
                body.relation,
            )
    except ForeignKeyViolation:
        raise HTTPException(404, "the session or one of the nodes does not exist") from None
    return {"id": edge_id, **body.model_dump()}


@router.get("/{session_id}/graph")
async def get_graph(session_id: str, db: AppDatabase) -> dict[str, Any]:
    await _require_session(db, session_id)
    async with db.raw(read_only=True) as connection:
        nodes = await fetch_all(
            connection, "SELECT id, label, kind FROM graph_nodes WHERE session_id = $1 ORDER BY label", session_id
        )
        edges = await fetch_all(
            connection,
            "SELECT id, source_id, target_id, relation FROM graph_edges WHERE session_id = $1 ORDER BY id",
            session_id,
        )
    return {"nodes": nodes, "edges": edges}


@router.post("/{session_id}/scores", status_code=201)
async def add_score(session_id: str, body: ScoreIn, db: AppDatabase) -> dict[str, Any]:
    score_id = _new_id()
    try:
        async with db.raw() as connection:
            await execute(
                connection,
                "INSERT INTO scores (id, session_id, concept, score, scored_at) VALUES ($1, $2, $3, $4, $5)",
                score_id,
                session_id,
                body.concept,
                body.score,
                _now(),
            )
    except ForeignKeyViolation:
        raise HTTPException(404, f"interview session {session_id} does not exist") from None
    return {"id": score_id, **body.model_dump()}


@router.get("/{session_id}/scores")
async def score_history(session_id: str, db: AppDatabase) -> list[dict[str, Any]]:
    await _require_session(db, session_id)
    async with db.raw(read_only=True) as connection:
        return await fetch_all(
            connection,
            "SELECT concept, score, scored_at FROM scores WHERE session_id = $1 ORDER BY scored_at, id",
            session_id,
        )


@concepts.put("/{concept}/elements")
async def put_element(concept: str, body: ElementIn, db: AppDatabase) -> dict[str, Any]:
    async with db.raw() as connection:
        await execute(
            connection,
            "INSERT INTO concept_elements (id, concept, element, weight) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (concept, element) DO UPDATE SET weight = excluded.weight",
            _new_id(),
            concept,
            body.element,
            body.weight,
        )
    return {"concept": concept, **body.model_dump()}


@concepts.get("/{concept}/elements")
async def list_elements(concept: str, db: AppDatabase) -> list[dict[str, Any]]:
    async with db.raw(read_only=True) as connection:
        return await fetch_all(
            connection,
            "SELECT element, weight FROM concept_elements WHERE concept = $1 ORDER BY element",
            concept,
        )
