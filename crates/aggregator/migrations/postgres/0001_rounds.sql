-- The aggregator's durable state (PostgreSQL). migrations/sqlite holds the same schema.
CREATE TABLE devices (
    id BIGSERIAL PRIMARY KEY,
    public_key BYTEA NOT NULL UNIQUE,
    enrolled_ms BIGINT NOT NULL
);
-- One row per round. phase: 2·stage while the stage accepts messages, 2·stage + 1 while it
-- closes; 8 once unmasked (aggregating and publishing). status: open, done, aborted, skipped.
CREATE TABLE rounds (
    number BIGINT PRIMARY KEY,
    round_id BYTEA NOT NULL UNIQUE,
    model_version BIGINT NOT NULL,
    publishes BIGINT NOT NULL,
    plan BYTEA NOT NULL,
    participants TEXT NOT NULL,
    phase BIGINT NOT NULL,
    status TEXT NOT NULL,
    opened_ms BIGINT NOT NULL,
    stage_deadline_ms BIGINT NOT NULL,
    closed_ms BIGINT,
    report TEXT
);
-- Every accepted client message, committed before it is acknowledged.
CREATE TABLE messages (
    seq BIGSERIAL PRIMARY KEY,
    round_number BIGINT NOT NULL,
    stage BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    body BYTEA NOT NULL,
    received_ms BIGINT NOT NULL,
    UNIQUE (round_number, stage, idx)
);
-- What the server asks each client at each stage.
CREATE TABLE requests (
    round_number BIGINT NOT NULL,
    stage BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (round_number, stage, idx)
);
-- The privacy ledger: one entry per completed round.
CREATE TABLE ledger (
    round_number BIGINT PRIMARY KEY,
    model_version BIGINT NOT NULL,
    mechanism TEXT NOT NULL,
    epsilon_round DOUBLE PRECISION NOT NULL,
    epsilon_total DOUBLE PRECISION NOT NULL,
    delta DOUBLE PRECISION NOT NULL,
    closed_ms BIGINT NOT NULL
);
-- The server optimizer's state after publishing each model version.
CREATE TABLE optimizer (
    model_version BIGINT PRIMARY KEY,
    state TEXT NOT NULL
);
