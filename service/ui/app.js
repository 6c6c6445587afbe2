// The explorer's shared state (model, image, class) and the Explain view.
import { getJson, modelPath, pngUrl, postImage, withStatus, blobToBase64 } from "./api.js";
import { initGraph, showGraph } from "./graph.js";
import { initActivations, showActivations } from "./activations.js";
import { initJobs, showJobs } from "./jobs.js";

const $ = (id) => document.getElementById(id);

export const state = {
  model: null, // ModelInfo of the chosen model
  layers: [], // GET /layers: spatial candidates
  methods: [], // from the OpenAPI document
  image: null, // Blob of the current image
  imageB64: null,
  imageUrl: null,
  predictions: [],
  target: null, // class index
  listeners: [],
};

export function onChange(listener) {
  state.listeners.push(listener);
}

function changed(what) {
  for (const listener of state.listeners) listener(what);
}

export function imageLoaded() {
  return state.image !== null && state.model !== null;
}

export function labelOf(index) {
  const labels = state.model?.card?.labels;
  return labels && labels[index] !== undefined ? labels[index] : `class ${index}`;
}

export function downloadLink(url, filename) {
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.textContent = "download";
  return a;
}

// ---- model and image -----------------------------------------------------------------

async function loadModels() {
  const list = await withStatus($("image-status"), "Loading models…", () =>
    getJson("/v1/models?verbose=true"));
  if (!list) return;
  const select = $("model");
  select.replaceChildren(...list.models.map((m) => new Option(`${m.name}@${m.version}`, m.name)));
  state.allModels = list.models;
  if (list.models.length === 0) {
    $("image-status").className = "status error";
    $("image-status").textContent = "The store has no model: register one (docs/api.md).";
    return;
  }
  await chooseModel(list.models[0].name);
}

async function chooseModel(name) {
  state.model = state.allModels.find((m) => m.name === name);
  const card = state.model.card;
  const input = card.input || {};
  const labels = card.labels ? `${card.labels.length} labels` : "no labels";
  $("card").textContent = [card.description || card.name, `${input.height}×${input.width}`,
    labels, `default layer ${state.model.default_layer}`].filter(Boolean).join(" · ");
  const layers = await withStatus($("image-status"), "Loading layers…", () =>
    getJson(`${modelPath(name)}/layers`));
  state.layers = layers ? layers.layers.filter((l) => l.spatial) : [];
  changed("model");
  if (state.image) await predict();
}

async function loadSamples() {
  const samples = await getJson("/v1/samples").catch(() => ({ samples: [] }));
  $("samples").replaceChildren(...samples.samples.map((name) => {
    const button = document.createElement("button");
    button.type = "button";
    button.title = `sample ${name}`;
    button.dataset.sample = name;
    const img = document.createElement("img");
    img.src = `/v1/samples/${encodeURIComponent(name)}`;
    img.alt = name;
    button.append(img);
    button.addEventListener("click", async () => {
      const response = await fetch(`/v1/samples/${encodeURIComponent(name)}`);
      const blob = await response.blob();
      await setImage(new File([blob], name, { type: blob.type }));
      for (const b of $("samples").children) b.setAttribute("aria-pressed", String(b === button));
    });
    return button;
  }));
}

async function setImage(file) {
  state.image = file;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = URL.createObjectURL(file);
  state.imageB64 = await blobToBase64(file);
  $("thumb").src = state.imageUrl;
  $("thumb").hidden = false;
  $("drop-text").textContent = file.name || "image";
  await predict();
}

async function predict() {
  state.predictions = [];
  state.target = null;
  $("predictions").replaceChildren();
  const result = await withStatus($("image-status"), "Predicting…", () =>
    postImage(`${modelPath(state.model.name)}/predict`, state.image, { top_k: 5 }));
  if (result) {
    state.predictions = result.predictions[0];
    state.target = state.predictions[0].index;
  }
  renderPredictions();
  changed("image");
}

function renderPredictions() {
  $("predictions").replaceChildren(...state.predictions.map((p) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = p.index;
    button.setAttribute("aria-pressed", String(p.index === state.target));
    button.textContent = `${p.label ?? p.index} — ${(100 * p.probability).toFixed(1)}%`;
    button.addEventListener("click", () => setTarget(p.index));
    li.append(button);
    return li;
  }));
  const select = $("target");
  const options = state.predictions.map((p) => new Option(`${p.label ?? p.index}`, p.index));
  const labels = state.model?.card?.labels || [];
  const top = new Set(state.predictions.map((p) => p.index));
  labels.forEach((label, i) => { if (!top.has(i)) options.push(new Option(`${label}`, i)); });
  select.replaceChildren(...options);
  if (state.target !== null) select.value = String(state.target);
}

export function setTarget(index) {
  state.target = Number(index);
  renderPredictions();
  changed("target");
}

function initImageBar() {
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) setImage(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) setImage(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("model").addEventListener("change", (e) => chooseModel(e.target.value));
  $("target").addEventListener("change", (e) => setTarget(e.target.value));
}

// ---- Explain view: one or two panels ---------------------------------------------------

function option(value, text) {
  return new Option(text ?? value, value);
}

