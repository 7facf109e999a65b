// The playground page: plain JavaScript around the filter's core (pkg/, made by wasm-bindgen).
import init, { check, route, simulate } from "./pkg/playground.js";

const $ = (id) => document.getElementById(id);

const EXAMPLE = `# An LLM gateway: a 90/10 canary with sticky users, an alias, a team-only model.
stickyHeader: x-user-id
models:
  - name: llama-3-8b
    aliases: [gpt-3.5-turbo]
    upstreamModel: meta-llama/Meta-Llama-3-8B-Instruct
    destinations:
      - {name: llama-v1, weight: 90}
      - {name: llama-v2, weight: 10}
  - name: bge-small
    destinations:
      - {name: embeddings}
  - name: resnet-50
    destinations:
      - {name: triton}
  - name: claude-internal
    allow: ["spiffe://cluster.local/ns/research/*"]
    limits: {requestsPerMinute: 60}
    destinations:
      - {name: anthropic-proxy}
`;

// The presets, made from the models of the configuration on the page (first model, its alias,
// an allow-listed model with an identity it lets in, ...), so they fit whatever `--config` gave or
// was typed. The browser test reads them (window.playgroundPresets) and asks `wasmpack route` the
// same questions.
function presetsFor(models) {
  const first = models[0] || { name: "my-model", aliases: [] };
  const other = (m) => models.find((x) => x !== m && !x.restricted) || m;
  const chat = first.aliases[0] || first.name;
  const second = other(first);
  const third = models.find((x) => x !== first && x !== second && !x.restricted) || second;
  const locked = models.find((m) => m.restricted) || other(first);
  const body = (model, extra) => JSON.stringify(Object.assign({ model }, extra));
  const hi = [{ role: "user", content: "Hi" }];
  return [
    { id: "chat", label: "OpenAI chat", method: "POST", path: "/v1/chat/completions",
      headers: "x-user-id: alice", body: body(chat, { messages: [{ role: "user", content: "Hello" }] }) },
    { id: "stream", label: "streaming chat", method: "POST", path: "/v1/chat/completions",
      headers: "x-user-id: bob", body: body(first.name, { stream: true, messages: hi }) },
    { id: "embeddings", label: "embeddings", method: "POST", path: "/v1/embeddings",
      headers: "", body: body(second.name, { input: "The quick brown fox" }) },
    { id: "anthropic", label: "Anthropic messages", method: "POST", path: "/v1/messages",
      headers: "anthropic-version: 2023-06-01", identity: locked.allowedIdentity || undefined,
      body: body(locked.name, { max_tokens: 64, messages: hi }) },
    { id: "kserve", label: "KServe v2", method: "POST", path: `/v2/models/${third.name}/infer`,
      headers: "", body: '{"inputs": [{"name": "input0", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.2, 0.3]}]}' },
    { id: "duplicate", label: "duplicate-key attack", method: "POST", path: "/v1/chat/completions",
      headers: "", body: `{"model": ${JSON.stringify(chat)}, "messages": [], "model": ${JSON.stringify(locked.name)}}` },
    { id: "missing", label: "missing model", method: "POST", path: "/v1/chat/completions",
      headers: "", body: '{"messages": [{"role": "user", "content": "Hi"}]}' },
  ];
}
let PRESETS = [];
window.playgroundPresets = PRESETS;
let presetModels = null;

// Rebuilds the preset buttons when the (valid) configuration's models change.
function refreshPresets(models) {
  const key = JSON.stringify(models.map((m) => [m.name, m.aliases, m.restricted, m.allowedIdentity]));
  if (key === presetModels) return;
  presetModels = key;
  PRESETS = presetsFor(models);
  window.playgroundPresets = PRESETS;
  const bar = $("presets");
  bar.innerHTML = "";
  for (const p of PRESETS) {
    const b = document.createElement("button");
    b.textContent = p.label;
    b.dataset.preset = p.id;
    b.addEventListener("click", () => applyPreset(p));
    bar.appendChild(b);
  }
}

