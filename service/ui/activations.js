// The Activations view: a layer's tiles with per-channel statistics, sorted as the user
// picks, and the first convolution's filters.
import { getJson, getBlob, modelPath, pngUrl, postJson, withStatus } from "./api.js";
import { state, imageLoaded, onChange, downloadLink } from "./app.js";

const $ = (id) => document.getElementById(id);
let filtersFor = null;

function fillLayers() {
  const select = $("act-layer");
  const old = select.value;
  select.replaceChildren(new Option(`auto (${state.model?.default_layer ?? "?"})`, "auto"),
    ...state.layers.map((l) => new Option(`${l.name} [${l.shape.join("×")}]`, l.name)));
  if ([...select.options].some((o) => o.value === old)) select.value = old;
}

export function showActivations() {
  if (state.model && filtersFor !== state.model.name) showFilters();
  if (imageLoaded() && !$("act-tiles").src) run();
}

async function run() {
  const status = $("act-status");
  if (!imageLoaded()) {
    status.className = "status";
    status.textContent = "Choose an image first.";
    return;
  }
  const path = `${modelPath(state.model.name)}/activations`;
  const layer = $("act-layer").value;
  const key = $("act-sort").value;
  const n = Number($("act-count").value);
  const result = await withStatus(status, "Computing activations…", async () => {
    // every channel's statistics first, then the tiles of the chosen ones in that order
    const all = await postJson(path, { images: [state.imageB64], layers: [layer], channels: "all", outputs: ["stats"] });
    const stats = all.results[0].stats.per_channel;
    const sorted = [...stats].sort((a, b) => (key === "index" ? a.index - b.index : b[key] - a[key]));
    const chosen = sorted.slice(0, n);
    const tiles = await postJson(path, {
      images: [state.imageB64], layers: [layer], channels: chosen.map((c) => c.index), outputs: ["tiles"],
    });
    return { all: all.results[0], chosen, tiles: tiles.results[0] };
  });
  if (!result) return;
  const img = $("act-tiles");
  img.src = pngUrl(result.tiles.tiles);
  img.hidden = false;
  $("act-caption").replaceChildren(
    `${result.all.layer} [${result.all.shape.join("×")}]: channels ${result.chosen.map((c) => c.index).join(", ")} (by ${key}) `,
    downloadLink(img.src, "activations.png"));
  const table = $("act-table");
  table.innerHTML = "<thead><tr><th>channel</th><th>mean</th><th>max</th><th>share of zeros</th></tr></thead><tbody></tbody>";
  table.querySelector("tbody").replaceChildren(...result.chosen.map((c) => {
    const tr = document.createElement("tr");
    for (const v of [c.index, c.mean.toFixed(3), c.max.toFixed(3), `${(100 * c.sparsity).toFixed(1)}%`]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    return tr;
  }));
}

async function showFilters() {
  filtersFor = state.model.name;
  const name = state.model.name;
  const blob = await withStatus($("filters-status"), "Loading the first-layer filters…", async () => {
    const graph = await getJson(`${modelPath(name)}/graph`);
    const conv = graph.nodes.find((n) => n.op_type === "Conv");
    if (!conv) throw new Error("this model has no Conv node");
    $("filters-caption").textContent = `${conv.name} [${conv.params} parameters] `;
    return getBlob(`${modelPath(name)}/filters?layer=${encodeURIComponent(conv.name)}`, "image/png");
  });
  if (!blob) return;
  const img = $("filters");
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
  $("filters-caption").append(downloadLink(img.src, "filters.png"));
}

export function initActivations() {
  $("act-run").addEventListener("click", run);
  $("act-sort").addEventListener("change", run);
  onChange((what) => {
    if (what === "model") { fillLayers(); filtersFor = null; }
    if (!$("view-activations").hidden && what !== "target") showActivations();
    if (what === "image") $("act-tiles").removeAttribute("src");
  });
}
