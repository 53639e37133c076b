// Gauntlet's dashboard: plain JS, SVG charts, no network beyond the daemon.
// The token comes from the URL fragment (#token=...; never sent to the
// server as part of a URL) or a form, and is kept in localStorage.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const state = {
  token: null, experiments: [], selected: null, detail: null, curves: null,
  sortKey: "best", sortDir: -1, stream: null, dirty: false,
};

function params() {
  const out = {};
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    const [k, v] = part.split("=");
    if (k) out[decodeURIComponent(k)] = decodeURIComponent(v || "");
  }
  return out;
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) { showLogin("the token was refused"); throw new Error("unauthorised"); }
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function showLogin(message) {
  document.getElementById("login").hidden = false;
  document.getElementById("main").hidden = true;
  document.getElementById("login-error").textContent = message || "";
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "";
  if (typeof v !== "number") return String(v);
  return Math.abs(v) >= 1000 || Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

// ---- experiments list ----
async function refreshList() {
  try {
    const body = await api("/api/v1/experiments");
    state.experiments = body.experiments;
    document.getElementById("conn").textContent = "connected";
    renderList();
  } catch (e) {
    document.getElementById("conn").textContent = "disconnected: " + e.message;
  }
}

function renderList() {
  const tbody = document.querySelector("#experiments tbody");
  tbody.replaceChildren();
  for (const x of state.experiments) {
    const counts = Object.entries(x.trials).map(([s, n]) => `${n} ${s}`).join(", ");
    const tr = el("tr", { "data-id": x.id });
    if (x.id === state.selected) tr.className = "selected";
    tr.append(el("td", {}, x.id), el("td", {}, x.name), el("td", { class: "status-" + x.status }, x.status),
      el("td", {}, fmt(x.best)), el("td", {}, `${x.total_trials}/${x.max_trials}: ${counts}`),
      el("td", {}, x.reports), el("td", {}, x.concurrency));
    tr.addEventListener("click", () => select(x.id));
    tbody.append(tr);
  }
}

// ---- one experiment ----
async function select(id) {
  state.selected = id;
  if (state.stream) state.stream.abort();
  renderList();
  await loadExperiment();
  follow(id);
}

async function loadExperiment() {
  const id = state.selected;
  const top = Math.max(1, Math.min(10000, Number(document.getElementById("filter-top").value) || 100));
  const status = document.getElementById("filter-status").value;
  const q = `?limit=${top}` + (status ? `&status=${status}` : "");
  const [detail, curves] = await Promise.all([
    api(`/api/v1/experiments/${id}${q}`), api(`/api/v1/experiments/${id}/curves?top=${Math.min(top, 300)}&points=100`),
  ]);
  if (id !== state.selected) return;
  state.detail = detail;
  state.curves = curves;
  render();
}

function render() {
  const d = state.detail;
  document.getElementById("experiment").hidden = false;
  const x = d.experiment;
  document.getElementById("exp-title").textContent = `${x.name} (${x.id})`;
  document.getElementById("exp-summary").textContent =
    `${x.status}; ${x.metric} (${x.mode}); best ${fmt(x.best)}${x.best_trial !== null ? " by trial " + x.best_trial : ""}; ` +
    `${x.total_trials} of ${x.max_trials} trials; ${x.reports} reports`;
  document.getElementById("curve-metric").textContent = x.metric;
  renderLeaderboard();
  renderCurves();
  renderBest();
  renderParallel();
  renderLineage();
}

function renderLeaderboard() {
  const rows = state.detail.leaderboard.slice();
  const paramNames = [...new Set(rows.flatMap((t) => Object.keys(t.params)))].sort();
  const cols = [["id", "trial"], ["status", "status"], ["best", "best"], ["epochs", "epochs"], ["restarts", "restarts"]]
    .concat(paramNames.map((p) => ["p:" + p, p]));
  const value = (t, key) => key === "best" ? t.best_metric : key.startsWith("p:") ? t.params[key.slice(2)] : t[key];
  const { sortKey, sortDir } = state;
  rows.sort((a, b) => {
    const va = value(a, sortKey), vb = value(b, sortKey);
    if (va === vb) return 0;
    if (va === null || va === undefined) return 1;
    if (vb === null || vb === undefined) return -1;
    return (va < vb ? -1 : 1) * sortDir;
  });
  const head = el("tr");
  for (const [key, label] of cols) {
    const th = el("th", { "data-key": key }, label + (key === sortKey ? (sortDir > 0 ? " ▲" : " ▼") : ""));
    th.addEventListener("click", () => {
      state.sortDir = state.sortKey === key ? -state.sortDir : -1;
      state.sortKey = key;
      renderLeaderboard();
    });
    head.append(th);
  }
  document.querySelector("#leaderboard thead").replaceChildren(head);
  const tbody = document.querySelector("#leaderboard tbody");
  tbody.replaceChildren();
  for (const t of rows) {
    const tr = el("tr");
    for (const [key] of cols) {
      const td = el("td", key === "status" ? { class: "status-" + t.status } : {}, fmt(value(t, key)));
      tr.append(td);
    }
    tbody.append(tr);
  }
}

function frame(box, xs, ys) {
  const W = 600, H = 260, L = 48, R = 10, T = 10, B = 24;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  const [x0, x1] = xs, [y0, y1] = ys;
  const sx = (x) => L + (x - x0) / ((x1 - x0) || 1) * (W - L - R);
  const sy = (y) => H - B - (y - y0) / ((y1 - y0) || 1) * (H - T - B);
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }),
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" }));
  for (const [y, anchor] of [[y0, H - B], [y1, T + 8]]) {
    const t = svg("text", { x: 2, y: anchor }); t.textContent = fmt(y); root.append(t);
  }
  for (const [x, pos] of [[x0, L], [x1, W - R - 20]]) {
    const t = svg("text", { x: pos, y: H - 6 }); t.textContent = fmt(x); root.append(t);
  }
  box.replaceChildren(root);
  return { root, sx, sy, H, B, T };
}

