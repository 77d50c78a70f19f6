//! The aggregator's durable state behind one trait, [`Store`], with two implementations written
//! from one text: [`SqliteStore`] (embedded, the default, WAL) and [`PgStore`] (several replicas
//! on one PostgreSQL). Both run the same migrations (`migrations/sqlite`, `migrations/postgres`)
//! and the same queries (runtime `sqlx::query`, `$N` placeholders, i64 epoch-ms times).
//!
//! Invariants the server relies on:
//! - a client message is committed ([`Store::insert_message`]) before it is acknowledged, and
//!   only while its round's phase accepts that stage: the insert and the phase check are one
//!   statement (PostgreSQL also takes the round row `FOR SHARE`, so a stage closing waits for
//!   inserts in flight and inserts after it see the closed phase);
//! - (round, stage, device index) is unique: a resubmission is recognised, never counted twice;
//! - a stage closes in two commits ([`Store::set_phase`] to "closing", then
//!   [`Store::close_stage`] with the next stage's requests), so the messages a stage's state
//!   machine consumed are exactly the rows present once it stopped accepting;
//! - one replica owns the rounds at a time ([`Store::try_own`]: a PostgreSQL advisory lock held on
//!   its own connection; SQLite has one process).

use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::Row;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds something this build cannot read.
    #[error("stored data: {0}")]
    Corrupt(String),
    /// A URL that names no supported database.
    #[error("unsupported database URL {0:?} (sqlite:… or postgres://…)")]
    Url(String),
}

/// Store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A round as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundRow {
    /// 1-based round number.
    pub number: i64,
    /// The secure-aggregation round id (16 bytes).
    pub round_id: Vec<u8>,
    /// The model version the round trains.
    pub model_version: i64,
    /// The model version it publishes (chosen when it opens, so a restart publishes the same).
    pub publishes: i64,
    /// The encoded `RoundPlan`.
    pub plan: Vec<u8>,
    /// Device ids by client index.
    pub participants: Vec<i64>,
    /// See the migration: 2·stage accepting, 2·stage + 1 closing, 8 aggregating.
    pub phase: i64,
    /// open, done, aborted, skipped.
    pub status: String,
    /// When it opened.
    pub opened_ms: i64,
    /// When the current stage closes at the latest.
    pub stage_deadline_ms: i64,
    /// When it ended.
    pub closed_ms: Option<i64>,
    /// The round's report (JSON), once ended.
    pub report: Option<String>,
}

/// What [`Store::insert_message`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Committed now.
    New,
    /// The same bytes were committed before (a retry): acknowledged again, counted once.
    Again,
    /// The device sent other bytes for this stage before.
    Conflict,
    /// The round does not accept this stage now.
    Closed,
}

/// One privacy-ledger entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LedgerRow {
    /// The round.
    pub round: i64,
    /// The model version it published.
    pub model_version: i64,
    /// The mechanism the round ran (JSON, as the accountant reads it).
    pub mechanism: String,
    /// ε of this round alone at δ.
    pub epsilon_round: f64,
    /// ε of every round so far at δ.
    pub epsilon_total: f64,
    /// δ.
    pub delta: f64,
    /// When the round closed.
    pub closed_ms: i64,
}

/// What ending a round writes, in one transaction.
#[derive(Debug, Clone)]
pub struct RoundEnd {
    /// done, aborted or skipped.
    pub status: &'static str,
    /// The report (JSON).
    pub report: String,
    /// The ledger entry (rounds that released an update).
    pub ledger: Option<LedgerRow>,
    /// The optimizer state after the round, by the model version it produced.
    pub optimizer: Option<(i64, String)>,
    /// When.
    pub now_ms: i64,
}

