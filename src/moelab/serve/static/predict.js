// The prediction page: pick an experiment, draw (or upload, or type) an input, and see every
// variant's answer, its class probabilities and the experts the input went to.
"use strict";

const params = new URLSearchParams(location.search);
const select = document.getElementById("experiment");
const runsSelect = document.getElementById("runs");
const pad = document.getElementById("pad");
const context = pad.getContext("2d");
let current = null;     // the chosen experiment's /runs answer
let strokes = 0;        // strokes drawn since the pad was cleared
let asking = 0;         // a counter, so that only the latest answer is shown

function message(html, isError = false) {
  const element = document.getElementById("message");
  element.innerHTML = html;
  element.className = isError ? "error" : "muted";
}

function clearPad() {
  context.fillStyle = "#fff";
  context.fillRect(0, 0, pad.width, pad.height);
  strokes = 0;
}

// drawing: pointer events cover the mouse, a pen and touch
let drawing = false;
function position(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
}
pad.addEventListener("pointerdown", event => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  const [x, y] = position(event);
  context.lineWidth = 22; context.lineCap = "round"; context.lineJoin = "round"; context.strokeStyle = "#000";
  context.beginPath(); context.moveTo(x, y); context.lineTo(x + 0.1, y + 0.1); context.stroke();
});
pad.addEventListener("pointermove", event => {
  if (!drawing) return;
  const [x, y] = position(event);
  context.lineTo(x, y); context.stroke();
});
function endStroke() {
  if (!drawing) return;
  drawing = false;
  strokes += 1;
  askAboutDrawing();
}
function askAboutDrawing() {
  pad.toBlob(blob => askWithFiles([new File([blob], "drawing.png", {type: "image/png"})]), "image/png");
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  document.getElementById("answers").innerHTML = "";
  document.getElementById("seen").innerHTML = "";
  message("");
});
document.getElementById("upload").addEventListener("change", event => {
  if (event.target.files.length) askWithFiles([...event.target.files]);
});
document.getElementById("send").addEventListener("click", () => {
  let inputs;
  try { inputs = JSON.parse(document.getElementById("inputs").value); }
  catch (error) { message(`The inputs are not valid JSON: ${esc(error.message)}`, true); return; }
  ask(JSON.stringify({experiment: current.experiment, inputs, ...selection()}), {"Content-Type": "application/json"});
});

function selection() {
  const value = runsSelect.value;
  return value ? {job: value} : {};
}

function askWithFiles(files) {
  const form = new FormData();
  form.append("experiment", current.experiment);
  const chosen = selection();
  if (chosen.job) form.append("job", chosen.job);
  for (const file of files) form.append("image", file, file.name);
  ask(form, {});
}

async function ask(body, headers) {
  const ticket = ++asking;
  message("Asking…");
  try {
    const answer = await getJSON("/api/predict", {method: "POST", body, headers});
    if (ticket !== asking) return;
    message(`${answer.count} input(s), ${answer.runs.length} run(s) answered.`);
    showSeen(answer);
    showAnswers(answer);
  } catch (error) {
    if (ticket !== asking) return;
    message(esc(error.message), true);
  }
}

// what the models were given: the picture converted to the dataset's raw input
function showSeen(answer) {
  const element = document.getElementById("seen");
  element.innerHTML = "";
  if (!answer.inputs || !answer.input_format.image) return;
  const fmt = answer.input_format;
  const wrap = document.createElement("div");
  wrap.className = "seen";
  wrap.innerHTML = `<span class="muted">what the models saw (${fmt.shape.join("x")}, values ${fmt.low}-${fmt.high}):</span>`;
  for (const raw of answer.inputs.slice(0, 8)) wrap.appendChild(rawCanvas(raw, fmt));
  element.appendChild(wrap);
}