function range(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return lo === Infinity ? [0, 1] : lo === hi ? [lo - 0.5, hi + 0.5] : [lo, hi];
}

function renderCurves() {
  const trials = state.curves.trials;
  const box = document.getElementById("curves");
  const epochs = trials.flatMap((t) => t.curve.map((p) => p[0]));
  const values = trials.flatMap((t) => t.curve.map((p) => p[1]));
  const f = frame(box, [1, Math.max(2, ...epochs)], range(values));
  const rungs = new Set(trials.filter((t) => t.status === "pruned" && t.curve.length).map((t) => t.curve[t.curve.length - 1][0]));
  for (const r of rungs) {
    f.root.append(svg("line", { class: "rung", x1: f.sx(r), x2: f.sx(r), y1: f.T, y2: f.H - f.B, stroke: "#bbb", "stroke-dasharray": "4 3" }));
  }
  const best = trials.length ? trials[0].trial : null;
  for (const t of trials) {
    if (!t.curve.length) continue;
    const pts = t.curve.map(([e, v]) => `${f.sx(e).toFixed(1)},${f.sy(v).toFixed(1)}`).join(" ");
    const colour = t.trial === best ? "#2f6fdb" : t.status === "pruned" ? "#c9a0a0" : "#8fa3c7";
    const line = svg("polyline", { points: pts, fill: "none", stroke: colour, "stroke-width": t.trial === best ? 2.5 : 1, "data-trial": t.trial });
    const title = svg("title"); title.textContent = `trial ${t.trial} (${t.status})`; line.append(title);
    f.root.append(line);
    if (t.status === "pruned") {
      const [e, v] = t.curve[t.curve.length - 1];
      const mark = svg("text", { x: f.sx(e) - 3, y: f.sy(v) + 3, class: "pruned-mark", fill: "#c2412d" });
      mark.textContent = "×";
      f.root.append(mark);
    }
  }
}

function renderBest() {
  const points = state.detail.best_over_time;
  const box = document.getElementById("best");
  const f = frame(box, range(points.map((p) => p[0]).concat([0])), range(points.map((p) => p[1])));
  if (!points.length) return;
  let d = "";
  points.forEach(([t, v], i) => { d += (i ? ` H${f.sx(t).toFixed(1)} V` : `M${f.sx(t).toFixed(1)},`) + f.sy(v).toFixed(1); });
  f.root.append(svg("path", { d, fill: "none", stroke: "#2e8b57", "stroke-width": 2 }));
}

