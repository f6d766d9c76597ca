// ssa explorer: walk the dependency graphs of several classes in a browser.
// Data: either embedded in the page (<script type="application/json" id="ssa-data">, one file)
// or fetched lazily from data/ beside the page (a folder served by `ssa serve`).
// Views: classes (dendrogram order, similarity), graph (sigma.js, WebGL), neuron panel with
// reference images, paths from the class logit, exports. See docs/explorer.md.
import Graph from "graphology";
import Sigma from "sigma";
import { EdgeRectangleProgram, NodeCircleProgram, NodePointProgram, drawDiscNodeHover } from "sigma/rendering";
import { EdgeDashedProgram } from "./dashed.js";
import { viewToSVG, svgToPNG, download } from "./exporter.js";

const PALETTE = ["#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08306b"]; // shared by few ... all classes
const CLASS_COLOR = "#333333";
const EDGE = "#a8a8a8";
const INHIB = "#c43c39";
const SHARED = "#e6862e";
const PATH = "#7b3294";
const FADED = "#e3e3e3";
const FADED_EDGE = "#efefef";
// Above this many nodes, nodes are drawn by sigma's point program (round points, one draw call) instead of its
// circle program (one instanced triangle per node): the same discs, but a software WebGL (SwiftShader, a browser
// without a GPU) draws 15,000 instances in about 0.5 s a frame and 15,000 points in a few ms. Edges and labels
// are hidden while the camera moves on graphs with more than 5,000 edges (hideEdgesOnMove, hideLabelsOnMove).
const MANY_NODES = 5000;

const app = {
  index: null, files: null, cls: null, data: null, second: null, secondData: null,
  selected: null, highlight: null, sigma: null, graph: null, nodes: new Map(), taps: [],
  firstRender: null, errors: [],
};
window.ssaExplorer = app;

// -- data ------------------------------------------------------------------------------------
const embedded = document.getElementById("ssa-data");
const bundle = embedded ? JSON.parse(embedded.textContent) : null;
const cache = new Map();

function load(path) {
  if (!cache.has(path)) {
    cache.set(path, bundle
      ? (path in bundle.files ? Promise.resolve(bundle.files[path]) : Promise.reject(new Error(`${path} is not in the page`)))
      : fetch(`data/${path}`).then((r) => {
        if (!r.ok) throw new Error(`data/${path}: HTTP ${r.status}`);
        return r.json();
      }));
  }
  return cache.get(path);
}

// -- helpers -----------------------------------------------------------------------------------
const $ = (sel, root = document) => root.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}
function fmt(v) {
  if (v === null || v === undefined || (typeof v === "number" && Number.isNaN(v))) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3);
  return String(Number(v.toPrecision(4)));
}
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
function colorFor(node) {
  if (node.tap === "logits") return CLASS_COLOR;
  const n = app.index.classes.length;
  const k = (node.shared_by || []).length;
  if (n <= 1) return PALETTE[2];
  const t = (k - 1) / (n - 1);
  return PALETTE[Math.min(PALETTE.length - 1, Math.round(t * (PALETTE.length - 1)))];
}

