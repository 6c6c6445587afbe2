// The Jobs view: a channel or class visualisation as a job (POST /featurevis), its progress
// and objective curve, the result next to the channel's activation (or the class's
// Grad-CAM) on the current image.
import { getJson, modelPath, pngUrl, postImage, postJson, withStatus, ApiError } from "./api.js";
import { state, imageLoaded, onChange, downloadLink, labelOf } from "./app.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let polling = null;

function fillLayers() {
  const select = $("job-layer");
  select.replaceChildren(new Option(`auto (${state.model?.default_layer ?? "?"})`, "auto"),
    ...state.layers.map((l) => new Option(l.name, l.name)));
}

export function showJobs() {
  if (!$("job-class").value && state.target !== null) $("job-class").value = String(state.target);
}

function drawCurve(values) {
  const svg = $("job-curve");
  svg.replaceChildren();
  if (values.length < 2) return;
  const w = 320, h = 180, pad = 8;
  const lo = Math.min(...values), hi = Math.max(...values);
  const span = hi - lo || 1;
  const points = values.map((v, i) => `${pad + (i / (values.length - 1)) * (w - 2 * pad)},${h - pad - ((v - lo) / span) * (h - 2 * pad)}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2456c8");
  svg.append(line);
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", pad);
  label.setAttribute("y", 14);
  label.setAttribute("font-size", "11");
  label.textContent = `${lo.toPrecision(3)} … ${hi.toPrecision(3)}`;
  svg.append(label);
}

function objective() {
  const kind = $("job-kind").value;
  if (kind === "class") {
    const raw = $("job-class").value.trim();
    return { type: "class", class: /^\d+$/.test(raw) ? Number(raw) : raw };
  }
  return { type: "channel", layer: $("job-layer").value, channel: Number($("job-channel").value) };
}

async function start(event) {
  event.preventDefault();
  if (polling) clearTimeout(polling);
  const status = $("job-status");
  const body = { objective: objective(), steps: Number($("job-steps").value) };
  const job = await withStatus(status, "Starting…", () =>
    postJson(`${modelPath(state.model.name)}/featurevis`, body));
  if (!job) return;
  $("job-result").hidden = true;
  $("job-progress").hidden = false;
  const curve = [];
  const poll = async () => {
    let info;
    try {
      info = await getJson(`/v1/jobs/${job.id}`);
    } catch (err) {
      status.className = "status error";
      status.textContent = err instanceof ApiError ? err.message : String(err);
      return;
    }
    const p = info.progress || {};
    if (p.steps) $("job-progress").value = p.step / p.steps;
    if (typeof p.objective === "number" && p.step > curve.length) curve.push(p.objective);
    status.className = "status busy";
    status.textContent = `${info.state}: step ${p.step ?? 0} of ${p.steps ?? body.steps}`
      + (typeof p.objective === "number" ? `, objective ${p.objective.toPrecision(4)}` : "");
    drawCurve(curve);
    if (info.state === "queued" || info.state === "running") {
      polling = setTimeout(poll, 400);
      return;
    }
    if (info.state !== "done") {
      status.className = "status error";
      status.textContent = `Job ${info.state}: ${info.error || "no result"}`;
      return;
    }
    status.className = "status";
    status.textContent = `done in ${info.result.seconds.toFixed(1)} s`;
    $("job-progress").value = 1;
    drawCurve(info.result.curve);
    const img = $("job-result");
    img.src = pngUrl(info.result.images[0]);
    img.hidden = false;
    img.closest("figure").querySelector("figcaption").replaceChildren("result ", downloadLink(img.src, "featurevis.png"));
    compare(body.objective);
  };
  poll();
}

async function compare(obj) {
  if (!imageLoaded()) return;
  const name = state.model.name;
  const status = $("job-status");
  let b64;
  if (obj.type === "channel") {
    const r = await withStatus(status, "Activation on the current image…", () =>
      postJson(`${modelPath(name)}/activations`, { images: [state.imageB64], layers: [obj.layer], channels: [obj.channel], outputs: ["tiles"], render: { columns: 1, tile_size: 224 } }));
    b64 = r?.results[0].tiles;
    $("job-compare-caption").textContent = `channel ${obj.channel} on the current image`;
  } else {
    const r = await withStatus(status, "Grad-CAM on the current image…", () =>
      postImage(`${modelPath(name)}/explain`, state.image, { method: "gradcam", targets: obj.class, outputs: "overlay" }));
    b64 = r?.results[0].overlay;
    $("job-compare-caption").textContent = `Grad-CAM of ${typeof obj.class === "number" ? labelOf(obj.class) : obj.class} on the current image`;
  }
  if (b64) { $("job-compare").src = pngUrl(b64); $("job-compare").hidden = false; }
}

export function initJobs() {
  $("job-form").addEventListener("submit", start);
  onChange((what) => { if (what === "model") fillLayers(); });
}
