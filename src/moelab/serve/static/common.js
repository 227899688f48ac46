// Shared by the dashboard and the prediction page: fetching the JSON API, escaping, numbers, curves.
"use strict";

async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status);
  }
  return body;
}

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "";
  if (typeof value !== "number") return esc(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  return abs !== 0 && (abs < 1e-3 || abs >= 1e5) ? value.toExponential(2) : value.toFixed(digits);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  return `${Math.floor(s / 3600)}:${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

// `shown`: the word `status` prints for the state (the server's JobState.shown), e.g. NOT_STARTED
function stateBadge(state, shown) {
  return `<span class="state ${esc(state)}">${esc(shown)}</span>`;
}

// A small inline SVG of a variant's curves: the validation metric and the training loss, each
// scaled to its own range (the numbers are in the tooltip and beside the plot).
function curveSvg(curve, width = 200, height = 54) {
  if (!curve || !curve.epoch || curve.epoch.length === 0) return "";
  const pad = 3;
  const epochs = curve.epoch.map((e, i) => e ?? i);
  const first = Math.min(...epochs), last = Math.max(...epochs);
  const x = e => pad + (last > first ? (e - first) / (last - first) : 0.5) * (width - 2 * pad);
  function line(values, colour, label) {
    const points = values.map((v, i) => [epochs[i], v]).filter(p => p[1] !== null && Number.isFinite(p[1]));
    if (points.length === 0) return "";
    const ys = points.map(p => p[1]);
    const low = Math.min(...ys), high = Math.max(...ys);
    const y = v => height - pad - (high > low ? (v - low) / (high - low) : 0.5) * (height - 2 * pad);
    const path = points.map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    const dot = points.length === 1 ? `<circle cx="${x(points[0][0]).toFixed(1)}" cy="${y(points[0][1]).toFixed(1)}" r="2" fill="${colour}"/>` : "";
    return `<polyline class="${label}" fill="none" stroke="${colour}" stroke-width="1.6" points="${path}"/>${dot}`;
  }
  const metric = curve.metric || "metric";
  return `<svg class="curve" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img">` +
    `<title>${esc(curve.epoch.length)} epochs: val ${esc(metric)} (blue), train loss (grey)</title>` +
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#fff" stroke="#e3e6ec"/>` +
    line(curve.train_loss, "#9ca3af", "train-loss") + line(curve.val_metric, "#2563eb", "val-metric") + `</svg>`;
}
