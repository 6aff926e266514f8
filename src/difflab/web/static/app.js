// difflab serve: the page. Plain JavaScript, no library, no external resource.
// The server owns every check (a refused request answers {"error": message}, shown here as it is);
// the page only builds the requests, polls the jobs and draws the results and the mask.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], limits: {}, model: null, edit: null, mask: null, painting: false, last: null };
const POLL_MS = 250;

// ------------------------------------------------------------------ requests and errors
function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}
function clearError() { $("error").hidden = true; }

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const why = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(why);
  }
  return body;
}

// ------------------------------------------------------------------ the models and the form
async function loadModels() {
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", "/");  // the server set its cookie: the token leaves the address bar
  }
  const info = await api("/api/models");
  state.models = info.models;
  state.limits = info.limits;
  $("server-info").textContent = `${info.models.length} model(s); at most ${info.limits.max_n} images and `
    + `${info.limits.max_steps} steps per request`;
  const select = $("model");
  select.replaceChildren(...info.models.map((m) => new Option(
    `${m.id} (${m.kind === "clip" ? `${m.frames} frames of ` : ""}${m.width}x${m.height}`
    + `${m.classes ? `, ${m.classes} classes` : ""})`, m.id)));
  $("n").max = info.limits.max_n;
  chooseModel();
}

function chooseModel() {
  const m = state.models.find((x) => x.id === $("model").value) || state.models[0];
  state.model = m;
  const label = $("label");
  if (m.classes) {
    const options = [];
    for (let c = 0; c < m.classes; c++) options.push(new Option(String(c), String(c)));
    options.push(new Option("none (unconditional)", ""));
    label.replaceChildren(...options);
  } else {
    label.replaceChildren(new Option("none", ""));
  }
  $("label-row").hidden = !m.classes;
  $("guidance-row").hidden = !m.classes;
  $("prompt-row").hidden = !m.prompt;  // the hook for text-conditioned models (none yet)
  $("sampler").replaceChildren(...m.samplers.map((s) => new Option(s, s)));
  $("sampler").value = m.sampler;
  $("steps").value = m.steps;
  $("steps").max = m.discrete_steps ? Math.min(m.discrete_steps, state.limits.max_steps) : state.limits.max_steps;
  resetEditor();
}

function sampleFields() {
  const fields = {
    model: state.model.id, sampler: $("sampler").value, steps: Number($("steps").value),
    seed: Number($("seed").value), n: Number($("n").value),
  };
  if (state.model.classes && $("label").value !== "") {
    fields.label = Number($("label").value);
    fields.guidance = Number($("guidance").value);
  }
  if (state.model.prompt && $("prompt").value) fields.prompt = $("prompt").value;
  return fields;
}

async function generate(event) {
  event.preventDefault();
  clearError();
  try {
    const job = await api("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(sampleFields()),
    });
    track(job);
  } catch (err) { showError(err.message); }
}

// ------------------------------------------------------------------ jobs: progress and results
function track(job) {
  const list = $("job-list");
  if (list.querySelector(".hint")) list.replaceChildren();
  const row = document.createElement("div");
  row.className = "job";
  row.dataset.job = job.job;
  const text = document.createElement("span");
  const bar = document.createElement("progress");
  bar.max = job.total;
  bar.value = 0;
  const preview = document.createElement("img");
  preview.alt = "denoised estimate";
  preview.hidden = true;
  row.append(text, preview, bar);
  list.prepend(row);
  const describe = (s) => s.state === "queued" ? `${s.kind}: waiting, position ${s.position} in line`
    : `${s.kind}: step ${s.step} / ${s.total}`;
  text.textContent = describe({ state: "queued", kind: "job", position: job.position });
  const poll = async () => {
    let s;
    try { s = await api(`/api/jobs/${encodeURIComponent(job.job)}`); } catch (err) {
      text.textContent = err.message; text.className = "failed"; return;
    }
    bar.value = s.step;
    if (s.preview) { preview.src = s.preview; preview.hidden = false; }
    if (s.state === "done") {
      text.textContent = `${s.kind}: done (${s.images.length} image${s.images.length > 1 ? "s" : ""})`;
      addToGallery(s);
      return;
    }
    if (s.state === "failed") {
      text.textContent = `${s.kind} failed: ${s.error}`; text.className = "failed";
      showError(s.error);
      return;
    }
    text.textContent = describe(s);
    setTimeout(poll, POLL_MS);
  };
  setTimeout(poll, POLL_MS);
}

