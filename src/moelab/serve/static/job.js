// One job: each variant's epoch n of N, elapsed time and ETA, its router health, and its curves
// overlaid per variant in Plotly charts (zoom, hover values, legend selection kept across refreshes).
"use strict";

const REFRESH_S = Math.max(0.5, Number(new URLSearchParams(location.search).get("refresh")) || 3);
const [, , NAME, , KEY] = location.pathname.split("/").map(decodeURIComponent);
const API = `/api/experiments/${encodeURIComponent(NAME)}/jobs/${encodeURIComponent(KEY)}`;
const HEALTH = ["load_cv", "max_vio", "dead_expert_fraction", "effective_experts"];
let drawn = "";

function shell() {
  document.getElementById("page").innerHTML = `<section class="panel"><h2><a href="/experiments/${encodeURIComponent(NAME)}">${esc(NAME)}</a>
      / <code>${esc(KEY)}</code></h2><div id="job-head"></div><div id="variants"></div></section>
    <section class="panel"><div id="charts"></div></section>`;
}

function drawHead(job) {
  const grid = Object.entries(job.grid_values).map(([k, v]) => `${esc(k)}=${esc(JSON.stringify(v))}`).join(" ") +
    (job.processes > 1 ? ` <span class="muted">(${esc(job.processes)} processes)</span>` : "");
  document.getElementById("job-head").innerHTML = `<p>${stateBadge(job.state, job.shown)} ${grid} seed ${esc(job.seed)}
    <span class="muted">${esc(job.node || "")}</span> ${job.error ? `<span class="error">${esc(job.error)}</span>` : ""}</p>`;
  const health = HEALTH.filter(h => job.variants.some(v => h in v));
  document.getElementById("variants").innerHTML = `<table class="jobs"><thead><tr><th>variant</th><th>state</th><th>epoch</th>
      <th>elapsed</th><th>ETA</th><th>best val</th>${health.map(h => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>
    ${job.variants.map(v => `<tr data-variant="${esc(v.name)}"><td>${esc(v.name)}</td><td>${stateBadge(v.state, v.shown)}</td>
      <td class="epochs">${v.epochs} of ${v.epochs_total ?? "?"}</td><td class="num">${duration(v.elapsed_s)}</td>
      <td class="num">${duration(v.eta_s)}</td><td class="num">${fmt(v.best_val)}</td>${health.map(h => `<td class="num">${fmt(v[h], 3)}</td>`).join("")}</tr>`).join("")}
    </tbody></table>`;
}

// one chart per metric column, every variant a line; uirevision keeps the reader's zoom and selection
function drawCharts(job) {
  const columns = [...new Set(job.variants.flatMap(v => Object.keys(v.curves || {})))].filter(c => c !== "epoch");
  const box = document.getElementById("charts");
  for (const column of columns) {
    let chart = document.getElementById(`chart-${column}`);
    if (!chart) {
      chart = document.createElement("div");
      chart.id = `chart-${column}`;
      chart.className = "chart";
      chart.dataset.column = column;
      box.appendChild(chart);
    }
    const traces = job.variants.filter(v => v.curves && v.curves[column]).map(v => ({
      x: v.curves.epoch, y: v.curves[column], name: v.name, mode: "lines+markers", type: "scatter"}));
    Plotly.react(chart, traces, {title: {text: column}, height: 300, margin: {t: 40, r: 20, b: 40, l: 60},
      xaxis: {title: {text: "epoch"}}, yaxis: {title: {text: column}}, hovermode: "x unified", uirevision: column},
      {displaylogo: false, responsive: true});
  }
}

async function refresh() {
  try {
    const job = await getJSON(API);
    const signature = JSON.stringify(job);
    if (signature !== drawn) {
      drawn = signature;
      drawHead(job);
      drawCharts(job);
    }
    document.getElementById("connection").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    document.getElementById("connection").textContent = `not updated: ${error.message}`;
  }
}

shell();
refresh();
setInterval(refresh, REFRESH_S * 1000);
