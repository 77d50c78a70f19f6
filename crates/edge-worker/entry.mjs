// Entry module for workerd: instantiate the wasm-bindgen output synchronously (workerd gives a
// compiled WebAssembly.Module for a .wasm import), hand requests to the Rust `fetch`, and export
// the Durable Object class (`#[durable_object]` makes it a plain JS class of the same name).
import wasmModule from "./hearth_edge_bg.wasm";
import * as worker from "./hearth_edge.js";

worker.initSync({ module: wasmModule });

export { SyncRelay } from "./hearth_edge.js";

export default {
  fetch(request, env, ctx) {
    return worker.fetch(request, env, ctx);
  },
};
