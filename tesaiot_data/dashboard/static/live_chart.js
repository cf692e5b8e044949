// The dashboard's live chart: the anywidget front end of tesaiot_data/dashboard/live_chart.py.
// live_chart.py puts uPlot's IIFE build (which defines `uPlot`) before this file.
//
// Data arrive as custom messages {type: "data", mode, now_ms, window_ms, ids, counts[, range]}
// with two float64 buffers (times in ms since the epoch, values), one run per device in `ids`:
//   reset:  the whole window, min/max-decimated per pixel bucket (on a new view or selection);
//   append: only the points received since the last message;
//   detail: the points of one time range at the zoomed view's resolution (after a zoom or pan).
// Gestures: drag = zoom on time; shift+drag = pan; double-click or "Reset zoom" = follow again.
// State for tests and scripts is on the root element: data-points, data-updates, data-x-min,
// data-x-max (ms), data-zoomed, data-devices.

const PAD = 0.02; // share of the window left free right of "now"
const HEIGHT = 320;

function f64(view) {
  return new Float64Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

function lowerBound(arr, value) {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function concat(a, b) {
  const out = new Float64Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

// Insert sorted (t, y) runs into a sorted series; a device's late points land in place.
function mergeInto(s, t, y) {
  if (t.length === 0) return;
  if (s.t.length === 0 || t[0] >= s.t[s.t.length - 1]) {
    s.t = concat(s.t, t);
    s.y = concat(s.y, y);
    return;
  }
  const n = s.t.length + t.length;
  const outT = new Float64Array(n);
  const outY = new Float64Array(n);
  let i = 0;
  let j = 0;
  for (let k = 0; k < n; k++) {
    if (j >= t.length || (i < s.t.length && s.t[i] <= t[j])) {
      outT[k] = s.t[i];
      outY[k] = s.y[i++];
    } else {
      outT[k] = t[j];
      outY[k] = y[j++];
    }
  }
  s.t = outT;
  s.y = outY;
}

function spliceRange(s, lo, hi, t, y) {
  const a = lowerBound(s.t, lo);
  let b = lowerBound(s.t, hi);
  while (b < s.t.length && s.t[b] === hi) b++;
  const n = a + t.length + (s.t.length - b);
  const outT = new Float64Array(n);
  const outY = new Float64Array(n);
  outT.set(s.t.subarray(0, a), 0);
  outY.set(s.y.subarray(0, a), 0);
  outT.set(t, a);
  outY.set(y, a);
  outT.set(s.t.subarray(b), a + t.length);
  outY.set(s.y.subarray(b), a + t.length);
  s.t = outT;
  s.y = outY;
}

function trimBefore(s, start) {
  const a = lowerBound(s.t, start);
  if (a > 0) {
    s.t = s.t.slice(a);
    s.y = s.y.slice(a);
  }
}

// Tick labels in UTC, 24 h: seconds where the ticks are seconds apart, dates across days.
function timeTicks(uu, splits) {
  const span = splits.length > 1 ? splits[1] - splits[0] : 0;
  return splits.map((v) => {
    const iso = new Date(v).toISOString();
    if (span >= 86400000) return iso.slice(5, 10);
    if (span >= 3600000) return iso.slice(5, 10) + " " + iso.slice(11, 16);
    if (span >= 60000) return iso.slice(11, 16);
    if (span >= 1000) return iso.slice(11, 19);
    return iso.slice(11, 23);
  });
}

function isoMs(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

function fmtValue(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(4);
  return String(Number(v.toPrecision(7)));
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text != null) node.textContent = text;
  return node;
}

function render({ model, el: host }) {
  const root = el("div", "tesaiot-live");
  const bar = el("div", "tesaiot-live-bar");
  const title = el("span", "tesaiot-live-title");
  const reset = el("button", "tesaiot-live-reset", "Reset zoom");
  reset.type = "button";
  reset.title = "follow the newest data again (or double-click the chart)";
  const hint = el(
    "span",
    "tesaiot-live-hint",
    "drag: zoom \u00b7 shift+drag: pan \u00b7 double-click: reset \u00b7 click a device: hide/show",
  );
  bar.append(title, reset, hint);
  const plot = el("div", "tesaiot-live-plot");
  const tip = el("div", "tesaiot-live-tip");
  const legend = el("div", "tesaiot-live-legend");
  const note = el("div", "tesaiot-live-note");
  const waiting = el("div", "tesaiot-live-waiting", "waiting for data");
  root.append(bar, plot, legend, note);
  host.append(root);

  const series = new Map(); // device id -> {t, y}
  const hidden = new Set();
  let u = null;
  let nowMs = Date.now();
  let windowMs = model.get("window_ms") || 300000;
  let zoom = null; // [min, max] ms while the user looks at a range of their own
  let updates = 0;
  let width = 0;
  let settingScale = false;

  const styles = () => model.get("series") || [];
  const shownIds = () => styles().map((s) => s.id);

  function followRange() {
    return [nowMs - windowMs, nowMs + windowMs * PAD];
  }

  function yRange(x0, x1) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const id of shownIds()) {
      if (hidden.has(id)) continue;
      const s = series.get(id);
      if (!s) continue;
      for (let i = lowerBound(s.t, x0), n = s.t.length; i < n && s.t[i] <= x1; i++) {
        const v = s.y[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    if (lo === Infinity) return [0, 1];
    const pad = hi > lo ? (hi - lo) * 0.05 : Math.max(Math.abs(hi) * 0.05, 1);
    return [lo - pad, hi + pad];
  }

  function expose() {
    let points = 0;
    for (const s of series.values()) points += s.t.length;
    const [x0, x1] = u ? [u.scales.x.min, u.scales.x.max] : zoom || followRange();
    root.dataset.points = String(points);
    root.dataset.updates = String(updates);
    root.dataset.xMin = String(x0);
    root.dataset.xMax = String(x1);
    root.dataset.zoomed = zoom ? "1" : "0";
    root.dataset.devices = String(shownIds().length);
    // Where the first shown device's newest point is drawn (px in the plot area), so a
    // test can hover it.
    root.dataset.probe = "";
    const first = shownIds().find((id) => !hidden.has(id) && series.get(id)?.t.length);
    if (u && first) {
      const s = series.get(first);
      const i = Math.max(0, lowerBound(s.t, u.scales.x.max) - 1);
      const px = u.valToPos(s.t[i], "x");
      const py = u.valToPos(s.y[i], "y");
      if (Number.isFinite(px) && Number.isFinite(py)) root.dataset.probe = `${px},${py}`;
    }
  }

  function applyScales() {
    if (!u) return expose();
    const [x0, x1] = zoom || followRange();
    const [y0, y1] = yRange(x0, x1);
    settingScale = true;
    u.batch(() => {
      u.setScale("x", { min: x0, max: x1 });
      u.setScale("y", { min: y0, max: y1 });
    });
    settingScale = false;
    expose();
  }

  function plotData() {
    return [null, ...shownIds().map((id) => {
      const s = series.get(id) || { t: new Float64Array(0), y: new Float64Array(0) };
      return [s.t, s.y];
    })];
  }

  function redraw() {
    if (!u) return expose();
    u.setData(plotData(), false);
    applyScales();
  }

  function requestDetail() {
    if (zoom) model.send({ type: "view", min: zoom[0], max: zoom[1], width: plotWidth() });
  }

  function plotWidth() {
    return Math.max(100, Math.round(u ? u.bbox.width / devicePixelRatio : width || 800));
  }

  function setZoom(range) {
    zoom = range;
    root.classList.toggle("zoomed", zoom != null);
    applyScales();
  }

  function onCursor(uu) {
    const { left, top } = uu.cursor;
    if (left == null || left < 0) {
      tip.style.display = "none";
      return;
    }
    const xv = uu.posToVal(left, "x");
    let best = null;
    let bestD = 30 * 30; // px^2: within 30 px of a point
    shownIds().forEach((id, k) => {
      if (hidden.has(id)) return;
      const s = series.get(id);
      if (!s || s.t.length === 0) return;
      const i = lowerBound(s.t, xv);
      for (const j of [i - 1, i]) {
        if (j < 0 || j >= s.t.length) continue;
        const dx = uu.valToPos(s.t[j], "x") - left;
        const dy = uu.valToPos(s.y[j], "y") - top;
        const d = dx * dx + dy * dy;
        if (d < bestD) {
          bestD = d;
          best = { id, k, t: s.t[j], y: s.y[j] };
        }
      }
    });
    if (!best) {
      tip.style.display = "none";
      return;
    }
    const unit = model.get("unit");
    tip.textContent = "";
    tip.append(
      el("div", "tesaiot-live-tip-time", isoMs(best.t)),
      el("div", "tesaiot-live-tip-device", best.id),
      el("div", "tesaiot-live-tip-value", `${model.get("metric")} = ${fmtValue(best.y)}${unit ? " " + unit : ""}`),
    );
    tip.style.display = "block";
    const w = uu.over.clientWidth;
    tip.style.left = `${left + 12 > w - 240 ? left - 250 : left + 12}px`;
    tip.style.top = `${Math.max(0, top - 10)}px`;
    root.dataset.hover = best.id;
  }

  function build() {
    if (u) {
      u.destroy();
      u = null;
    }
    const ids = styles();
    waiting.remove();
    if (ids.length === 0) {
      plot.append(waiting);
      renderLegend();
      return expose();
    }
    const opts = {
      mode: 2,
      ms: 1,
      width: Math.max(200, width || root.clientWidth || 800),
      height: HEIGHT,
      legend: { show: false },
      tzDate: (ts) => uPlot.tzDate(new Date(ts), "Etc/UTC"),
      scales: {
        x: { time: true, auto: false, range: (uu, min, max) => [min, max] },
        y: { auto: false, range: (uu, min, max) => [min, max] },
      },
      axes: [
        { label: "time (UTC)", labelSize: 18, size: 42, space: 90, values: timeTicks },
        { label: model.get("unit") || "", labelSize: 18, size: 60 },
      ],
      cursor: {
        drag: { x: true, y: false, setScale: false },
        points: { show: false },
        dataIdx: () => null,
        bind: { dblclick: () => () => null },
      },
      series: [
        {},
        ...ids.map((s) => ({
          label: s.id,
          stroke: s.color,
          dash: s.dash && s.dash.length ? s.dash : undefined,
          width: 1.25,
          show: !hidden.has(s.id),
          paths: uPlot.paths.linear(),
          points: { show: false },
          facets: [
            { scale: "x", auto: false },
            { scale: "y", auto: false },
          ],
        })),
      ],
      hooks: {
        setSelect: [
          (uu) => {
            if (uu.select.width < 3) return;
            const a = uu.posToVal(uu.select.left, "x");
            const b = uu.posToVal(uu.select.left + uu.select.width, "x");
            uu.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            setZoom([a, b]);
            requestDetail();
          },
        ],
        setCursor: [onCursor],
      },
    };
    u = new uPlot(opts, plotData(), plot);
    u.over.appendChild(tip);
    u.over.addEventListener("dblclick", () => setZoom(null));
    u.over.addEventListener("mouseleave", () => (tip.style.display = "none"));
    renderLegend();
    applyScales();
  }

  function renderLegend() {
    legend.textContent = "";
    styles().forEach((s, k) => {
      const chip = el("span", "tesaiot-live-chip" + (hidden.has(s.id) ? " off" : ""));
      chip.title = `${s.id} (click to hide or show)`;
      chip.dataset.device = s.id;
      const swatch = el("span", "tesaiot-live-swatch");
      swatch.style.borderTopColor = s.color;
      swatch.style.borderTopStyle = s.dash && s.dash.length ? (s.dash[0] > 3 ? "dashed" : "dotted") : "solid";
      chip.append(swatch, el("span", null, s.label));
      chip.addEventListener("click", () => {
        if (hidden.has(s.id)) hidden.delete(s.id);
        else hidden.add(s.id);
        chip.classList.toggle("off", hidden.has(s.id));
        if (u) {
          u.setSeries(k + 1, { show: !hidden.has(s.id) });
          applyScales(); // uPlot's mode 2 resets the scales when a series is toggled
        }
      });
      legend.append(chip);
    });
  }

  function renderText() {
    const metric = model.get("metric");
    const unit = model.get("unit");
    title.textContent = metric ? (unit ? `${metric} [${unit}]` : metric) : "no metric yet";
    waiting.textContent = metric ? `no ${metric} values in the window` : "waiting for data";
    note.textContent = model.get("note") || "";
  }

  // Shift+drag pans: caught before it reaches uPlot's own drag-to-zoom.
  plot.addEventListener(
    "mousedown",
    (e) => {
      if (!e.shiftKey || !u || e.button !== 0) return;
      e.stopPropagation();
      e.preventDefault();
      const start = e.clientX;
      const [x0, x1] = zoom || followRange();
      const perPx = (x1 - x0) / Math.max(1, u.over.clientWidth);
      const move = (m) => setZoom([x0 - (m.clientX - start) * perPx, x1 - (m.clientX - start) * perPx]);
      const up = () => {
        window.removeEventListener("mousemove", move);
        window.removeEventListener("mouseup", up);
        requestDetail();
      };
      window.addEventListener("mousemove", move);
      window.addEventListener("mouseup", up);
    },
    true,
  );
  reset.addEventListener("click", () => setZoom(null));

  function onMessage(msg, buffers) {
    if (!msg || msg.type !== "data") return;
    const t = buffers && buffers.length ? f64(buffers[0]) : new Float64Array(0);
    const y = buffers && buffers.length > 1 ? f64(buffers[1]) : new Float64Array(0);
    nowMs = msg.now_ms;
    windowMs = msg.window_ms;
    if (msg.mode === "reset") series.clear();
    let at = 0;
    msg.ids.forEach((id, k) => {
      const n = msg.counts[k];
      const st = t.subarray(at, at + n);
      const sy = y.subarray(at, at + n);
      at += n;
      let s = series.get(id);
      if (!s) {
        s = { t: new Float64Array(0), y: new Float64Array(0) };
        series.set(id, s);
      }
      if (msg.mode === "detail") spliceRange(s, msg.range[0], msg.range[1], st, sy);
      else mergeInto(s, st.slice(), sy.slice());
    });
    const start = nowMs - windowMs;
    for (const s of series.values()) trimBefore(s, start);
    updates += 1;
    redraw();
  }

  model.on("msg:custom", onMessage);
  model.on("change:series", build);
  // Another metric is another y range: a zoom chosen on the old one does not carry over.
  model.on("change:metric", () => {
    renderText();
    setZoom(null);
  });
  model.on("change:unit", () => {
    renderText();
    build();
  });
  model.on("change:note", renderText);
  model.on("change:window_ms", () => {
    windowMs = model.get("window_ms");
    applyScales();
  });

  const observer = new ResizeObserver(() => {
    const w = Math.floor(root.clientWidth);
    if (w <= 0 || w === width) return;
    width = w;
    if (u) u.setSize({ width: w, height: HEIGHT });
    if (model.get("plot_width") !== plotWidth()) {
      model.set("plot_width", plotWidth());
      model.save_changes();
    }
  });
  observer.observe(root);

  renderText();
  build();
  model.send({ type: "hello", width: plotWidth() });
  return () => {
    observer.disconnect();
    model.off("msg:custom", onMessage);
    model.off("change:series", build);
    if (u) u.destroy();
  };
}

export default { render };