function caption(info, k) {
  const parts = [info.model, info.kind];
  if (info.label !== null && info.label !== undefined) parts.push(`class ${info.label}`);
  parts.push(`${info.sampler} ${info.steps}`);
  if (info.guidance !== 1) parts.push(`w ${info.guidance}`);
  if (info.strength !== undefined) parts.push(`strength ${info.strength}`);
  parts.push(`seed ${info.seed} #${k}`);
  return parts.join(", ");
}

function addToGallery(s) {
  const gallery = $("gallery-items");
  s.images.forEach((url, k) => {
    const item = document.createElement("figure");
    item.className = "gallery-item";
    item.dataset.job = s.id;
    const img = document.createElement("img");
    img.src = url;
    img.alt = caption(s.info, k);
    const cap = document.createElement("figcaption");
    cap.textContent = caption(s.info, k);
    const actions = document.createElement("div");
    actions.className = "actions";
    const clip = s.info.media === "image/gif";  // a clip model's result: an animated GIF
    const download = document.createElement("a");
    download.href = url;
    download.download = `difflab-${s.info.model}-${s.info.kind}-seed${s.info.seed}-${k}.${clip ? "gif" : "png"}`;
    download.textContent = clip ? "GIF" : "PNG";
    actions.append(download);
    if (!clip) {  // the editor takes images; a clip is generated only
      const edit = document.createElement("button");
      edit.type = "button";
      edit.className = "edit-btn";
      edit.textContent = "Edit";
      edit.addEventListener("click", () => loadIntoEditor(url));
      actions.append(edit);
    }
    item.append(img, actions, cap);
    gallery.prepend(item);
  });
}

// ------------------------------------------------------------------ the editor: image and mask
// The image is kept at the model's own size (what the server takes); the canvas shows it enlarged,
// with the mask (1 = fill) over it in red. A pixel is painted when its centre lies within the brush
// radius (in the model's pixels) of the pointer.
function resetEditor() {
  const m = state.model;
  state.edit = null;
  state.mask = new Uint8Array(m.width * m.height);
  const canvas = $("edit-canvas");
  const scale = Math.max(1, Math.floor(256 / Math.max(m.width, m.height)));
  canvas.width = m.width * scale;
  canvas.height = m.height * scale;
  canvas.style.height = `${256 * m.height / m.width}px`;
  $("brush").max = Math.max(4, Math.ceil(Math.max(m.width, m.height) / 4));
  $("brush").value = Math.max(1, Math.round(Math.max(m.width, m.height) / 8));
  draw();
}

function toModelSize(source) {
  // the source drawn at the model's size; a 1-channel model sees luminance (PIL's "L": 299/587/114)
  const m = state.model;
  const c = document.createElement("canvas");
  c.width = m.width;
  c.height = m.height;
  const ctx = c.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(source, 0, 0, m.width, m.height);
  const data = ctx.getImageData(0, 0, m.width, m.height);
  if (m.channels === 1) {
    const p = data.data;
    for (let i = 0; i < p.length; i += 4) {
      const l = Math.floor((p[i] * 299 + p[i + 1] * 587 + p[i + 2] * 114 + 500) / 1000);
      p[i] = p[i + 1] = p[i + 2] = l;
      p[i + 3] = 255;
    }
  }
  return data;
}

function loadIntoEditor(url) {
  const img = new Image();
  img.onload = () => {
    state.edit = toModelSize(img);
    state.mask.fill(0);
    draw();
    $("editor").scrollIntoView({ block: "nearest" });
  };
  img.onerror = () => showError("this file is not an image the browser can read");
  img.src = url;
}