// -- layout of the page ----------------------------------------------------------------------------
function buildPage() {
  const idx = app.index;
  const root = $("#app");
  root.append(
    el("header", {},
      el("h1", { text: idx.title }),
      el("span", { class: "meta", text: `${idx.model} · ${idx.classes.length} class${idx.classes.length === 1 ? "" : "es"} · ${idx.params || ""}` })),
    el("aside", { id: "classes" },
      el("input", { id: "search", type: "search", placeholder: "search classes…", "aria-label": "search classes" }),
      el("div", { id: "sim-note", class: "muted" }),
      el("ol", { id: "class-list" })),
    el("section", { id: "main" },
      el("div", { id: "toolbar" },
        el("label", {}, "compare with ", el("select", { id: "second" }, el("option", { value: "", text: "— none —" }),
          idx.order.map((i) => el("option", { value: i, text: idx.classes[i].label })))),
        el("button", { id: "fit", type: "button", text: "fit" }),
        el("span", { class: "sep" }),
        el("button", { id: "export-svg", type: "button", text: "SVG" }),
        el("button", { id: "export-png", type: "button", text: "PNG" }),
        el("button", { id: "export-json", type: "button", text: "sub-graph JSON" }),
        el("span", { id: "legend" })),
      el("div", { id: "status", role: "status" }),
      el("div", { id: "graph-wrap" }, el("div", { id: "graph" }), el("div", { id: "tap-labels" }))),
    el("aside", { id: "panel" }, el("p", { class: "muted", text: "Click a neuron to see its numbers, the classes that share it, its reference images and every path from the class logit to it." })));
  const legend = $("#legend");
  legend.append(el("span", { class: "key", style: `background:${CLASS_COLOR}` }), " class  ");
  legend.append(el("span", { class: "ramp", style: `background:linear-gradient(90deg,${PALETTE.join(",")})` }),
    ` shared by 1 … ${idx.classes.length} classes  `);
  legend.append(el("span", { class: "dash" }), " inhibitory");
  $("#search").addEventListener("input", renderClassList);
  $("#search").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      const first = $("#class-list li:not([hidden])");
      if (first) selectClass(Number(first.dataset.class));
    }
  });
  $("#second").addEventListener("change", (e) => setSecond(e.target.value === "" ? null : Number(e.target.value)));
  $("#fit").addEventListener("click", () => app.sigma && app.sigma.getCamera().animatedReset({ duration: 200 }));
  $("#export-svg").addEventListener("click", () => exportView("svg"));
  $("#export-png").addEventListener("click", () => exportView("png"));
  $("#export-json").addEventListener("click", exportSubgraph);
}

function renderClassList() {
  const idx = app.index;
  const q = $("#search").value.trim().toLowerCase();
  const list = $("#class-list");
  list.replaceChildren();
  const sim = app.cls === null ? null : idx.similarity[app.cls];
  $("#sim-note").textContent = app.cls === null ? "" : `cosine similarity to ${idx.classes[app.cls].label} · dendrogram order`;
  for (const i of idx.order) {
    const c = idx.classes[i];
    const s = sim ? sim[i] : null;
    const li = el("li", { "data-class": i, class: [i === app.cls ? "current" : "", i === app.second ? "second" : ""].join(" ").trim() || null,
      title: `${c.label}: ${c.n_images} images, ${c.n_nodes} nodes, ${c.n_edges} edges` },
      el("span", { class: "label", text: c.label }),
      el("span", { class: "bar" }, el("span", { style: `width:${s === null ? 0 : Math.max(0, s) * 100}%` })),
      el("span", { class: "sim", text: s === null ? "" : s.toFixed(2) }));
    const hay = `${c.label} ${c.target ?? ""} ${c.file || ""}`.toLowerCase();
    if (q && !hay.includes(q) && String(c.target) !== q) li.hidden = true;
    li.addEventListener("click", (e) => (e.shiftKey ? setSecond(i) : selectClass(i)));
    list.append(li);
  }
}

// -- graph ---------------------------------------------------------------------------------------
function makeGraph(data) {
  const g = new Graph({ type: "directed" });
  app.nodes = new Map();
  const type = data.nodes.length > MANY_NODES ? "point" : "circle";
  for (const n of data.nodes) {
    app.nodes.set(n.id, n);
    g.addNode(n.id, { x: n.x, y: n.y, size: n.size, color: colorFor(n), label: String(n.neuron), zIndex: 1, type });
  }
  for (const e of data.edges) {
    const key = `${e.source}->${e.target}`;
    if (g.hasEdge(key)) continue;
    g.addDirectedEdgeWithKey(key, e.source, e.target, {
      size: e.width, color: e.sign < 0 ? INHIB : EDGE, type: e.sign < 0 ? "dashed" : "line", sign: e.sign, zIndex: 0,
    });
  }
  return g;
}

function nodeReducer(node, attrs) {
  const h = app.highlight;
  if (!h && node !== app.selected) return attrs;
  const r = { ...attrs };
  if (h) {
    if (h.nodes.has(node)) { r.color = h.color; r.zIndex = 2; } else { r.color = FADED; r.zIndex = 0; r.label = ""; }
  }
  if (node === app.selected) { r.highlighted = true; r.zIndex = 3; }
  return r;
}

function edgeReducer(edge, attrs) {
  const h = app.highlight;
  if (!h) return attrs;
  const r = { ...attrs };
  if (h.edges.has(edge)) { r.color = attrs.sign < 0 ? INHIB : h.color; r.zIndex = 1; } else { r.color = FADED_EDGE; r.zIndex = 0; }
  return r;
}