function makePanel(index) {
  const panel = document.createElement("div");
  panel.className = "panel";
  panel.dataset.panel = index;
  panel.innerHTML = `
    <div class="controls">
      <label>Method <select class="method"></select></label>
      <label>Layer <select class="layer"></select></label>
      <label>Alpha <input class="alpha" type="range" min="0" max="1" step="0.05" value="0.5"></label>
      <output class="alpha-value">0.5</output>
    </div>
    <div class="status" role="status" aria-live="polite"></div>
    <div class="pictures">
      <figure><img class="original" alt="image"><figcaption>image</figcaption></figure>
      <figure><img class="heatmap" alt="heatmap"><figcaption>heatmap</figcaption></figure>
      <figure><img class="overlay" alt="overlay"><figcaption>overlay</figcaption></figure>
    </div>
    <table class="stats"></table>`;
  const method = panel.querySelector(".method");
  method.replaceChildren(...state.methods.map((m) => option(m)));
  method.value = index === 0 ? "gradcam" : "gradcampp";
  const alpha = panel.querySelector(".alpha");
  alpha.addEventListener("input", () => { panel.querySelector(".alpha-value").value = alpha.value; });
  alpha.addEventListener("change", () => explainPanel(panel));
  method.addEventListener("change", () => explainPanel(panel));
  panel.querySelector(".layer").addEventListener("change", () => explainPanel(panel));
  fillLayers(panel);
  return panel;
}

function fillLayers(panel) {
  const select = panel.querySelector(".layer");
  const old = select.value;
  select.replaceChildren(option("auto", `auto (${state.model?.default_layer ?? "?"})`),
    ...state.layers.map((l) => option(l.name, `${l.name} [${l.shape.join("×")}]`)));
  select.value = [...select.options].some((o) => o.value === old) ? old : "auto";
}

function setPicture(figure, b64, filename) {
  const img = figure.querySelector("img");
  const caption = figure.querySelector("figcaption");
  caption.querySelector("a")?.remove();
  if (!b64) { img.removeAttribute("src"); return; }
  img.src = pngUrl(b64);
  caption.append(downloadLink(img.src, filename));
}

const STAT_FIELDS = ["peak", "center_of_mass", "entropy", "sparseness", "top5_share"];

function formatStat(value) {
  if (Array.isArray(value)) return `[${value.map((v) => (Number.isInteger(v) ? v : v.toFixed(1))).join(", ")}]`;
  return typeof value === "number" ? value.toFixed(3) : String(value);
}

async function explainPanel(panel) {
  if (!imageLoaded() || state.target === null) return;
  const method = panel.querySelector(".method").value;
  const layer = panel.querySelector(".layer").value;
  const alpha = panel.querySelector(".alpha").value;
  panel.querySelector(".original").src = state.imageUrl;
  panel.dataset.state = "running";
  const result = await withStatus(panel.querySelector(".status"), `Running ${method}…`, () =>
    postImage(`${modelPath(state.model.name)}/explain`, state.image, {
      method, layer, targets: state.target, outputs: "heatmap,overlay,stats", "render.alpha": alpha,
    }));
  const figures = panel.querySelectorAll("figure");
  const stem = `${method}-${state.target}`;
  if (!result) {
    setPicture(figures[1], null);
    setPicture(figures[2], null);
    panel.querySelector(".stats").replaceChildren();
    panel.dataset.state = "error";
    return;
  }
  const r = result.results[0];
  setPicture(figures[1], r.heatmap, `${stem}-heatmap.png`);
  setPicture(figures[2], r.overlay, `${stem}-overlay.png`);
  const rows = [["class", `${r.target.label ?? r.target.index} (${(100 * r.target.probability).toFixed(1)}%)`],
    ["layer", result.layers.join(", ")],
    ...STAT_FIELDS.filter((f) => r.stats && r.stats[f] !== null && r.stats[f] !== undefined)
      .map((f) => [f, formatStat(r.stats[f])])];
  panel.querySelector(".stats").replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td></td>";
    tr.children[0].textContent = k;
    tr.children[1].textContent = v;
    return tr;
  }));
  panel.dataset.state = "done";
}

function renderPanels() {
  const container = $("panels");
  const want = $("compare").checked ? 2 : 1;
  while (container.children.length > want) container.lastChild.remove();
  while (container.children.length < want) {
    const panel = makePanel(container.children.length);
    container.append(panel);
    explainPanel(panel);
  }
}

function explainAll() {
  for (const panel of $("panels").children) explainPanel(panel);
}

// ---- tabs ------------------------------------------------------------------------------

const VIEWS = { explain: () => {}, graph: showGraph, activations: showActivations, jobs: showJobs };

function selectTab(name) {
  for (const key of Object.keys(VIEWS)) {
    $(`tab-${key}`).setAttribute("aria-selected", String(key === name));
    $(`tab-${key}`).tabIndex = key === name ? 0 : -1;
    $(`view-${key}`).hidden = key !== name;
  }
  VIEWS[name]();
}

function initTabs() {
  const names = Object.keys(VIEWS);
  names.forEach((name, i) => {
    const tab = $(`tab-${name}`);
    tab.addEventListener("click", () => selectTab(name));
    tab.addEventListener("keydown", (e) => {
      const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      if (!step) return;
      const next = names[(i + step + names.length) % names.length];
      selectTab(next);
      $(`tab-${next}`).focus();
    });
  });
}

async function main() {
  initTabs();
  initImageBar();
  const openapi = await getJson("/openapi.json").catch(() => null);
  state.methods = openapi?.components?.schemas?.ExplainRequest?.properties?.method?.enum || ["gradcam"];
  onChange((what) => {
    if (what === "model") for (const panel of $("panels").children) fillLayers(panel);
    explainAll();
  });
  $("compare").addEventListener("change", renderPanels);
  initGraph();
  initActivations();
  initJobs();
  await Promise.all([loadModels(), loadSamples()]);
  renderPanels();
  selectTab(location.hash.slice(1) in VIEWS ? location.hash.slice(1) : "explain");
  document.body.dataset.ready = "true";
}

main();
