// The live dashboard: status documents arrive by Server-Sent Events from
// /v1/events (or, where that fails, by polling /v1/status once a second) and
// fill every element that has a data-metric attribute.
"use strict";

(function () {
  const HISTORY_SECONDS = 300;
  const IMAGE_PERIOD_MS = 5000;
  const COLORS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#1098ad", "#f08c00", "#c92a2a", "#5c940d"];

  const RATE_WINDOW = 5;       // seconds averaged for the "now" figures
  const history = [];          // [{t, served: {surface: bytes}, rates: {surface: bytes/s}}], oldest first
  const surfaceColors = {};
  let previous = null;         // the last status document, for rates
  let source = null;           // the EventSource, while in use
  let pollTimer = null;

  // -- formatting ---------------------------------------------------------

  function bytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return "\u2013";
    const units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + "\u00a0" + units[i];
  }
  const rate = (n) => (n === null || n === undefined) ? "\u2013" : bytes(n) + "/s";
  function seconds(s) {
    if (s === null || s === undefined) return "never";
    if (s < 10) return s.toFixed(2) + "\u00a0s";
    if (s < 120) return s.toFixed(1) + "\u00a0s";
    if (s < 7200) return (s / 60).toFixed(1) + "\u00a0min";
    if (s < 172800) return (s / 3600).toFixed(1) + "\u00a0h";
    return (s / 86400).toFixed(1) + "\u00a0d";
  }
  const count = (n) => (n === null || n === undefined) ? "\u2013" : Number(n).toLocaleString("en");

  // -- the page -------------------------------------------------------------

  function set(name, text) {
    for (const el of document.querySelectorAll('[data-metric="' + name + '"]')) {
      if (el.textContent !== text) el.textContent = text;
    }
  }

  function colorOf(surface) {
    if (!(surface in surfaceColors)) {
      surfaceColors[surface] = COLORS[Object.keys(surfaceColors).length % COLORS.length];
    }
    return surfaceColors[surface];
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const [tag, text, metric, swatch] of cells) {
      const cell = document.createElement(tag);
      if (swatch) {
        const s = document.createElement("span");
        s.className = "swatch";
        s.style.background = swatch;
        cell.appendChild(s);
      }
      const span = document.createElement("span");
      span.textContent = text;
      if (metric) span.dataset.metric = metric;
      cell.appendChild(span);
      tr.appendChild(cell);
    }
    return tr;
  }

  function replaceRows(tbody, rows, emptyText, columns) {
    const key = rows.map((r) => r[0][1]).join("|");
    if (tbody.dataset.key !== key) {
      tbody.replaceChildren();
      if (!rows.length) {
        const tr = document.createElement("tr");
        tr.className = "empty";
        const td = document.createElement("td");
        td.colSpan = columns;
        td.textContent = emptyText;
        tr.appendChild(td);
        tbody.appendChild(tr);
      }
      for (const r of rows) tbody.appendChild(row(r));
      tbody.dataset.key = key;
    } else {
      for (const r of rows) for (const [, text, metric] of r) if (metric) set(metric, text);
    }
  }

  function update(doc) {
    const served = doc.served || {};
    const total = Object.values(served).reduce((a, b) => a + b, 0);
    const t = doc.uptime_seconds;
    let rates = null;
    if (previous && t > previous.uptime_seconds) {
      const dt = t - previous.uptime_seconds;
      const before = previous.served || {};
      rates = {};
      for (const s of Object.keys(served)) rates[s] = Math.max(0, (served[s] - (before[s] || 0)) / dt);
      history.push({ t, served, rates });
      while (history.length && t - history[0].t > HISTORY_SECONDS) history.shift();
    }
    previous = doc;
    // The "now" figures average the last few seconds, so that a burst does not flicker.
    let recent = null;
    if (rates) {
      let base = history[history.length - 1];
      for (let i = history.length - 1; i >= 0 && t - history[i].t <= RATE_WINDOW; i--) base = history[i];
      const span = t - base.t;
      recent = {};
      for (const s of Object.keys(served)) {
        recent[s] = span > 0 ? Math.max(0, (served[s] - (base.served[s] || 0)) / span) : rates[s];
      }
    }
    const totalRate = recent ? Object.values(recent).reduce((a, b) => a + b, 0) : null;

    // ok: serving; starved: healthy source, output waits for a reseed; failed: closed.
    const state = doc.state || (doc.healthy ? "ok" : "failed");
    const starved = doc.starved || {};
    const badge = document.querySelector('[data-metric="health"]');
    badge.dataset.state = state === "ok" ? "ok" : state === "starved" ? "starved" : "failing";
    set("health", state === "ok" ? "healthy" : state === "starved" ? "starved: waiting for seed" : "failing closed");
    const reason = document.querySelector('[data-metric="reason"]');
    reason.hidden = state === "ok" || !doc.reason;
    set("reason", !doc.reason ? "" : state === "starved"
      ? "Output waits for seed (" + doc.reason + "), for " + seconds(starved.seconds || 0) + " now."
      : "No random bytes are served: " + doc.reason);
    set("starved", seconds(starved.total_seconds || 0) + " in " + (starved.waits || 0) + " waits");
    set("version", doc.version || "?");
    set("uptime", seconds(t));

    set("throughput", rate(totalRate));
    set("throughput_total", rate(totalRate));
    set("bytes_served", bytes(total));
    const surfaces = Object.keys(served).sort();
    replaceRows(document.getElementById("surfaces"), surfaces.map((s) => [
      ["td", s, null, colorOf(s)],
      ["td", rate(recent ? recent[s] : null), "throughput_" + s],
      ["td", bytes(served[s]), "served_" + s],
    ]), "nothing served yet", 3);

    const pool = doc.pool || {};
    set("pool_fill", (pool.fill_percent ?? 0).toFixed(0) + "%");
    document.getElementById("fill-bar").style.width = Math.min(100, pool.fill_percent || 0) + "%";
    set("pool_fill_bytes", bytes(pool.fill_bytes));
    set("pool_high_water", bytes(pool.high_water_bytes));
    set("pressure", ((pool.pressure || 0) * 100).toFixed(1) + "% of seed draws short");
    set("seed_draws", count(pool.seed_draws));
    set("seed_draws_short", count(pool.seed_draws_short));

    const drbg = doc.drbg || {};
    set("reseed_age", seconds(drbg.reseed_age_seconds));
    set("reseed_interval", "every " + seconds(drbg.reseed_interval_seconds) +
        " or " + bytes(drbg.reseed_bytes) + ", " + count(drbg.reseed_bits) + " bits");
    set("reseeds", count(drbg.reseeds));
    set("reseed_failures", count(drbg.reseed_failures));
    set("bytes_generated", bytes(drbg.bytes_generated));
    set("mechanism", drbg.mechanism || "\u2013");

    const src = doc.source || {};
    const tests = src.health || {};
    set("source", src.name || "?");
    set("source_kind", src.kind || "");
    set("source_state", src.state + (src.error ? " (" + src.error + ")" : ""));
    set("health_state", tests.state || "\u2013");
    set("source_bytes_read", bytes(src.bytes_read));
    set("min_entropy", src.min_entropy === undefined ? "\u2013" : src.min_entropy + " bits/sample");
    set("samples_discarded", count(tests.samples_discarded));
    const failures = src.health_failures || {};
    replaceRows(document.getElementById("failures"), Object.keys(failures).sort().map((k) => [
      ["th", k.toUpperCase()],
      ["td", count(failures[k]), "failures_" + k],
    ]), "no tests reported", 2);

    // One row per source: its state, claim, bytes read, failures and share of the last seed.
    const sources = doc.sources || [];
    replaceRows(document.getElementById("sources"), sources.map((one, i) => {
      const f = one.health_failures || {};
      return [
        ["td", one.name + " (" + one.kind + ")"],
        ["td", one.state + (one.error ? " (" + one.error + ")" : ""), "source_state_" + i],
        ["td", String(one.min_entropy), "source_h_" + i],
        ["td", bytes(one.bytes_read), "source_read_" + i],
        ["td", count(f.rct || 0) + "/" + count(f.apt || 0), "source_failures_" + i],
        ["td", ((one.share || 0) * 100).toFixed(0) + "%", "source_share_" + i],
      ];
    }), "no sources reported", 6);

    const listeners = doc.listeners || [];
    const ul = document.querySelector('[data-metric="listeners"]');
    const key = listeners.join("\n");
    if (ul.dataset.key !== key) {
      ul.replaceChildren(...(listeners.length ? listeners : ["(none)"]).map((l) => {
        const li = document.createElement("li");
        li.textContent = l;
        return li;
      }));
      ul.dataset.key = key;
    }
    const onion = doc.onion;
    if (onion && typeof onion === "object" && !onion.error) {
      const address = onion.address ? (/\.onion$/.test(onion.address) ? onion.address : onion.address + ".onion") : "not yet published";
      set("onion", address);
      set("onion_state", onion.state ? "(" + onion.state + ")" : "");
    } else {
      set("onion", "none");
      set("onion_state", "");
    }
    draw();
  }

  // -- the chart ------------------------------------------------------------

  function draw() {
    const canvas = document.getElementById("chart");
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(h * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const style = getComputedStyle(document.body);
    const muted = style.getPropertyValue("--muted").trim() || "#888";
    const line = style.getPropertyValue("--line").trim() || "#ddd";
    const left = 64, bottom = 18, top = 6, right = 6;
    const pw = w - left - right, ph = h - top - bottom;
    const now = history.length ? history[history.length - 1].t : 0;
    const surfaces = Object.keys(surfaceColors);
    let max = 0;
    for (const p of history) for (const s of surfaces) max = Math.max(max, p.rates[s] || 0);
    max = niceCeiling(max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = muted;
    ctx.strokeStyle = line;
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - (ph * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(left + pw, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(rate((max * i) / 4), left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const ago of (pw < 420 ? [240, 120, 0] : [300, 240, 180, 120, 60, 0])) {
      const x = left + pw - (pw * ago) / HISTORY_SECONDS;
      ctx.fillText(ago ? "-" + ago / 60 + " min" : "now", Math.min(Math.max(x, left + 14), left + pw - 12), top + ph + 4);
    }
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    for (const s of surfaces) {
      ctx.strokeStyle = surfaceColors[s];
      ctx.beginPath();
      let started = false;
      for (const p of history) {
        const x = left + pw - (pw * (now - p.t)) / HISTORY_SECONDS;
        const y = top + ph - (max ? (ph * (p.rates[s] || 0)) / max : 0);
        if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
      }
      ctx.stroke();
    }
    const legend = document.getElementById("legend");
    const key = surfaces.join("|");
    if (legend.dataset.key !== key) {
      legend.replaceChildren(...surfaces.map((s) => {
        const item = document.createElement("span");
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = surfaceColors[s];
        item.append(sw, s);
        return item;
      }));
      legend.dataset.key = key;
    }
  }

  function niceCeiling(v) {
    if (v <= 0) return 1000;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // -- the updates ----------------------------------------------------------

  function connection(state, text) {
    const el = document.querySelector('[data-metric="connection"]');
    el.dataset.state = state;
    set("connection", text);
  }

  function poll() {
    if (pollTimer) return;
    connection("polling", "polling /v1/status");
    const tick = () => {
      fetch("/v1/status", { cache: "no-store" })
        .then((r) => r.json())
        .then((doc) => { connection("live", "live (polling)"); update(doc); })
        .catch(() => connection("down", "appliance unreachable, retrying"));
    };
    tick();
    pollTimer = setInterval(tick, 1000);
  }

  function listen() {
    if (!window.EventSource) { poll(); return; }
    let failures = 0;
    source = new EventSource("/v1/events");
    source.onmessage = (e) => {
      failures = 0;
      connection("live", "live");
      update(JSON.parse(e.data));
    };
    source.onerror = () => {
      failures++;
      connection("down", "reconnecting");
      // Some proxies cannot pass event streams: fall back to polling.
      if (failures >= 3 || source.readyState === EventSource.CLOSED) {
        source.close();
        source = null;
        poll();
      }
    };
  }

  // Swap the image only once the next one has loaded, so it never flickers.
  function refresh(img, url) {
    if (document.hidden) return;
    const next = new Image();
    next.onload = () => { img.src = next.src; };
    next.onerror = () => { img.alt = "not available right now"; };
    next.src = url + (url.includes("?") ? "&" : "?") + "t=" + Date.now();
  }

  function images() {
    refresh(document.getElementById("random-image"), "/v1/image/random?width=128&height=128");
    refresh(document.getElementById("heatmap"), "/v1/image/heatmap?width=128&height=128");
  }

  document.addEventListener("DOMContentLoaded", () => {
    listen();
    images();
    setInterval(images, IMAGE_PERIOD_MS);
    window.addEventListener("resize", draw);
  });
})();