// The node under the mouse is drawn with its index even where the view fades it (a selection or a comparison
// blanks the labels of the nodes outside it, so that only the highlighted ones are labelled), and even where it is
// too small to carry a label (sigma labels nodes above labelRenderedSizeThreshold only).
function drawNodeHover(context, data, settings) {
  const own = app.graph && app.graph.hasNode(data.key) ? app.graph.getNodeAttribute(data.key, "label") : data.label;
  drawDiscNodeHover(context, { ...data, label: own }, settings);
}

// sigma 3.0.2 keeps the node last under the mouse as hovered after the mouse leaves the canvas (its leave handler
// emits leaveNode but does not reset it) and draws it, ringed, on every render; setGraph keeps it when the next
// graph has a node of that id. So the ring of a clicked node outlived a switch of class (the panel was cleared).
// Forget it when the mouse leaves the graph and when the class changes.
function forgetHover() {
  if (app.sigma) app.sigma.hoveredNode = null;
}

function placeTapLabels() {
  const box = $("#tap-labels");
  if (!app.sigma) return;
  const labels = [];
  box.replaceChildren();
  for (const t of app.taps) {
    const p = app.sigma.graphToViewport({ x: app.data.x_min, y: t.y });
    labels.push({ name: `${t.tap} (${t.n})`, y: p.y });
    box.append(el("div", { class: "tap", style: `top:${p.y}px`, text: `${t.tap} · ${t.n}`, title: t.tap }));
  }
  app.tapLabels = labels;
}

// resolves once `node` has a width: sigma refuses a container without one
function laidOut(node) {
  if (node.offsetWidth > 0) return Promise.resolve();
  return new Promise((resolve) => {
    const seen = new ResizeObserver(() => {
      if (node.offsetWidth > 0) {
        seen.disconnect();
        resolve();
      }
    });
    seen.observe(node);
  });
}

async function selectClass(i) {
  const idx = app.index;
  app.cls = i;
  app.selected = null;
  const data = await load(idx.classes[i].file);
  if (app.cls !== i) return; // another class was chosen meanwhile
  app.data = data;
  app.taps = data.taps;
  app.graph = makeGraph(data);
  const big = data.edges.length > 5000;
  if (!app.sigma) {
    await laidOut($("#graph")); // a page in an iframe (a notebook's output) may start before it has a size
    app.sigma = new Sigma(app.graph, $("#graph"), {
      nodeReducer, edgeReducer, zIndex: true, renderEdgeLabels: false, enableEdgeEvents: false,
      labelRenderedSizeThreshold: 9, labelSize: 11, labelFont: "system-ui, sans-serif",
      hideEdgesOnMove: big, hideLabelsOnMove: big, minCameraRatio: 0.002, maxCameraRatio: 4,
      defaultEdgeType: "line", edgeProgramClasses: { line: EdgeRectangleProgram, dashed: EdgeDashedProgram },
      nodeProgramClasses: { circle: NodeCircleProgram, point: NodePointProgram }, defaultDrawNodeHover: drawNodeHover,
    });
    app.sigma.on("clickNode", ({ node }) => selectNode(node));
    app.sigma.on("clickStage", () => selectNode(null));
    app.sigma.on("enterNode", () => ($("#graph").style.cursor = "pointer"));
    app.sigma.on("leaveNode", () => ($("#graph").style.cursor = ""));
    app.sigma.on("leaveStage", forgetHover);
    app.sigma.on("afterRender", () => {
      placeTapLabels();
      if (app.firstRender === null) app.firstRender = performance.now();
    });
  } else {
    app.sigma.setSetting("hideEdgesOnMove", big);
    app.sigma.setSetting("hideLabelsOnMove", big);
    forgetHover();
    app.sigma.setGraph(app.graph);
    app.sigma.getCamera().setState({ x: 0.5, y: 0.5, ratio: 1, angle: 0 });
  }
  renderClassList();
  if (app.second !== null) await setSecond(app.second); else updateHighlight();
  renderPanel();
  document.body.dataset.cls = String(i);
}

async function setSecond(j) {
  app.second = j;
  $("#second").value = j === null ? "" : String(j);
  app.secondData = j === null ? null : await load(app.index.classes[j].file);
  if (app.second !== j) return;
  app.selected = null; // choosing a class to compare with shows what both share
  updateHighlight();
  renderClassList();
  renderPanel();
}

