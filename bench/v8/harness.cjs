// The filter's own cost in V8, outside Envoy: Node plays the proxy's side of the proxy-wasm ABI
// (headers, bodies, metrics answered from memory, as cheaply as a host can) and drives the
// benchmark's request (variant (c) of scripts/bench.sh) through the module's filter, with V8
// compiling as in Envoy (TurboFan only: --no-liftoff). See scripts/bench-v8.sh.
//
//   node --no-liftoff bench/v8/harness.cjs MODULE.wasm [REQUESTS]
//   env: WARM (requests before timing, default 20000), REP (filler repeats of the 2 KB body: 38)
'use strict';
const fs = require('fs');

const file = process.argv[2];
const N = parseInt(process.argv[3] || '100000', 10);
const WARM = parseInt(process.env.WARM || '20000', 10);
const REP = parseInt(process.env.REP || '38', 10);

const config = Buffer.from(JSON.stringify({bodyRouting: true, models: [
  {name: 'llama-3-8b', aliases: ['gpt-3.5-turbo'], destinations: [{name: 'llama-v1', weight: 90}, {name: 'llama-v2', weight: 10}]},
  {name: 'gpt-4o', destinations: [{name: 'openai'}]}]}));
const filler = 'Summarise the following text in two sentences. '.repeat(REP);
const body = Buffer.from(JSON.stringify({model: 'llama-3-8b', messages: [{role: 'system', content: 'You are terse.'},
  {role: 'user', content: filler}], max_tokens: 64, temperature: 0.2}));
const answer = Buffer.from(JSON.stringify({id: 'c1', object: 'chat.completion', model: 'llama-3-8b',
  choices: [{index: 0, message: {role: 'assistant', content: 'A short answer.'}, finish_reason: 'stop'}],
  usage: {prompt_tokens: 512, completion_tokens: 12, total_tokens: 524}}));
// What Envoy hands the filter for wrk's request and a direct_response answer.
const requestHeaders = [[':authority', '127.0.0.1:10000'], [':path', '/v1/chat/completions'], [':method', 'POST'],
  [':scheme', 'http'], ['content-length', String(body.length)], ['content-type', 'application/json'],
  ['user-agent', 'wrk'], ['x-forwarded-proto', 'http'], ['x-request-id', 'a3d9c1e2-5b4f-4c3a-9e8d-7f6a5b4c3d2e']];
const responseHeaders = [[':status', '200'], ['content-length', String(answer.length)], ['content-type', 'application/json'],
  ['date', 'Sun, 22 Nov 2026 13:00:00 GMT'], ['server', 'envoy']];

// The proxy-wasm header map encoding: count, (key length, value length)*, then NUL-ended bytes.
function encodeMap(pairs) {
  let size = 4 + pairs.length * 8;
  for (const [k, v] of pairs) size += Buffer.byteLength(k) + Buffer.byteLength(v) + 2;
  const b = Buffer.alloc(size);
  b.writeUInt32LE(pairs.length, 0);
  let o = 4;
  for (const [k, v] of pairs) {
    b.writeUInt32LE(Buffer.byteLength(k), o);
    b.writeUInt32LE(Buffer.byteLength(v), o + 4);
    o += 8;
  }
  for (const [k, v] of pairs) {
    o += b.write(k, o); b[o++] = 0;
    o += b.write(v, o); b[o++] = 0;
  }
  return b;
}
const requestMap = encodeMap(requestHeaders);
const responseMap = encodeMap(responseHeaders);

let filter;
let memory;
const bytes = () => new Uint8Array(memory.buffer);
const view = () => new DataView(memory.buffer);
// Data returned to the module lives in memory it allocates (proxy_on_memory_allocate).
function give(data, outPtr, outSize) {
  const p = filter.proxy_on_memory_allocate(data.length);
  bytes().set(data, p);
  view().setUint32(outPtr, p, true);
  view().setUint32(outSize, data.length, true);
}
const calls = {};
const count = (name) => { calls[name] = (calls[name] || 0) + 1; };
let clock = 1700000000000000000n;
const env = {
  proxy_log: (level, p, n) => {
    if (level >= 3) console.error('filter log:', Buffer.from(bytes().slice(p, p + n)).toString());
    return 0;
  },
  proxy_get_current_time_nanoseconds: (out) => { count('clock'); clock += 1000n; view().setBigUint64(out, clock, true); return 0; },
  proxy_set_tick_period_milliseconds: () => { count('tick'); return 0; },
  proxy_get_buffer_bytes: (kind, start, max, out, outSize) => {
    count('get_buffer');
    const b = kind === 7 ? config : kind === 0 ? body : answer;
    give(b.subarray(start, start + max), out, outSize);
    return 0;
  },
  proxy_set_buffer_bytes: () => { count('set_buffer'); return 0; },
  proxy_get_header_map_pairs: (map, out, outSize) => { count('get_headers'); give(map === 0 ? requestMap : responseMap, out, outSize); return 0; },
  proxy_replace_header_map_value: () => { count('set_header'); return 0; },
  proxy_remove_header_map_value: () => { count('remove_header'); return 0; },
  proxy_get_property: () => { count('get_property'); return 1; },
  proxy_set_property: () => { count('set_property'); return 0; },
  proxy_send_local_response: () => { count('local_reply'); return 0; },
  proxy_continue_stream: () => { count('resume'); return 0; },
  proxy_set_effective_context: () => 0,
  proxy_call_foreign_function: () => { count('foreign'); return 0; },
  proxy_define_metric: (kind, p, n, out) => { count('define_metric'); view().setUint32(out, 1, true); return 0; },
  proxy_increment_metric: () => { count('metric'); return 0; },
  proxy_record_metric: () => { count('metric'); return 0; },
  proxy_get_shared_data: () => 1,
  proxy_set_shared_data: () => 0,
  proxy_grpc_call: () => 1,
};
const missing = (table) => new Proxy(table, {get: (t, name) => t[name] || (() => 0)});
const compiled = new WebAssembly.Module(fs.readFileSync(file));
const instance = new WebAssembly.Instance(compiled, {env: missing(env), wasi_snapshot_preview1: missing({})});
filter = instance.exports;
memory = filter.memory;
filter._initialize();
filter.proxy_on_context_create(1, 0);
if (filter.proxy_on_configure(1, config.length) !== 1) throw new Error('the filter refused the configuration');

function request(id) {
  filter.proxy_on_context_create(id, 1);
  filter.proxy_on_request_headers(id, requestHeaders.length, 0);
  filter.proxy_on_request_body(id, body.length, 1);
  filter.proxy_on_response_headers(id, responseHeaders.length, 0);
  filter.proxy_on_response_body(id, answer.length, 1);
  filter.proxy_on_log(id);
  filter.proxy_on_done(id);
  filter.proxy_on_delete(id);
}
for (let i = 0; i < WARM; i++) request(2 + i);
for (const k of Object.keys(calls)) delete calls[k];
const t0 = process.hrtime.bigint();
for (let i = 0; i < N; i++) request(10_000_000 + i);
const t1 = process.hrtime.bigint();
const perRequest = Object.entries(calls).map(([k, v]) => `${k} ${v / N}`).join(', ');
console.log(`${N ? (Number(t1 - t0) / N / 1000).toFixed(2) : 0} us/request; host calls per request: ${perRequest}; linear memory ${memory.buffer.byteLength} bytes`);
if (!calls.metric && N) throw new Error('the filter counted nothing: is this the model-router module?');
