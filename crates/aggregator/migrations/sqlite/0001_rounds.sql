-- The aggregator's durable state (SQLite). migrations/postgres holds the same schema.
CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    public_key BLOB NOT NULL UNIQUE,
    enrolled_ms INTEGER NOT NULL
);
-- One row per round. phase: 2·stage while the stage accepts messages, 2·stage + 1 while it
-- closes; 8 once unmasked (aggregating and publishing). status: open, done, aborted, skipped.
CREATE TABLE rounds (
    number INTEGER PRIMARY KEY,
    round_id BLOB NOT NULL UNIQUE,
    model_version INTEGER NOT NULL,
    publishes INTEGER NOT NULL,
    plan BLOB NOT NULL,
    participants TEXT NOT NULL,
    phase INTEGER NOT NULL,
    status TEXT NOT NULL,
    opened_ms INTEGER NOT NULL,
    stage_deadline_ms INTEGER NOT NULL,
    closed_ms INTEGER,
    report TEXT
);
-- Every accepted client message, committed before it is acknowledged.
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    round_number INTEGER NOT NULL,
    stage INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    body BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    UNIQUE (round_number, stage, idx)
);
-- What the server asks each client at each stage.
CREATE TABLE requests (
    round_number INTEGER NOT NULL,
    stage INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (round_number, stage, idx)
);
-- The privacy ledger: one entry per completed round.
CREATE TABLE ledger (
    round_number INTEGER PRIMARY KEY,
    model_version INTEGER NOT NULL,
    mechanism TEXT NOT NULL,
    epsilon_round DOUBLE PRECISION NOT NULL,
    epsilon_total DOUBLE PRECISION NOT NULL,
    delta DOUBLE PRECISION NOT NULL,
    closed_ms INTEGER NOT NULL
);
-- The server optimizer's state after publishing each model version.
CREATE TABLE optimizer (
    model_version INTEGER PRIMARY KEY,
    state TEXT NOT NULL
);