/// The aggregator's durable state. Every method is one transaction.
pub trait Store: Send + Sync {
    /// Enrolls a device's Ed25519 public key; the same key again gets the same id. Returns (id,
    /// whether it is new).
    fn enroll(&self, public_key: [u8; 32], now_ms: i64) -> BoxFuture<'_, StoreResult<(i64, bool)>>;
    /// Every enrolled device id, ascending.
    fn devices(&self) -> BoxFuture<'_, StoreResult<Vec<i64>>>;
    /// The public keys of `ids`, in order (None: unknown id).
    fn device_keys<'a>(&'a self, ids: &'a [i64]) -> BoxFuture<'a, StoreResult<Vec<Option<[u8; 32]>>>>;
    /// The round with the highest number.
    fn latest_round(&self) -> BoxFuture<'_, StoreResult<Option<RoundRow>>>;
    /// A round by number.
    fn round(&self, number: i64) -> BoxFuture<'_, StoreResult<Option<RoundRow>>>;
    /// Stores a new round.
    fn open_round<'a>(&'a self, row: &'a RoundRow) -> BoxFuture<'a, StoreResult<()>>;
    /// Commits a client message if the round's phase is `2 · stage` and it is open.
    fn insert_message<'a>(&'a self, round: i64, stage: i64, idx: i64, body: &'a [u8], now_ms: i64) -> BoxFuture<'a, StoreResult<Inserted>>;
    /// A stage's messages in the order they were committed: (index, bytes).
    fn messages(&self, round: i64, stage: i64) -> BoxFuture<'_, StoreResult<Vec<(i64, Vec<u8>)>>>;
    /// How many messages a stage holds.
    fn count_messages(&self, round: i64, stage: i64) -> BoxFuture<'_, StoreResult<i64>>;
    /// Moves a round to `phase` with a new deadline.
    fn set_phase(&self, round: i64, phase: i64, deadline_ms: i64) -> BoxFuture<'_, StoreResult<()>>;
    /// Stores the requests of `stage` (idempotently) and moves the round to `phase`.
    fn close_stage<'a>(&'a self, round: i64, stage: i64, requests: &'a [(u32, Vec<u8>)], phase: i64, deadline_ms: i64) -> BoxFuture<'a, StoreResult<()>>;
    /// The server's request to client `idx` at `stage`.
    fn request(&self, round: i64, stage: i64, idx: i64) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>>;
    /// How many clients were asked at `stage`.
    fn count_requests(&self, round: i64, stage: i64) -> BoxFuture<'_, StoreResult<i64>>;
    /// Ends a round: status, report, ledger entry and optimizer state together.
    fn end_round<'a>(&'a self, round: i64, end: &'a RoundEnd) -> BoxFuture<'a, StoreResult<()>>;
    /// The privacy ledger, by round.
    fn ledger(&self) -> BoxFuture<'_, StoreResult<Vec<LedgerRow>>>;
    /// The optimizer state stored with a model version.
    fn optimizer(&self, model_version: i64) -> BoxFuture<'_, StoreResult<Option<String>>>;
    /// Whether this process owns the rounds (takes ownership when free; keeps it until exit).
    fn try_own(&self) -> BoxFuture<'_, StoreResult<bool>>;
    /// The backend's name, for logs.
    fn kind(&self) -> &'static str;
}

/// Opens the store a URL names (`sqlite:path` or `postgres://…`), creating and migrating it.
pub async fn connect(url: &str) -> StoreResult<Box<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Box::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(PgStore::open(url).await?))
    } else {
        Err(StoreError::Url(url.into()))
    }
}

/// The embedded default.
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
}

