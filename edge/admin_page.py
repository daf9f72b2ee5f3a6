# The admin port's page at `/`: one static HTML document with inline CSS and JS (no build step, no CDN).
#
# Rules:
# - It polls `/live?window=120` every POLL_MS and draws, for routes and for clusters, three inline-SVG line
#   charts (requests/s, error %, p99 latency) with one colour per series, and a table of the latest values
#   (req/s, error %, p50, p99, totals). The header shows the generation, the state, the workers and the last
#   reload's outcome (with its `file:line: message` errors when it failed).
# - After each successful render it sets <body data-updates="N">; tests in headless Chromium wait for it.
# - Text from the server is inserted with textContent / setAttribute only, never as HTML.
from __future__ import annotations

PAGE_HTML = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge admin</title>
<style>
  :root { --fg:#1d2330; --muted:#6b7385; --bg:#f6f7fa; --card:#fff; --line:#e3e6ee; --bad:#c62828; --ok:#2e7d32; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
  header { display:flex; flex-wrap:wrap; gap:18px; align-items:baseline; padding:14px 22px; background:#1d2330; color:#fff; }
  header h1 { margin:0; font-size:18px; letter-spacing:.5px; }
  header .kv { color:#c5cad6; } header .kv b { color:#fff; font-weight:600; }
  .state-LIVE { color:#7bd88f !important; } .state-DRAINING, .state-PRE_INITIALIZING { color:#ffb86c !important; }
  main { padding:16px 22px 40px; }
  #reload-error { display:none; margin:0 0 14px; padding:10px 14px; border-left:4px solid var(--bad); background:#fdecea; white-space:pre-wrap; font-family:ui-monospace, monospace; font-size:12px; }
  .summary { display:grid; grid-template-columns:repeat(4, minmax(120px, 1fr)); gap:12px; margin-bottom:18px; }
  .big { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
  .big .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.6px; }
  .big .value { font-size:26px; font-weight:600; font-variant-numeric:tabular-nums; }
  section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 16px 16px; margin-bottom:18px; }
  section h2 { margin:0 0 8px; font-size:15px; }
  .charts { display:grid; grid-template-columns:repeat(auto-fit, minmax(300px, 1fr)); gap:14px; }
  .chart h3 { margin:0 0 4px; font-size:12px; color:var(--muted); font-weight:500; }
  svg { width:100%; height:150px; display:block; }
  svg .grid { stroke:var(--line); stroke-width:1; }
  svg .axis { fill:var(--muted); font-size:10px; }
  svg .series { fill:none; stroke-width:1.8; stroke-linejoin:round; }
  table { width:100%; border-collapse:collapse; margin-top:12px; font-variant-numeric:tabular-nums; }
  th, td { text-align:right; padding:5px 8px; border-bottom:1px solid var(--line); white-space:nowrap; }
  th:nth-child(-n+2), td:nth-child(-n+2) { text-align:left; }
  th { color:var(--muted); font-weight:500; font-size:12px; }
  td.name { font-family:ui-monospace, monospace; font-size:12px; overflow:hidden; text-overflow:ellipsis; max-width:520px; }
  .swatch { display:inline-block; width:10px; height:10px; border-radius:2px; }
  .err { color:var(--bad); font-weight:600; }
  .empty { color:var(--muted); padding:8px 0; }
  footer { color:var(--muted); font-size:12px; padding:0 22px 20px; }
</style>
</head>
<body data-updates="0">
<header>
  <h1>edge</h1>
  <span class="kv">state <b id="state">&hellip;</b></span>
  <span class="kv">generation <b id="generation">&hellip;</b></span>
  <span class="kv">workers <b id="workers">&hellip;</b></span>
  <span class="kv">uptime <b id="uptime">&hellip;</b></span>
  <span class="kv">last reload <b id="reload">&hellip;</b></span>
</header>
<main>
  <pre id="reload-error"></pre>
  <div class="summary">
    <div class="big"><div class="label">requests / s</div><div class="value" id="total-rps">&ndash;</div></div>
    <div class="big"><div class="label">errors</div><div class="value" id="total-errors">&ndash;</div></div>
    <div class="big"><div class="label">p50 latency</div><div class="value" id="total-p50">&ndash;</div></div>
    <div class="big"><div class="label">p99 latency</div><div class="value" id="total-p99">&ndash;</div></div>
  </div>
  <section id="routes">
    <h2>Routes</h2>
    <div class="charts">
      <div class="chart"><h3>requests / s</h3><svg id="chart-routes-rps" viewBox="0 0 400 150" preserveAspectRatio="none"></svg></div>
      <div class="chart"><h3>errors % (5xx and no response)</h3><svg id="chart-routes-errors" viewBox="0 0 400 150" preserveAspectRatio="none"></svg></div>
      <div class="chart"><h3>p99 latency, ms</h3><svg id="chart-routes-p99" viewBox="0 0 400 150" preserveAspectRatio="none"></svg></div>
    </div>
    <table id="routes-table"><thead><tr><th></th><th>listener route</th><th>req/s</th><th>errors</th><th>p50 ms</th><th>p99 ms</th><th>requests</th></tr></thead><tbody></tbody></table>
  </section>
  <section id="clusters">
    <h2>Clusters</h2>
    <div class="charts">
      <div class="chart"><h3>requests / s</h3><svg id="chart-clusters-rps" viewBox="0 0 400 150" preserveAspectRatio="none"></svg></div>
      <div class="chart"><h3>errors % (5xx and no response)</h3><svg id="chart-clusters-errors" viewBox="0 0 400 150" preserveAspectRatio="none"></svg></div>
      <div class="chart"><h3>p99 latency, ms</h3><svg id="chart-clusters-p99" viewBox="0 0 400 150" preserveAspectRatio="none"></svg></div>
    </div>
    <table id="clusters-table"><thead><tr><th></th><th>cluster</th><th>req/s</th><th>errors</th><th>p50 ms</th><th>p99 ms</th><th>requests</th></tr></thead><tbody></tbody></table>
  </section>
</main>
<footer>Polls <code>/live</code> every second. Also: <a href="/stats">/stats</a> &middot; <a href="/stats/prometheus">/stats/prometheus</a> &middot; <a href="/clusters?format=json">/clusters</a> &middot; <a href="/config_dump">/config_dump</a> &middot; <a href="/server_info">/server_info</a></footer>
<script>
"use strict";
const POLL_MS = 1000;
const COLORS = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00", "#b82e2e", "#316395"];
const SVG_NS = "http://www.w3.org/2000/svg";
const W = 400, H = 150, LEFT = 34, BOTTOM = 16, TOP = 6;
let updates = 0;
const colorOf = {};
function color(name) {
  if (!(name in colorOf)) colorOf[name] = COLORS[Object.keys(colorOf).length % COLORS.length];
  return colorOf[name];
}
function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
}
function fmt(value, digits) {
  if (value === null || value === undefined) return "\\u2013";
  if (value >= 1000) return Math.round(value).toLocaleString("en");
  return value.toFixed(digits);
}
function el(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const k in attrs) node.setAttribute(k, attrs[k]);
  if (text !== undefined) node.textContent = text;
  return node;
}
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
function drawChart(svg, series, key, scale) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  let max = 0, n = 0;
  for (const name in series) {
    const values = series[name][key];
    n = Math.max(n, values.length);
    for (const v of values) if (v !== null && v * scale > max) max = v * scale;
  }
  max = niceMax(max);
  for (const f of [0, 0.5, 1]) {
    const y = TOP + (H - TOP - BOTTOM) * (1 - f);
    svg.appendChild(el("line", {x1: LEFT, x2: W, y1: y, y2: y, class: "grid"}));
    svg.appendChild(el("text", {x: LEFT - 4, y: y + 3, "text-anchor": "end", class: "axis"}, fmt(max * f, max * f < 10 && f > 0 ? 1 : 0)));
  }
  svg.appendChild(el("text", {x: LEFT, y: H - 3, class: "axis"}, n > 1 ? "-" + (n - 1) + " s" : ""));
  svg.appendChild(el("text", {x: W, y: H - 3, "text-anchor": "end", class: "axis"}, "now"));
  if (n < 2) return;
  const dx = (W - LEFT) / (n - 1);
  for (const name in series) {
    const values = series[name][key];
    const offset = n - values.length;
    let d = "", pen = false;
    values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      const x = LEFT + (i + offset) * dx;
      const y = TOP + (H - TOP - BOTTOM) * (1 - (v * scale) / max);
      d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
      pen = true;
    });
    if (d) {
      const path = el("path", {d: d, class: "series", stroke: color(name)});
      path.setAttribute("data-name", name);
      path.appendChild(el("title", {}, name));
      svg.appendChild(path);
    }
  }
}
function fillTable(tbody, series) {
  while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
  const names = Object.keys(series);
  if (!names.length) {
    const tr = tbody.insertRow(); const td = tr.insertCell(); td.colSpan = 7; td.className = "empty";
    td.textContent = "no requests yet";
    return;
  }
  names.sort((a, b) => (last(series[b].rps) || 0) - (last(series[a].rps) || 0) || a.localeCompare(b));
  for (const name of names) {
    const s = series[name];
    const tr = tbody.insertRow();
    tr.setAttribute("data-name", name);
    const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = color(name);
    tr.insertCell().appendChild(sw);
    const nameCell = tr.insertCell(); nameCell.className = "name"; nameCell.textContent = name; nameCell.title = name;
    const errors = last(s.error_rate);
    const cells = [fmt(last(s.rps), 1), errors === null ? "\\u2013" : fmt(errors * 100, 1) + " %", fmt(last(s.p50_ms), 2), fmt(last(s.p99_ms), 2), String(s.requests_total)];
    cells.forEach((text, i) => {
      const td = tr.insertCell(); td.textContent = text;
      if (i === 1 && errors > 0) td.className = "err";
      if (i === 0) td.setAttribute("data-rps", String(last(s.rps)));
    });
  }
}
function renderServer(server) {
  const state = document.getElementById("state");
  state.textContent = server.state; state.className = "state-" + server.state;
  document.getElementById("generation").textContent = server.generation;
  const serving = server.workers.filter(w => w.state === "serving").length;
  const restarts = server.workers.reduce((a, w) => a + w.restarts, 0);
  document.getElementById("workers").textContent = serving + "/" + server.workers.length + (restarts ? " (" + restarts + " restarts)" : "");
  document.getElementById("uptime").textContent = Math.round(server.uptime_s) + " s";
  document.getElementById("reload").textContent = server.last_reload_ok ? "ok" : "FAILED";
  document.getElementById("reload").className = server.last_reload_ok ? "" : "err";
  const box = document.getElementById("reload-error");
  box.style.display = server.last_reload_ok ? "none" : "block";
  box.textContent = server.last_reload_ok ? "" : "The last reload failed; the previous table is still served:\\n" + server.last_reload_error.join("\\n");
}
function render(data) {
  renderServer(data.server);
  const total = data.total && data.total.all;
  if (total) {
    document.getElementById("total-rps").textContent = fmt(last(total.rps), 1);
    const e = last(total.error_rate);
    document.getElementById("total-errors").textContent = e === null ? "\\u2013" : fmt(e * 100, 2) + " %";
    const p50 = last(total.p50_ms), p99 = last(total.p99_ms);
    document.getElementById("total-p50").textContent = p50 === null ? "\\u2013" : fmt(p50, 2) + " ms";
    document.getElementById("total-p99").textContent = p99 === null ? "\\u2013" : fmt(p99, 2) + " ms";
  }
  for (const kind of ["routes", "clusters"]) {
    drawChart(document.getElementById("chart-" + kind + "-rps"), data[kind], "rps", 1);
    drawChart(document.getElementById("chart-" + kind + "-errors"), data[kind], "error_rate", 100);
    drawChart(document.getElementById("chart-" + kind + "-p99"), data[kind], "p99_ms", 1);
    fillTable(document.querySelector("#" + kind + "-table tbody"), data[kind]);
  }
  updates += 1;
  document.body.setAttribute("data-updates", String(updates));
}
async function poll() {
  try {
    const response = await fetch("/live?window=120", {cache: "no-store"});
    if (response.ok) render(await response.json());
  } catch (e) {
    document.getElementById("state").textContent = "unreachable";
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script>
</body>
</html>
"""
