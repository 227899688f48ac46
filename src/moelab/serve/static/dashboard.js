// The dashboard: every experiment, its jobs' states and curves, failures and the report's files.
// Polls the JSON API every few seconds (?refresh=SECONDS); a part of the page is redrawn only when
// its data changed, so open tracebacks, scrolling and loaded plots stay put.
"use strict";

const REFRESH_S = Math.max(0.5, Number(new URLSearchParams(location.search).get("refresh")) || 3);
const closedExperiments = new Set();  // experiments the reader folded
const openDetails = new Set();        // tracebacks and tables the reader opened
const drawn = new Map();              // part id -> the JSON it was drawn from
const summaryRequested = new Map();   // experiment -> tables signature the summary table was read for

document.addEventListener("toggle", event => {
  const element = event.target;
  if (!element.dataset || !element.dataset.key) return;
  const key = element.dataset.key;
  if (element.classList.contains("experiment")) {
    element.open ? closedExperiments.delete(key) : closedExperiments.add(key);
    if (element.open) refresh();
  } else {
    element.open ? openDetails.add(key) : openDetails.delete(key);
  }
}, true);

function setPart(id, data, render) {
  const element = document.getElementById(id);
  if (!element) return;
  const signature = JSON.stringify(data);
  if (drawn.get(id) === signature) return;
  drawn.set(id, signature);
  element.innerHTML = render(data);
}

function experimentShell(name) {
  const key = `exp:${name}`;
  return `<details class="experiment panel" id="exp-${esc(name)}" data-key="${esc(name)}" ${closedExperiments.has(name) ? "" : "open"}>
    <summary id="head-${esc(name)}"></summary>
    <div id="problems-${esc(name)}"></div>
    <div id="jobs-${esc(name)}"><p class="muted">Reading jobs…</p></div>
    <div id="report-${esc(name)}"></div>
    <div id="summary-${esc(name)}" data-for="${esc(key)}"></div>
  </details>`;
}

function renderHead(e) {
  const states = Object.entries(e.states).map(([s, n]) => `<span class="chip">${stateBadge(s, e.shown_states[s])} ${n}</span>`).join(" ");
  const last = e.last_launch;
  const commit = last && last.git_commit
    ? ` at ${esc(last.git_commit.slice(0, 12))}${last.git_dirty ? " (with uncommitted changes)" : ""}` : "";
  const launch = last ? `last launch ${esc(last.time || "")} (${esc(last.mode || "")})${commit}` : "";
  const links = [e.report ? `<a href="${esc(e.report)}" target="_blank">report</a>` : `<span class="muted">no report yet</span>`,
                 e.runs_done ? `<a href="/predict?experiment=${encodeURIComponent(e.name)}">predict</a>` : ""].filter(Boolean).join(" · ");
  return `<h2><a href="/experiments/${encodeURIComponent(e.name)}">${esc(e.name)}</a></h2> <span class="chip">${esc(e.datasets.join(", ") || "?")}</span>
    <span>${e.jobs} job(s)</span> ${states}
    <span class="chip">runs done ${e.runs_done}/${e.runs_total}</span>
    <span class="muted">${launch}</span> <span>${links}</span>`;
}

function renderProblems(e) {
  const lines = [...e.queue_problems, ...e.problems];
  if (!lines.length) return "";
  const key = `problems:${e.name}`;
  return `<details data-key="${esc(key)}" ${openDetails.has(key) ? "open" : ""}><summary class="muted">${lines.length} problem(s) reading this experiment</summary>
    <ul class="problems">${lines.map(l => `<li>${esc(l)}</li>`).join("")}</ul></details>`;
}

function renderJobs(data) {
  if (!data.jobs.length) return `<p class="muted">No jobs yet.</p>`;
  const rows = data.jobs.map(job => {
    const grid = Object.entries(job.grid_values).map(([k, v]) => `${esc(k)}=${esc(JSON.stringify(v))}`).join(" ") +
      (job.processes > 1 ? ` <span class="muted">(${esc(job.processes)} processes)</span>` : "");
    const error = job.error ? `<div class="error">${esc(job.error)}</div>` : "";
    const note = job.queue_note && job.queue_state ? `<div class="muted">${esc(job.queue_note)}</div>` : "";
    const details = (job.details || []).map(d => `<div class="muted">${esc(d)}</div>`).join("");
    const problems = job.problems.length ? `<div class="problems">${job.problems.map(p => `<div class="muted">${esc(p)}</div>`).join("")}</div>` : "";
    return `<tr class="job" data-job="${esc(job.key)}">
        <td><code>${esc(job.key)}</code></td><td>${grid}</td>
        <td class="job-state" data-state="${esc(job.state)}">${stateBadge(job.state, job.shown)}</td>
        <td class="num">${job.variants_done}/${job.variants_total}</td><td class="num">${job.restarts}</td>
        <td>${esc(job.node || "")}</td><td class="num">${duration(job.elapsed_s)}</td>
        <td>${error}${note}${details}${problems}</td></tr>
      <tr class="variants"><td></td><td colspan="7"><div class="variant-list">${job.variants.map(v => renderVariant(job, v)).join("")}</div>
        ${tracebacks(job)}</td></tr>`;
  }).join("");
  return `<table><thead><tr><th>job</th><th>grid values</th><th>state</th><th>variants</th><th>restarts</th><th>node</th><th>elapsed</th><th>errors</th></tr></thead>
    <tbody>${rows}</tbody></table>
    <div class="legend">curves: <i style="background:#2563eb"></i>validation metric <i style="background:#9ca3af"></i>training loss, each on its own scale</div>`;
}

