// aiscale dashboard, LLM panel: time to first token, inter-token latency, output tokens/s and
// prefix-cache hit rate of every LLM deployment, live.
//
// Data: GET /metrics (Prometheus text; the gateway's aiscale_llm_* families, per deployment,
// version and engine replica), polled every POLL_MS with the dashboard's key (a key needs the
// metrics scope where the server asks for one). Between two polls it takes the differences of
// the counters and histogram buckets, so every figure is of the last interval: TTFT and ITL
// p50/p99 (histogram quantiles, interpolated within a bucket as Prometheus does), tokens/s,
// and the cache hit rate (cached prompt tokens over prompt tokens). The panel stays hidden
// while the server exports no LLM metrics. Values are written with textContent only.
(function (root) {
  "use strict";

  var POLL_MS = 2000;
  var REFUSED_POLL_MS = 30000;  // after a 401/403: the key will not change by itself soon
  var LLM_RUNTIMES = ["llamacpp", "vllm", "openai-upstream"];
  var MAX_POINTS = 300;
  var KEY_STORAGE = "aiscale.adminKey";
  var P = "aiscale_llm_";
  var NAMES = {
    ttft: P + "time_to_first_token_seconds",
    itl: P + "inter_token_latency_seconds",
    generated: P + "generation_tokens_total",
    prompt: P + "prompt_tokens_total",
    cached: P + "cached_prompt_tokens_total",
    waiting: P + "engine_requests_waiting",
    running: P + "engine_requests_running"
  };

  // ----- pure parts (also run by the tests under node) ---------------------------------------
  // Prometheus text exposition -> {name: [{labels: {...}, value: number}]}.
  function parseMetrics(text) {
    var out = {};
    String(text).split("\n").forEach(function (line) {
      if (!line || line.charAt(0) === "#") { return; }
      var match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
      if (!match) { return; }
      var labels = {};
      var re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g, m;
      while ((m = re.exec(match[3] || "")) !== null) {
        labels[m[1]] = m[2].replace(/\\"/g, "\"").replace(/\\n/g, "\n").replace(/\\\\/g, "\\");
      }
      var value = match[4] === "+Inf" ? Infinity : Number(match[4]);
      (out[match[1]] = out[match[1]] || []).push({ labels: labels, value: value });
    });
    return out;
  }

  // The deployments that have any LLM sample, sorted.
  function llmDeployments(samples) {
    var seen = {};
    Object.keys(samples).forEach(function (name) {
      if (name.indexOf(P) !== 0) { return; }
      samples[name].forEach(function (s) { if (s.labels.deployment) { seen[s.labels.deployment] = true; } });
    });
    return Object.keys(seen).sort();
  }

  // Sum of ``name`` over the versions and replicas of ``deployment``.
  function total(samples, name, deployment) {
    return (samples[name] || []).reduce(function (sum, s) {
      return s.labels.deployment === deployment && isFinite(s.value) ? sum + s.value : sum;
    }, 0);
  }

  // Cumulative bucket counts of a histogram for ``deployment``: [[le, count], ...] by le.
  function buckets(samples, name, deployment) {
    var byLe = {};
    (samples[name + "_bucket"] || []).forEach(function (s) {
      if (s.labels.deployment !== deployment) { return; }
      var le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      byLe[le] = (byLe[le] || 0) + s.value;
    });
    return Object.keys(byLe).map(Number).sort(function (a, b) { return a - b; })
      .map(function (le) { return [le, byLe[le]]; });
  }

  // Quantile q (0..1) of the observations between two cumulative bucket lists (seconds);
  // null when there were none. Linear within a bucket; the +Inf bucket gives its lower edge.
  function quantile(q, now, before) {
    var prev = {};
    (before || []).forEach(function (b) { prev[b[0]] = b[1]; });
    var counts = now.map(function (b) { return [b[0], b[1] - (prev[b[0]] || 0)]; });
    var count = counts.length ? counts[counts.length - 1][1] : 0;
    if (!(count > 0)) { return null; }
    var rank = q * count, lower = 0, below = 0;
    for (var i = 0; i < counts.length; i++) {
      var le = counts[i][0], cumulative = counts[i][1];
      if (cumulative >= rank) {
        if (!isFinite(le)) { return lower; }
        var inBucket = cumulative - below;
        return inBucket > 0 ? lower + (le - lower) * (rank - below) / inBucket : le;
      }
      lower = isFinite(le) ? le : lower;
      below = cumulative;
    }
    return lower;
  }

  // One interval's figures for ``deployment`` between two parsed scrapes ``dt`` s apart.
  function interval(now, before, deployment, dt) {
    function diff(name) { return total(now, name, deployment) - total(before, name, deployment); }
    var prompt = diff(NAMES.prompt), cached = diff(NAMES.cached);
    var ttftNow = buckets(now, NAMES.ttft, deployment), ttftBefore = buckets(before, NAMES.ttft, deployment);
    var itlNow = buckets(now, NAMES.itl, deployment), itlBefore = buckets(before, NAMES.itl, deployment);
    return {
      tokensPerS: dt > 0 ? Math.max(0, diff(NAMES.generated)) / dt : null,
      ttftP50: quantile(0.5, ttftNow, ttftBefore),
      ttftP99: quantile(0.99, ttftNow, ttftBefore),
      itlP50: quantile(0.5, itlNow, itlBefore),
      itlP99: quantile(0.99, itlNow, itlBefore),
      cacheHitRate: prompt > 0 ? Math.min(1, Math.max(0, cached / prompt)) : null,
      waiting: total(now, NAMES.waiting, deployment),
      running: total(now, NAMES.running, deployment)
    };
  }

  var pure = { parseMetrics: parseMetrics, llmDeployments: llmDeployments, quantile: quantile,
               buckets: buckets, interval: interval };
  if (typeof module !== "undefined" && module.exports) { module.exports = pure; return; }

  // ----- the page ----------------------------------------------------------------------------
  var document = root.document;
  var state = { before: null, beforeAt: 0, cards: {}, hasPlotly: typeof root.Plotly !== "undefined" };
  var KPIS = [
    ["tokensPerS", "output tok/s", 1, ""], ["ttftP50", "TTFT p50", 1000, "ms"],
    ["ttftP99", "TTFT p99", 1000, "ms"], ["itlP50", "ITL p50", 1000, "ms"],
    ["itlP99", "ITL p99", 1000, "ms"], ["cacheHitRate", "cache hit", 100, "%"],
    ["running", "running", 1, ""], ["waiting", "waiting", 1, ""]
  ];
  var CHARTS = [
    ["time to first token (ms)", [["ttftP50", "p50", "#2f6fde"], ["ttftP99", "p99", "#d64545"]], 1000],
    ["inter-token latency (ms)", [["itlP50", "p50", "#1f9d55"], ["itlP99", "p99", "#d98a00"]], 1000],
    ["output tokens / s", [["tokensPerS", "tokens/s", "#7b4fd6"]], 1],
    ["prefix-cache hit rate (%)", [["cacheHitRate", "hit rate", "#138f8f"]], 100]
  ];

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function show(v, scale) {
    if (typeof v !== "number" || !isFinite(v)) { return "—"; }
    var x = v * scale;
    return x.toLocaleString(undefined, { maximumFractionDigits: x >= 100 ? 0 : x >= 10 ? 1 : 2 });
  }

  function key() {
    try { return root.localStorage.getItem(KEY_STORAGE); } catch (e) { return null; }
  }

  function poll() {
    var headers = {};
    var k = key();
    var wait = POLL_MS;
    if (k) { headers.Authorization = "Bearer " + k; }
    root.fetch("/metrics", { headers: headers, cache: "no-store" }).then(function (response) {
      if (response.status === 401 || response.status === 403) {
        wait = REFUSED_POLL_MS;
        noteIfLlm(headers);
        return null;
      }
      return response.ok ? response.text() : null;
    }).then(function (text) {
      if (text !== null && text !== undefined) {
        hideNote();
        update(parseMetrics(text), Date.now() / 1000);
      }
    }, function () { /* the main dashboard reports an unreachable server */ })
      .then(function () { root.setTimeout(poll, wait); });
  }

  // /metrics refused: say why, but only where there is an LLM deployment to show.
  function noteIfLlm(headers) {
    root.fetch("/admin/deployments", { headers: headers, cache: "no-store" }).then(function (r) {
      return r.ok ? r.json() : null;
    }).then(function (listing) {
      var items = listing && Array.isArray(listing.deployments) ? listing.deployments : [];
      if (items.some(function (d) { return LLM_RUNTIMES.indexOf(d.runtime) >= 0; })) {
        note("The LLM panel reads /metrics, which this server keeps for keys with the " +
             "metrics scope: open the dashboard with such a key to see it.");
      }
    }, function () { /* nothing to say */ });
  }

  function hideNote() {
    var line = document.getElementById("llm-note");
    if (line) { line.classList.add("hidden"); }
  }

  function note(text) {
    var panel = document.getElementById("llm-panel");
    var line = document.getElementById("llm-note");
    if (!panel || !line) { return; }
    line.textContent = text;
    line.classList.remove("hidden");
    panel.classList.remove("hidden");
  }

  function update(samples, nowS) {
    var names = llmDeployments(samples);
    var panel = document.getElementById("llm-panel");
    if (!panel) { return; }
    panel.classList.toggle("hidden", names.length === 0);
    if (state.before !== null) {
      var dt = nowS - state.beforeAt;
      names.forEach(function (name) {
        var card = state.cards[name] || (state.cards[name] = makeCard(name));
        var figures = interval(samples, state.before, name, dt);
        card.points.push([nowS, figures]);
        if (card.points.length > MAX_POINTS) { card.points.shift(); }
        fill(card, figures);
      });
    }
    state.before = samples;
    state.beforeAt = nowS;
  }

  function makeCard(name) {
    var card = el("section", "card llm-card");
    card.id = "llm-" + String(name).replace(/[^A-Za-z0-9_-]/g, "_");
    var head = el("div", "dep-head");
    head.appendChild(el("h2", null, name));
    head.appendChild(el("span", "model", "LLM · last " + POLL_MS / 1000 + " s"));
    card.appendChild(head);
    var kpis = el("div", "kpis"), values = {};
    KPIS.forEach(function (k) {
      var box = el("div", "kpi");
      box.appendChild(el("div", "label", k[1]));
      var value = el("div", "value", "—");
      value.setAttribute("data-kpi", k[0]);
      if (k[3]) { value.appendChild(el("span", "unit", k[3])); }
      box.appendChild(value);
      kpis.appendChild(box);
      values[k[0]] = value;
    });
    card.appendChild(kpis);
    var charts = el("div", "charts"), plots = [];
    CHARTS.forEach(function (spec) {
      var box = el("div", "chart");
      box.appendChild(el("div", "title", spec[0]));
      var plot = el("div", "plot");
      box.appendChild(plot);
      charts.appendChild(box);
      plots.push({ spec: spec, plot: plot });
    });
    card.appendChild(charts);
    document.getElementById("llm-cards").appendChild(card);
    return { values: values, plots: plots, points: [] };
  }

  function fill(card, figures) {
    KPIS.forEach(function (k) {
      var node = card.values[k[0]];
      node.firstChild.nodeValue = show(figures[k[0]], k[2]);
    });
    if (!state.hasPlotly) { return; }
    card.plots.forEach(function (chart) {
      var traces = chart.spec[1].map(function (s) {
        return {
          x: card.points.map(function (p) { return new Date(p[0] * 1000); }),
          y: card.points.map(function (p) {
            var v = p[1][s[0]];
            return typeof v === "number" && isFinite(v) ? v * chart.spec[2] : null;
          }),
          type: "scatter", mode: "lines", name: s[1], connectgaps: false,
          line: { color: s[2], width: 1.8 }
        };
      });
      root.Plotly.react(chart.plot, traces, {
        margin: { l: 46, r: 12, t: 6, b: 28 }, height: 190, showlegend: true,
        legend: { orientation: "h", x: 0, y: 1.12, font: { size: 10 } },
        paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
        font: { size: 11, color: "#42505e" },
        xaxis: { type: "date", tickformat: "%H:%M:%S", gridcolor: "#eef0f3" },
        yaxis: { rangemode: "tozero", gridcolor: "#eef0f3" }, uirevision: "keep"
      }, { displayModeBar: false, responsive: true });
    });
  }

  poll();
}(typeof window !== "undefined" ? window : this));
