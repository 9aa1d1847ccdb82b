// syncq dashboard: plain JS, no build step, no CDN. Every call is an authenticated route of
// the API (Authorization: Bearer <token>); the token lives in sessionStorage only, never in
// a URL. Live updates come from GET /api/events, read with fetch() streaming (EventSource
// cannot send the header); the page also polls, so it works without the stream and with
// Redis down (the ledger answers /api/tasks either way).
"use strict";

const TOKEN_KEY = "syncq.dashboard.token";
const FINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
// the short reads behind GET routes (this page's own datasets refresh among them)
const READS = new Set([
  "data_sync.find_files", "data_sync.list_files", "data_sync.dataset_summary",
  "data_sync.list_records", "conversation.get_conversation_history",
]);
const POLL_MS = 5000;
const DATASETS_MIN_MS = 10000; // each datasets refresh runs read tasks: not more often
const DATASET_COUNTS = 12; // record counts asked for the most recently synced datasets
const CHART_MINUTES = 30;

const $ = (sel) => document.querySelector(sel);
let token = sessionStorage.getItem(TOKEN_KEY);
let stream = null; // AbortController of the event stream
let lastEventId = null;
let pollTimer = null;
let tasksTimer = null;
let datasetsAt = 0;
let datasetsTimer = null;
const tasks = new Map(); // task_id -> summary, as last listed or streamed

// -- HTTP -------------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    logout("The token was refused (401).");
    throw new HttpError(401, "unauthorized");
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : text;
    throw new HttpError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return { status: response.status, data };
}

// -- small DOM helpers (text only: nothing from the API is ever parsed as HTML) ----------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString();
}

function notice(message, isError) {
  const n = $("#notice");
  n.textContent = message || "";
  n.classList.toggle("error", Boolean(isError));
}

// -- login ------------------------------------------------------------------------------

async function login(candidate) {
  const response = await fetch("/api/tasks?limit=1", {
    headers: { Authorization: `Bearer ${candidate}` }, cache: "no-store", credentials: "omit",
  });
  if (response.status === 401) throw new Error("That token is not accepted.");
  if (!response.ok) throw new Error(`The API answered ${response.status}.`);
  token = candidate;
  sessionStorage.setItem(TOKEN_KEY, candidate);
}

function logout(reason) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (stream) stream.abort();
  stream = null;
  clearInterval(pollTimer);
  pollTimer = null;
  tasks.clear();
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = reason || "";
  setLive(false);
  $("#token").focus();
}

function start() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  refreshAll();
  refreshDatasets(true);
  clearInterval(pollTimer);
  pollTimer = setInterval(refreshAll, POLL_MS);
  openStream();
}

// -- health, queues, workers ------------------------------------------------------------

async function refreshHealth() {
  const pill = $("#health");
  try {
    const h = await (await fetch("/health", { cache: "no-store", credentials: "omit" })).json();
    pill.textContent = `${h.status} · broker ${h.broker} · database ${h.database} · executor ${h.executor}`;
    pill.className = `pill ${h.status === "ok" ? "ok" : "bad"}`;
    pill.dataset.broker = h.broker;
  } catch {
    pill.textContent = "API unreachable";
    pill.className = "pill bad";
  }
}

async function refreshQueues() {
  const { data } = await api("GET", "/api/system/queues");
  $("#queues-broker").textContent = `broker ${data.broker}`;
  const body = $("#queues tbody");
  const rows = Object.entries(data.queues).map(([name, depth]) =>
    el("tr", { "data-queue": name }, el("td", {}, name), el("td", { class: "num" }, depth ?? "?")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 2, class: "muted" }, "unknown: the broker is down")));
  body.replaceChildren(...rows);
  const local = data.local_executor || {};
  $("#queues-extra").textContent =
    `unacked ${data.unacked ?? "?"} · local executor ${local.held ?? "?"}/${local.capacity ?? "?"}`;
}

async function refreshWorkers() {
  const { data } = await api("GET", "/api/system/workers");
  $("#workers-count").textContent = `${data.workers.length} · broker ${data.broker}`;
  const body = $("#workers tbody");
  if (!data.workers.length) {
    body.replaceChildren(el("tr", {}, el("td", { colSpan: 4, class: "muted" },
      data.broker === "up" ? "no worker" : "broker down: tasks run on the API's local executor")));
    return;
  }
  body.replaceChildren(...data.workers.map((w) => el("tr", { "data-worker": w.name },
    el("td", {}, w.name),
    el("td", { class: w.ping ? "ok" : "bad" }, w.ping ? "yes" : "no"),
    el("td", {}, `${w.pool ?? "?"} ×${w.concurrency ?? "?"}`),
    el("td", { class: "num", title: w.active.map((a) => a.name).join(", ") }, w.active.length))));
}

