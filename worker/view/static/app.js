// kronos-rt view: the page's logic. One EventSource (/events?symbol=S) brings everything: a
// `hello` with the symbol list and S's snapshot, then summaries, bars, forecasts and scores as
// the server reads them; the page never polls. Drawing: TradingView Lightweight Charts
// (vendor/); the bands and the fading earlier forecasts are drawn by a series primitive
// (ForecastLayer) under the candles.
"use strict";
(function () {
  const LC = window.LightweightCharts;
  const EARLIER = 6;  // earlier forecasts drawn behind the latest, fading with age
  const $ = (id) => document.getElementById(id);

  const view = {
    symbol: null, chosenByUser: false, summaries: new Map(), bars: new Map(), forecasts: [], score: null,
    limits: { max_bars: 500, max_forecasts: 20 }, source: null, dirty: false, listDirty: false, fit: true,
  };
  // What the browser test (tests/worker/view) reads: counts of what is shown, never used by the page.
  const status = window.kronosView = {
    symbols: 0, symbol: null, bars: 0, forecasts: 0, latestAsOf: null, draws: 0, bandPoints: 0, events: 0,
    unknown: false,
  };

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "n/a";
    const a = Math.abs(v);
    return a >= 1e5 || (a > 0 && a < 1e-3) ? v.toExponential(4) : String(Number(v.toPrecision(6)));
  }
  function fmtTime(t) {  // seconds of a wall clock written without a zone: shown as written
    return new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ");
  }
  function symbolFromPath() {
    const m = location.pathname.match(/^\/symbol\/(.+)$/);
    return m ? decodeURIComponent(m[1]) : null;
  }

  // -- chart ------------------------------------------------------------------------------
  const chart = LC.createChart($("chart"), {
    autoSize: true,
    layout: { background: { color: "#ffffff" }, textColor: "#1d2330", attributionLogo: true },
    grid: { vertLines: { color: "#f0f1f4" }, horzLines: { color: "#f0f1f4" } },
    timeScale: { timeVisible: true, secondsVisible: false, rightOffset: 3 },
    crosshair: { mode: LC.CrosshairMode.Normal },
    localization: { priceFormatter: fmt },
  });
  const candles = chart.addSeries(LC.CandlestickSeries, {
    upColor: "#26a69a", downColor: "#ef5350", wickUpColor: "#26a69a", wickDownColor: "#ef5350", borderVisible: false,
  });
  const edge = (color, style) => chart.addSeries(LC.LineSeries, {
    color, lineWidth: 1, lineStyle: style, priceLineVisible: false, lastValueVisible: false,
    crosshairMarkerVisible: false,
  });
  const rawHi = edge("rgba(31, 79, 209, 0.55)", LC.LineStyle.Dotted);
  const rawLo = edge("rgba(31, 79, 209, 0.55)", LC.LineStyle.Dotted);
  const calHi = edge("#e67e22", LC.LineStyle.Dashed);
  const calLo = edge("#e67e22", LC.LineStyle.Dashed);
  const mean = chart.addSeries(LC.LineSeries, {
    color: "#1f4fd1", lineWidth: 2, priceLineVisible: false, lastValueVisible: true, title: "mean",
  });

  // Filled bands and earlier forecasts' paths, drawn in the pane's background (under the candles).
  class ForecastLayer {
    constructor() {
      this.items = [];
      const renderer = { draw: () => {}, drawBackground: (target) => this.draw(target) };
      this.paneView = { zOrder: () => "bottom", renderer: () => renderer };
    }
    attached(param) { this.chart = param.chart; this.series = param.series; this.requestUpdate = param.requestUpdate; }
    detached() { this.requestUpdate = null; }
    paneViews() { return [this.paneView]; }
    updateAllViews() {}
    set(items) { this.items = items; if (this.requestUpdate) this.requestUpdate(); }
    xy(t, price) {
      const x = this.chart.timeScale().timeToCoordinate(t);
      const y = this.series.priceToCoordinate(price);
      return x === null || y === null ? null : [x, y];
    }
    band(ctx, rows, fill) {  // rows: [time, lo, hi]
      const upper = [], lower = [];
      for (const [t, lo, hi] of rows) {
        const a = this.xy(t, hi), b = this.xy(t, lo);
        if (a && b) { upper.push(a); lower.push(b); }
      }
      if (upper.length < 2) return 0;
      ctx.beginPath();
      upper.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      for (let i = lower.length - 1; i >= 0; i--) ctx.lineTo(lower[i][0], lower[i][1]);
      ctx.closePath();
      ctx.fillStyle = fill;
      ctx.fill();
      return upper.length;
    }
    line(ctx, rows, stroke) {  // rows: [time, value]
      const pts = rows.map(([t, v]) => this.xy(t, v)).filter((p) => p);
      if (pts.length < 2) return;
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.strokeStyle = stroke;
      ctx.lineWidth = 1.5;
      ctx.stroke();
    }
    draw(target) {
      if (!this.chart) return;
      target.useMediaCoordinateSpace(({ context: ctx }) => {
        let points = 0;
        ctx.save();
        for (const it of this.items) {  // oldest first: the latest is drawn on top
          if (it.raw) points += this.band(ctx, it.raw, `rgba(31, 79, 209, ${(0.18 * it.alpha).toFixed(3)})`);
          if (it.calibrated) points += this.band(ctx, it.calibrated, `rgba(230, 126, 34, ${(0.16 * it.alpha).toFixed(3)})`);
          if (!it.latest) this.line(ctx, it.path, `rgba(110, 120, 150, ${(0.75 * it.alpha).toFixed(3)})`);
        }
        ctx.restore();
        status.draws += 1;
        status.bandPoints = points;
      });
    }
  }
  const layer = new ForecastLayer();
  candles.attachPrimitive(layer);

  // A forecast's path and bands start at the close of its as_of bar when that bar is shown.
  function anchored(fc) {
    const bar = view.bars.get(fc.as_of);
    const c = bar ? bar[4] : null;
    const first = fc.path[0][0];
    const lead = (rows, row) => (c !== null && rows && rows.length && rows[0][0] === first ? [row, ...rows] : rows);
    return {
      path: lead(fc.path, [fc.as_of, c]),
      raw: lead(fc.raw, [fc.as_of, c, c]),
      calibrated: lead(fc.calibrated, [fc.as_of, c, c]),
    };
  }

  function render() {
    view.dirty = false;
    const ts = chart.timeScale();
    const before = ts.getVisibleLogicalRange();
    const total0 = view.shownPoints || 0;
    const times = [...view.bars.keys()].sort((a, b) => a - b);
    candles.setData(times.map((t) => {
      const b = view.bars.get(t);
      return { time: t, open: b[1], high: b[2], low: b[3], close: b[4] };
    }));
    const fcs = view.forecasts;
    const latest = fcs.length ? fcs[fcs.length - 1] : null;
    const line = (rows, k) => (rows || []).map((r) => ({ time: r[0], value: r[k] }));
    let horizon = 0;
    if (latest) {
      const a = anchored(latest);
      mean.setData(line(a.path, 1));
      rawLo.setData(line(a.raw, 1)); rawHi.setData(line(a.raw, 2));
      calLo.setData(line(a.calibrated, 1)); calHi.setData(line(a.calibrated, 2));
      const lastBar = times.length ? times[times.length - 1] : -Infinity;
      horizon = latest.path.filter((r) => r[0] > lastBar).length;
    } else {
      for (const s of [mean, rawLo, rawHi, calLo, calHi]) s.setData([]);
    }
    const shown = fcs.slice(-1 - EARLIER);
    layer.set(shown.map((fc, i) => {
      const a = anchored(fc);
      const isLatest = i === shown.length - 1;
      return {
        latest: isLatest, alpha: isLatest ? 1 : 0.25 + 0.5 * (i + 1) / shown.length,
        path: a.path, raw: isLatest ? a.raw : null, calibrated: isLatest ? a.calibrated : null,
      };
    }));
    // Follow the newest bars unless the reader scrolled back.
    const total = times.length + horizon;
    view.shownPoints = total;
    if (view.fit || !before || before.to >= total0 - 1) {
      const width = view.fit || !before ? Math.min(120, total + 6) : before.to - before.from;
      if (total) ts.setVisibleLogicalRange({ from: total + 2 - width, to: total + 2 });
      view.fit = false;
    }
    status.bars = times.length;
    status.forecasts = fcs.length;
    status.latestAsOf = latest ? latest.as_of_raw : null;
    renderHeader();
  }
  function schedule() {
    if (!view.dirty) { view.dirty = true; requestAnimationFrame(render); }
  }

  // -- text -------------------------------------------------------------------------------
  function renderHeader() {
    const s = view.symbol;
    const fc = view.forecasts.length ? view.forecasts[view.forecasts.length - 1] : null;
    const title = $("title");
    title.textContent = s ? s + (fc ? "  \u2014  " + fc.model : "") : "no symbol yet";
    if (fc && fc.random_weights) {
      const b = document.createElement("span");
      b.className = "badge random";
      b.textContent = "RANDOM WEIGHTS";
      b.title = "made by a model with random weights: the pipeline is real, the forecasts mean nothing";
      title.append(" ", b);
    }
    const parts = [];
    if (fc) {
      parts.push(`latest forecast as_of ${fc.as_of_raw}`, `next close ${fmt(fc.next_close)}`);
      if (fc.band) parts.push(`raw band [${fmt(fc.band[0])}, ${fmt(fc.band[1])}] (q${fc.levels[0]}\u2013q${fc.levels[1]})`);
      if (fc.calibrated && fc.calibrated[0][0] === fc.path[0][0]) {
        parts.push(`calibrated [${fmt(fc.calibrated[0][1])}, ${fmt(fc.calibrated[0][2])}]` +
                   (fc.calibration ? ` (${fc.calibration})` : ""));
      }
      if (fc.latency_ms !== null) parts.push(`latency ${Math.round(fc.latency_ms)} ms`);
    }
    if (view.score && view.score.abs_error !== null) {
      parts.push(`last score: |error| ${fmt(view.score.abs_error)} at step ${view.score.step}` +
                 (view.score.persistence_abs_error !== null ? ` (persistence ${fmt(view.score.persistence_abs_error)})` : ""));
    }
    if (s) parts.push(`${status.bars} bars, ${view.forecasts.length} forecasts held`);
    $("detail").textContent = parts.join(" \u00b7 ") || "\u00a0";
    const msg = $("message");
    if (!s) msg.textContent = "waiting for the first bars and forecasts...";
    else if (status.unknown && !view.bars.size && !view.forecasts.length) msg.textContent = `no bars or forecasts of ${s} yet`;
    else if (!fc) msg.textContent = view.bars.size ? `${s}: no forecast yet` : "";
    else msg.textContent = "";
    msg.style.display = msg.textContent ? "" : "none";
  }

  function renderList() {
    view.listDirty = false;
    const body = $("symbols");
    const rows = [...view.summaries.values()].sort((a, b) => (a.symbol < b.symbol ? -1 : 1));
    body.replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.symbol = r.symbol;
      if (r.symbol === view.symbol) tr.className = "current";
      const band = r.band ? `${fmt(r.band[0])} \u2013 ${fmt(r.band[1])}` : "";
      const cells = [r.symbol, r.as_of_raw || "(no forecast yet)", r.next_close !== null ? fmt(r.next_close) : "",
                     band, r.latency_ms !== null ? `${Math.round(r.latency_ms)} ms` : ""];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (i >= 2) td.className = "num";
        tr.append(td);
      });
      tr.addEventListener("click", () => choose(r.symbol, true));
      return tr;
    }));
    status.symbols = rows.length;
    const models = new Set(rows.map((r) => r.model).filter((m) => m));
    const random = rows.some((r) => r.random_weights);
    $("models").textContent = [...models].join(", ") + (random ? "  (RANDOM WEIGHTS)" : "");
  }
  function scheduleList() {
    if (!view.listDirty) { view.listDirty = true; requestAnimationFrame(renderList); }
  }

  function renderStats(st) {
    if (!st) return;
    view.limits = st.limits || view.limits;
    const m = st.messages || {}, bad = st.invalid || {};
    const count = (o) => Object.values(o).reduce((a, b) => a + b, 0);
    $("stats").textContent = `${st.symbols} symbols \u00b7 read ${count(m)}` +
      ` (bars ${m.bars || 0}, forecasts ${m.forecasts || 0}${m.scores ? ", scores " + m.scores : ""})` +
      ` \u00b7 malformed skipped ${count(bad)} \u00b7 repeats dropped ${st.duplicates}` +
      ` \u00b7 kept: ${st.limits.max_bars} bars, ${st.limits.max_forecasts} forecasts per symbol, ${st.limits.max_symbols} symbols`;
  }

  // -- data -------------------------------------------------------------------------------
  function addBar(row) {
    view.bars.set(row[0], row);
    if (view.bars.size > view.limits.max_bars) {
      const oldest = Math.min(...view.bars.keys());
      view.bars.delete(oldest);
    }
  }
  function addForecast(fc) {
    const key = (f) => [f.as_of, f.produced_at];
    const k = key(fc);
    const list = view.forecasts;
    let i = list.length;
    while (i > 0 && (key(list[i - 1])[0] > k[0] || (key(list[i - 1])[0] === k[0] && key(list[i - 1])[1] > k[1]))) i--;
    list.splice(i, 0, fc);
    while (list.length > view.limits.max_forecasts) list.shift();
  }

  function onHello(d) {
    renderStats(d.stats);
    view.summaries = new Map(d.symbols.map((s) => [s.symbol, s]));
    view.bars.clear();
    view.forecasts = [];
    view.score = null;
    if (d.snapshot) {
      for (const b of d.snapshot.bars) addBar(b);
      for (const f of d.snapshot.forecasts) addForecast(f);
      view.score = d.snapshot.score;
    }
    status.unknown = !!view.symbol && !d.snapshot;
    view.fit = true;
    renderList();
    if (!view.symbol && d.symbols.length) {  // the bare page: show the first symbol with a forecast
      const first = d.symbols.find((s) => s.as_of !== null) || d.symbols[0];
      choose(first.symbol, false);
      return;
    }
    schedule();
  }

  function connect() {
    if (view.source) view.source.close();
    const url = "/events" + (view.symbol ? "?symbol=" + encodeURIComponent(view.symbol) : "");
    const es = new EventSource(url);
    view.source = es;
    const on = (name, fn) => es.addEventListener(name, (e) => { status.events += 1; fn(JSON.parse(e.data)); });
    on("hello", onHello);
    on("summary", (d) => {
      view.summaries.set(d.symbol, d.summary);
      scheduleList();
      if (!view.symbol) choose(d.symbol, false);
    });
    on("evicted", (d) => { view.summaries.delete(d.symbol); scheduleList(); });
    on("bar", (d) => { addBar(d.bar); schedule(); });
    on("forecast", (d) => { addForecast(d.forecast); status.unknown = false; schedule(); });
    on("score", (d) => { view.score = d.score; renderHeader(); });
    on("stats", renderStats);
    es.onopen = () => { $("conn").textContent = "live (server-sent events)"; };
    es.onerror = () => { $("conn").textContent = "disconnected: reconnecting..."; };
  }

  function choose(symbol, byUser) {
    if (symbol === view.symbol) return;
    view.symbol = symbol;
    status.symbol = symbol;
    if (byUser) history.pushState({ symbol }, "", "/symbol/" + encodeURIComponent(symbol));
    view.bars.clear();
    view.forecasts = [];
    view.fit = true;
    scheduleList();
    schedule();
    connect();
  }

  window.addEventListener("popstate", () => {
    const s = symbolFromPath();
    if (s) choose(s, false);
  });

  view.symbol = symbolFromPath();
  status.symbol = view.symbol;
  renderHeader();
  connect();
})();
