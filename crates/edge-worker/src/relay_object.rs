//! The sync relay's Durable Object (`SyncRelay`, one per sync group, SQLite storage): it keeps
//! the group's envelopes (`envelopes(seq, body, size, received_ms)`), hands them out by
//! position, pushes each new one to the group's live WebSockets (hibernation API: sockets stay
//! open while the object sleeps), and deletes expired ones from its alarm. The rules are
//! `relay`'s.

use worker::{DurableObject, Env, Request, Response, Result, SqlStorageValue, State, WebSocket, WebSocketIncomingMessage, WebSocketPair, durable_object};

use crate::http::{EdgeError, internal};
use crate::relay::{Limits, check_envelope, check_quota, check_rate, frame, parse_group};

/// An envelope and its position.
type Stored = (u64, Vec<u8>);

/// Rate-limit binding: groups an address may start a minute.
const NEW_GROUP_LIMIT: &str = "NEW_GROUP_LIMIT";

/// The sender's address as the worker set it (`x-hearth-client`: the worker overwrites what a
/// client sends there), else the runtime's.
fn client_of(req: &Request) -> String {
    let h = req.headers();
    h.get("x-hearth-client").ok().flatten().or_else(|| h.get("cf-connecting-ip").ok().flatten()).unwrap_or_else(|| "unknown".into())
}

/// Live WebSockets a group may hold (a person's devices, with room to spare).
const MAX_SOCKETS: usize = 32;
/// Most bytes of envelopes one fetch returns (the client asks again from `x-hearth-next`).
const PAGE_BYTES: usize = 4 << 20;

fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

/// A stored integer as SQLite hands it over (an integer, or a float for large sums).
fn as_u64(v: Option<&SqlStorageValue>) -> Option<u64> {
    match v {
        Some(SqlStorageValue::Integer(v)) => Some(*v as u64),
        Some(SqlStorageValue::Float(v)) => Some(*v as u64),
        _ => None,
    }
}

/// One sync group's relay.
#[durable_object]
pub struct SyncRelay {
    state: State,
    env: Env,
    limits: Limits,
}

impl SyncRelay {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    /// The first row `query` answers (none: an empty row).
    fn first_row(&self, query: &str, bindings: Option<Vec<SqlStorageValue>>) -> std::result::Result<Vec<SqlStorageValue>, EdgeError> {
        let cursor = self.sql().exec(query, bindings).map_err(internal("SQLite"))?;
        Ok(cursor.raw().next().transpose().map_err(internal("SQLite"))?.unwrap_or_default())
    }

    /// The one integer `query` (with one bound value) answers.
    fn count(&self, query: &str, bound: i64) -> std::result::Result<u64, EdgeError> {
        Ok(as_u64(self.first_row(query, Some(vec![bound.into()]))?.first()).unwrap_or(0))
    }

    /// Envelopes and bytes held.
    fn held(&self) -> std::result::Result<(u64, u64), EdgeError> {
        let row = self.first_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM envelopes", None)?;
        Ok((as_u64(row.first()).unwrap_or(0), as_u64(row.get(1)).unwrap_or(0)))
    }

    /// Stores an envelope for `group` and pushes it to every live socket but `from`; returns its
    /// position.
    async fn post(&self, group: [u8; 16], envelope: Vec<u8>, from: Option<&WebSocket>, client: &str) -> std::result::Result<u64, EdgeError> {
        check_envelope(&envelope, group, &self.limits)?;
        // Counted from storage, so an object evicted between posts does not start over.
        let recent = self.count("SELECT COUNT(*) FROM envelopes WHERE received_ms > ?", now_ms() - 60_000)?;
        check_rate(recent, &self.limits)?;
        let (count, bytes) = self.held()?;
        check_quota(count, bytes, envelope.len(), &self.limits)?;
        if count == 0 {
            // A group starts holding envelopes: group ids cost nothing to make up, so how many an
            // address starts is limited (NEW_GROUP_LIMIT).
            let limiter = self.env.rate_limiter(NEW_GROUP_LIMIT).map_err(internal("the rate limiter"))?;
            if !limiter.limit(client.to_owned()).await.map_err(internal("the rate limiter"))?.success {
                return Err(EdgeError::new(429, "too_many_groups", "this address started too many sync groups; try again in a minute"));
            }
        }
        let size = envelope.len() as i64;
        let row = self.first_row("INSERT INTO envelopes (body, size, received_ms) VALUES (?, ?, ?) RETURNING seq", Some(vec![envelope.clone().into(), size.into(), now_ms().into()]))?;
        let seq = as_u64(row.first()).ok_or_else(|| EdgeError::internal("no position for the stored envelope"))?;
        if self.state.storage().get_alarm().await.map_err(internal("the alarm"))?.is_none() {
            self.state.storage().set_alarm(self.limits.ttl_ms).await.map_err(internal("the alarm"))?;
        }
        let framed = frame([(seq, envelope.as_slice())]);
        for ws in self.state.get_websockets() {
            if from.is_none_or(|f| f != &ws) {
                let _ = ws.send_with_bytes(&framed);
            }
        }
        Ok(seq)
    }

