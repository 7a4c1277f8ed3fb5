// sentistream console: polls the JSON endpoints of cli/console.py and draws the current page.
"use strict";

const POLL_MS = 1000;
const DLQ_EVERY = 5;  // the dead-letter counts: every 5th poll (each costs a fresh consumer; only new dead letters are read)
const charts = {};

const $ = (sel) => document.querySelector(sel);
const fmt = (x, digits = 1) => (x === null || x === undefined) ? "–" : Number(x).toFixed(digits);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const when = (t) => new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);

async function getJSON(path) {
  const r = await fetch(path);
  return r.json();
}

async function post(path, body) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return r.json();
}

function rows(table, html) {
  $(table + " tbody").innerHTML = html.join("");
}

// -- pages ------------------------------------------------------------------------------------
function page() {
  return (location.hash || "#overview").slice(1);
}

function show() {
  for (const s of document.querySelectorAll(".page")) s.classList.toggle("current", s.id === "page-" + page());
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.hash === "#" + page());
  refresh();
}

function chart(id, series, points, pick) {
  const el = document.getElementById(id);
  const data = [points.map((p) => p.t), ...series.map((_, i) => points.map((p) => pick(p)[i]))];
  if (!charts[id]) {
    charts[id] = new uPlot({ width: Math.max(400, el.clientWidth || 900), height: 180,
      series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2 }))] }, data, el);
  } else {
    charts[id].setData(data);
  }
  el.dataset.points = points.length;
}

async function overview() {
  const o = await getJSON("/api/overview");
  const pts = o.points;
  const now = o.now || {};
  $("#ov-in").textContent = fmt(now.in_per_s);
  $("#ov-out").textContent = fmt(now.out_per_s);
  $("#ov-dead").textContent = fmt(now.dead_per_s);
  $("#ov-p50").textContent = fmt(now.p50_ms);
  $("#ov-p99").textContent = fmt(now.p99_ms);
  $("#ov-lag").textContent = now.lag ?? "–";
  $("#ov-workers").textContent = now.workers === undefined ? "–" : `${now.workers} (${now.gone} gone)`;
  chart("chart-rates", [["in rec/s", "#1f77b4"], ["out sent/s", "#2ca02c"], ["dead letters/s", "#d62728"]], pts,
    (p) => [p.in_per_s, p.out_per_s, p.dead_per_s]);
  chart("chart-latency", [["p50", "#9467bd"], ["p99", "#ff7f0e"]], pts, (p) => [p.p50_ms, p.p99_ms]);
  chart("chart-lag", [["lag", "#8c564b"]], pts, (p) => [p.lag]);
  const labels = Object.entries(now.labels || {});
  const total = labels.reduce((a, [, n]) => a + n, 0);
  $("#labels").innerHTML = labels.map(([l, n]) =>
    `<tr><td>${esc(l)}</td><td class="num">${n}</td><td class="num">${fmt(100 * n / total)} %</td></tr>`).join("");
}

function model(m) {
  return m ? `${esc(m.name)} ${esc(m.version)}${m.runtime ? " (" + esc(m.runtime) + ")" : ""}` : "–";
}

async function workers() {
  const w = (await getJSON("/api/workers")).workers;
  rows("#workers", w.map((r) => `<tr class="${r.gone ? "gone" : ""}" data-worker="${esc(r.worker)}">
    <td>${esc(r.host)}</td><td class="num">${r.pid}</td><td>${r.partitions.join(", ")}</td>
    <td class="num">${fmt(r.in_per_s)}</td><td class="num">${fmt(r.out_per_s)}</td><td class="num">${fmt(r.p99_ms)}</td>
    <td class="${r.ready ? "ok" : "bad"} ready">${r.gone ? "gone" : r.ready ? "ready" : "not ready"}</td>
    <td>${esc(r.reason)}</td><td>${model(r.model)}</td><td class="num">${fmt(r.last_seen_s)} s ago</td></tr>`));
}

async function partitions() {
  const p = await getJSON("/api/partitions");
  $("#partitions-caption").textContent = `${p.topic}, group ${p.group}`;
  rows("#partitions", p.partitions.map((r) => `<tr><td class="num">${r.partition}</td><td class="num">${r.end}</td>
    <td class="num">${r.committed ?? "–"}</td><td class="num">${r.lag}</td><td class="owner">${esc(r.owner ?? "–")}</td></tr>`));
}

