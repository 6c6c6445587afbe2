// The Architecture view: GET /graph drawn top to bottom, blocks grouped, zoomable;
// a click on a layer shows its activation tiles and Grad-CAM for the current image and class.
import { getJson, modelPath, pngUrl, postImage, postJson, withStatus } from "./api.js";
import { state, imageLoaded, labelOf, onChange, downloadLink } from "./app.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const W = 180, H = 36, GAP_X = 24, GAP_Y = 30, COLLAPSE_OVER = 60;
const view = { graph: null, forModel: null, collapsed: new Set(), box: null, selected: null };

function el(name, attrs = {}, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.append(node);
  return node;
}

const shapeText = (shape) => (shape ? shape.map((d) => (d === null ? "?" : d)).join("×") : "?");
const count = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : `${n}`);

export function showGraph() {
  if (!state.model || view.forModel === state.model.name) return;
  loadGraph();
}

async function loadGraph() {
  const name = state.model.name;
  view.forModel = name;
  const graph = await withStatus($("graph-status"), "Loading the graph…", () =>
    getJson(`${modelPath(name)}/graph`));
  if (!graph) { view.forModel = null; return; }
  view.graph = graph;
  const groups = new Set(graph.nodes.map((n) => n.group).filter(Boolean));
  const ops = graph.nodes.filter((n) => n.kind === "op").length;
  view.collapsed = ops > COLLAPSE_OVER ? groups : new Set();
  $("graph-summary").textContent =
    `${ops} ops, ${groups.size} blocks, ${count(graph.params)} parameters`;
  draw(true);
}

// Units are what is drawn: a node, or a collapsed block standing for its nodes.
function units(graph) {
  const unitOf = new Map();
  const list = [];
  const byId = new Map();
  for (const node of graph.nodes) {
    const key = node.group && view.collapsed.has(node.group) ? `group:${node.group}` : node.id;
    unitOf.set(node.id, key);
    if (!byId.has(key)) {
      const unit = { key, node: key === node.id ? node : null, group: node.group, members: [] };
      byId.set(key, unit);
      list.push(unit);
    }
    byId.get(key).members.push(node);
  }
  const edges = new Map();
  for (const e of graph.edges) {
    const a = unitOf.get(e.source), b = unitOf.get(e.target);
    if (a !== b && !edges.has(`${a}>${b}`)) edges.set(`${a}>${b}`, { a, b, shape: e.shape });
  }
  return { list, byId, edges: [...edges.values()] };
}

// Longest-path ranks (nodes arrive in topological order), then barycentre order per rank.
function layout({ list, byId, edges }) {
  const preds = new Map(list.map((u) => [u.key, []]));
  for (const e of edges) preds.get(e.b).push(e.a);
  for (const u of list) {
    u.rank = Math.max(-1, ...preds.get(u.key).map((p) => byId.get(p).rank)) + 1;
  }
  // nodes that do not depend on an input (weight-side shape plumbing) sit right above
  // their first consumer: placed in reverse order so a chain of them stays a chain
  const succs = new Map(list.map((u) => [u.key, []]));
  for (const e of edges) succs.get(e.a).push(e.b);
  const fed = new Set();
  for (const u of list) {
    if (u.node?.kind === "input" || preds.get(u.key).some((p) => fed.has(p))) fed.add(u.key);
  }
  for (const u of [...list].reverse()) {
    if (!fed.has(u.key) && succs.get(u.key).length) {
      u.rank = Math.max(0, Math.min(...succs.get(u.key).map((k) => byId.get(k).rank)) - 1);
    }
  }
  const ranks = [];
  for (const u of list) (ranks[u.rank] ||= []).push(u);
  for (let i = 0; i < ranks.length; i++) ranks[i] ||= [];
  let width = 0;
  for (const row of ranks) {
    for (const u of row) {
      const ps = preds.get(u.key).map((p) => byId.get(p).x);
      u.order = ps.length ? ps.reduce((s, x) => s + x, 0) / ps.length : 0;
    }
    row.sort((p, q) => p.order - q.order);
    row.forEach((u, i) => { u.x = (i - (row.length - 1) / 2) * (W + GAP_X); });
    width = Math.max(width, row.length * (W + GAP_X));
  }
  for (const u of list) u.y = u.rank * (H + GAP_Y);
  return { width, height: ranks.length * (H + GAP_Y) };
}

