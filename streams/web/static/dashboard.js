// callstream control-room dashboard: one Server-Sent Events stream (/api/stream) carries a
// snapshot, then stats / totals / alert / health updates. Everything is drawn with the DOM
// and hand-written SVG (no libraries, nothing from the internet); all text goes through
// textContent, so nothing in a record can inject markup.
"use strict";
(function () {
  const CATS = ["C1", "C2", "C3", "C4"];
  const STATUS_WORD = { within: "WITHIN", close: "CLOSE", breached: "BREACHED" };
  const token = new URLSearchParams(location.search).get("token");
  const S = {
    stats: new Map(), totals: new Map(), trends: new Map(), active: new Map(), recent: [],
    targets: {}, trendWindow: "1h", timezone: "Europe/London", health: null,
    healthAt: 0, connected: false, snapshot: false, windows: new Set(),
  };
  const $ = (id) => document.getElementById(id);
  const winSel = $("window"), trustSel = $("trend-trust");

  // ---- formatting ----------------------------------------------------------------------
  function pad2(n) { return String(n).padStart(2, "0"); }
  function fmtDuration(s) {
    if (s === null || s === undefined) return "–";
    const t = Math.round(s);
    if (t < 3600) return Math.floor(t / 60) + "m " + pad2(t % 60) + "s";
    return Math.floor(t / 3600) + "h " + pad2(Math.floor((t % 3600) / 60)) + "m";
  }
  function fmtTarget(s) { return s >= 3600 && s % 3600 === 0 ? s / 3600 + "h" : s / 60 + "m"; }
  function fmtShare(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%"; }
  function fmtClock(iso) {
    if (!iso) return "–";
    try {
      return new Date(iso).toLocaleString("en-GB", { timeZone: S.timezone, day: "2-digit",
        month: "short", hour: "2-digit", minute: "2-digit" });
    } catch (e) { return iso; }
  }
  function fmtHM(ms) {
    return new Date(ms).toLocaleTimeString("en-GB", { timeZone: S.timezone, hour: "2-digit", minute: "2-digit" });
  }
  function trustName(t) { return t === "*" ? "All trusts" : t; }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function windowRank(w) {
    const m = /^(\d+)([smhd])$/.exec(w);
    if (!m) return [1, w === "day" ? 0 : w === "mtd" ? 1 : 2];
    return [0, Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]]];
  }
  function byWindow(a, b) {
    const x = windowRank(a), y = windowRank(b);
    return x[0] - y[0] || x[1] - y[1];
  }
  function trusts() {
    const set = new Set();
    for (const s of S.stats.values()) set.add(s.trust);
    for (const t of S.totals.values()) set.add(t.trust);
    return [...set].sort((a, b) => (a === "*" ? -1 : b === "*" ? 1 : a < b ? -1 : a > b ? 1 : 0));
  }

  // ---- state updates -------------------------------------------------------------------
  function key3(r) { return r.trust + "|" + r.category + "|" + r.window; }
  function putStats(r) {
    const k = key3(r), old = S.stats.get(k);
    if (!old || old.end <= r.end) S.stats.set(k, r);
    S.windows.add(r.window);
    if (r.window === S.trendWindow) {
      const tk = r.trust + "|" + r.category;
      const pts = S.trends.get(tk) || [];
      const endMs = Date.parse(r.end);
      const i = pts.findIndex((p) => p.t >= endMs);
      const p = { t: endMs, mean_s: r.mean_s, p90_s: r.p90_s, count: r.count };
      if (i < 0) pts.push(p); else if (pts[i].t === endMs) pts[i] = p; else pts.splice(i, 0, p);
      const horizon = pts[pts.length - 1].t - 24 * 3600 * 1000;
      while (pts.length && pts[0].t <= horizon) pts.shift();
      S.trends.set(tk, pts);
    }
  }
  function putTotals(r) {
    const k = r.trust + "|" + r.window, old = S.totals.get(k);
    if (!old || old.end <= r.end) S.totals.set(k, r);
    S.windows.add(r.window);
  }
  function putAlert(a) {
    if (a.status === "firing") S.active.set(a.fingerprint, a); else S.active.delete(a.fingerprint);
    if (a.status === "resolved" || !a.repeat) {       // newest event time first
      const t = Date.parse(a.at);
      let i = 0;
      while (i < S.recent.length && Date.parse(S.recent[i].at) > t) i++;
      S.recent.splice(i, 0, a);
      S.recent.length = Math.min(S.recent.length, 50);
    }
  }
  function applySnapshot(d) {
    if (d.stats) {
      S.stats.clear(); S.totals.clear(); S.trends.clear(); S.windows.clear();
      S.targets = d.targets || {}; S.trendWindow = d.trend_window || "1h";
      S.timezone = d.timezone || S.timezone;
      for (const r of d.stats) { S.stats.set(key3(r), r); S.windows.add(r.window); }
      for (const r of d.totals) putTotals(r);
      for (const tr of d.trends) {
        S.trends.set(tr.trust + "|" + tr.category,
          tr.points.map((p) => ({ t: Date.parse(p.end), mean_s: p.mean_s, p90_s: p.p90_s, count: p.count })));
      }
    }
    if (d.alerts) {
      S.active.clear();
      for (const a of d.alerts.active) S.active.set(a.fingerprint, a);
      S.recent = d.alerts.recent.slice(0, 50);
    }
    if (d.health) setHealth(d.health);
    S.snapshot = true;
  }
  function setHealth(h) { S.health = h; S.healthAt = Date.now(); }

  // ---- rendering -----------------------------------------------------------------------
  let pending = false;
  function schedule() { if (!pending) { pending = true; setTimeout(() => { pending = false; renderAll(); }, 40); } }
  function renderAll() { renderControls(); renderTiles(); renderTrends(); renderAlerts(); renderStatus(); }

  function renderControls() {
    const wins = [...S.windows].sort(byWindow);
    const cur = winSel.value || (wins.includes("1h") ? "1h" : wins[0]);
    if (winSel.options.length !== wins.length || [...winSel.options].some((o, i) => o.value !== wins[i])) {
      winSel.replaceChildren(...wins.map((w) => { const o = el("option", "", w); o.value = w; return o; }));
    }
    if (cur) winSel.value = cur;
    const ts = trusts();
    const curT = trustSel.value || "*";
    if (trustSel.options.length !== ts.length || [...trustSel.options].some((o, i) => o.value !== ts[i])) {
      trustSel.replaceChildren(...ts.map((t) => { const o = el("option", "", trustName(t)); o.value = t; return o; }));
    }
    if (ts.includes(curT)) trustSel.value = curT;
  }

  function measure(label, field, value, target, status) {
    const row = el("div", "measure");
    row.append(el("span", "lbl", label));
    const v = el("span", "val", fmtDuration(value));
    v.dataset.field = field;
    v.dataset.value = value === null || value === undefined ? "" : String(value);
    if (status) { v.dataset.status = status; v.title = STATUS_WORD[status]; }
    row.append(v, el("span", "tgt", target ? "target " + fmtTarget(target) : "no standard"));
    return row;
  }

  function tile(trust, cat, window) {
    const r = S.stats.get(trust + "|" + cat + "|" + window);
    const t = el("div", "tile");
    t.dataset.trust = trust; t.dataset.category = cat;
    const tgt = S.targets[cat] || {};
    const head = el("div", "head");
    head.append(el("span", "cat", cat));
    if (r && r.status) {
      const b = el("span", "badge", STATUS_WORD[r.status]);
      b.dataset.status = r.status; t.dataset.status = r.status; head.append(b);
    }
    t.append(head);
    if (!r) { t.classList.add("empty"); t.append(el("div", "small", "no window yet")); return t; }
    t.append(measure("Mean", "mean_s", r.mean_s, tgt.mean_s, r.mean_status),
             measure("90th", "p90_s", r.p90_s, tgt.p90_s, r.p90_status));
    const n = el("div", "small");
    const c = el("b", "", String(r.count)); c.dataset.field = "count"; c.dataset.value = String(r.count);
    n.append(c, " responses");
    if (cat === "C1") {
      const c1t = S.stats.get(trust + "|C1T|" + window);
      if (c1t && c1t.count) n.append(" · C1T 90th " + fmtDuration(c1t.p90_s));
    }
    t.append(n);
    const p = el("div", "small");
    const w = el("b", "", r.waiting === null || r.waiting === undefined ? "–" : String(r.waiting));
    w.dataset.field = "waiting"; w.dataset.value = r.waiting === null || r.waiting === undefined ? "" : String(r.waiting);
    const lw = el("b", "", fmtDuration(r.longest_wait_s));
    lw.dataset.field = "longest_wait_s"; lw.dataset.value = r.longest_wait_s === null || r.longest_wait_s === undefined ? "" : String(r.longest_wait_s);
    p.append("waiting ", w, " · longest ", lw);
    t.append(p);
    return t;
  }

  function trustHead(trust, window) {
    const h = el("div", "trust-head");
    h.dataset.trust = trust;
    h.append(el("h2", "", trustName(trust)));
    const tot = S.totals.get(trust + "|" + window);
    const line = (label, field, text, value) => {
      const d = el("div", "line"); const b = el("b", "", text);
      b.dataset.field = field; b.dataset.value = value === null || value === undefined ? "" : String(value);
      d.append(label + " ", b); return d;
    };
    if (tot) {
      h.append(line("calls", "calls", String(tot.calls), tot.calls),
               line("hear & treat", "hear_and_treat_share", fmtShare(tot.hear_and_treat_share), tot.hear_and_treat_share),
               line("redirected", "redirected_share", fmtShare(tot.redirected_share), tot.redirected_share));
    }
    const end = [...S.stats.values()].filter((s) => s.trust === trust && s.window === window)
      .reduce((m, s) => (s.end > m ? s.end : m), "");
    if (end) h.append(el("div", "line", "to " + fmtClock(end)));
    return h;
  }

  function renderTiles() {
    const box = $("tiles"), window = winSel.value;
    const rows = trusts().map((trust) => {
      const row = el("div", "trust-row");
      row.dataset.trust = trust;
      row.append(trustHead(trust, window), ...CATS.map((c) => tile(trust, c, window)));
      return row;
    });
    if (!rows.length) rows.push(el("p", "none", "No closed windows yet."));
    box.replaceChildren(...rows);
  }

  // ---- trend charts (hand-written SVG) ---------------------------------------------------
  const SVGNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function niceStep(max) {
    const steps = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600];
    for (const s of steps) if (max / s <= 6) return s;
    return 43200;
  }
  function chart(trust, cat) {
    const W = 600, H = 230, L = 48, R = 24, T = 10, B = 26;
    const pts = S.trends.get(trust + "|" + cat) || [];
    const tgt = S.targets[cat] || {};
    const box = el("div", "chart");
    box.dataset.category = cat;
    box.append(el("h3", "", cat + " · " + trustName(trust) + " · " + S.trendWindow + " windows, last 24 h"));
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": `${cat} mean and 90th centile over 24 hours with targets` });
    const allEnds = [];
    for (const [k, v] of S.trends) if (k.startsWith(trust + "|") && v.length) allEnds.push(v[v.length - 1].t);
    const x1 = allEnds.length ? Math.max(...allEnds) : Date.now(), x0 = x1 - 24 * 3600 * 1000;
    let ymax = Math.max(tgt.p90_s || 0, tgt.mean_s || 0, 60);
    for (const p of pts) ymax = Math.max(ymax, p.p90_s || 0, p.mean_s || 0);
    ymax *= 1.08;
    const sx = (t) => L + ((t - x0) / (x1 - x0)) * (W - L - R);
    const sy = (v) => H - B - (v / ymax) * (H - T - B);
    const step = niceStep(ymax);
    for (let v = 0; v <= ymax; v += step) {
      root.append(svg("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), class: "axis" }));
      const lab = svg("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" });
      lab.textContent = v >= 3600 && step % 3600 === 0 ? v / 3600 + "h" : v / 60 + "m";
      root.append(lab);
    }
    for (let t = x0 + 6 * 3600 * 1000; t <= x1 + 1; t += 6 * 3600 * 1000) {
      const lab = svg("text", { x: sx(t), y: H - 8, "text-anchor": "middle" });
      lab.textContent = fmtHM(t);
      root.append(lab, svg("line", { x1: sx(t), x2: sx(t), y1: T, y2: H - B, class: "axis" }));
    }
    const target = (v, dash) => {
      if (!v) return;
      root.append(svg("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), stroke: "#ff5a5a",
        "stroke-width": 2, "stroke-dasharray": dash, "data-target": v }));
    };
    target(tgt.p90_s, "8 5"); target(tgt.mean_s, "2 4");
    const line = (field, colour, width) => {
      let d = "", pen = false;
      for (const p of pts) {
        const v = p[field];
        if (v === null || v === undefined || p.t < x0) { pen = false; continue; }
        d += (pen ? " L" : " M") + sx(p.t).toFixed(1) + " " + sy(v).toFixed(1);
        pen = true;
      }
      if (d) root.append(svg("path", { d: d.trim(), fill: "none", stroke: colour, "stroke-width": width,
        "data-series": field }));
    };
    line("mean_s", "#c7a6ff", 2); line("p90_s", "#7cc4ff", 3);
    box.append(root);
    const legend = el("div", "legend");
    legend.append(el("span", "key-p90", "━ 90th centile"), el("span", "key-mean", "━ mean"),
                  el("span", "key-target", "┅ targets"));
    if (!pts.length) legend.append(el("span", "", "no data"));
    box.append(legend);
    return box;
  }
  function renderTrends() {
    const trust = trustSel.value || "*";
    $("trends").replaceChildren(...CATS.map((c) => chart(trust, c)));
  }

  // ---- alerts --------------------------------------------------------------------------
  const SEV = { critical: 0, warning: 1, info: 2 };   // the server's order: severity, start, fingerprint
  function byUrgency(a, b) {
    const sa = SEV[a.labels.severity] ?? 9, sb = SEV[b.labels.severity] ?? 9;
    if (sa !== sb) return sa - sb;
    if (a.starts_at !== b.starts_at) return a.starts_at < b.starts_at ? -1 : 1;
    return a.fingerprint < b.fingerprint ? -1 : a.fingerprint > b.fingerprint ? 1 : 0;
  }
  function alertItem(a, recent) {
    const li = el("li", "alert");
    li.dataset.fingerprint = a.fingerprint;
    li.dataset.severity = (a.labels && a.labels.severity) || "warning";
    li.dataset.status = a.status;
    const where = [a.labels && a.labels.trust === "*" ? "all trusts" : a.labels && a.labels.trust,
                   a.labels && a.labels.category].filter(Boolean).join(" · ");
    li.append(el("div", "sev", (recent ? a.status.toUpperCase() + " · " : "") + li.dataset.severity.toUpperCase()
                                 + (where ? " · " + where : "")));
    li.append(el("div", "summary", a.summary));
    li.append(el("div", "when", recent ? "at " + fmtClock(a.at) : "since " + fmtClock(a.starts_at)));
    return li;
  }
  function renderAlerts() {
    const act = [...S.active.values()].sort(byUrgency);
    const list = $("alerts");
    list.replaceChildren(...(act.length ? act.map((a) => alertItem(a, false)) : [el("li", "none", "No alerts firing.")]));
    const cnt = $("alert-count");
    cnt.textContent = String(act.length); cnt.dataset.any = act.length ? "yes" : "no";
    $("recent").replaceChildren(...S.recent.slice(0, 12).map((a) => alertItem(a, true)));
  }

  // ---- status banner -------------------------------------------------------------------
  function renderStatus() {
    const st = $("status"), h = S.health;
    let state = "connecting", text = "Connecting to the worker…";
    if (!S.connected && S.snapshot) {
      state = "disconnected"; text = "LOST CONTACT WITH THE WORKER — figures are frozen, retrying";
    } else if (h && h.broker_connected === false) {
      state = "broker"; text = "WORKER HAS LOST THE KAFKA BROKER — figures are frozen";
    } else if (h && !h.has_data) {
      state = "waiting"; text = "Waiting for the first closed window";
    } else if (h) {
      const age = h.data_age_s === null ? null : h.data_age_s + (Date.now() - S.healthAt) / 1000;
      if (age !== null && age > h.stale_after_s) {
        state = "stale"; text = "STALE: no new data for " + fmtDuration(age) + " (data to " + fmtClock(h.data_through) + ")";
      } else {
        state = "live"; text = "Live · data to " + fmtClock(h.data_through);
      }
    }
    st.dataset.state = state;
    st.textContent = text;
    const facts = $("facts");
    const items = [];
    if (h) {
      items.push(["events/s", h.events_per_s === null ? "–" : h.events_per_s.toFixed(1)],
                 ["lag", h.consumer_lag === null ? "–" : String(h.consumer_lag)],
                 ["watermark", fmtClock(h.watermark)],
                 ["behind now", h.watermark_delay_s === null ? "–" : fmtDuration(h.watermark_delay_s)],
                 ["dead letters", String(h.dead_letters)]);
    }
    facts.replaceChildren(...items.map(([k, v]) => {
      const d = el("div"); d.append(el("dt", "", k), el("dd", "", v)); d.dataset.fact = k; return d;
    }));
  }

  // ---- the stream ----------------------------------------------------------------------
  function connect() {
    const url = "/api/stream" + (token ? "?token=" + encodeURIComponent(token) : "");
    const es = new EventSource(url);
    es.onopen = () => { S.connected = true; renderStatus(); };
    es.onerror = () => { S.connected = false; renderStatus(); };
    const on = (kind, fn) => es.addEventListener(kind, (ev) => { S.connected = true; fn(JSON.parse(ev.data)); });
    on("snapshot", (d) => { applySnapshot(d); renderAll(); });
    on("stats", (r) => { putStats(r); schedule(); });
    on("totals", (r) => { putTotals(r); schedule(); });
    on("alert", (a) => { putAlert(a); renderAlerts(); });
    on("health", (h) => { setHealth(h); renderStatus(); });
  }
  winSel.addEventListener("change", () => { renderTiles(); });
  trustSel.addEventListener("change", () => { renderTrends(); });
  setInterval(renderStatus, 1000);
  connect();
})();
