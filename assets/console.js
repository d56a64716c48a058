// EnergyGuard console: live updates, the viewer's time zone, charts sized
// to the screen. Pages work without it; it only adds. No framework, nothing
// loaded from elsewhere.
"use strict";

(function () {
  const ZONE_COOKIE = "eg_tz";
  const POLL_EVERY_MS = 5000;
  const CHART_REFRESH_MS = 15000;

  // --- Time zone: the server writes times in the zone this cookie names.
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const cookieZone = (document.cookie.match(/(?:^|; )eg_tz=([^;]*)/) || [])[1];
  if (cookieZone !== zone) {
    document.cookie = `${ZONE_COOKIE}=${zone}; path=/ui; max-age=31536000; SameSite=Strict`;
  }
  const pageZone = document.body.dataset.zone;
  const zoneInUrl = new URLSearchParams(location.search).has("tz");
  if (pageZone && pageZone !== zone && !zoneInUrl && cookieZone !== zone) {
    // First visit: the page was written in UTC; write it again in local time.
    location.reload();
    return;
  }
  if (!pageZone) return; // the sign-in page

  const status = document.getElementById("live-status");
  const setStatus = (text, cls) => {
    if (status) {
      status.textContent = text;
      status.className = `live-status ${cls}`;
    }
  };

  // --- Ages tick by themselves; the server's clock decides "now".
  let clockSkew = 0;
  const ageText = (ms) => {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.floor(s / 60)} min`;
    if (s < 129600) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  };
  const refreshAges = () => {
    const now = Date.now() + clockSkew;
    for (const el of document.querySelectorAll("[data-ts]")) {
      const age = now - Number(el.dataset.ts);
      const ageEl = el.querySelector(".age");
      if (ageEl) ageEl.textContent = ageText(age);
      const staleAfter = Number(el.dataset.staleAfter || 0);
      if (staleAfter) el.classList.toggle("stale", age > staleAfter);
    }
  };
  setInterval(refreshAges, 1000);

  // --- Figures (charts): drawn again at the width the screen gives them.
  const figures = [...document.querySelectorAll("figure[data-src]")];
  const chart = document.getElementById("chart");
  let chartDrawnFor = 0;
  const draw = async (figure) => {
    const width = Math.round(figure.clientWidth);
    if (width < 100) return;
    const response = await fetch(`${figure.dataset.src}&w=${width}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const svg = await response.text();
    const caption = figure.querySelector("figcaption");
    figure.innerHTML = svg;
    if (caption) figure.appendChild(caption);
  };
  const drawAll = () => {
    chartDrawnFor = Date.now();
    figures.forEach(draw);
  };
  const drawnWidth = (figure) => Number((figure.querySelector("svg") || { getAttribute: () => 0 }).getAttribute("width"));
  if (figures.some((f) => Math.abs(drawnWidth(f) - f.clientWidth) > 40)) drawAll();
  let resizing;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(drawAll, 300);
  });
  if (chart) enableDragZoom(chart);

  // Drag across the chart to zoom into that stretch.
  function enableDragZoom(figure) {
    let start = null;
    const timeAt = (svg, clientX) => {
      const box = svg.getBoundingClientRect();
      const scale = Number(svg.getAttribute("width")) / box.width;
      const x = (clientX - box.left) * scale;
      const left = Number(svg.dataset.left), right = Number(svg.dataset.right);
      const from = Number(svg.dataset.from), to = Number(svg.dataset.to);
      const share = Math.min(1, Math.max(0, (x - left) / (right - left)));
      return from + share * (to - from);
    };
    figure.addEventListener("pointerdown", (e) => {
      const svg = figure.querySelector("svg");
      if (svg && svg.dataset.from) start = { svg, t: timeAt(svg, e.clientX) };
    });
    figure.addEventListener("pointerup", (e) => {
      if (!start) return;
      const end = timeAt(start.svg, e.clientX);
      const [from, to] = [Math.min(start.t, end), Math.max(start.t, end)];
      start = null;
      if (to - from < 5 * 60 * 1000) return;
      const url = new URL(location.href);
      url.searchParams.delete("range");
      url.searchParams.set("from", new Date(from).toISOString());
      url.searchParams.set("to", new Date(to).toISOString());
      location.assign(url);
    });
  }

  // --- Live updates: server-sent events, polling while the stream is down.
  const watched = [...new Set([...document.querySelectorAll("[data-sensor]")].map((el) => el.dataset.sensor))];
  const query = `sensors=${encodeURIComponent(watched.slice(0, 100).join(","))}`;
  let shownVersion = Number(document.body.dataset.version || 0);
  let newestOfPage = 0;

  const setText = (id, text) => {
    const el = document.getElementById(id);
    if (el && el.textContent !== String(text)) el.textContent = text;
  };

  // Parts of the page marked data-refresh are fetched again when alerts or
  // node states change (the snapshot's version passes the page's), and
  // swapped in place.
  const refreshParts = async () => {
    const parts = document.querySelectorAll("[data-refresh][id]");
    if (!parts.length) return;
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    renderedAt = Number(fresh.body.dataset.rendered || renderedAt);
    shownVersion = Math.max(shownVersion, Number(fresh.body.dataset.version || 0));
    for (const part of parts) {
      const replacement = fresh.getElementById(part.id);
      if (replacement) part.replaceWith(document.importNode(replacement, true));
    }
  };

  let renderedAt = Number(document.body.dataset.rendered || 0);
  const apply = (snapshot) => {
    clockSkew = snapshot.now_ms - Date.now();
    applySensors(snapshot.sensors);
    refreshAges();
    // Built before the page was: the page already shows newer states.
    if (snapshot.taken_ms < renderedAt) return;
    setText("rate-http", formatRate(snapshot.rate_http));
    setText("rate-mqtt", formatRate(snapshot.rate_mqtt));
    const nodesTile = document.querySelector("#nodes .value");
    if (nodesTile) nodesTile.textContent = `${snapshot.nodes_up} / ${snapshot.nodes.length}`;
    for (const [tile, bad] of [["nodes", snapshot.nodes_up < snapshot.nodes.length], ["health", snapshot.nodes_up < snapshot.nodes.length], ["firing", snapshot.firing_total > 0]]) {
      const el = document.getElementById(tile);
      if (el) {
        el.classList.toggle("bad", bad);
        el.classList.toggle("ok", !bad);
      }
    }
    setText("health-value", snapshot.nodes_up < snapshot.nodes.length ? "degraded" : "ok");
    const firingTile = document.querySelector("#firing .value");
    if (firingTile) firingTile.textContent = snapshot.firing_total;
    const staleTile = document.querySelector("#stale .value");
    if (staleTile) staleTile.textContent = snapshot.stale_sensors;
    for (const node of snapshot.nodes) {
      const cell = document.querySelector(`#node-${CSS.escape(node.id)} .status`);
      if (cell) {
        cell.textContent = node.reason ? `${node.status} (${node.reason})` : node.status;
        cell.className = `status ${node.status}`;
      }
    }
    if (snapshot.version > shownVersion) {
      shownVersion = snapshot.version;
      refreshParts();
    }
  };

  const applySensors = (sensors) => {
    for (const [id, value] of Object.entries(sensors)) {
      for (const el of document.querySelectorAll(`[data-sensor="${CSS.escape(id)}"]`)) {
        if (Number(el.dataset.ts) === value.timestamp_ms) continue;
        el.dataset.ts = value.timestamp_ms;
        const v = el.querySelector(".value .value") || el.querySelector(".value");
        if (v) v.textContent = value.value;
        const u = el.querySelector(".unit");
        if (u) u.textContent = value.unit;
        const t = el.querySelector(".time");
        if (t) t.textContent = formatTime(value.timestamp_ms);
        el.classList.add("updated");
        setTimeout(() => el.classList.remove("updated"), 1500);
        newestOfPage = Math.max(newestOfPage, value.timestamp_ms);
      }
    }
    if (chart && chart.hasAttribute("data-live") && newestOfPage && Date.now() - chartDrawnFor > CHART_REFRESH_MS) {
      drawAll();
    }
  };

  const formatRate = (r) => (r >= 100 ? Math.round(r) : Math.round(r * 10) / 10);
  const pad = (n) => String(n).padStart(2, "0");
  const formatTime = (ms) => {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };

  let polling = null;
  // A poll answered after the stream came back must not mark the page as
  // polling again: only an active poller reports.
  const poll = async () => {
    try {
      const response = await fetch(`/ui/live?${query}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!polling) return;
      if (response.redirected || !response.ok) {
        setStatus("signed out", "off");
        return;
      }
      const snapshot = await response.json();
      if (!polling) return;
      apply(snapshot);
      setStatus("polling", "polling");
    } catch (_) {
      if (polling) setStatus("offline", "off");
    }
  };
  const startPolling = () => {
    if (!polling) {
      polling = setInterval(poll, POLL_EVERY_MS);
      poll();
    }
  };
  const stopPolling = () => {
    clearInterval(polling);
    polling = null;
  };

  if (!window.EventSource) {
    startPolling();
    return;
  }
  const connect = () => {
    const events = new EventSource(`/ui/events?${query}`);
    events.onopen = () => {
      stopPolling();
      setStatus("live", "live");
    };
    events.onmessage = (message) => apply(JSON.parse(message.data));
    events.onerror = () => {
      // The browser retries by itself while the stream is merely broken;
      // once it gives up (closed), try again later. Poll meanwhile.
      startPolling();
      if (events.readyState === EventSource.CLOSED) setTimeout(connect, POLL_EVERY_MS * 2);
    };
  };
  connect();
})();
