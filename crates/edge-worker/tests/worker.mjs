// The edge worker in workerd (through Miniflare) for the tests: the module .ci/build-edge.sh
// built, with in-memory R2, KV and Cache API, the sync relay's Durable Objects on SQLite, and the
// bindings wrangler.toml declares.
import path from "node:path";
import { Miniflare } from "miniflare";

export const target = process.env.CARGO_TARGET_DIR ?? path.join(process.env.HOME, ".cache/hearth/target");

/** A worker; `bindings` adds plain-text bindings (e.g. PUBLISH_TOKEN, RELAY_* limits); with
 * `listen`, it also listens on a free port of 127.0.0.1 (`(await mf.ready).href`) for other
 * processes (on `port`, or a free one); with `persist` (a directory), Durable Objects keep their
 * SQLite files there, with `persistAll` R2, KV, the cache and Durable Objects keep everything;
 * `ratelimits` replaces the rate-limit bindings it names (INTAKE_LIMIT per device, CLIENT_LIMIT
 * per address, NEW_GROUP_LIMIT groups an address starts; wrangler.toml's). */
export function startWorker({ bindings = {}, listen = false, port = 0, persist, persistAll, ratelimits = {} } = {}) {
  return new Miniflare({
    modules: true,
    scriptPath: path.join(target, "edge/entry.mjs"),
    modulesRoot: path.join(target, "edge"),
    modulesRules: [
      { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
      { type: "CompiledWasm", include: ["**/*.wasm"] },
    ],
    compatibilityDate: "2025-09-01",
    r2Buckets: ["MODELS"],
    kvNamespaces: ["MODELS_KV"],
    durableObjects: { SYNC_RELAY: { className: "SyncRelay", useSQLite: true } },
    ...(persist ? { durableObjectsPersist: persist } : {}),
    ...(persistAll
      ? { r2Persist: `${persistAll}/r2`, kvPersist: `${persistAll}/kv`, cachePersist: `${persistAll}/cache`, durableObjectsPersist: `${persistAll}/do` }
      : {}),
    cache: true,
    ratelimits: {
      INTAKE_LIMIT: { namespace_id: "1001", simple: { limit: 120, period: 60 } },
      CLIENT_LIMIT: { namespace_id: "1002", simple: { limit: 100000, period: 60 } },
      NEW_GROUP_LIMIT: { namespace_id: "1003", simple: { limit: 100000, period: 60 } },
      ...ratelimits,
    },
    bindings,
    ...(listen ? { host: "127.0.0.1", port } : {}),
  });
}

/** The aggregator's CLI as the native tests built it (`cargo test --workspace`). */
export const aggregatorBin = path.join(target, "debug/hearth-aggregator");