function headersObject(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf(":");
    if (i > 0) out[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return out;
}

function currentRequest() {
  return {
    method: $("method").value.trim() || "POST",
    path: $("path").value.trim() || "/",
    headers: headersObject($("headers").value),
    body: $("body").value,
    peerIdentity: $("identity").value.trim(),
  };
}
window.playgroundRequest = currentRequest;

function escape(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

function showCheck(result) {
  const errors = $("config-errors");
  errors.innerHTML = "";
  if (!result.valid) {
    for (const e of result.errors) {
      const li = document.createElement("li");
      const at = e.line ? ` (line ${e.line}${e.column ? `, column ${e.column}` : ""})` : "";
      // An empty path is the file as a whole (as `wasmpack check --output json` has it).
      const where = e.path ? `<code>${escape(e.path)}</code>` : "the file";
      li.innerHTML = `${where}${at}: ${escape(e.message)}`;
      errors.appendChild(li);
    }
    $("summary").innerHTML = "";
    return;
  }
  const rows = result.models.map((m) => {
    const dests = m.destinations.map((d) => `${escape(d.name)} ${d.share}%`).join(", ");
    const extra = [m.aliases.length ? `aliases: ${m.aliases.map(escape).join(", ")}` : "",
      m.upstreamModel ? `→ ${escape(m.upstreamModel)}` : "", m.restricted ? "allow list" : "",
      m.limits ? `limits (${m.limits.mode})` : ""].filter(Boolean).join("; ");
    return `<tr><td>${escape(m.name)}</td><td>${dests}</td><td>${extra}</td></tr>`;
  }).join("");
  $("summary").innerHTML = `<table><tr><th>model</th><th>split</th><th></th></tr>${rows}</table>`;
  const select = $("split-model");
  const before = select.value;
  select.innerHTML = result.models.map((m) => `<option>${escape(m.name)}</option>`).join("");
  if (result.models.some((m) => m.name === before)) select.value = before;
}

function showDecision(d) {
  $("decision").textContent = JSON.stringify(d, null, 2);
  const v = $("verdict");
  if (d.configError) {
    v.textContent = "fix the configuration first";
    v.className = "bad";
  } else if (d.reject) {
    v.textContent = `${d.reject.status} ${d.reject.code}`;
    v.className = "bad";
  } else if (d.destination) {
    v.textContent = `routed to ${d.destination} (model ${d.canonicalModel})`;
    v.className = "ok";
  } else {
    v.textContent = `not routed: ${d.outcome}`;
    v.className = "";
  }
}

function showSplit(s) {
  const div = $("split");
  if (s.configError) {
    div.innerHTML = "";
    return;
  }
  const max = Math.max(1, ...Object.values(s.destinations));
  div.innerHTML = Object.entries(s.destinations).map(([name, n]) =>
    `<div class="bar" data-destination="${escape(name)}"><span>${escape(name)}</span>` +
    `<div class="fill" style="width:${(100 * n / max).toFixed(1)}%"></div>` +
    `<span>${(100 * n / s.users).toFixed(1)}%</span></div>`).join("") +
    `<small>${s.sticky ? "sticky: each caller keeps its destination" : "not sticky: each request is drawn again"}</small>`;
}

let timer = null;
function update() {
  clearTimeout(timer);
  timer = setTimeout(run, 120);
}

function run() {
  const config = $("config").value;
  const checked = JSON.parse(check(config));
  showCheck(checked);
  if (checked.valid) refreshPresets(checked.models);
  showDecision(JSON.parse(route(config, JSON.stringify(currentRequest()))));
  if (checked.valid && $("split-model").value) {
    showSplit(JSON.parse(simulate(config, $("split-model").value, Number($("users").value) || 1000,
      $("identity").value.trim())));
  } else {
    showSplit({ configError: true });
  }
  $("status").textContent = "ready";
}
window.playgroundRun = run;

function applyPreset(p) {
  $("method").value = p.method;
  $("path").value = p.path;
  $("headers").value = p.headers;
  $("identity").value = p.identity || "";
  $("body").value = p.body;
  for (const b of document.querySelectorAll("#presets button")) b.classList.toggle("active", b.dataset.preset === p.id);
  run();
}

async function main() {
  await init();
  let config = EXAMPLE;
  try {
    // `wasmpack playground --config FILE` serves the file here.
    const r = await fetch("config.yaml", { cache: "no-store" });
    if (r.ok) config = await r.text();
  } catch (_) { /* a static copy of the page: the example */ }
  $("config").value = config;
  const checked = JSON.parse(check(config));
  refreshPresets(checked.valid ? checked.models : []);
  for (const id of ["config", "method", "path", "headers", "identity", "body", "users", "split-model"]) {
    $(id).addEventListener("input", update);
  }
  applyPreset(PRESETS[0]);
}

main().catch((e) => {
  $("status").textContent = `failed to start: ${e}`;
});
