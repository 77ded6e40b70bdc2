-- Interviews: sessions, their utterances, the knowledge graph built from them, scoring history and the
-- concept elements scores refer to. Plain SQL, applied by dbfoundation's plain-SQL runner.
CREATE TABLE interview_sessions (
    id TEXT PRIMARY KEY,
    candidate TEXT NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    started_at TEXT NOT NULL
);

CREATE TABLE utterances (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES interview_sessions (id) ON DELETE CASCADE,
    speaker TEXT NOT NULL,
    body TEXT NOT NULL,
    spoken_at TEXT NOT NULL
);
CREATE INDEX ix_utterances_session_id ON utterances (session_id);

CREATE TABLE graph_nodes (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES interview_sessions (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    kind TEXT NOT NULL
);
CREATE INDEX ix_graph_nodes_session_id ON graph_nodes (session_id);

CREATE TABLE graph_edges (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES interview_sessions (id) ON DELETE CASCADE,
    source_id TEXT NOT NULL REFERENCES graph_nodes (id) ON DELETE CASCADE,
    target_id TEXT NOT NULL REFERENCES graph_nodes (id) ON DELETE CASCADE,
    relation TEXT NOT NULL
);

CREATE TABLE concept_elements (
    id TEXT PRIMARY KEY,
    concept TEXT NOT NULL,
    element TEXT NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0,
    UNIQUE (concept, element)
);

CREATE TABLE scores (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES interview_sessions (id) ON DELETE CASCADE,
    concept TEXT NOT NULL,
    score REAL NOT NULL CHECK (score >= 0 AND score <= 10),
    scored_at TEXT NOT NULL
);
CREATE INDEX ix_scores_session_id ON scores (session_id, scored_at);