impl SqliteStore {
    /// Opens (creating) the database at `url` in WAL mode and migrates it.
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses no committed transaction when the process dies (only on
            // power loss may the last ones roll back): the crash tests kill the process.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

/// Several replicas on one PostgreSQL.
pub struct PgStore {
    pool: sqlx::PgPool,
    /// The connection holding the owner's advisory lock, once taken.
    owner: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

impl PgStore {
    /// Connects and migrates (migrations take their own lock, so replicas may start together).
    pub async fn open(url: &str) -> StoreResult<PgStore> {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool, owner: tokio::sync::Mutex::new(None) })
    }
}

/// The advisory-lock key of round ownership ("hearth" in ASCII).
const OWNER_LOCK: i64 = 0x6865_6172_7468;

fn key32(bytes: Vec<u8>) -> StoreResult<[u8; 32]> {
    bytes.try_into().map_err(|b: Vec<u8>| StoreError::Corrupt(format!("a public key of {} bytes", b.len())))
}

fn round_row<R: Row>(r: &R) -> StoreResult<RoundRow>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<i64>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Vec<u8>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let participants: String = r.try_get("participants")?;
    Ok(RoundRow {
        number: r.try_get("number")?,
        round_id: r.try_get("round_id")?,
        model_version: r.try_get("model_version")?,
        publishes: r.try_get("publishes")?,
        plan: r.try_get("plan")?,
        participants: serde_json::from_str(&participants).map_err(|e| StoreError::Corrupt(format!("participants: {e}")))?,
        phase: r.try_get("phase")?,
        status: r.try_get("status")?,
        opened_ms: r.try_get("opened_ms")?,
        stage_deadline_ms: r.try_get("stage_deadline_ms")?,
        closed_ms: r.try_get("closed_ms")?,
        report: r.try_get("report")?,
    })
}

const ROUND_COLUMNS: &str = "number, round_id, model_version, publishes, plan, participants, phase, status, opened_ms, stage_deadline_ms, closed_ms, report";