function rawCanvas(raw, fmt) {
  const rgb = fmt.channels === 3;
  const height = rgb ? raw[0].length : raw.length, width = rgb ? raw[0][0].length : raw[0].length;
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  canvas.style.width = `${Math.max(64, width * 4)}px`;
  const image = canvas.getContext("2d").createImageData(width, height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    const scale = v => Math.round(255 * (v - fmt.low) / (fmt.high - fmt.low));
    const values = rgb ? [scale(raw[0][y][x]), scale(raw[1][y][x]), scale(raw[2][y][x])] : Array(3).fill(255 - scale(raw[y][x]));
    image.data.set([...values, 255], 4 * (y * width + x));
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas;
}

function className(answer, index) {
  return answer.classes ? `${index} ${answer.classes[index]}` : String(index);
}

function expertsHtml(answer, p) {
  if (!p.experts) return `<div class="experts muted">dense model: no experts</div>`;
  const total = answer.num_experts ?? p.experts.length;
  const how = p.experts.length < total ? `top-${p.experts.length} of ${total} experts` : `all ${total} experts, by gate weight`;
  const chips = p.experts.map((e, i) => `<span class="expert" data-expert="${e}">expert ${e} · ${fmt(p.expert_weights[i], 2)}</span>`).join("");
  return `<div class="experts"><span class="muted">${how}:</span><br>${chips}</div>`;
}

function showAnswers(answer) {
  const element = document.getElementById("answers");
  if (answer.count === 1) {
    element.innerHTML = answer.runs.map(run => {
      const p = run.predictions[0];
      let body;
      if (p.probabilities) {
        const top = Math.max(...p.probabilities.map(v => v ?? 0));
        body = `<div class="predicted" data-predicted="${p.predicted}">${esc(className(run, p.predicted))}</div>
          <div class="bars">${p.probabilities.map((v, c) => `<span>${esc(run.classes ? run.classes[c].slice(0, 6) : c)}</span>
            <div><div class="bar ${v === top ? "top" : ""}" style="width:${(100 * (v ?? 0)).toFixed(1)}%"></div></div><span>${fmt(v, 3)}</span>`).join("")}</div>`;
      } else {
        body = `<div>outputs: ${p.outputs.map(v => fmt(v, 3)).join(", ")}</div>`;
      }
      return `<div class="answer" data-variant="${esc(run.variant)}"><h3>${esc(run.variant)} <span class="muted">${esc(run.model)}</span></h3>
        <div class="muted">job ${esc(run.job)} · ${esc(run.selected)}</div>${body}${expertsHtml(run, p)}</div>`;
    }).join("");
    return;
  }
  const head = answer.runs.map(run => `<th>${esc(run.variant)}</th>`).join("");
  const rows = answer.runs[0].predictions.map((_, i) => `<tr><td>${esc(answer.runs[0].predictions[i].input)}</td>${answer.runs.map(run => {
    const p = run.predictions[i];
    const what = p.probabilities ? `<b>${esc(className(run, p.predicted))}</b> (${fmt(p.probabilities[p.predicted], 3)})` : p.outputs.map(v => fmt(v, 3)).join(", ");
    const experts = p.experts ? `<div class="muted">experts ${p.experts.join(", ")}</div>` : "";
    return `<td>${what}${experts}</td>`;
  }).join("")}</tr>`).join("");
  element.innerHTML = `<div class="panel" style="width:100%"><table><thead><tr><th>input</th>${head}</tr></thead><tbody>${rows}</tbody></table></div>`;
}

async function chooseExperiment(name) {
  current = null;
  document.getElementById("answers").innerHTML = "";
  document.getElementById("seen").innerHTML = "";
  message("Loading the experiment's runs…");
  try {
    const info = await getJSON(`/api/experiments/${encodeURIComponent(name)}/runs`);
    if (info.problem) { message(esc(info.problem), true); return; }
    current = info;
    const jobs = [...new Set(info.runs.map(r => r.job))];
    runsSelect.innerHTML = `<option value="">the best run of each variant (by validation ${esc(info.default[0].metric || "")})</option>` +
      jobs.map(job => `<option value="${esc(job)}">every variant of job ${esc(job)} (${esc(Object.entries(info.runs.find(r => r.job === job).grid_values).map(([k, v]) => `${k}=${v}`).join(" "))})</option>`).join("");
    const fmt_ = info.input_format;
    document.getElementById("format").textContent =
      `${info.dataset}: ${fmt_.description}; ${info.default.length} variant(s): ${info.default.map(r => r.variant).join(", ")}`;
    document.getElementById("draw-input").hidden = !fmt_.image;
    document.getElementById("array-input").hidden = fmt_.image;
    if (!fmt_.image) {
      const example = fmt_.shape.length === 1 ? [Array(fmt_.shape[0]).fill((fmt_.low + fmt_.high) / 2)] : [];
      document.getElementById("inputs").value = JSON.stringify(example);
    }
    clearPad();
    message(fmt_.image ? "Draw something." : "Edit the inputs and press Predict.");
  } catch (error) {
    message(esc(error.message), true);
  }
}

async function start() {
  clearPad();
  try {
    const listing = await getJSON("/api/experiments");
    const usable = listing.experiments.filter(e => e.runs_done > 0);
    if (!usable.length) { message("No experiment has finished runs yet.", true); return; }
    select.innerHTML = usable.map(e => `<option value="${esc(e.name)}">${esc(e.name)} (${esc(e.datasets.join(", "))})</option>`).join("");
    const wanted = params.get("experiment");
    if (wanted && usable.some(e => e.name === wanted)) select.value = wanted;
    await chooseExperiment(select.value);
  } catch (error) {
    message(esc(error.message), true);
  }
}

select.addEventListener("change", () => chooseExperiment(select.value));
runsSelect.addEventListener("change", () => { if (strokes) askAboutDrawing(); });
start();