function ancestors(node) {
  const seen = new Set([node]);
  const stack = [node];
  while (stack.length) {
    const v = stack.pop();
    app.graph.forEachInNeighbor(v, (u) => { if (!seen.has(u)) { seen.add(u); stack.push(u); } });
  }
  return seen;
}

function updateHighlight() {
  const status = $("#status");
  const c = app.index.classes[app.cls];
  if (app.selected !== null) {
    const nodes = ancestors(app.selected);
    const edges = new Set();
    app.graph.forEachEdge((e, a, s, t) => { if (nodes.has(s) && nodes.has(t)) edges.add(e); });
    app.highlight = { kind: "path", nodes, edges, color: PATH };
    status.textContent = `paths from the class logit to ${app.selected}: ${plural(nodes.size, "neuron")}, ${plural(edges.size, "edge")} (click the background to clear)`;
  } else if (app.second !== null && app.secondData) {
    const other = new Map(app.secondData.edges.map((e) => [`${e.source}->${e.target}`, e.sign]));
    const otherNodes = new Set(app.secondData.nodes.map((n) => n.id));
    const nodes = new Set();
    app.graph.forEachNode((n) => { if (otherNodes.has(n)) nodes.add(n); });
    const edges = new Set();
    app.graph.forEachEdge((e, a) => { if (other.has(e) && other.get(e) === a.sign) edges.add(e); });
    app.highlight = { kind: "shared", nodes, edges, color: SHARED };
    status.textContent = `${c.label} and ${app.index.classes[app.second].label} share ${plural(nodes.size, "neuron")} and ${plural(edges.size, "edge")} (orange)`;
  } else {
    app.highlight = null;
    status.textContent = `${c.label}: ${plural(c.n_images, "image")} · ${plural(app.data.nodes.length, "neuron")} · ${plural(app.data.edges.length, "edge")} · node size = frequency, edge width = relevance (relative per layer), dashed = inhibitory`;
  }
  status.dataset.mode = app.highlight ? app.highlight.kind : "none";
  if (app.sigma) app.sigma.refresh();
}

function selectNode(node) {
  app.selected = node;
  updateHighlight();
  renderPanel();
}

// -- neuron panel --------------------------------------------------------------------------------------
function fact(label, field, value, extra) {
  return el("tr", {}, el("th", { text: label }), el("td", {}, el("span", { "data-field": field, "data-value": value ?? "", text: fmt(value) }), extra || null));
}

function renderPanel() {
  const panel = $("#panel");
  panel.replaceChildren();
  const node = app.selected === null ? null : app.nodes.get(app.selected);
  if (!node) {
    panel.append(el("p", { class: "muted", text: "Click a neuron to see its numbers, the classes that share it, its reference images and every path from the class logit to it." }));
    if (!app.index.references) panel.append(el("p", { class: "note", text: app.index.references_note }));
    return;
  }
  const n_img = app.data.graph.n_images;
  panel.append(el("h2", { text: node.id }),
    el("table", { class: "facts" },
      fact("tap", "tap", node.tap),
      fact("index", "neuron", node.neuron),
      fact("frequency", "frequency", node.frequency, ` of ${n_img} images`),
      fact("mean relevance", "mean_relevance", node.mean_relevance),
      fact("active fraction", "active_fraction", node.active_fraction),
      fact("in-degree", "in_degree", node.in_degree),
      fact("sign", "sign", node.sign, node.sign < 0 ? " (reached only by inhibitory edges)" : "")));
  const shared = node.shared_by || [];
  panel.append(el("h3", { text: `Kept by ${shared.length} class${shared.length === 1 ? "" : "es"}` }),
    el("ul", { class: "shared-by" }, shared.map(([ci, f]) => el("li", { "data-class": ci },
      el("a", { href: "#", text: app.index.classes[ci].label, onclick: (e) => { e.preventDefault(); selectClass(ci); } }),
      ` ${f} of ${app.index.classes[ci].n_images} images`))));
  const h = app.highlight;
  if (h && h.kind === "path") {
    panel.append(el("p", { class: "muted", text: `${plural(h.nodes.size, "neuron")} and ${plural(h.edges.size, "edge")} lie on paths from the class logit to this neuron (purple).` }));
  }
  const refs = el("div", { id: "refs" });
  panel.append(el("h3", { text: "Reference images" }), refs);
  if (!app.index.references || !node.ref) {
    refs.append(el("p", { class: "note", text: app.index.references ? "No reference images for this neuron." : app.index.references_note }));
    return;
  }
  refs.append(el("p", { class: "muted", text: "loading…" }));
  const want = app.selected;
  load(node.ref).then((r) => { if (app.selected === want) renderRefs(refs, r); })
    .catch((err) => { refs.replaceChildren(el("p", { class: "note", text: `reference images could not be loaded: ${err.message}` })); });
}