    /// The envelopes from position `since` on, at most [`PAGE_BYTES`] (at least one).
    fn fetch_since(&self, since: u64) -> std::result::Result<(Vec<Stored>, u64), EdgeError> {
        let cursor = self.sql().exec("SELECT seq, body FROM envelopes WHERE seq >= ? ORDER BY seq", vec![(since.min(i64::MAX as u64) as i64).into()]).map_err(internal("SQLite"))?;
        let (mut out, mut total, mut next) = (vec![], 0usize, since);
        for row in cursor.raw() {
            let row = row.map_err(internal("SQLite"))?;
            let (Some(SqlStorageValue::Integer(seq)), Some(SqlStorageValue::Blob(body))) = (row.first(), row.get(1)) else {
                return Err(EdgeError::internal("an envelope row of another shape"));
            };
            if !out.is_empty() && total + body.len() > PAGE_BYTES {
                break;
            }
            total += body.len();
            next = *seq as u64 + 1;
            out.push((*seq as u64, body.clone()));
        }
        Ok((out, next))
    }

    async fn route(&self, mut req: Request) -> std::result::Result<Response, EdgeError> {
        let url = req.url().map_err(internal("the URL"))?;
        let segments: Vec<&str> = url.path_segments().map(Iterator::collect).unwrap_or_default();
        let (group_hex, live) = match segments.as_slice() {
            ["v1", "sync", g] => (*g, false),
            ["v1", "sync", g, "live"] => (*g, true),
            _ => return Err(EdgeError::new(404, "not_found", "no such relay route")),
        };
        let group = parse_group(group_hex)?;
        if live {
            if req.headers().get("upgrade").map_err(internal("a header"))?.is_none_or(|u| !u.eq_ignore_ascii_case("websocket")) {
                return Err(EdgeError::new(426, "upgrade_required", "the live feed is a WebSocket"));
            }
            let open = self.state.get_websockets().len();
            if open >= MAX_SOCKETS {
                return Err(EdgeError::new(429, "too_many_sockets", format!("{open} live connections to this group (at most {MAX_SOCKETS})")));
            }
            let pair = WebSocketPair::new().map_err(internal("a WebSocket"))?;
            pair.server.serialize_attachment((group_hex, client_of(&req))).map_err(internal("a WebSocket"))?;
            self.state.accept_web_socket(&pair.server);
            return Response::from_websocket(pair.client).map_err(internal("a WebSocket"));
        }
        match req.method() {
            worker::Method::Post => {
                let body = req.bytes().await.map_err(|e| EdgeError::malformed(format!("the body: {e}")))?;
                let seq = self.post(group, body, None, &client_of(&req)).await?;
                Ok(Response::from_json(&serde_json::json!({ "seq": seq })).map_err(internal("json"))?.with_status(201))
            }
            worker::Method::Get => {
                let since = url.query_pairs().find(|(k, _)| k == "since").map(|(_, v)| v.parse::<u64>().map_err(|_| EdgeError::malformed(format!("since={v}")))).transpose()?.unwrap_or(0);
                let (envelopes, next) = self.fetch_since(since)?;
                let r = Response::from_bytes(frame(envelopes.iter().map(|(s, b)| (*s, b.as_slice())))).map_err(internal("a response"))?;
                let h = r.headers();
                h.set("content-type", "application/octet-stream").map_err(internal("a header"))?;
                h.set("cache-control", "no-store").map_err(internal("a header"))?;
                h.set("x-hearth-next", &next.to_string()).map_err(internal("a header"))?;
                Ok(r)
            }
            _ => Err(EdgeError::new(405, "method_not_allowed", "POST or GET")),
        }
    }
}

impl DurableObject for SyncRelay {
    fn new(state: State, env: Env) -> Self {
        let limits = Limits::from_vars(|name| env.var(name).ok().map(|v| v.to_string()));
        // The table exists before any request is served (CREATE … IF NOT EXISTS never fails on an
        // existing table; a failure here surfaces on the first query instead).
        let _ = state
            .storage()
            .sql()
            .exec("CREATE TABLE IF NOT EXISTS envelopes (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL, size INTEGER NOT NULL, received_ms INTEGER NOT NULL)", None);
        SyncRelay { state, env, limits }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        crate::worker_glue::respond(self.route(req).await)
    }

    async fn alarm(&self) -> Result<Response> {
        let cutoff = now_ms() - self.limits.ttl_ms;
        self.sql().exec("DELETE FROM envelopes WHERE received_ms <= ?", vec![cutoff.into()])?;
        let oldest = self.sql().exec("SELECT MIN(received_ms) FROM envelopes", None)?;
        if let Some(Ok(row)) = oldest.raw().next()
            && let Some(SqlStorageValue::Integer(t)) = row.first()
        {
            self.state.storage().set_alarm((t + self.limits.ttl_ms - now_ms()).max(1)).await?;
        }
        Response::ok("")
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> Result<()> {
        let WebSocketIncomingMessage::Binary(envelope) = message else {
            return ws.send_with_str(serde_json::to_string(&EdgeError::malformed("send envelopes as binary messages").body())?);
        };
        let (group, client) = ws.deserialize_attachment::<(String, String)>()?.ok_or_else(|| worker::Error::RustError("a socket without its group".into()))?;
        let answer = match parse_group(&group) {
            Ok(g) => self.post(g, envelope, Some(&ws), &client).await.map(|seq| serde_json::json!({ "seq": seq })),
            Err(e) => Err(e),
        };
        match answer {
            Ok(v) => ws.send_with_str(v.to_string()),
            Err(e) => ws.send_with_str(serde_json::to_string(&e.body())?),
        }
    }

    async fn websocket_close(&self, ws: WebSocket, _code: usize, _reason: String, _clean: bool) -> Result<()> {
        let _ = ws.close(Some(1000), Some("closed"));
        Ok(())
    }
}