function draw(fit) {
  const svg = $("graph");
  svg.replaceChildren();
  const drawn = units(view.graph);
  const size = layout(drawn);
  const root = el("g", {}, svg);
  const boxes = el("g", {}, root);
  for (const e of drawn.edges) {
    const a = drawn.byId.get(e.a), b = drawn.byId.get(e.b);
    const y1 = a.y + H, y2 = b.y, mid = (y1 + y2) / 2;
    el("path", { class: "edge", d: `M${a.x},${y1} C${a.x},${mid} ${b.x},${mid} ${b.x},${y2}` }, root);
  }
  drawGroupBoxes(boxes, drawn.list);
  for (const unit of drawn.list) drawUnit(root, unit);
  if (fit || !view.box) {
    view.box = { x: -size.width / 2 - 40, y: -20, w: size.width + 80, h: Math.min(size.height + 40, 1400) };
  }
  applyBox();
}

function drawGroupBoxes(parent, list) {
  const spans = new Map();
  for (const u of list) {
    if (!u.node || !u.group) continue;
    const s = spans.get(u.group) || { x0: Infinity, x1: -Infinity, y0: Infinity, y1: -Infinity };
    s.x0 = Math.min(s.x0, u.x - W / 2); s.x1 = Math.max(s.x1, u.x + W / 2);
    s.y0 = Math.min(s.y0, u.y); s.y1 = Math.max(s.y1, u.y + H);
    spans.set(u.group, s);
  }
  for (const [group, s] of spans) {
    el("rect", { class: "group-box", x: s.x0 - 8, y: s.y0 - 14, width: s.x1 - s.x0 + 16, height: s.y1 - s.y0 + 20 }, parent);
    const label = el("text", { class: "group-label", x: s.x0 - 4, y: s.y0 - 4 }, parent);
    label.textContent = `${group} (collapse)`;
    label.style.pointerEvents = "all";
    label.addEventListener("click", () => { view.collapsed.add(group); draw(false); });
  }
}

function drawUnit(parent, unit) {
  const g = el("g", { transform: `translate(${unit.x - W / 2},${unit.y})`, tabindex: "0", role: "button" }, parent);
  el("rect", { width: W, height: H }, g);
  const title = el("text", { x: 6, y: 14 }, g);
  const sub = el("text", { x: 6, y: 29, class: "shape" }, g);
  if (unit.node) {
    const n = unit.node;
    g.setAttribute("class", `node${n.kind !== "op" ? " io" : ""}${n.layer ? " candidate" : ""}${view.selected === n.id ? " selected" : ""}`);
    g.dataset.id = n.id;
    title.textContent = n.kind === "op" ? `${n.op_type}  ${n.name.split("/").slice(-2, -1)[0] || ""}` : `${n.op_type}: ${n.name}`;
    sub.textContent = `${shapeText(n.shapes[0])}${n.params ? `  · ${count(n.params)} params` : ""}`;
    g.setAttribute("aria-label", `${n.op_type} ${n.name}, output ${shapeText(n.shapes[0])}`);
    const open = () => selectNode(n);
    g.addEventListener("click", open);
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
  } else {
    const params = unit.members.reduce((s, n) => s + n.params, 0);
    const last = unit.members[unit.members.length - 1];
    g.setAttribute("class", "group-node");
    g.dataset.group = unit.group;
    g.dataset.count = unit.members.length;
    title.textContent = `▸ ${unit.group}  (${unit.members.length} ops)`;
    sub.textContent = `${shapeText(last.shapes[0])}  · ${count(params)} params`;
    g.setAttribute("aria-label", `block ${unit.group}, ${unit.members.length} ops: expand`);
    const open = () => { view.collapsed.delete(unit.group); draw(false); };
    g.addEventListener("click", open);
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
  }
}

function applyBox() {
  const b = view.box;
  $("graph").setAttribute("viewBox", `${b.x} ${b.y} ${b.w} ${b.h}`);
}

function zoom(factor, cx, cy) {
  const b = view.box;
  const x = cx ?? b.x + b.w / 2, y = cy ?? b.y + b.h / 2;
  view.box = { x: x - (x - b.x) * factor, y: y - (y - b.y) * factor, w: b.w * factor, h: b.h * factor };
  applyBox();
}