/// The methods both stores share, word for word; `$lock` is the row lock the message insert
/// takes on its round (PostgreSQL's `FOR SHARE`, nothing on SQLite, whose writers are serial).
macro_rules! store_impl {
    ($store:ty, $lock:literal) => {
        impl Store for $store {
            fn enroll(&self, public_key: [u8; 32], now_ms: i64) -> BoxFuture<'_, StoreResult<(i64, bool)>> {
                Box::pin(async move {
                    let inserted = sqlx::query("INSERT INTO devices (public_key, enrolled_ms) VALUES ($1, $2) ON CONFLICT (public_key) DO NOTHING")
                        .bind(public_key.to_vec())
                        .bind(now_ms)
                        .execute(&self.pool)
                        .await?
                        .rows_affected()
                        == 1;
                    let id: i64 = sqlx::query_scalar("SELECT id FROM devices WHERE public_key = $1").bind(public_key.to_vec()).fetch_one(&self.pool).await?;
                    Ok((id, inserted))
                })
            }

            fn devices(&self) -> BoxFuture<'_, StoreResult<Vec<i64>>> {
                Box::pin(async move { Ok(sqlx::query_scalar("SELECT id FROM devices ORDER BY id").fetch_all(&self.pool).await?) })
            }

            fn device_keys<'a>(&'a self, ids: &'a [i64]) -> BoxFuture<'a, StoreResult<Vec<Option<[u8; 32]>>>> {
                Box::pin(async move {
                    if ids.len() <= 16 {
                        let mut out = Vec::with_capacity(ids.len());
                        for id in ids {
                            let key: Option<Vec<u8>> = sqlx::query_scalar("SELECT public_key FROM devices WHERE id = $1").bind(*id).fetch_optional(&self.pool).await?;
                            out.push(key.map(key32).transpose()?);
                        }
                        return Ok(out);
                    }
                    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, public_key FROM devices ORDER BY id").fetch_all(&self.pool).await?;
                    let mut by_id = std::collections::HashMap::with_capacity(rows.len());
                    for (id, key) in rows {
                        by_id.insert(id, key32(key)?);
                    }
                    Ok(ids.iter().map(|id| by_id.get(id).copied()).collect())
                })
            }

            fn latest_round(&self) -> BoxFuture<'_, StoreResult<Option<RoundRow>>> {
                Box::pin(async move {
                    let row = sqlx::query(&format!("SELECT {ROUND_COLUMNS} FROM rounds ORDER BY number DESC LIMIT 1")).fetch_optional(&self.pool).await?;
                    row.as_ref().map(round_row).transpose()
                })
            }

            fn round(&self, number: i64) -> BoxFuture<'_, StoreResult<Option<RoundRow>>> {
                Box::pin(async move {
                    let row = sqlx::query(&format!("SELECT {ROUND_COLUMNS} FROM rounds WHERE number = $1")).bind(number).fetch_optional(&self.pool).await?;
                    row.as_ref().map(round_row).transpose()
                })
            }

            fn open_round<'a>(&'a self, r: &'a RoundRow) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    let participants = serde_json::to_string(&r.participants).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    sqlx::query(&format!("INSERT INTO rounds ({ROUND_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"))
                        .bind(r.number)
                        .bind(r.round_id.clone())
                        .bind(r.model_version)
                        .bind(r.publishes)
                        .bind(r.plan.clone())
                        .bind(participants)
                        .bind(r.phase)
                        .bind(r.status.clone())
                        .bind(r.opened_ms)
                        .bind(r.stage_deadline_ms)
                        .bind(r.closed_ms)
                        .bind(r.report.clone())
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                })
            }

            fn insert_message<'a>(&'a self, round: i64, stage: i64, idx: i64, body: &'a [u8], now_ms: i64) -> BoxFuture<'a, StoreResult<Inserted>> {
                Box::pin(async move {
                    let sql = concat!(
                        "INSERT INTO messages (round_number, stage, idx, body, received_ms) SELECT $1, $2, $3, $4, $5 ",
                        "WHERE EXISTS (SELECT 1 FROM rounds WHERE number = $1 AND phase = $6 AND status = 'open' ",
                        $lock,
                        ") ON CONFLICT (round_number, stage, idx) DO NOTHING"
                    );
                    let n = sqlx::query(sql).bind(round).bind(stage).bind(idx).bind(body.to_vec()).bind(now_ms).bind(2 * stage).execute(&self.pool).await?.rows_affected();
                    if n == 1 {
                        return Ok(Inserted::New);
                    }
                    let before: Option<Vec<u8>> = sqlx::query_scalar("SELECT body FROM messages WHERE round_number = $1 AND stage = $2 AND idx = $3")
                        .bind(round)
                        .bind(stage)
                        .bind(idx)
                        .fetch_optional(&self.pool)
                        .await?;
                    Ok(match before {
                        Some(b) if b == body => Inserted::Again,
                        Some(_) => Inserted::Conflict,
                        None => Inserted::Closed,
                    })
                })
            }

            fn messages(&self, round: i64, stage: i64) -> BoxFuture<'_, StoreResult<Vec<(i64, Vec<u8>)>>> {
                Box::pin(async move {
                    Ok(sqlx::query_as("SELECT idx, body FROM messages WHERE round_number = $1 AND stage = $2 ORDER BY seq")
                        .bind(round)
                        .bind(stage)
                        .fetch_all(&self.pool)
                        .await?)
                })
            }

            fn count_messages(&self, round: i64, stage: i64) -> BoxFuture<'_, StoreResult<i64>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE round_number = $1 AND stage = $2").bind(round).bind(stage).fetch_one(&self.pool).await?)
                })
            }

            fn set_phase(&self, round: i64, phase: i64, deadline_ms: i64) -> BoxFuture<'_, StoreResult<()>> {
                Box::pin(async move {
                    sqlx::query("UPDATE rounds SET phase = $2, stage_deadline_ms = $3 WHERE number = $1").bind(round).bind(phase).bind(deadline_ms).execute(&self.pool).await?;
                    Ok(())
                })
            }

            fn close_stage<'a>(&'a self, round: i64, stage: i64, requests: &'a [(u32, Vec<u8>)], phase: i64, deadline_ms: i64) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    for (idx, body) in requests {
                        sqlx::query("INSERT INTO requests (round_number, stage, idx, body) VALUES ($1, $2, $3, $4) ON CONFLICT (round_number, stage, idx) DO NOTHING")
                            .bind(round)
                            .bind(stage)
                            .bind(i64::from(*idx))
                            .bind(body.clone())
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query("UPDATE rounds SET phase = $2, stage_deadline_ms = $3 WHERE number = $1").bind(round).bind(phase).bind(deadline_ms).execute(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn request(&self, round: i64, stage: i64, idx: i64) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT body FROM requests WHERE round_number = $1 AND stage = $2 AND idx = $3")
                        .bind(round)
                        .bind(stage)
                        .bind(idx)
                        .fetch_optional(&self.pool)
                        .await?)
                })
            }

            fn count_requests(&self, round: i64, stage: i64) -> BoxFuture<'_, StoreResult<i64>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE round_number = $1 AND stage = $2").bind(round).bind(stage).fetch_one(&self.pool).await?)
                })
            }

            fn end_round<'a>(&'a self, round: i64, end: &'a RoundEnd) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query("UPDATE rounds SET status = $2, report = $3, closed_ms = $4 WHERE number = $1")
                        .bind(round)
                        .bind(end.status)
                        .bind(end.report.clone())
                        .bind(end.now_ms)
                        .execute(&mut *tx)
                        .await?;
                    if let Some(l) = &end.ledger {
                        sqlx::query("INSERT INTO ledger (round_number, model_version, mechanism, epsilon_round, epsilon_total, delta, closed_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (round_number) DO NOTHING")
                            .bind(l.round)
                            .bind(l.model_version)
                            .bind(l.mechanism.clone())
                            .bind(l.epsilon_round)
                            .bind(l.epsilon_total)
                            .bind(l.delta)
                            .bind(l.closed_ms)
                            .execute(&mut *tx)
                            .await?;
                    }
                    if let Some((version, state)) = &end.optimizer {
                        sqlx::query("INSERT INTO optimizer (model_version, state) VALUES ($1, $2) ON CONFLICT (model_version) DO NOTHING")
                            .bind(*version)
                            .bind(state.clone())
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn ledger(&self) -> BoxFuture<'_, StoreResult<Vec<LedgerRow>>> {
                Box::pin(async move {
                    let rows: Vec<(i64, i64, String, f64, f64, f64, i64)> = sqlx::query_as(
                        "SELECT round_number, model_version, mechanism, epsilon_round, epsilon_total, delta, closed_ms FROM ledger ORDER BY round_number",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(round, model_version, mechanism, epsilon_round, epsilon_total, delta, closed_ms)| LedgerRow {
                            round,
                            model_version,
                            mechanism,
                            epsilon_round,
                            epsilon_total,
                            delta,
                            closed_ms,
                        })
                        .collect())
                })
            }

            fn optimizer(&self, model_version: i64) -> BoxFuture<'_, StoreResult<Option<String>>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT state FROM optimizer WHERE model_version = $1").bind(model_version).fetch_optional(&self.pool).await?)
                })
            }

            fn try_own(&self) -> BoxFuture<'_, StoreResult<bool>> {
                Box::pin(self.take_ownership())
            }

            fn kind(&self) -> &'static str {
                <$store>::KIND
            }
        }
    };
}

store_impl!(SqliteStore, "");
store_impl!(PgStore, "FOR SHARE");

impl SqliteStore {
    const KIND: &'static str = "sqlite";

    /// One process owns an SQLite database.
    async fn take_ownership(&self) -> StoreResult<bool> {
        Ok(true)
    }
}

impl PgStore {
    const KIND: &'static str = "postgres";

    /// Takes the session advisory lock on a connection kept for as long as this process lives
    /// (it is released when the process or its connection dies, so another replica takes over).
    async fn take_ownership(&self) -> StoreResult<bool> {
        let mut owner = self.owner.lock().await;
        if let Some(conn) = owner.as_mut() {
            // Still ours while the connection is alive; if it died, so did the lock.
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                return Ok(true);
            }
            *owner = None;
            return Ok(false);
        }
        let mut conn = self.pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(OWNER_LOCK).fetch_one(&mut *conn).await?;
        if got {
            *owner = Some(conn.detach());
        }
        Ok(got)
    }
}
