// One experiment: the report's headline, its jobs filtered, sorted and paged on the server, and a run
// table; for a search, its history, parameter importances and parallel coordinates (Plotly, loaded only
// then). Polls with ?since=VERSION: the server sends only the rows that changed; the rest are kept here.
"use strict";

const REFRESH_S = Math.max(0.5, Number(new URLSearchParams(location.search).get("refresh")) || 3);
const NAME = decodeURIComponent(location.pathname.split("/")[2]);
const API = `/api/experiments/${encodeURIComponent(NAME)}`;
const rows = new Map();  // job key -> its last row received
let version = null, asked = "", filters = {state: "", variant: "", sort: "key", order: "asc", offset: 0, limit: 100, grid: {}};

function query() {
  const q = new URLSearchParams({sort: filters.sort, order: filters.order, offset: filters.offset, limit: filters.limit});
  if (filters.state) q.set("state", filters.state);
  if (filters.variant) q.set("variant", filters.variant);
  for (const [axis, value] of Object.entries(filters.grid)) if (value !== "") q.set(`grid.${axis}`, value);
  return q.toString();
}

function shell() {
  document.getElementById("page").innerHTML = `<section class="panel"><h2>${esc(NAME)}</h2>
      <div id="headline" class="box headline"></div><div id="summary"></div></section>
    <section class="panel" id="study" hidden><h3>Search</h3><div id="study-note" class="muted"></div>
      <div id="study-history" class="chart"></div><div id="study-importances" class="chart"></div>
      <div id="study-parallel" class="chart"></div></section>
    <section class="panel"><div id="controls"></div><div id="jobs"></div><div id="pager"></div></section>
    <section class="panel"><details id="run-table-box"><summary>Run table (job × variant)</summary><div id="run-table"></div></details></section>`;
  document.getElementById("run-table-box").addEventListener("toggle", drawRunTable);
}

function drawSummary(e) {
  document.getElementById("headline").textContent = e.headline || "No report yet: python run/create-plots.py writes its headline.";
  const chips = Object.entries(e.states).map(([s, n]) => `<span class="chip">${stateBadge(s, e.shown_states[s])} ${n}</span>`).join(" ");
  const progress = e.progress === null ? "" : `${Math.round(100 * e.progress)}% of runs done (${e.runs_done}/${e.runs_total})`;
  const last = e.last_launch ? `last launch ${esc(e.last_launch.time)} (${esc(e.last_launch.mode)})` : "";
  const report = e.report ? `<a href="${esc(e.report)}" target="_blank">report</a>` : "";
  document.getElementById("summary").innerHTML = `<p>${e.jobs} job(s) ${chips} <span class="chip">${progress}</span>
    <span class="muted">${last}</span> ${report}</p>`;
}

function select(id, label, options, value) {
  return `<label>${esc(label)} <select id="${esc(id)}"><option value="">all</option>${options.map(o =>
    `<option value="${esc(o)}" ${String(o) === String(value) ? "selected" : ""}>${esc(o)}</option>`).join("")}</select></label>`;
}

function drawControls(answer, variants) {
  const sorts = ["key", "state", "elapsed_s", "seed", "progress", ...Object.keys(answer.grid_axes).map(a => `grid.${a}`)];
  const html = select("filter-state", "state", Object.keys(answer.states), filters.state) +
    select("filter-variant", "variant", variants, filters.variant) +
    Object.entries(answer.grid_axes).map(([axis, values]) => select(`grid-${axis}`, axis, values, filters.grid[axis] ?? "")).join("") +
    `<label>sort <select id="sort">${sorts.map(s => `<option ${s === filters.sort ? "selected" : ""}>${esc(s)}</option>`).join("")}</select></label>
     <label><input type="checkbox" id="descending" ${filters.order === "desc" ? "checked" : ""}> descending</label>`;
  const box = document.getElementById("controls");
  if (box.dataset.drawn === html) return;
  box.dataset.drawn = html;
  box.innerHTML = html;
  box.querySelectorAll("select, input").forEach(element => element.addEventListener("change", () => {
    filters.state = document.getElementById("filter-state").value;
    filters.variant = document.getElementById("filter-variant").value;
    filters.sort = document.getElementById("sort").value;
    filters.order = document.getElementById("descending").checked ? "desc" : "asc";
    for (const axis of Object.keys(answer.grid_axes)) filters.grid[axis] = document.getElementById(`grid-${axis}`).value;
    filters.offset = 0;
    refresh();
  }));
}

function healthCells(row, columns) {
  return columns.map(c => `<td class="num">${row.variants.map(v => fmt(v[c], 3)).filter(Boolean).join(" / ")}</td>`).join("");
}

