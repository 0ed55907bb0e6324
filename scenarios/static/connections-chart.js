// The Connections tab's live picture, drawn in the page as SVG (no library, no network): connections
// held over time in all and per server process, each process's cap as a line, 65,535 as a reference
// line, and the kernel's count as points. It reads /connections/series (a few hundred points at most,
// however many connections are held) every two seconds while the Connections tab is open.
(function () {
  const W = 900, H = 320, PAD = {l: 70, r: 150, t: 16, b: 34};
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
  const SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(n) { return Math.round(n).toLocaleString("en-US"); }

  function draw(box, data) {
    const pts = data.points;
    const svg = el("svg", {id: "harness-chart-svg", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
                           "data-points": pts.length, "data-lines": 0});
    const tMax = Math.max(1, ...pts.map(p => p.t));
    const caps = data.caps || [];
    const yMax = Math.max(10, ...pts.map(p => Math.max(p.held, p.kernel || 0)), ...caps, data.port_numbers) * 1.1;
    const x = t => PAD.l + (t / tMax) * (W - PAD.l - PAD.r);
    const y = v => H - PAD.b - (v / yMax) * (H - PAD.t - PAD.b);
    let lines = 0;
    for (let i = 0; i <= 4; i++) {  // y axis, thousands separated
      const v = yMax * i / 4;
      svg.appendChild(el("line", {x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), stroke: "#ddd"}));
      svg.appendChild(el("text", {x: PAD.l - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11}, fmt(v)));
    }
    svg.appendChild(el("text", {x: (W - PAD.r + PAD.l) / 2, y: H - 6, "text-anchor": "middle", "font-size": 11},
                       `seconds since the test started (${fmt(tMax)} s)`));
    function path(values, color, width, label, cls, dash) {
      const d = values.map((v, i) => `${i ? "L" : "M"}${x(pts[i].t).toFixed(1)},${y(v).toFixed(1)}`).join("");
      svg.appendChild(el("path", {d, fill: "none", stroke: color, "stroke-width": width, class: cls,
                                  "stroke-dasharray": dash || "", "data-label": label}));
      lines++;
    }
    function level(v, color, label, cls) {
      svg.appendChild(el("line", {x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), stroke: color,
                                  "stroke-dasharray": "6,4", class: cls, "data-value": v}));
      svg.appendChild(el("text", {x: W - PAD.r + 4, y: y(v) + 4, "font-size": 11, fill: color}, label));
      lines++;
    }
    if (pts.length > 1) {
      const procs = Math.max(0, ...pts.map(p => (p.by_process || []).length));
      for (let i = 0; i < procs; i++) {
        path(pts.map(p => (p.by_process || [])[i] || 0), COLORS[i % COLORS.length], 1, `process ${i}`, "process");
      }
      path(pts.map(p => p.held), "#000", 2.5, "held in all", "total");
    }
    [...new Set(caps)].forEach(c => level(c, "#c33", `cap ${fmt(c)}`, "cap"));
    level(data.port_numbers, "#888", "65,535 port numbers", "ports");
    pts.filter(p => p.kernel !== null && p.kernel !== undefined).forEach(p =>
      svg.appendChild(el("circle", {cx: x(p.t), cy: y(p.kernel), r: 2.5, fill: "#000", class: "kernel"})));
    svg.setAttribute("data-lines", lines);
    const old = box.querySelector("#harness-chart-svg");
    if (old) old.replaceWith(svg); else box.appendChild(svg);
  }

  async function tick() {
    const tab = [...document.querySelectorAll("[role=tab]")].find(t => /connections/i.test(t.textContent));
    const open = tab && tab.getAttribute("aria-selected") === "true";
    let box = document.getElementById("harness-chart");
    if (!open) { if (box) box.remove(); return; }
    if (!box) {
      const table = document.querySelector("table");
      if (!table) return;
      box = document.createElement("div");
      box.id = "harness-chart";
      box.style.margin = "1em 0";
      table.parentElement.insertBefore(box, table);
    }
    try {
      const res = await fetch("/connections/series");
      if (res.ok) draw(box, await res.json());
    } catch (e) { /* the master is restarting or gone: try again at the next tick */ }
  }

  setInterval(tick, 2000);
  document.addEventListener("click", () => setTimeout(tick, 100));
})();