function renderParallel() {
  const trials = state.detail.leaderboard.filter((t) => t.best_metric !== null && t.best_metric !== undefined);
  const box = document.getElementById("parallel");
  const W = 900, H = 300, T = 24, B = 16, L = 40, R = 70;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  box.replaceChildren(root);
  // Only the parameters that vary are axes.
  const names = [...new Set(trials.flatMap((t) => Object.keys(t.params)))].sort()
    .filter((n) => new Set(trials.map((t) => JSON.stringify(t.params[n]))).size > 1);
  const axes = names.map((n) => {
    const vals = trials.map((t) => t.params[n]);
    const numeric = vals.every((v) => typeof v === "number");
    const cats = numeric ? null : [...new Set(vals.map(String))].sort();
    const [lo, hi] = numeric ? range(vals) : [0, Math.max(1, cats.length - 1)];
    return { name: n, pos: (v) => ((numeric ? v : cats.indexOf(String(v))) - lo) / ((hi - lo) || 1) };
  });
  const metric = range(trials.map((t) => t.best_metric));
  const mode = state.detail.experiment.mode;
  axes.push({ name: state.detail.metric, pos: (v) => (v - metric[0]) / ((metric[1] - metric[0]) || 1), metric: true });
  const x = (i) => L + i * (W - L - R) / Math.max(1, axes.length - 1);
  const y = (p) => H - B - p * (H - T - B);
  axes.forEach((a, i) => {
    root.append(svg("line", { x1: x(i), x2: x(i), y1: T, y2: H - B, stroke: "#999" }));
    const label = svg("text", { x: x(i) - 20, y: 12 }); label.textContent = a.name; root.append(label);
  });
  for (const t of trials) {
    const score = (t.best_metric - metric[0]) / ((metric[1] - metric[0]) || 1);
    const good = mode === "min" ? 1 - score : score;
    const pts = axes.map((a, i) => `${x(i).toFixed(1)},${y(a.metric ? a.pos(t.best_metric) : a.pos(t.params[a.name])).toFixed(1)}`).join(" ");
    const light = Math.round(85 - good * 50);
    root.append(svg("polyline", { points: pts, fill: "none", stroke: `hsl(220, 70%, ${light}%)`, "stroke-opacity": 0.3 + 0.7 * good, "data-trial": t.id }));
  }
}

function renderLineage() {
  const rows = state.detail.leaderboard.filter((t) => t.lineage && t.lineage.length);
  document.getElementById("lineage-box").hidden = rows.length === 0;
  const tbody = document.querySelector("#lineage tbody");
  tbody.replaceChildren();
  for (const t of rows) for (const l of t.lineage) {
    const tr = el("tr");
    tr.append(el("td", {}, t.id), el("td", {}, l.at_epoch), el("td", {}, `trial ${l.donor} at epoch ${l.donor_epoch}`),
      el("td", {}, JSON.stringify(l.new_params)));
    tbody.append(tr);
  }
}

// ---- live updates: server-sent events read with fetch (headers carry the token) ----
async function follow(id) {
  const ctrl = new AbortController();
  state.stream = ctrl;
  let last = "";
  while (!ctrl.signal.aborted && state.selected === id) {
    try {
      const headers = { Authorization: "Bearer " + state.token };
      if (last) headers["Last-Event-ID"] = String(last);
      const res = await fetch(`/api/v1/experiments/${id}/events`, { headers, signal: ctrl.signal });
      if (!res.ok) throw new Error(res.statusText);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          const ev = { id: null, event: "message", data: "" };
          for (const line of block.split("\n")) {
            const i = line.indexOf(":");
            if (i <= 0) continue;
            const k = line.slice(0, i), v = line.slice(i + 1).trimStart();
            if (k === "id") ev.id = v; else if (k === "event") ev.event = v; else if (k === "data") ev.data += v;
          }
          if (ev.id) last = ev.id;
          onEvent(ev);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function onEvent(ev) {
  if (ev.event === "reset" || ev.event === "state" || ev.event === "trial") { state.dirty = true; return; }
  if (ev.event !== "report" || !state.curves) return;
  const data = JSON.parse(ev.data);
  const t = state.curves.trials.find((c) => c.trial === data.id);
  if (t && Number.isFinite(data.value)) {
    t.curve = t.curve.filter((p) => p[0] < data.epoch).concat([[data.epoch, data.value]]);
  } else if (!t) {
    state.dirty = true;
  }
  state.redraw = true;
}

setInterval(async () => {
  if (!state.token || document.getElementById("main").hidden) return;
  await refreshList();
  if (state.selected && state.dirty) {
    state.dirty = false; state.redraw = false;
    await loadExperiment().catch(() => {});
  } else if (state.selected && state.redraw && state.detail) {
    state.redraw = false;
    renderCurves();
  }
}, 1500);

function start(token) {
  state.token = token;
  localStorage.setItem("gauntlet-token", token);
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  refreshList().then(() => {
    const want = params().experiment;
    if (want) select(want);
  });
}

document.getElementById("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  start(document.getElementById("token").value.trim());
});
for (const id of ["filter-status", "filter-top"]) {
  document.getElementById(id).addEventListener("change", () => state.selected && loadExperiment());
}

const given = params().token || localStorage.getItem("gauntlet-token");
if (given) start(given); else showLogin();