function draw() {
  const m = state.model;
  const canvas = $("edit-canvas");
  const ctx = canvas.getContext("2d");
  const sx = canvas.width / m.width, sy = canvas.height / m.height;
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (state.edit) {
    const small = document.createElement("canvas");
    small.width = m.width;
    small.height = m.height;
    small.getContext("2d").putImageData(state.edit, 0, 0);
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  }
  ctx.fillStyle = "rgba(255, 40, 80, 0.55)";
  for (let y = 0; y < m.height; y++) {
    for (let x = 0; x < m.width; x++) {
      if (state.mask[y * m.width + x]) ctx.fillRect(x * sx, y * sy, sx, sy);
    }
  }
  const clips = state.model.kind === "clip";  // editing takes an image model
  $("upload").disabled = clips;
  $("edit-note").hidden = !clips;
  $("inpaint").disabled = clips || !state.edit || !state.mask.some((v) => v);
  $("img2img").disabled = clips || !state.edit;
}

function modelPoint(event) {
  // the pointer in the model's pixel coordinates (continuous: pixel (i, j) spans [i, i+1) x [j, j+1))
  const m = state.model;
  const rect = $("edit-canvas").getBoundingClientRect();
  return [(event.clientX - rect.left) / rect.width * m.width, (event.clientY - rect.top) / rect.height * m.height];
}

function stamp(x, y, r) {
  const m = state.model;
  for (let j = Math.floor(y - r); j <= Math.ceil(y + r); j++) {
    for (let i = Math.floor(x - r); i <= Math.ceil(x + r); i++) {
      if (i < 0 || j < 0 || i >= m.width || j >= m.height) continue;
      if ((i + 0.5 - x) ** 2 + (j + 0.5 - y) ** 2 <= r * r) state.mask[j * m.width + i] = 1;
    }
  }
}

function paintAt(event) {
  // a stroke from the last point to this one, stamped every quarter pixel: a fast pointer
  // reports few points, and the mask must not have gaps between them
  const [x, y] = modelPoint(event);
  const [x0, y0] = state.last || [x, y];
  const r = Number($("brush").value);
  const n = Math.max(1, Math.ceil(4 * Math.hypot(x - x0, y - y0)));
  for (let k = 1; k <= n; k++) stamp(x0 + (x - x0) * k / n, y0 + (y - y0) * k / n, r);
  state.last = [x, y];
  draw();
}

function pngOf(imageData) {
  const c = document.createElement("canvas");
  c.width = imageData.width;
  c.height = imageData.height;
  c.getContext("2d").putImageData(imageData, 0, 0);
  return new Promise((resolve) => c.toBlob(resolve, "image/png"));
}

function maskImage() {
  const m = state.model;
  const data = new ImageData(m.width, m.height);
  for (let k = 0; k < state.mask.length; k++) {
    const v = state.mask[k] ? 255 : 0;  // white = fill, as in `difflab inpaint`
    data.data.set([v, v, v, 255], 4 * k);
  }
  return data;
}

async function edit(kind) {
  clearError();
  if (!state.edit) { showError("load an image first (a file, or Edit under a result)"); return; }
  const form = new FormData();
  const fields = sampleFields();
  for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
  form.append("image", await pngOf(state.edit), "image.png");
  if (kind === "inpaint") form.append("mask", await pngOf(maskImage()), "mask.png");
  else form.append("strength", $("strength").value);
  try {
    track(await api(`/api/${kind}`, { method: "POST", body: form }));
  } catch (err) { showError(err.message); }
}

// ------------------------------------------------------------------ wiring
function init() {
  $("sample-form").addEventListener("submit", generate);
  $("model").addEventListener("change", chooseModel);
  $("guidance").addEventListener("input", () => { $("guidance-value").textContent = $("guidance").value; });
  $("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
  $("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (file) loadIntoEditor(URL.createObjectURL(file));
  });
  $("clear-mask").addEventListener("click", () => { state.mask.fill(0); draw(); });
  $("inpaint").addEventListener("click", () => edit("inpaint"));
  $("img2img").addEventListener("click", () => edit("img2img"));
  const canvas = $("edit-canvas");
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.edit) return;
    state.painting = true;
    state.last = null;
    canvas.setPointerCapture(e.pointerId);
    paintAt(e);
  });
  canvas.addEventListener("pointermove", (e) => { if (state.painting) paintAt(e); });
  const stop = () => { state.painting = false; state.last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  loadModels().catch((err) => showError(err.message));
}

document.addEventListener("DOMContentLoaded", init);
