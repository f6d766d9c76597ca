// Export of the current view (SVG, PNG) and of the highlighted sub-graph (node-link JSON).
// The SVG is written from what sigma displays: its display data after the highlight reducers,
// mapped to the viewport, so it shows exactly the nodes and edges in view, in their colours.

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const num = (v) => (Math.round(v * 100) / 100).toString();

export function viewToSVG(sigma, { title = "", tapLabels = [], gutter = 124 } = {}) {
  const graph = sigma.getGraph();
  const { width, height } = sigma.getDimensions();
  const margin = 20;
  const inView = (p, r) => p.x + r >= -margin && p.x - r <= width + margin && p.y + r >= -margin && p.y - r <= height + margin;
  const pos = new Map();
  const nodes = [];
  graph.forEachNode((n) => {
    const d = sigma.getNodeDisplayData(n);
    if (!d || d.hidden) return;
    const p = sigma.framedGraphToViewport(d);
    const r = Math.max(0.5, sigma.scaleSize(d.size));
    pos.set(n, p);
    if (inView(p, r)) nodes.push({ n, p, r, d });
  });
  const edges = [];
  graph.forEachEdge((e, attrs, s, t) => {
    const d = sigma.getEdgeDisplayData(e);
    if (!d || d.hidden || !pos.has(s) || !pos.has(t)) return;
    const a = pos.get(s), b = pos.get(t);
    const lo = { x: Math.min(a.x, b.x), y: Math.min(a.y, b.y) }, hi = { x: Math.max(a.x, b.x), y: Math.max(a.y, b.y) };
    if (hi.x < -margin || lo.x > width + margin || hi.y < -margin || lo.y > height + margin) return;
    edges.push({ e, s, t, a, b, d, attrs });
  });
  edges.sort((x, y) => (x.d.zIndex || 0) - (y.d.zIndex || 0));
  nodes.sort((x, y) => (x.d.zIndex || 0) - (y.d.zIndex || 0));
  const out = [];
  const W = width + gutter;
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="system-ui, sans-serif">`);
  if (title) out.push(`<title>${esc(title)}</title>`);
  out.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  out.push(`<g transform="translate(${gutter} 0)"><g class="edges" stroke-linecap="round">`);
  for (const { s, t, a, b, d, attrs } of edges) {
    const w = Math.max(0.5, sigma.scaleSize(d.size || 1));
    const dash = attrs.sign < 0 ? ` stroke-dasharray="${num(3 * w + 2)} ${num(2 * w + 2)}"` : "";
    out.push(`<line data-source="${esc(s)}" data-target="${esc(t)}" x1="${num(a.x)}" y1="${num(a.y)}" x2="${num(b.x)}" y2="${num(b.y)}" stroke="${esc(d.color)}" stroke-width="${num(w)}"${dash}/>`);
  }
  out.push(`</g><g class="nodes">`);
  for (const { n, p, r, d } of nodes) {
    out.push(`<circle data-node="${esc(n)}" cx="${num(p.x)}" cy="${num(p.y)}" r="${num(r)}" fill="${esc(d.color)}" stroke="#ffffff" stroke-width="0.6"><title>${esc(n)}</title></circle>`);
    if (d.label && r >= 7) {
      out.push(`<text x="${num(p.x)}" y="${num(p.y + r + 11)}" font-size="10" text-anchor="middle" fill="#222">${esc(d.label)}</text>`);
    }
  }
  out.push(`</g></g><g class="taps" font-size="11" fill="#555" text-anchor="end">`);
  for (const { name, y } of tapLabels) {
    if (y >= 0 && y <= height) out.push(`<text x="${gutter - 8}" y="${num(y)}" dominant-baseline="middle">${esc(name)}</text>`);
  }
  out.push(`</g></svg>`);
  return out.join("\n");
}

export function svgToPNG(svgText, scale = 2) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    const url = URL.createObjectURL(new Blob([svgText], { type: "image/svg+xml" }));
    img.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = Math.round(img.width * scale);
      canvas.height = Math.round(img.height * scale);
      const ctx = canvas.getContext("2d");
      ctx.scale(scale, scale);
      ctx.drawImage(img, 0, 0);
      URL.revokeObjectURL(url);
      canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("PNG encoding failed"))), "image/png");
    };
    img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("the SVG could not be rasterised")); };
    img.src = url;
  });
}

export function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}