function thumbs(items, onPick, kind) {
  return el("div", { class: "thumbs", "data-kind": kind }, items.map((it) => el("figure", { class: "thumb", title: `image ${it.image}: ${fmt(it.value)}` },
    el("img", { src: it.src, alt: `image ${it.image}`, "data-image": it.image, onclick: () => onPick(it.image) }),
    el("figcaption", { text: `#${it.image} · ${fmt(it.value)}` }))));
}

// -- saliency on any image of the class: maps sent as bytes (neurons/<node>.json, class_saliency) over the
// images at the same grid (images.json), coloured here with matplotlib's inferno table, as ssa draws the
// reference images' saliency: 0.35 * image + 0.65 * inferno(|gradient| / max).
function bytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

let pixelsPromise = null;
function loadPixels() {
  if (!app.index.saliency_images) return Promise.reject(new Error("no saliency images in this explorer"));
  if (!pixelsPromise) {
    pixelsPromise = load(app.index.saliency_images).then((d) => ({
      shape: d.shape, pixels: bytes(d.pixels), lut: bytes(d.lut), pos: new Map(d.index.map((u, i) => [u, i])),
    }));
  }
  return pixelsPromise;
}

function classMapPNG(px, entry, j, size = 200) {
  const [h, w, c] = px.shape;
  const k = px.pos.get(entry.images[j]);
  if (k === undefined) throw new Error(`image ${entry.images[j]} is not in ${app.index.saliency_images}`);
  if (!entry.q) entry.q = bytes(entry.maps);
  const q = entry.q.subarray(j * h * w, (j + 1) * h * w);
  const base = px.pixels.subarray(k * h * w * c, (k + 1) * h * w * c);
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const ctx = small.getContext("2d");
  const im = ctx.createImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    for (let ch = 0; ch < 3; ch++) {
      const b = base[p * c + (c === 1 ? 0 : ch)] / 255;
      const v = 0.35 * b + 0.65 * (px.lut[q[p] * 3 + ch] / 255);
      im.data[p * 4 + ch] = Math.round(Math.min(1, Math.max(0, v)) * 255);
    }
    im.data[p * 4 + 3] = 255;
  }
  ctx.putImageData(im, 0, 0);
  const f = Math.max(1, Math.floor(size / Math.max(h, w))); // whole-pixel blocks, as the reference images
  const big = document.createElement("canvas");
  big.width = w * f; big.height = h * f;
  const bctx = big.getContext("2d");
  bctx.imageSmoothingEnabled = false;
  bctx.drawImage(small, 0, 0, w * f, h * f);
  return big.toDataURL("image/png");
}

