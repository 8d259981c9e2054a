// aiscale dashboard: polls the admin API and draws it with plotly.js (served by this server).
//
// Data: GET /admin/monitor/snapshot (the monitor's view of every deployment: series, anomalies,
// forecast, capacity, SLOs, rollout, cost; plus the gateway's unknown-model 404s, alerts and
// actions). A card's figures are the latest interval's ("latest"; null, drawn "—", where that
// interval had none: no latency while idle). Where a server has no
// monitor endpoint (404), a basic view is built from /admin/deployments and /stats instead.
// The admin key comes from ?key= (then kept in localStorage and removed from the address bar)
// or from localStorage, and is sent as "Authorization: Bearer". Every value from the server is
// written with textContent, never as HTML.
(function () {
  "use strict";

  var POLL_MS = 1500;
  var STALE_MS = 5000;
  var ANOMALY_MIN_SCORE = 0.5;
  var BASIC_POINTS = 300;
  var FEW_POINTS = 30;
  var GAP_STEPS = 1.5;      // points further apart than this many steps: the line is broken
  var NONE = "—";           // a card figure the latest interval did not have
  var KEY_STORAGE = "aiscale.adminKey";
  var COLORS = { blue: "#2f6fde", red: "#d64545", green: "#1f9d55", amber: "#d98a00",
                 violet: "#7b4fd6", grey: "#8896a4", teal: "#138f8f" };

  var state = {
    key: null,
    source: null,
    lastOkAt: 0,
    cards: {},          // deployment name -> {root, kpis, ...}
    basic: {},          // deployment name -> {last, series} when the monitor endpoint is missing
    hasPlotly: typeof window.Plotly !== "undefined"
  };

  // ----- small helpers -----------------------------------------------------------------------
  function $(id) { return document.getElementById(id); }

  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (name) {
        if (name === "text") { node.textContent = attrs[name]; }
        else if (name === "cls") { node.className = attrs[name]; }
        else { node.setAttribute(name, attrs[name]); }
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) { continue; }
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }

  function slug(name) { return String(name).replace(/[^A-Za-z0-9_-]/g, "_"); }

  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function fmt(v, digits) {
    if (!isNum(v)) { return "–"; }
    var d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
    return v.toLocaleString(undefined, { minimumFractionDigits: d, maximumFractionDigits: d });
  }

  function pct(v, digits) { return isNum(v) ? fmt(v * 100, digits === undefined ? 1 : digits) + "%" : "–"; }

  function usd(v) { return isNum(v) ? "$" + fmt(v, v >= 100 ? 0 : 2) : "–"; }

  function duration(s) {
    if (!isNum(s)) { return "–"; }
    s = Math.abs(s);
    if (s < 90) { return Math.round(s) + " s"; }
    if (s < 5400) { return Math.round(s / 60) + " min"; }
    if (s < 172800) { return fmt(s / 3600, 1) + " h"; }
    return fmt(s / 86400, 1) + " d";
  }

  function windowName(key) {
    // Burn-rate windows may come as seconds ("3600") or names ("1h"): show names.
    var n = Number(key);
    if (!isFinite(n) || key === "") { return String(key); }
    if (n % 86400 === 0) { return n / 86400 + "d"; }
    if (n % 3600 === 0) { return n / 3600 + "h"; }
    if (n % 60 === 0) { return n / 60 + "m"; }
    return n + "s";
  }

  function clock(unixS) {
    if (!isNum(unixS)) { return "–"; }
    return new Date(unixS * 1000).toLocaleTimeString();
  }

  function lastValue(points) {
    if (!Array.isArray(points) || points.length === 0) { return null; }
    var last = points[points.length - 1];
    return Array.isArray(last) && isNum(last[1]) ? last[1] : null;
  }

  // ----- the admin key -----------------------------------------------------------------------
  function loadKey() {
    var params = new URLSearchParams(window.location.search);
    var fromUrl = params.get("key");
    if (fromUrl) {
      try { window.localStorage.setItem(KEY_STORAGE, fromUrl); } catch (e) { /* private mode */ }
      params.delete("key");
      var rest = params.toString();
      window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
      return fromUrl;
    }
    try { return window.localStorage.getItem(KEY_STORAGE); } catch (e) { return null; }
  }

  function useKey(key) {
    state.key = key || null;
    try {
      if (state.key) { window.localStorage.setItem(KEY_STORAGE, state.key); }
      else { window.localStorage.removeItem(KEY_STORAGE); }
    } catch (e) { /* private mode: keep it in memory only */ }
  }

  // ----- fetching ----------------------------------------------------------------------------
  function HttpError(status, message) { this.status = status; this.message = message; }

  function getJson(path) {
    var headers = { "Accept": "application/json" };
    if (state.key) { headers.Authorization = "Bearer " + state.key; }
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (!response.ok) {
          var message = body && body.error && body.error.message ? body.error.message : text;
          throw new HttpError(response.status, message || ("HTTP " + response.status));
        }
        return body;
      });
    });
  }

  function monitorSnapshot() {
    return getJson("/admin/monitor/snapshot").then(function (snap) {
      state.source = "monitor";
      return snap;
    }, function (err) {
      if (err instanceof HttpError && err.status === 404) {
        state.source = "basic";
        return basicSnapshot();
      }
      throw err;
    });
  }

  // A snapshot-shaped view from the serving endpoints, for servers without the monitor:
  // rates come from differences of the request counters between polls.
  function basicSnapshot() {
    return getJson("/admin/deployments").then(function (listing) {
      var deployments = listing.deployments || [];
      return Promise.all(deployments.map(function (d) {
        return getJson("/admin/deployments/" + encodeURIComponent(d.name) + "/stats");
      })).then(function (allStats) {
        var now = Date.now() / 1000;
        return {
          time: now,
          step_s: POLL_MS / 1000,
          deployments: deployments.map(function (d, i) { return basicDeployment(d, allStats[i], now); }),
          alerts: [],
          actions: []
        };
      });
    });
  }

  function basicDeployment(d, stats, now) {
    var entry = state.basic[d.name];
    if (!entry) {
      entry = state.basic[d.name] = { last: null, series: { rps: [], p50_ms: [], p99_ms: [],
        error_rate: [], batch_size: [], replicas: [], queue_depth: [] } };
    }
    var numRequests = 0, numErrors = 0;
    var versions = stats && stats.versions ? stats.versions : {};
    Object.keys(versions).forEach(function (v) {
      numRequests += versions[v].num_requests || 0;
      numErrors += versions[v].num_errors || 0;
    });
    var primary = versions[d.version] || {};
    var latency = primary.latency_ms || {};
    var s = entry.series;
    function push(name, value) {
      if (!isNum(value)) { return; }
      s[name].push([now, value]);
      if (s[name].length > BASIC_POINTS) { s[name].shift(); }
    }
    if (entry.last && now > entry.last.t) {
      var dt = now - entry.last.t;
      var dReq = numRequests - entry.last.requests;
      push("rps", dReq / dt);
      push("error_rate", dReq > 0 ? (numErrors - entry.last.errors) / dReq : 0);
    }
    entry.last = { t: now, requests: numRequests, errors: numErrors };
    push("p50_ms", latency.p50);
    push("p99_ms", latency.p99);
    var lanes = d.versions || {};
    var weights = d.split && d.split.weights ? d.split.weights : {};
    var ready = 0, queue = 0;
    var shown = Object.keys(lanes).map(function (v) {
      var lane = lanes[v];
      ready += lane.replicas.ready;
      queue += lane.queue_depth;
      return { version: v, weight: isNum(weights[v]) ? weights[v] : null,
               replicas: lane.replicas.wanted, ready: lane.replicas.ready };
    });
    push("replicas", ready);
    push("queue_depth", queue);
    return { name: d.name, model: d.model, versions: shown, series: s, anomalies: {},
             forecast: null, capacity: null, slos: [], rollout: null, cost_per_hour_usd: null };
  }

  // ----- polling loop ------------------------------------------------------------------------
  function poll() {
    monitorSnapshot().then(function (snap) {
      state.lastOkAt = Date.now();
      $("key-banner").classList.add("hidden");
      $("error-banner").classList.add("hidden");
      render(snap || {});
    }, function (err) {
      if (err instanceof HttpError && (err.status === 401 || err.status === 403)) {
        $("key-banner").classList.remove("hidden");
        showError(err.status === 403 ? "The key was refused: it lacks the admin scope." : null);
      } else if (err instanceof HttpError) {
        showError("The server answered " + err.status + ": " + err.message);
      } else {
        showError("The server cannot be reached (" + (err && err.message ? err.message : err) + ").");
      }
    }).then(function () {
      updateStatus();
      window.setTimeout(poll, POLL_MS);
    });
  }

  function showError(message) {
    var banner = $("error-banner");
    if (!message) { banner.classList.add("hidden"); return; }
    banner.textContent = message;
    banner.classList.remove("hidden");
  }

  function updateStatus() {
    var dot = $("status-dot"), text = $("status-text");
    var age = Date.now() - state.lastOkAt;
    dot.className = "dot " + (state.lastOkAt === 0 ? "down" : age < STALE_MS ? "live" : "stale");
    text.textContent = state.lastOkAt === 0 ? "no data" : age < STALE_MS ? "live"
      : "stale (" + duration(age / 1000) + " old)";
  }

  // ----- rendering ---------------------------------------------------------------------------
  function render(snap) {
    var deployments = Array.isArray(snap.deployments) ? snap.deployments : [];
    var alerts = Array.isArray(snap.alerts) ? snap.alerts : [];
    var actions = Array.isArray(snap.actions) ? snap.actions : [];
    var totalRps = 0, totalCost = 0, hasCost = false;
    deployments.forEach(function (d) {
      var rps = d.latest ? d.latest.rps : lastValue(d.series && d.series.rps);
      if (isNum(rps)) { totalRps += rps; }
      if (isNum(d.cost_per_hour_usd)) { totalCost += d.cost_per_hour_usd; hasCost = true; }
    });
    var firing = alerts.filter(isFiring).length;
    $("total-deployments").textContent = String(deployments.length);
    $("total-rps").textContent = fmt(totalRps, 1);
    $("total-alerts").textContent = String(firing);
    $("total-alerts").style.color = firing > 0 ? "#ff8a80" : "";
    $("total-cost").textContent = hasCost ? usd(totalCost) : "–";
    renderUnknownModels(snap);
    $("updated").textContent = clock(isNum(snap.time) ? snap.time : Date.now() / 1000);
    $("source").textContent = state.source === "monitor" ? "monitor" : "basic";
    var banner = $("source-banner");
    if (state.source === "basic") {
      banner.textContent = "This server has no monitor endpoint: showing basic counts from the " +
        "serving API (no forecasts, anomalies, SLOs or alerts; latency is cumulative).";
      banner.classList.remove("hidden");
    } else {
      banner.classList.add("hidden");
    }
    renderDeployments(deployments, snap, maxGapS(snap));
    renderAlerts(alerts);
    renderActions(actions);
  }

  // The widest spacing of two points still joined by a line: a step and a half of the
  // snapshot's step (never finer than the monitor's sampling interval); the basic view
  // samples once per poll, whose spacing varies with the answer time, so it allows two more.
  function maxGapS(snap) {
    var step = Math.max(isNum(snap.step_s) ? snap.step_s : 0,
                        isNum(snap.interval_s) ? snap.interval_s : 0);
    if (step <= 0) { return null; }
    return state.source === "basic" ? (GAP_STEPS + 2) * step : GAP_STEPS * step;
  }

  // Requests that named a model no deployment serves (each answered 404): in the snapshot's
  // window, and in the latest interval. Hidden where the server does not count them.
  function renderUnknownModels(snap) {
    var gateway = snap.gateway || {};
    var inWindow = gateway.unknown_model_requests_in_window;
    var latest = gateway.unknown_model_requests;
    var box = $("unknown-models");
    box.classList.toggle("hidden", !isNum(inWindow));
    if (!isNum(inWindow)) { return; }
    var span = isNum(snap.window_s) ? windowName(snap.window_s) : "window";
    $("unknown-models-label").textContent = "unknown-model 404s / " + span;
    $("total-unknown-models").textContent = String(inWindow);
    $("total-unknown-models").style.color = inWindow > 0 ? "#f0b429" : "";
    $("unknown-models-recent").textContent = isNum(latest)
      ? latest + " in the last " + (isNum(snap.interval_s) ? windowName(snap.interval_s) : "interval")
      : "";
  }

  function isFiring(alert) {
    var s = String(alert.state || "").toLowerCase();
    return s === "firing" || s === "active";
  }

  function renderDeployments(deployments, snap, gapS) {
    var root = $("deployments");
    var seen = {};
    $("no-deployments").classList.toggle("hidden", deployments.length > 0);
    $("no-deployments").textContent = "no deployments";
    deployments.forEach(function (d) {
      seen[d.name] = true;
      var card = state.cards[d.name];
      if (!card) {
        card = state.cards[d.name] = makeCard(d.name);
        root.appendChild(card.root);
      }
      fillCard(card, d, isNum(snap.time) ? snap.time : null, gapS);
    });
    Object.keys(state.cards).forEach(function (name) {
      if (!seen[name]) {
        var card = state.cards[name];
        if (state.hasPlotly) { card.charts.forEach(function (c) { window.Plotly.purge(c.plot); }); }
        root.removeChild(card.root);
        delete state.cards[name];
      }
    });
  }

  var KPIS = [
    { key: "rps", label: "requests / s", unit: "", digits: 1 },
    { key: "p50_ms", label: "latency p50", unit: "ms" },
    { key: "p99_ms", label: "latency p99", unit: "ms" },
    { key: "error_rate", label: "errors", unit: "", percent: true, badAbove: 0.01 },
    { key: "batch_size", label: "mean batch", unit: "items", digits: 1 },
    { key: "replicas", label: "replicas", unit: "", digits: 0 },
    { key: "queue_depth", label: "queue depth", unit: "", digits: 0 }
  ];

  var CHARTS = [
    { id: "traffic", title: "Traffic (requests/s)", series: [["rps", "req/s", COLORS.blue]] },
    { id: "latency", title: "Latency (ms)",
      series: [["p50_ms", "p50", COLORS.teal], ["p99_ms", "p99", COLORS.violet]] },
    { id: "errors", title: "Error rate (%)", series: [["error_rate", "errors", COLORS.red]],
      scale: 100 },
    { id: "batching", title: "Batch size and queue depth",
      series: [["batch_size", "mean batch", COLORS.green], ["queue_depth", "queue", COLORS.amber]] },
    { id: "replicas", title: "Replicas", series: [["replicas", "replicas", COLORS.grey]],
      shape: "hv" },
    { id: "forecast", title: "Arrivals forecast (requests/s)", forecast: true }
  ];

  function makeCard(name) {
    var id = slug(name);
    var card = { name: name, kpis: {}, charts: [] };
    card.title = el("h2", { text: name });
    card.model = el("span", { cls: "model" });
    card.versions = el("span", { cls: "chips", id: "versions-" + id });
    card.cost = el("span", { cls: "cost", id: "cost-" + id, title: "estimated cost per hour" });
    var kpis = el("div", { cls: "kpis" });
    KPIS.forEach(function (k) {
      var value = el("span", { cls: "value", id: "kpi-" + id + "-" + k.key, text: "–" });
      var tile = el("div", { cls: "kpi", "data-kpi": k.key },
        el("div", { cls: "label", text: k.label }), value);
      card.kpis[k.key] = { spec: k, tile: tile, value: value };
      kpis.appendChild(tile);
    });
    card.capacity = el("div", { cls: "note", id: "capacity-" + id });
    card.rollout = el("div", { cls: "note rollout", id: "rollout-" + id });
    var charts = el("div", { cls: "charts" });
    CHARTS.forEach(function (spec) {
      var plot = el("div", { cls: "plot", id: "chart-" + id + "-" + spec.id });
      var empty = el("div", { cls: "empty hidden" });
      charts.appendChild(el("div", { cls: "chart" }, el("div", { cls: "title", text: spec.title }),
        plot, empty));
      card.charts.push({ spec: spec, plot: plot, empty: empty, drawn: false });
    });
    card.slos = el("tbody", { id: "slos-" + id });
    card.root = el("section", { cls: "card deployment", id: "dep-" + id, "data-deployment": name },
      el("div", { cls: "dep-head" }, card.title, card.model, card.versions, card.cost),
      kpis,
      el("div", { cls: "notes" }, card.capacity, card.rollout),
      charts,
      el("h3", { text: "SLOs and error budgets" }),
      el("table", null,
        el("thead", null, el("tr", null, el("th", { text: "SLO" }), el("th", { text: "objective" }),
          el("th", { text: "error budget left" }), el("th", { text: "burn rates" }),
          el("th", { text: "state" }))),
        card.slos));
    return card;
  }

  function fillCard(card, d, nowS, gapS) {
    var series = d.series || {};
    // The monitor sends the latest interval's figures; the basic view has only its series.
    var latest = d.latest && typeof d.latest === "object" ? d.latest : null;
    var isIdle = latest !== null && latest.rps === 0;
    card.model.textContent = d.model ? "model " + d.model : "";
    card.cost.textContent = isNum(d.cost_per_hour_usd) ? usd(d.cost_per_hour_usd) + " / h" : "";
    fillVersions(card.versions, Array.isArray(d.versions) ? d.versions : []);
    KPIS.forEach(function (k) {
      var v = latest ? (isNum(latest[k.key]) ? latest[k.key] : null) : lastValue(series[k.key]);
      var slot = card.kpis[k.key];
      clear(slot.value);
      slot.value.appendChild(document.createTextNode(
        v === null ? NONE : k.percent ? pct(v, 2) : fmt(v, k.digits)));
      slot.tile.title = v === null && isIdle ? "idle: no requests in the latest interval" : "";
      if (k.unit && v !== null) { slot.value.appendChild(el("span", { cls: "unit", text: k.unit })); }
      slot.tile.classList.toggle("bad", v !== null && k.badAbove !== undefined && v > k.badAbove);
    });
    fillCapacity(card.capacity, d.capacity);
    fillRollout(card.rollout, d.rollout);
    var range = timeRange(series, nowS);
    card.charts.forEach(function (chart) { drawChart(chart, d, range, gapS); });
    fillSlos(card.slos, Array.isArray(d.slos) ? d.slos : []);
  }

  function fillVersions(node, versions) {
    clear(node);
    var total = versions.reduce(function (sum, v) { return sum + (isNum(v.weight) ? v.weight : 0); }, 0);
    var asFraction = total > 0 && total <= 1.0001;
    versions.forEach(function (v) {
      var parts = ["v" + v.version];
      if (isNum(v.weight)) { parts.push(fmt(asFraction ? v.weight * 100 : v.weight, 0) + "%"); }
      var isReady = true;
      if (typeof v.ready === "boolean") {
        parts.push((isNum(v.replicas) ? v.replicas + " replicas, " : "") + (v.ready ? "ready" : "not ready"));
        isReady = v.ready;
      } else if (isNum(v.ready)) {
        parts.push(v.ready + "/" + (isNum(v.replicas) ? v.replicas : "?") + " ready");
        isReady = v.ready > 0 || v.replicas === 0;
      }
      node.appendChild(el("span", { cls: "chip" + (isReady ? "" : " notready"), text: parts.join(" · ") }));
    });
  }

  function fillCapacity(node, capacity) {
    node.classList.remove("warn", "ok");
    if (!capacity || (!capacity.message && !isNum(capacity.saturates_in_s))) {
      node.textContent = "Capacity: no saturation expected";
      node.classList.add("ok");
      return;
    }
    var message = capacity.message ||
      ("at this trend the queue saturates in " + duration(capacity.saturates_in_s));
    node.textContent = "Capacity: " + message;
    node.classList.add(isNum(capacity.saturates_in_s) ? "warn" : "ok");
  }

  function fillRollout(node, rollout) {
    clear(node);
    if (!rollout) { node.textContent = "No rollout in progress"; return; }
    var percent = isNum(rollout.canary_percent) ? rollout.canary_percent : null;
    var head = "Rollout";
    if (rollout.canary !== undefined) {
      head += ": v" + (rollout.baseline !== undefined ? rollout.baseline + " → v" : "") + rollout.canary;
    }
    if (percent !== null) { head += " at " + fmt(percent, percent < 10 ? 1 : 0) + "%"; }
    if (Array.isArray(rollout.steps) && isNum(rollout.step_index)) {
      head += " (step " + Math.min(rollout.step_index + 1, rollout.steps.length) + "/" + rollout.steps.length + ")";
    }
    if (rollout.status) { head += " · " + rollout.status; }
    node.appendChild(el("div", { text: head }));
    var reason = rollout.reason || (rollout.last_decision && rollout.last_decision.reason);
    if (reason) { node.appendChild(el("div", { cls: "muted", text: String(reason) })); }
    if (percent !== null) {
      var fill = el("span");
      fill.style.width = Math.max(0, Math.min(100, percent)) + "%";
      node.appendChild(el("div", { cls: "bar" }, fill));
    }
  }

  function fillSlos(tbody, slos) {
    clear(tbody);
    if (slos.length === 0) {
      tbody.appendChild(el("tr", null, el("td", { cls: "empty-row", colspan: "5", text: "no SLOs declared" })));
      return;
    }
    slos.forEach(function (slo) {
      var left = isNum(slo.budget_remaining) ? slo.budget_remaining : null;
      var fill = el("span");
      fill.style.width = (left === null ? 0 : Math.max(0, Math.min(1, left)) * 100) + "%";
      var budget = el("div", { cls: "budget" + (left !== null && left <= 0 ? " out" : left !== null && left < 0.25 ? " low" : "") },
        el("div", { cls: "bar" }, fill), el("span", { cls: "num", text: pct(left, 1) }));
      var burns = slo.burn_rates && typeof slo.burn_rates === "object" ? slo.burn_rates : {};
      var burnText = Object.keys(burns).map(function (w) {
        return windowName(w) + " " + fmt(burns[w], 1) + "×";
      }).join(", ") || "–";
      var alerting = slo.alerting;
      var badge = alerting ? el("span", { cls: "sev page", text: typeof alerting === "string" ? alerting : "alerting" })
        : el("span", { cls: "sev ok", text: "ok" });
      tbody.appendChild(el("tr", null,
        el("td", { text: String(slo.name) }),
        el("td", { cls: "num", text: isNum(slo.objective) ? (slo.objective <= 1 ? pct(slo.objective, 2) : fmt(slo.objective)) : String(slo.objective || "–") }),
        el("td", null, budget),
        el("td", { cls: "num", text: burnText }),
        el("td", null, badge)));
    });
  }

  function renderAlerts(alerts) {
    var tbody = $("alerts");
    clear(tbody);
    if (alerts.length === 0) {
      tbody.appendChild(el("tr", null, el("td", { cls: "empty-row", colspan: "6", text: "no alerts" })));
      return;
    }
    var sorted = alerts.slice().sort(function (a, b) {
      return (isFiring(b) - isFiring(a)) || ((b.since || 0) - (a.since || 0));
    });
    sorted.forEach(function (a) {
      var sev = String(a.severity || "info").toLowerCase();
      var st = String(a.state || "").toLowerCase();
      tbody.appendChild(el("tr", null,
        el("td", null, el("span", { cls: "sev " + slug(sev), text: sev })),
        el("td", null, el("span", { cls: "sev " + slug(isFiring(a) ? sev : st), text: st || "–" })),
        el("td", { text: String(a.rule || "–") }),
        el("td", { text: String(a.deployment || "–") }),
        el("td", { cls: "num", text: isNum(a.since) ? clock(a.since) : "–" }),
        el("td", { text: String(a.message || "") })));
    });
  }

  function renderActions(actions) {
    var tbody = $("actions");
    clear(tbody);
    if (actions.length === 0) {
      tbody.appendChild(el("tr", null, el("td", { cls: "empty-row", colspan: "5", text: "no automated actions yet" })));
      return;
    }
    actions.slice().sort(function (a, b) { return (b.time || 0) - (a.time || 0); }).slice(0, 30)
      .forEach(function (a) {
        tbody.appendChild(el("tr", null,
          el("td", { cls: "num", text: clock(a.time) }),
          el("td", { text: String(a.action || "–") }),
          el("td", { text: String(a.deployment || "–") }),
          el("td", { text: String(a.cause || "") }),
          el("td", { text: String(a.result || "") })));
      });
  }

  // ----- charts ------------------------------------------------------------------------------
  // Points (unix s, value) as plotly's x and y. Where two points are more than maxGapS apart
  // (an idle stretch with no latency, a monitor that was not sampling) a null goes between
  // them: plotly breaks the line there (connectgaps is off) instead of drawing across.
  function xy(points, scale, maxGapS) {
    var x = [], y = [], count = 0, previous = null;
    (Array.isArray(points) ? points : []).forEach(function (p) {
      if (Array.isArray(p) && isNum(p[0])) {
        if (previous !== null && isNum(maxGapS) && p[0] - previous > maxGapS) {
          x.push(new Date((previous + p[0]) / 2 * 1000));
          y.push(null);
        }
        previous = p[0];
        count += 1;
        x.push(new Date(p[0] * 1000));
        y.push(isNum(p[1]) ? p[1] * (scale || 1) : null);
      }
    });
    return { x: x, y: y, count: count };
  }

  // Anomalous points, drawn as markers on the series they belong to (at the series' value at
  // that time); only scores at or above ANOMALY_MIN_SCORE are shown.
  function anomalyTrace(points, scored, scale, label) {
    if (!Array.isArray(scored) || scored.length === 0) { return null; }
    var byTime = {};
    (Array.isArray(points) ? points : []).forEach(function (p) { byTime[p[0]] = p[1]; });
    var times = (Array.isArray(points) ? points : []).map(function (p) { return p[0]; });
    var x = [], y = [], text = [], size = [];
    scored.forEach(function (s) {
      if (!Array.isArray(s) || !isNum(s[0]) || !isNum(s[1]) || s[1] < ANOMALY_MIN_SCORE) { return; }
      var value = byTime[s[0]];
      if (!isNum(value) && times.length > 0) { value = byTime[nearest(times, s[0])]; }
      if (!isNum(value)) { return; }
      x.push(new Date(s[0] * 1000));
      y.push(value * (scale || 1));
      text.push(label + " anomaly score " + fmt(s[1], 2));
      size.push(7 + 7 * s[1]);
    });
    if (x.length === 0) { return null; }
    return { x: x, y: y, text: text, type: "scatter", mode: "markers", name: "anomaly",
             hoverinfo: "x+text", showlegend: false,
             marker: { color: COLORS.red, size: size, symbol: "circle-open", line: { width: 2 } } };
  }

  function nearest(times, t) {
    var best = times[0];
    times.forEach(function (u) { if (Math.abs(u - t) < Math.abs(best - t)) { best = u; } });
    return best;
  }

  function forecastTraces(d, gapS) {
    var f = d.forecast;
    if (!f) { return null; }
    var t = f.t, mean = f.mean, lower = f.lower, upper = f.upper;
    if (!Array.isArray(t) && Array.isArray(f.points)) {
      t = f.points.map(function (p) { return p.t; });
      mean = f.points.map(function (p) { return p.mean; });
      lower = f.points.map(function (p) { return p.lower; });
      upper = f.points.map(function (p) { return p.upper; });
    }
    if (!Array.isArray(t) || t.length === 0) { return null; }
    var x = t.map(function (s) { return new Date(s * 1000); });
    var observed = xy(d.series && d.series.rps, 1, gapS);
    return [
      { x: observed.x, y: observed.y, type: "scatter", mode: "lines", name: "observed",
        line: { color: COLORS.blue, width: 1.5 } },
      { x: x, y: upper, type: "scatter", mode: "lines", name: "upper", showlegend: false,
        line: { width: 0 }, hoverinfo: "skip" },
      { x: x, y: lower, type: "scatter", mode: "lines", name: "prediction band", fill: "tonexty",
        fillcolor: "rgba(123,79,214,0.18)", line: { width: 0 } },
      { x: x, y: mean, type: "scatter", mode: "lines", name: "forecast",
        line: { color: COLORS.violet, width: 2, dash: "dash" } }
    ];
  }

  function chartLayout() {
    return {
      margin: { l: 46, r: 12, t: 6, b: 28 },
      height: 190,
      font: { size: 11, color: "#42505e" },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      showlegend: true,
      legend: { orientation: "h", x: 0, y: 1.12, font: { size: 10 } },
      xaxis: { type: "date", gridcolor: "#eef0f3", linecolor: "#d5dae0", tickformat: "%H:%M:%S" },
      yaxis: { gridcolor: "#eef0f3", zerolinecolor: "#d5dae0", rangemode: "tozero" },
      uirevision: "keep"
    };
  }

  // One time axis for every series chart of a card: from the oldest point of any series to
  // the snapshot's time, so the charts line up and a series that began late is seen as late.
  function timeRange(series, nowS) {
    var first = null, last = isNum(nowS) ? nowS : null;
    Object.keys(series).forEach(function (name) {
      var points = series[name];
      if (!Array.isArray(points) || points.length === 0 || !Array.isArray(points[0])) { return; }
      var t0 = points[0][0], t1 = points[points.length - 1][0];
      if (isNum(t0) && (first === null || t0 < first)) { first = t0; }
      if (isNum(t1) && (last === null || t1 > last)) { last = t1; }
    });
    if (first === null || last === null || last <= first) { return null; }
    return [new Date(first * 1000), new Date(last * 1000)];
  }

  function drawChart(chart, d, range, gapS) {
    var spec = chart.spec, traces = [], emptyText = "no data yet";
    if (spec.forecast) {
      traces = forecastTraces(d, gapS) || [];
      emptyText = "no forecast yet";
    } else {
      var series = d.series || {}, anomalies = d.anomalies || {};
      var hasData = false;
      spec.series.forEach(function (s) {
        var points = series[s[0]];
        var data = xy(points, spec.scale, gapS);
        if (data.count > 0) { hasData = true; }
        // A young series (a few points) is drawn with markers too: a lone point is visible.
        traces.push({ x: data.x, y: data.y, type: "scatter",
                      mode: data.count < FEW_POINTS ? "lines+markers" : "lines", name: s[1],
                      marker: { color: s[2], size: 4 },
                      line: { color: s[2], width: 1.8, shape: spec.shape || "linear" } });
      });
      spec.series.forEach(function (s) {
        var marks = anomalyTrace(series[s[0]], anomalies[s[0]], spec.scale, s[1]);
        if (marks) { traces.push(marks); }
      });
      if (!hasData) { traces = []; }
    }
    var isEmpty = traces.length === 0 || !state.hasPlotly;
    chart.empty.textContent = state.hasPlotly ? emptyText : "charts unavailable";
    chart.empty.classList.toggle("hidden", !isEmpty);
    chart.plot.classList.toggle("hidden", isEmpty);
    if (isEmpty) { return; }
    var layout = chartLayout();
    if (spec.forecast) {
      // Seconds on a horizon of minutes, minutes on one of hours, days past two days.
      var t = d.forecast && Array.isArray(d.forecast.t) ? d.forecast.t : [];
      var spanS = t.length > 1 ? t[t.length - 1] - t[0] : 0;
      layout.xaxis.tickformat = spanS < 900 ? "%H:%M:%S" : spanS < 172800 ? "%H:%M" : "%a %H:%M";
    }
    else if (range) { layout.xaxis.range = range; }
    window.Plotly.react(chart.plot, traces, layout, { displayModeBar: false, responsive: true });
    chart.drawn = true;
  }

  // ----- start -------------------------------------------------------------------------------
  function start() {
    $("server").textContent = window.location.host;
    if (!state.hasPlotly) { $("plotly-banner").classList.remove("hidden"); }
    state.key = loadKey();
    $("key-button").addEventListener("click", function () {
      useKey($("key-input").value.trim());
      $("key-input").value = "";
    });
    $("key-input").addEventListener("keydown", function (event) {
      if (event.key === "Enter") { $("key-button").click(); }
    });
    poll();
  }

  start();
}());