function renderVariant(job, v) {
  const metric = job.metric || "metric";
  const numbers = [v.epochs ? `${v.epochs} ep` : "", v.best_val !== null ? `best val ${esc(metric)} ${fmt(v.best_val)}` : "",
                   v.test !== null ? `test ${fmt(v.test)}` : ""].filter(Boolean).join(" · ");
  const last = v.last || {};
  // router health of the last epoch (MoE variants): the balance figures the report's expert table shows
  const health = [["train_max_vio", "MaxVio"], ["train_effective_experts", "effective experts"],
                  ["train_dead_expert_fraction", "dead"]]
    .filter(([key]) => last[key] !== undefined && last[key] !== null)
    .map(([key, label]) => `${label} ${fmt(last[key])}`).join(" · ");
  return `<div class="variant ${esc(v.state)}" data-variant="${esc(v.name)}">
      <div class="head"><b>${esc(v.name)}</b> <span class="muted">${esc(v.model)}</span> ${stateBadge(v.state, v.shown)}</div>
      <div class="muted">${numbers || "no epochs yet"}</div>
      ${health ? `<div class="muted router-health">${esc(health)}</div>` : ""}
      ${curveSvg(v.curve)}
      ${v.error ? `<div class="error">${esc(v.error)}</div>` : ""}
    </div>`;
}

function tracebacks(job) {
  const parts = job.variants.filter(v => v.traceback).map(v => [`${job.key}:${v.name}`, v.name, v.traceback]);
  if (job.traceback) parts.push([`${job.key}:job`, "job", job.traceback]);
  return parts.map(([key, name, text]) => `<details data-key="${esc(key)}" ${openDetails.has(key) ? "open" : ""}>
      <summary class="error">traceback of ${esc(name)}</summary><pre>${esc(text)}</pre></details>`).join("");
}

function renderReport(e) {
  if (!e.tables.length && !e.plots.length) return `<p class="muted">No tables or plots yet: <code>python run/create-plots.py</code> writes them (also at the end of run_here).</p>`;
  const tables = e.tables.map(t => `<a href="${esc(t.url)}" target="_blank">${esc(t.name)}</a>`).join(" · ");
  const key = `plots:${e.name}`;
  const plots = e.plots.map(p => `<figure><a href="${esc(p.url)}" target="_blank"><img loading="lazy" src="${esc(p.url)}" alt="${esc(p.name)}"></a><figcaption>${esc(p.name)}</figcaption></figure>`).join("");
  return `<h3>Report</h3><p>Tables: ${tables || "none"}</p>
    <details data-key="${esc(key)}" ${openDetails.has(key) ? "open" : ""}><summary>${e.plots.length} plot(s)</summary><div class="plots">${plots}</div></details>`;
}

function renderSummary(data) {
  if (!data || !data.columns.length) return data && data.problem ? `<p class="muted">${esc(data.problem)}</p>` : "";
  const key = `summary:${data.experiment}`;
  const head = data.columns.map(c => `<th>${esc(c)}</th>`).join("");
  const rows = data.rows.map(r => `<tr>${r.map(v => `<td class="${typeof v === "number" ? "num" : ""}">${fmt(v)}</td>`).join("")}</tr>`).join("");
  return `<details data-key="${esc(key)}" ${openDetails.has(key) ? "open" : ""}><summary>summary table (${data.rows.length} rows)</summary>
    <div class="summary-table"><table><thead><tr>${head}</tr></thead><tbody>${rows}</tbody></table></div></details>`;
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  const status = document.getElementById("connection");
  try {
    const listing = await getJSON("/api/experiments");
    const container = document.getElementById("experiments");
    const names = listing.experiments.map(e => e.name);
    if (!names.length) {
      setPart("experiments", {empty: true}, () => `<p class="muted">No experiments yet: launch one with <code>bash run/launch_experiment.sh run_here</code>; it appears here by itself.</p>`);
    } else if (drawn.get("experiments") !== JSON.stringify(names)) {
      drawn.set("experiments", JSON.stringify(names));
      for (const id of [...drawn.keys()]) if (id !== "experiments") drawn.delete(id);
      container.innerHTML = names.map(experimentShell).join("");
    }
    for (const e of listing.experiments) {
      setPart(`head-${e.name}`, e, renderHead);
      setPart(`problems-${e.name}`, e, renderProblems);
      setPart(`report-${e.name}`, {tables: e.tables, plots: e.plots, name: e.name}, renderReport);
      if (closedExperiments.has(e.name)) continue;
      const jobs = await getJSON(`/api/experiments/${encodeURIComponent(e.name)}/jobs`);
      setPart(`jobs-${e.name}`, jobs, renderJobs);
      const tablesSignature = JSON.stringify(e.tables);
      if (summaryRequested.get(e.name) !== tablesSignature) {
        summaryRequested.set(e.name, tablesSignature);
        const summary = await getJSON(`/api/experiments/${encodeURIComponent(e.name)}/summary`);
        setPart(`summary-${e.name}`, summary, renderSummary);
      }
    }
    status.textContent = `updated ${new Date().toLocaleTimeString()} · every ${REFRESH_S} s`;
    status.className = "";
  } catch (error) {
    status.textContent = `cannot reach the server (${error.message}); retrying`;
    status.className = "lost";
  } finally {
    busy = false;
  }
}

refresh();
setInterval(refresh, REFRESH_S * 1000);