async function models() {
  const m = await getJSON("/api/models");
  rows("#models", m.workers.filter((r) => !r.gone).map((r) => `<tr data-worker="${esc(r.worker)}">
    <td>${esc(r.worker)}</td><td>${model(r.model)}</td><td>${model(r.shadow)}</td>
    <td class="num agreement">${r.shadow ? fmt(100 * r.shadow.agreement, 2) + " %" : "–"}</td>
    <td class="num">${r.shadow ? r.shadow.compared : "–"}</td></tr>`));
  rows("#control", m.control.map((c) => `<tr><td>${esc(c.where)}</td><td>${c.at ? when(c.at) : "–"}</td>
    <td>${esc(c.key)}</td><td>${esc(JSON.stringify(c.value).slice(0, 300))}</td></tr>`));
}

async function deadLetters() {
  const s = await getJSON("/api/dlq/stats");
  rows("#dlq-reasons", Object.entries(s.by_reason || {}).map(([reason, seen]) =>
    `<tr data-reason="${esc(reason)}"><td>${esc(reason)}</td><td class="num">${seen.count}</td>
     <td>${esc(seen.first)}</td><td>${esc(seen.last)}</td></tr>`));
}

function filterParams() {
  const p = new URLSearchParams();
  if ($("#f-reason").value) p.append("reason", $("#f-reason").value.trim());
  if ($("#f-since").value) p.append("since", $("#f-since").value.trim());
  if ($("#f-contains").value) p.append("contains", $("#f-contains").value);
  return p;
}

function filterBody() {
  const p = filterParams();
  return { reason: p.getAll("reason"), since: p.get("since"), contains: p.get("contains") };
}

async function browse() {
  const b = await getJSON("/api/dlq/browse?" + filterParams());
  if (b.ok === false) return say("#dlq-result", b.error, true);
  rows("#dlq-browse", b.dead_letters.map((d) => `<tr><td>${esc(d.dlq.timestamp)}</td><td>${esc(d.reason)}</td>
    <td>${esc(d.source ? `${d.source.topic}[${d.source.partition}]@${d.source.offset}` : "")}</td>
    <td>${esc(d.detail)}</td><td class="value">${esc((typeof d.value === "string" ? d.value : JSON.stringify(d.value)).slice(0, 200))}</td></tr>`));
}

const pages = { overview, workers, partitions, models, dlq: deadLetters };

let busy = false;  // one refresh at a time: reading the dead-letter topic may take a while

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    await pages[page()]();
  } catch (e) {
    say("#flash", "console unreachable: " + e, true);
  } finally {
    busy = false;
  }
}

// -- actions ----------------------------------------------------------------------------------
function say(where, text, bad = false) {
  const el = $(where);
  el.textContent = text;
  el.classList.toggle("bad", bad);
}

async function act(action, body, where) {
  const r = await post("/api/action/" + action, body);
  say(where, r.ok ? (typeof r.result === "string" ? r.result : JSON.stringify(r.result)) : r.error, !r.ok);
  return r;
}

function counts(obj) {
  return Object.entries(obj || {}).map(([k, n]) => `${k}: ${n}`).join(", ") || "none";
}

async function dryRun() {
  const r = await post("/api/action/replay", { ...filterBody(), dry_run: true });
  if (!r.ok) return say("#replay-plan", r.error, true);
  const plan = r.result;
  const total = Object.values(plan.by_reason || {}).reduce((a, n) => a + n, 0);
  say("#replay-plan", `would replay ${total} (by reason: ${counts(plan.by_reason)}; by target: ${counts(plan.by_target)})`
    + (plan.refusal ? `; refused: ${plan.refusal}` : ""), Boolean(plan.refusal));
  $("#replay").disabled = Boolean(plan.refusal) || total === 0;
}

async function replay() {
  if (!confirm($("#replay-plan").textContent + "\nReplay them?")) return;
  $("#replay").disabled = true;
  say("#dlq-result", "replaying…");
  await act("replay", filterBody(), "#dlq-result");
  deadLetters();
}

async function login(ev) {
  ev.preventDefault();
  const r = await post("/api/login", { token: $("#token").value });
  say("#flash", r.ok ? "logged in" : r.error, !r.ok);
}

async function start() {
  const session = await getJSON("/api/session");
  $("#login").hidden = !session.token_required;
  $("#login").addEventListener("submit", login);
  $("#promote").addEventListener("click", () => act("promote", { bundle: $("#bundle").value }, "#model-result"));
  $("#rollback").addEventListener("click", () => act("rollback", { bundle: $("#bundle").value }, "#model-result"));
  $("#dlq-filter").addEventListener("submit", (ev) => { ev.preventDefault(); browse(); });
  $("#dry-run").addEventListener("click", dryRun);
  $("#replay").addEventListener("click", replay);
  $("#resume").addEventListener("click", () => act("resume", {}, "#dlq-result"));
  window.addEventListener("hashchange", show);
  show();
  let tick = 0;
  setInterval(() => { if (page() !== "dlq" || ++tick % DLQ_EVERY === 0) refresh(); }, POLL_MS);
}

start();