// -- tasks ------------------------------------------------------------------------------

function taskQuery() {
  const params = new URLSearchParams({ limit: "200" });
  const state = $("#filter-state").value;
  const name = $("#filter-name").value.trim();
  if (state) params.set("state", state);
  if (name) params.set("name", name);
  return `/api/tasks?${params}`;
}

async function refreshTasks() {
  const { data } = await api("GET", taskQuery());
  tasks.clear();
  for (const t of data) tasks.set(t.task_id, t);
  renderTasks();
  $("#tasks-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function scheduleTasksRefresh(ms = 800) {
  if (tasksTimer) return;
  tasksTimer = setTimeout(() => {
    tasksTimer = null;
    refreshTasks().catch(showError);
  }, ms);
}

function progressCell(t) {
  const p = t.progress;
  let percent = p && typeof p.percent === "number" ? p.percent : null;
  if (percent === null && t.state === "SUCCESS") percent = 100;
  if (percent === null) return el("td", { class: "progress" }, p && p.message ? p.message : "");
  const bar = el("progress", { max: 100, value: percent });
  const label = el("span", { class: "percent" }, `${Math.round(percent)} %`);
  return el("td", { class: "progress", title: p && p.message ? p.message : "" }, bar, " ", label);
}

function taskRow(t) {
  const error = t.error ? `${t.error.type}: ${t.error.message}` : "";
  const action = FINAL.has(t.state) ? "" :
    el("button", { type: "button", class: "cancel", "data-task-id": t.task_id }, "Cancel");
  return el("tr", { "data-task-id": t.task_id, "data-state": t.state, "data-executor": t.executor },
    el("td", { class: "id", title: t.task_id }, t.task_id.slice(0, 8)),
    el("td", {}, t.name),
    el("td", { class: `state ${t.state}` }, t.state),
    el("td", {}, t.queue),
    el("td", { class: "executor" }, t.executor),
    el("td", { class: "num attempts" }, t.attempts),
    progressCell(t),
    el("td", { class: "error", title: error }, error),
    el("td", {}, when(t.submitted_at)),
    el("td", {}, when(t.finished_at)),
    el("td", {}, action));
}

function renderTasks() {
  const hideReads = $("#hide-reads").checked;
  const rows = [...tasks.values()]
    .filter((t) => !(hideReads && READS.has(t.name)))
    .sort((a, b) => (a.submitted_at < b.submitted_at ? 1 : -1))
    .map(taskRow);
  $("#tasks tbody").replaceChildren(...rows);
}

async function cancelTask(id, button) {
  button.disabled = true;
  try {
    const { data } = await api("DELETE", `/api/tasks/${encodeURIComponent(id)}`);
    tasks.set(id, { ...tasks.get(id), ...data });
    renderTasks();
    notice(`Cancelled ${id}: ${data.state}.`);
  } catch (e) {
    if (e.status === 409) notice(`${id} had already finished.`);
    else showError(e);
    scheduleTasksRefresh(0);
  }
}

// -- throughput chart (SVG, no library) -------------------------------------------------

// The ledger's counts (GET /api/system/throughput), not the tasks listed below: a list of
// 200 says nothing of a minute in which thousands finished.
async function refreshChart() {
  const { data } = await api("GET", `/api/system/throughput?minutes=${CHART_MINUTES}`);
  renderChart(data.finished);
}

function renderChart(finished) {
  const svg = $("#chart");
  const ns = "http://www.w3.org/2000/svg";
  const now = Date.now();
  const start = Math.floor(now / 60000) - CHART_MINUTES + 1;
  const buckets = Array.from({ length: CHART_MINUTES }, () => ({ SUCCESS: 0, FAILURE: 0, REVOKED: 0 }));
  for (const f of finished) {
    // "YYYY-MM-DD HH:MM", UTC
    const minute = Math.floor(Date.parse(`${f.minute.replace(" ", "T")}:00Z`) / 60000) - start;
    if (minute >= 0 && minute < CHART_MINUTES && f.state in buckets[minute]) {
      buckets[minute][f.state] += f.count;
    }
  }
  const max = Math.max(1, ...buckets.map((b) => b.SUCCESS + b.FAILURE + b.REVOKED));
  const width = 360, height = 120, bar = width / CHART_MINUTES;
  const shapes = [];
  buckets.forEach((b, i) => {
    let y = height;
    for (const state of ["SUCCESS", "FAILURE", "REVOKED"]) {
      if (!b[state]) continue;
      const h = (b[state] / max) * (height - 10);
      y -= h;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", (i * bar + 1).toFixed(1));
      rect.setAttribute("y", y.toFixed(1));
      rect.setAttribute("width", (bar - 2).toFixed(1));
      rect.setAttribute("height", h.toFixed(1));
      rect.setAttribute("class", state);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${b[state]} ${state.toLowerCase()} at ${new Date((start + i) * 60000).toLocaleTimeString()}`;
      rect.append(title);
      shapes.push(rect);
    }
  });
  const axis = document.createElementNS(ns, "line");
  axis.setAttribute("x1", "0"); axis.setAttribute("x2", String(width));
  axis.setAttribute("y1", String(height)); axis.setAttribute("y2", String(height));
  axis.setAttribute("class", "axis");
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "2"); label.setAttribute("y", "136");
  label.textContent = `max ${max}/min · from the ledger`;
  svg.replaceChildren(axis, label, ...shapes);
  svg.dataset.finished = String(buckets.reduce((n, b) => n + b.SUCCESS + b.FAILURE + b.REVOKED, 0));
}

// -- datasets and files -----------------------------------------------------------------

async function refreshDatasets(force) {
  const wait = datasetsAt + DATASETS_MIN_MS - Date.now();
  if (!force && wait > 0) {
    if (!datasetsTimer) datasetsTimer = setTimeout(() => { datasetsTimer = null; refreshDatasets(true); }, wait);
    return;
  }
  datasetsAt = Date.now();
  const answer = await api("GET", "/api/data-sync/files");
  if (answer.status === 202) {
    $("#datasets-updated").textContent = "the file listing is still running; retrying";
    datasetsTimer = setTimeout(() => { datasetsTimer = null; refreshDatasets(true).catch(showError); }, 2000);
    return;
  }
  const files = answer.data;
  const byDataset = new Map();
  for (const f of files) {
    const d = byDataset.get(f.dataset) || { name: f.dataset, files: [], last: null, state: null };
    d.files.push(f);
    if (f.last_synced_at && (!d.last || f.last_synced_at > d.last)) {
      d.last = f.last_synced_at;
      d.state = f.last_sync_state;
    }
    byDataset.set(f.dataset, d);
  }
  const datasets = [...byDataset.values()].sort((a, b) => ((a.last || "") < (b.last || "") ? 1 : -1));
  $("#datasets tbody").replaceChildren(...datasets.map((d) => el("tr", { "data-dataset": d.name },
    el("td", {}, d.name),
    el("td", { class: "num records" }, "…"),
    el("td", { class: "num" }, d.files.length),
    el("td", {}, when(d.last)),
    el("td", { class: `state ${d.state || ""}` }, d.state || ""))));
  $("#files tbody").replaceChildren(...files
    .sort((a, b) => b.file_id - a.file_id)
    .map((f) => el("tr", { "data-file-id": f.file_id },
      el("td", { class: "num" }, f.file_id),
      el("td", { title: `${f.format}, ${f.size} bytes` }, f.original_name),
      el("td", {}, f.dataset),
      el("td", { class: "num" }, `${f.rows.read} / ${f.rows.inserted} / ${f.rows.updated} / ${f.rows.rejected}`),
      el("td", {}, when(f.last_synced_at)),
      el("td", { class: `state ${f.last_sync_state || ""}` }, f.last_sync_state || "never"),
      el("td", {}, el("button", { type: "button", class: "sync", "data-file-id": f.file_id },
        f.last_sync_state ? "Sync again" : "Sync")))));
  $("#datasets-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  await Promise.all(datasets.slice(0, DATASET_COUNTS).map(async (d) => {
    const cell = document.querySelector(`#datasets tr[data-dataset="${CSS.escape(d.name)}"] .records`);
    try {
      const { status, data } = await api("GET", `/api/data-sync/datasets/${encodeURIComponent(d.name)}`);
      if (cell) cell.textContent = status === 200 ? String(data.record_count) : "…";
    } catch (e) {
      if (cell) cell.textContent = "?";
    }
  }));
  for (const d of datasets.slice(DATASET_COUNTS)) {
    const cell = document.querySelector(`#datasets tr[data-dataset="${CSS.escape(d.name)}"] .records`);
    if (cell) cell.textContent = "";
  }
}

async function syncFile(fileId, button) {
  button.disabled = true;
  try {
    const { data } = await api("POST", "/api/data-sync/sync-single-file", { file_id: Number(fileId), priority: 5 });
    notice(`Sync of file ${fileId} submitted: ${data.task_id} (${data.executor}).`);
    scheduleTasksRefresh(0);
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

// -- the event stream: fetch() + a small SSE parser --------------------------------------

function setLive(on) {
  const pill = $("#live");
  pill.textContent = on ? "live" : "polling";
  pill.className = `pill ${on ? "ok" : "off"}`;
}

function onEvent(kind, data) {
  if (kind !== "task" || !data || !data.task_id) return;
  const known = tasks.get(data.task_id);
  if (known) {
    known.state = data.state || known.state;
    if (data.progress !== undefined) known.progress = data.progress;
    if (data.executor) known.executor = data.executor;
    if (data.error !== undefined) known.error = data.error;
    if (data.attempt !== undefined) known.attempts = data.attempt;
    if (FINAL.has(known.state) && !known.finished_at) known.finished_at = data.at || new Date().toISOString();
    renderTasks();
  } else {
    scheduleTasksRefresh();
  }
  if (FINAL.has(data.state)) {
    scheduleTasksRefresh(1500); // the ledger's own row (finished_at, error)
    if (data.name === "data_sync.sync_file") refreshDatasets(false).catch(showError);
  }
}

async function openStream() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  let backoff = 1000;
  while (token && stream === controller) {
    try {
      const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      const response = await fetch("/api/events", {
        headers, cache: "no-store", credentials: "omit", signal: controller.signal,
      });
      if (response.status === 401) { logout("The token was refused (401)."); return; }
      if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
      setLive(true);
      backoff = 1000;
      await readEvents(response.body, onEvent);
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 15000);
  }
}

async function readEvents(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let kind = "message", data = [], id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const match = /\r\n|\n|\r/.exec(buffer);
      // a lone \r at the end may be the first half of \r\n: wait for the next chunk
      if (!match || (match[0] === "\r" && match.index === buffer.length - 1)) break;
      const line = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      if (line === "") {
        if (id !== null) lastEventId = id;
        if (data.length) {
          let parsed = null;
          try { parsed = JSON.parse(data.join("\n")); } catch { parsed = null; }
          handle(kind, parsed);
        }
        kind = "message"; data = []; id = null;
        continue;
      }
      if (line.startsWith(":")) continue; // a ping
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let v = colon < 0 ? "" : line.slice(colon + 1);
      if (v.startsWith(" ")) v = v.slice(1);
      if (field === "event") kind = v;
      else if (field === "data") data.push(v);
      else if (field === "id") id = v;
    }
  }
}