function renderRefs(box, r) {
  box.replaceChildren();
  const cls = app.cls;
  const rel = (r.relevant || {})[String(cls)] || [];
  const entry = (r.class_saliency || {})[String(cls)] || null;
  const sal = el("div", { class: "saliency" });
  const which = el("span", { class: "sal-which", id: "sal-which" });
  const range = entry ? el("input", { type: "range", id: "sal-pick", min: 0, max: entry.images.length - 1, value: 0, step: 1,
    "aria-label": `image of ${app.index.classes[cls].label}, by the neuron's ${entry.by}` }) : null;
  const show = (image, src, max) => {
    sal.replaceChildren(el("figure", {},
      el("img", { src, alt: `saliency on image ${image}`, "data-image": image }),
      el("div", { class: "cbar" }, el("span", { text: "0" }), el("span", { class: "ramp inferno" }), el("span", { text: fmt(max) })),
      el("figcaption", { text: `saliency of ${r.node} on image ${image}: |∂ neuron / ∂ input|, max over channels` })));
  };
  const pick = (image) => {
    const j = entry ? entry.images.indexOf(image) : -1;
    if (range) {
      if (j >= 0) range.value = String(j);
      which.textContent = j >= 0 ? `#${image} · ${entry.by} ${fmt(entry.value[j])} · ${j + 1} of ${entry.images.length}` : `#${image}`;
    }
    const s = (r.saliency || {})[String(image)];
    if (s) { show(image, s.src, s.max); return; } // a reference image: its map at full resolution
    if (j < 0) { sal.replaceChildren(el("p", { class: "muted", text: `no saliency map stored for image ${image}` })); return; }
    loadPixels().then((px) => { if (range && range.value === String(j)) show(image, classMapPNG(px, entry, j), entry.max[j]); })
      .catch((err) => sal.replaceChildren(el("p", { class: "note", text: `saliency could not be drawn: ${err.message}` })));
  };
  box.append(el("p", { class: "muted", text: r.crop_note || "" }));
  box.append(el("h4", { text: `most relevant in ${app.index.classes[cls].label}` }));
  if (rel.length) box.append(thumbs(rel, pick, "relevant"));
  else box.append(el("p", { class: "muted", text: r.tap === "logits" ? "the class neuron has no relevance (nothing above it); see the most active images" : "no image of this class" }));
  box.append(el("h4", { text: `most active over the ${r.n_analysed} analysed images` }), thumbs(r.active || [], pick, "active"));
  if (entry) {
    range.addEventListener("input", () => pick(entry.images[Number(range.value)]));
    box.append(el("h4", { text: "saliency on a chosen image" }),
      el("p", { class: "muted sal-note", text: `Click an image above, or slide through the ${entry.images.length} images of ${app.index.classes[cls].label} (most ${entry.by === "relevance" ? "relevant" : "active"} first). ${app.index.saliency_note || ""}` }),
      el("div", { class: "sal-controls" }, range, which), sal);
  } else {
    box.append(el("h4", { text: "saliency on a chosen image (click an image above)" }), sal);
    if (app.index.saliency_note) box.append(el("p", { class: "muted sal-note", text: app.index.saliency_note }));
  }
  const first = (rel[0] || (r.active || [])[0]);
  if (first) pick(first.image);
}

// -- exports ------------------------------------------------------------------------------------------
function stem() {
  const c = app.index.classes[app.cls];
  return `ssa-${String(c.label).replace(/[^A-Za-z0-9._-]+/g, "-")}`;
}

async function exportView(kind) {
  const title = `${app.index.classes[app.cls].label}: ${$("#status").textContent}`;
  const svg = viewToSVG(app.sigma, { title, tapLabels: app.tapLabels || [] });
  if (kind === "svg") download(`${stem()}.svg`, new Blob([svg], { type: "image/svg+xml" }));
  else download(`${stem()}.png`, await svgToPNG(svg));
}

function exportSubgraph() {
  const h = app.highlight;
  const keepNode = (n) => !h || h.nodes.has(n);
  const keepEdge = (e) => !h || h.edges.has(`${e.source}->${e.target}`);
  const strip = ({ x, y, size, width, ref, ...rest }) => rest;
  const out = {
    directed: true, multigraph: false,
    graph: { ...app.data.graph, explorer_selection: h ? (h.kind === "path" ? `paths from the class logit to ${app.selected}` : `shared with ${app.index.classes[app.second].label}`) : "whole graph" },
    nodes: app.data.nodes.filter((n) => keepNode(n.id)).map(({ shared_by, ...n }) => strip(n)),
    edges: app.data.edges.filter(keepEdge).map(strip),
  };
  download(`${stem()}-subgraph.json`, new Blob([JSON.stringify(out, null, 1)], { type: "application/json" }));
}

// -- start ------------------------------------------------------------------------------------------------
window.addEventListener("error", (e) => app.errors.push(String(e.message)));
(async function start() {
  try {
    app.index = await load("index.json");
    document.title = app.index.title;
    buildPage();
    renderClassList();
    const first = app.index.initial ?? app.index.order[0];
    await selectClass(first);
    document.body.dataset.ready = "1";
  } catch (err) {
    document.body.dataset.ready = "error";
    const root = document.getElementById("app");
    root.replaceChildren(el("p", { class: "note", text: `The explorer could not start: ${err.message}` }));
    throw err;
  }
})();