function initZoom() {
  const svg = $("graph");
  svg.addEventListener("wheel", (e) => {
    if (!view.box) return;
    e.preventDefault();
    const r = svg.getBoundingClientRect();
    const b = view.box;
    zoom(e.deltaY > 0 ? 1.15 : 1 / 1.15, b.x + ((e.clientX - r.left) / r.width) * b.w,
      b.y + ((e.clientY - r.top) / r.height) * b.h);
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (e) => { if (view.box) drag = { x: e.clientX, y: e.clientY, box: { ...view.box } }; });
  window.addEventListener("pointerup", () => { drag = null; });
  svg.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const r = svg.getBoundingClientRect();
    view.box = { ...drag.box, x: drag.box.x - ((e.clientX - drag.x) / r.width) * drag.box.w,
      y: drag.box.y - ((e.clientY - drag.y) / r.height) * drag.box.h };
    applyBox();
  });
  $("zoom-in").addEventListener("click", () => view.box && zoom(1 / 1.3));
  $("zoom-out").addEventListener("click", () => view.box && zoom(1.3));
  $("zoom-fit").addEventListener("click", () => view.graph && draw(true));
  $("expand-all").addEventListener("click", () => { if (view.graph) { view.collapsed = new Set(); draw(true); } });
  $("collapse-all").addEventListener("click", () => {
    if (!view.graph) return;
    view.collapsed = new Set(view.graph.nodes.map((n) => n.group).filter(Boolean));
    draw(true);
  });
}

// ---- the layer panel ---------------------------------------------------------------------

async function selectNode(node) {
  view.selected = node.id;
  for (const g of $("graph").querySelectorAll(".node")) g.classList.toggle("selected", g.dataset.id === node.id);
  const panel = $("layer-panel");
  panel.innerHTML = `<h3></h3><p class="muted"></p><div class="status" role="status" aria-live="polite"></div>
    <figure class="tiles"><img alt="activation tiles" hidden><figcaption>activation tiles (top 16 channels by mean)</figcaption></figure>
    <div class="status cam-status" role="status" aria-live="polite"></div>
    <figure class="cam"><img alt="Grad-CAM overlay" hidden><figcaption>Grad-CAM</figcaption></figure>`;
  panel.querySelector("h3").textContent = `${node.op_type} ${node.name}`;
  panel.querySelector("p").textContent = node.outputs.map((o, i) => `${o}: ${shapeText(node.shapes[i])}`).join("; ")
    + (node.params ? ` · ${count(node.params)} parameters` : "");
  const status = panel.querySelector(".status");
  if (!node.layer) {
    status.textContent = "Not a layer with spatial extent: activation tiles and CAMs need one (GET /layers lists them).";
    return;
  }
  if (!imageLoaded()) {
    status.textContent = "Choose an image to see this layer's activations and Grad-CAM.";
    return;
  }
  const name = state.model.name;
  const tiles = withStatus(status, "Computing activations…", () =>
    postJson(`${modelPath(name)}/activations`, { images: [state.imageB64], layers: [node.layer], channels: { top_k: 16 }, outputs: ["tiles"] }));
  const cam = withStatus(panel.querySelector(".cam-status"), "Computing Grad-CAM…", () =>
    postImage(`${modelPath(name)}/explain`, state.image, { method: "gradcam", layer: node.layer, targets: state.target, outputs: "overlay" }));
  const [t, c] = await Promise.all([tiles, cam]);
  if (t) showPicture(panel.querySelector(".tiles"), t.results[0].tiles, "tiles.png");
  if (c) {
    showPicture(panel.querySelector(".cam"), c.results[0].overlay, "gradcam.png");
    panel.querySelector(".cam figcaption").firstChild.textContent = `Grad-CAM for ${labelOf(state.target)}`;
  }
}

function showPicture(figure, b64, filename) {
  const img = figure.querySelector("img");
  img.src = pngUrl(b64);
  img.hidden = false;
  figure.querySelector("figcaption").append(" ", downloadLink(img.src, filename));
}

export function initGraph() {
  initZoom();
  onChange((what) => {
    if (what === "model") {
      view.forModel = null;
      if (!$("view-graph").hidden) loadGraph();
    }
  });
}