// -- wiring -----------------------------------------------------------------------------

function showError(e) {
  if (e && e.status === 401) return;
  notice(e && e.message ? e.message : String(e), true);
}

async function refreshAll() {
  refreshHealth();
  const results = await Promise.allSettled(
    [refreshTasks(), refreshQueues(), refreshWorkers(), refreshChart()]);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) showError(failed.reason);
  else if ($("#notice").classList.contains("error")) notice("");
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#token");
    const candidate = input.value.trim();
    input.value = "";
    $("#login-error").textContent = "";
    try {
      await login(candidate);
      start();
    } catch (e) {
      $("#login-error").textContent = e.message;
    }
  });
  $("#logout").addEventListener("click", () => logout(""));
  $("#refresh").addEventListener("click", () => refreshAll());
  $("#refresh-datasets").addEventListener("click", () => refreshDatasets(true).catch(showError));
  $("#filter-state").addEventListener("change", () => refreshTasks().catch(showError));
  $("#filter-name").addEventListener("change", () => refreshTasks().catch(showError));
  $("#hide-reads").addEventListener("change", renderTasks);
  $("#tasks").addEventListener("click", (event) => {
    const button = event.target.closest("button.cancel");
    if (button) cancelTask(button.dataset.taskId, button);
  });
  $("#files").addEventListener("click", (event) => {
    const button = event.target.closest("button.sync");
    if (button) syncFile(button.dataset.fileId, button);
  });
  refreshHealth();
  if (token) start();
  else logout("");
});