function drawJobs(answer) {
  const page = answer.keys.map(k => rows.get(k)).filter(Boolean);
  // router-health columns: whichever measures the runs' metrics hold
  const health = [...new Set(page.flatMap(r => r.variants.flatMap(v => Object.keys(v).filter(k =>
    ["load_cv", "max_vio", "dead_expert_fraction", "effective_experts"].includes(k)))))];
  const body = page.map(row => {
    const grid = Object.entries(row.grid_values).map(([k, v]) => `${esc(k)}=${esc(JSON.stringify(v))}`).join(" ") +
      (row.processes > 1 ? ` <span class="muted">(${esc(row.processes)} processes)</span>` : "");
    const epochs = row.variants.map(v => `${esc(v.name)} ${v.epochs}`).join(", ");
    return `<tr class="job" data-job="${esc(row.key)}"><td><a href="/experiments/${encodeURIComponent(NAME)}/jobs/${encodeURIComponent(row.key)}"><code>${esc(row.key)}</code></a></td>
      <td>${grid}</td><td class="job-state" data-state="${esc(row.state)}">${stateBadge(row.state, row.shown)}</td>
      <td class="num">${row.variants_done}/${row.variants_total}</td><td>${epochs}</td>
      <td class="num">${duration(row.elapsed_s)}</td>${healthCells(row, health)}<td class="error">${esc(row.error || "")}</td></tr>`;
  }).join("");
  document.getElementById("jobs").innerHTML = `<table class="jobs"><thead><tr><th>job</th><th>grid</th><th>state</th>
    <th>runs done</th><th>epochs</th><th>elapsed</th>${health.map(h => `<th>${esc(h)}</th>`).join("")}<th>error</th></tr></thead>
    <tbody>${body}</tbody></table>`;
  const last = Math.min(answer.offset + answer.limit, answer.matched);
  document.getElementById("pager").innerHTML = `<span id="matched">${answer.offset + 1}–${last} of ${answer.matched}
    (${answer.total} jobs)</span> <button id="prev" ${answer.offset ? "" : "disabled"}>previous</button>
    <button id="next" ${last < answer.matched ? "" : "disabled"}>next</button>`;
  document.getElementById("prev").onclick = () => { filters.offset = Math.max(0, filters.offset - filters.limit); refresh(); };
  document.getElementById("next").onclick = () => { filters.offset += filters.limit; refresh(); };
}

async function drawRunTable() {
  const box = document.getElementById("run-table-box");
  if (!box.open) return;
  const table = await getJSON(`${API}/run-table`);
  document.getElementById("run-table").innerHTML = `<table class="runs"><thead><tr>${table.columns.map(c => `<th>${esc(c)}</th>`).join("")}</tr></thead>
    <tbody>${table.rows.map(r => `<tr>${r.map(v => `<td>${fmt(v)}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}

let plotly = null;
function loadPlotly() {  // 4 MB: fetched only for a search's views, never before the jobs are shown
  plotly ??= new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement("script"), {src: "/static/plotly.min.js"});
    script.onload = resolve;
    script.onerror = () => reject(new Error("plotly.min.js could not be loaded"));
    document.head.appendChild(script);
  });
  return plotly;
}

let studyDrawn = "";
async function drawStudy() {
  const study = await getJSON(`${API}/study`);
  const signature = JSON.stringify(study);
  if (signature === studyDrawn) return;
  studyDrawn = signature;
  document.getElementById("study").hidden = false;
  const note = [study.problem, study.importances_note && `Parameter importances: ${study.importances_note}.`];
  document.getElementById("study-note").textContent = note.filter(Boolean).join(" ");
  if (!study.history) return;
  await loadPlotly();
  const options = {displaylogo: false, responsive: true};
  // legends beside the axes, never over the points
  const legend = {x: 1.02, y: 1, xanchor: "left"}, margin = {t: 40, r: 20, b: 45, l: 60};
  const h = study.history;
  Plotly.react("study-history", [
    {x: h.complete.trial, y: h.complete.value, name: `complete (${h.complete.trial.length})`, mode: "markers", type: "scatter"},
    {x: h.pruned.trial, y: h.pruned.value, name: `pruned (${h.pruned.trial.length})`, mode: "markers", type: "scatter",
     marker: {symbol: "x", color: "grey"}},
    {x: h.best_so_far.trial, y: h.best_so_far.value, name: "best so far", mode: "lines", type: "scatter",
     line: {shape: "hv", color: "#d62728"}}],
    {title: {text: `Optimisation history (${esc(study.sampler)} sampler, ${study.pruner === "none" ? "no pruner" : `${esc(study.pruner)} pruner`})`},
     height: 320, margin, legend, xaxis: {title: {text: "trial"}, zeroline: false, dtick: h.complete.trial.length + h.pruned.trial.length > 20 ? undefined : 1},
     yaxis: {title: {text: study.objective.label}}, uirevision: "history"}, options);
  const found = study.importances ? Object.entries(study.importances).reverse() : [];
  document.getElementById("study-importances").hidden = !found.length;
  if (found.length) Plotly.react("study-importances", [{type: "bar", orientation: "h", x: found.map(f => f[1]), y: found.map(f => f[0])}],
    {title: {text: "Parameter importances (fANOVA)"}, height: 140 + 30 * found.length, margin: {...margin, t: 60, l: 160},
     xaxis: {title: {text: "share of the objective's variance"}}}, options);
  document.getElementById("study-parallel").hidden = !study.parallel;
  if (study.parallel) Plotly.react("study-parallel", [{type: "parcoords", dimensions: study.parallel.dimensions,
     line: {color: study.parallel.dimensions.at(-1).values, colorscale: "Viridis", showscale: true}}],
    {title: {text: "Complete trials, parallel coordinates"}, height: 400, margin: {t: 110, r: 60, b: 30, l: 60}}, options);
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const q = query();
    const since = q === asked && version ? `&since=${version}` : "";
    // this experiment's summary only: another experiment's jobs are not read for this page
    const [e, answer] = await Promise.all([getJSON(API), getJSON(`${API}/job-page?${q}${since}`)]);
    drawSummary(e);
    if (!answer.since) rows.clear();
    for (const row of answer.rows) rows.set(row.key, row);
    if (answer.version !== version || q !== asked) {
      version = answer.version;
      asked = q;
      drawControls(answer, e.variants);
      drawJobs(answer);
      drawRunTable();
    }
    // the study's files change when a trial ends, not with the jobs' rows: asked each time (a 304 while unchanged)
    if (e.search) await drawStudy().catch(error => { document.getElementById("study-note").textContent = `not updated: ${error.message}`; });
    document.getElementById("connection").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    document.getElementById("connection").textContent = `not updated: ${error.message}`;
  } finally {
    busy = false;
  }
}

shell();
refresh();
setInterval(refresh, REFRESH_S * 1000);
