// agentwatch console: a small hand-written page over the JSON API (docs/console.md).
// No framework, no build step, nothing from another host: every request goes to this
// API (relative URLs), with the key the person typed in, kept in this tab only.
"use strict";

(() => {
  const KEY_STORE = "agentwatch.apiKey";
  const API = "api/v1/";
  // SVG's namespace, as the HTML parser gives it (no URL written here)
  const SVG = (() => {
    const holder = document.createElement("div");
    holder.innerHTML = "<svg></svg>";
    return holder.firstChild.namespaceURI;
  })();
  const REFRESH_MS = 10000;
  // the heartbeat's numeric metrics (api.queries.SERIES_METRICS; a test checks they match)
  const METRICS = [
    "cpu_usage", "memory_usage", "disk_usage", "network_latency", "active_tasks",
    "completed_tasks", "failed_tasks", "error_rate", "response_time_avg",
    "uptime_seconds", "bytes_out",
  ];
  const SEVERITY_ORDER = ["EMERGENCY", "CRITICAL", "HIGH", "WARNING", "INFO"];

  const $ = (id) => document.getElementById(id);
  const state = { me: null, view: null, agentId: null, metric: "cpu_usage", fleet: null };

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // ---- talking to the API ------------------------------------------------------------

  async function api(path, options = {}) {
    const key = sessionStorage.getItem(KEY_STORE);
    const headers = { Accept: "application/json" };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers.Authorization = "Bearer " + key;
    const response = await fetch(API + path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: "omit",
      cache: "no-store",
    });
    if (response.status === 204) return null;
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && (body.message || body.detail);
      throw new ApiError(response.status, typeof detail === "string" ? detail : response.statusText);
    }
    return body;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") search.append(name, value);
    }
    const text = search.toString();
    return text ? "?" + text : "";
  }

  // ---- small DOM helpers (text only: nothing from the API is parsed as HTML) ----------

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attributes = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fill(tbody, rows, empty, columns) {
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.append(el("tr", {}, el("td", { colspan: columns, class: "empty", text: empty })));
      return;
    }
    for (const row of rows) tbody.append(row);
  }

  function when(iso) {
    if (!iso) return "—";
    return iso.slice(0, 19).replace("T", " ") + " UTC";
  }

  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " days ago";
  }

  function number(value, digits = 1) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    const abs = Math.abs(value);
    if (abs >= 1e9) return (value / 1e9).toFixed(digits) + " G";
    if (abs >= 1e6) return (value / 1e6).toFixed(digits) + " M";
    if (abs >= 1e4) return (value / 1e3).toFixed(digits) + " k";
    if (Number.isInteger(value)) return String(value);
    return value.toFixed(abs < 1 ? 3 : digits);
  }

  function card(label, value, extra) {
    return el("div", { class: "card" },
      el("span", { class: "label", text: label }),
      el("span", { class: "value", text: value }),
      extra ? el("span", { class: "extra", text: extra }) : null);
  }

  function severity(name) {
    const level = (name || "none").toLowerCase();
    return el("span", { class: "badge sev-" + level, text: name || "—" });
  }

  function agentLink(agentId, label) {
    return el("a", {
      href: "#/agents/" + encodeURIComponent(agentId),
      class: "agent-link",
      dataset: { focusKey: "agent:" + agentId },
      text: label || agentId,
    });
  }

  function say(message, kind = "info") {
    const status = $("status");
    status.textContent = message || "";
    status.className = "status " + kind;
  }

  function may(permission) {
    return !!state.me && state.me.permissions.includes(permission);
  }

  // ---- signing in ----------------------------------------------------------------------

  async function signIn() {
    try {
      state.me = await api("whoami");
    } catch (error) {
      state.me = null;
      if (error instanceof ApiError && error.status === 401) {
        if (sessionStorage.getItem(KEY_STORE)) say("The key was refused: " + error.message, "error");
        return showLogin();
      }
      say("The API did not answer: " + error.message, "error");
      return showLogin();
    }
    const tenant = state.me.tenant_id === "*" ? "every tenant" : "tenant " + state.me.tenant_id;
    const agent = state.me.agent_id ? " " + state.me.agent_id : "";
    $("who").textContent = `${state.me.role}${agent} of ${tenant} · key ${state.me.key_id}`;
    $("sign-out").hidden = !sessionStorage.getItem(KEY_STORE);
    $("login").hidden = true;
    route();
  }

  function showLogin() {
    for (const id of ["fleet", "agent"]) $(id).hidden = true;
    $("login").hidden = false;
    $("who").textContent = "";
    $("sign-out").hidden = true;
    state.view = "login";
    $("key").focus();
  }

  function signOut() {
    sessionStorage.removeItem(KEY_STORE);
    state.me = null;
    say("Signed out.");
    showLogin();
  }

  // ---- views ---------------------------------------------------------------------------

  function route() {
    if (!state.me) return showLogin();
    const match = location.hash.match(/^#\/agents\/(.+)$/);
    if (match) {
      let agentId;
      try {
        agentId = decodeURIComponent(match[1]);
      } catch (error) { // a link with a broken escape (%E0%A4%A): say so, show the fleet
        say("That link does not name an agent (a broken %-escape).", "error");
        return showFleet();
      }
      return showAgent(agentId);
    }
    return showFleet();
  }

  function show(view) {
    const changed = state.view !== view;
    state.view = view;
    $("login").hidden = true;
    $("fleet").hidden = view !== "fleet";
    $("agent").hidden = view !== "agent";
    return changed;
  }

  async function refresh() {
    if (state.view === "fleet") await loadFleet();
    else if (state.view === "agent") await loadAgent();
  }

  // Re-rendering replaces rows: put the keyboard focus back where it was.
  async function keepingFocus(render) {
    const key = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.focusKey : undefined;
    await render();
    if (key) {
      const again = document.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
      if (again && again !== document.activeElement) again.focus();
    }
  }

  async function showFleet() {
    const changed = show("fleet");
    document.title = "Fleet · agentwatch";
    await loadFleet();
    if (changed && state.agentId) {
      const link = document.querySelector(`[data-focus-key="${CSS.escape("agent:" + state.agentId)}"]`);
      if (link) link.focus();
    }
  }

  async function loadFleet() {
    if (!may("read")) {
      say(`This key (${state.me.role}) may not read the fleet.`, "error");
      return;
    }
    await keepingFocus(async () => {
      const [agents, alerts, health] = await Promise.allSettled([
        api("agents/search" + query({ limit: 1000, sort: "security_score", order: "asc" })),
        api("alerts" + query({ state: "firing", limit: 100 })),
        api("system/health"),
      ]);
      const problems = [agents, alerts, health]
        .filter((r) => r.status === "rejected").map((r) => r.reason.message);
      say(problems.length ? "Some of the fleet could not be read: " + problems.join("; ") : "",
        problems.length ? "error" : "info");
      state.fleet = agents.status === "fulfilled" ? agents.value : null;
      renderSummary(state.fleet, alerts.value, health.value);
      renderAlerts(alerts.status === "fulfilled" ? alerts.value.alerts : []);
      await renderAgents();
      $("fleet").dataset.loaded = "true";
    });
  }

  function renderSummary(page, alerts, health) {
    const items = page ? page.items : [];
    const tenants = new Map();
    const states = new Map();
    for (const agent of items) {
      tenants.set(agent.tenant_id, (tenants.get(agent.tenant_id) || 0) + 1);
      const name = agent.lifecycle_state || "unknown";
      states.set(name, (states.get(name) || 0) + 1);
    }
    const partial = page && page.total > items.length ? ` (of the first ${items.length})` : "";
    const loader = health ? health.loader : null;
    $("summary").replaceChildren(
      card("Agents", page ? String(page.total) : "—"),
      card("Tenants", page ? String(tenants.size) + partial : "—"),
      card("Firing alerts", alerts ? String(alerts.count) : "—"),
      card("Ingest", loader ? number(loader.ingest_rows_per_s) + " heartbeats/s" : "—",
        loader && loader.lag_total !== null ? "loader lag " + number(loader.lag_total) : null),
      card("Pipeline", health ? health.status : "—",
        health && health.problems.length ? health.problems.join("; ") : null),
    );
    const byCount = (a, b) => b[1] - a[1] || a[0].localeCompare(b[0]);
    fill($("states").tBodies[0], [...states].sort(byCount).map(([name, count]) =>
      el("tr", {}, el("td", {}, el("span", { class: "state state-" + name, text: name })),
        el("td", { class: "num", text: count }))), "no agents" + partial, 2);
    fill($("tenants").tBodies[0], [...tenants].sort(byCount).map(([name, count]) =>
      el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: count }))),
    "no tenants", 2);
  }

  function renderAlerts(alerts) {
    const rank = (a) => SEVERITY_ORDER.indexOf(a.severity);
    const sorted = [...alerts].sort((a, b) => rank(a) - rank(b));
    fill($("alerts").tBodies[0], sorted.map((alert) => el("tr", {},
      el("td", {}, severity(alert.severity)),
      el("td", {}, agentLink(alert.agent_id)),
      el("td", { text: alert.tenant_id }),
      el("td", { text: alert.rule }),
      el("td", { text: when(alert.fired_at || alert.started_at) }),
      el("td", { text: alert.summary }),
    )), "No alert is firing.", 6);
  }

  async function renderAgents() {
    const text = $("search").value.trim();
    let items = state.fleet ? state.fleet.items : [];
    let total = state.fleet ? state.fleet.total : 0;
    if (text) {
      const found = await api("agents/search" + query({ text, limit: 100, sort: "name" }));
      items = found.items;
      total = found.total;
    }
    const shown = items.slice(0, 100);
    fill($("agents").tBodies[0], shown.map((agent) => el("tr", {},
      el("td", {}, agentLink(agent.agent_id, agent.name || agent.agent_id)),
      el("td", { text: agent.tenant_id }),
      el("td", {}, el("span", {
        class: "state state-" + (agent.lifecycle_state || "unknown"),
        text: agent.lifecycle_state || "unknown",
      })),
      el("td", { class: "num", text: number(agent.health) }),
      el("td", { class: "num", text: number(agent.security_score) }),
    )), text ? `No agent matches “${text}”.` : "No agent yet.", 5);
    $("agents-more").textContent = total > shown.length
      ? `${shown.length} of ${total} shown${text ? "" : ", lowest security score first"}: search to narrow.`
      : "";
  }

  async function showAgent(agentId) {
    const changed = show("agent") || state.agentId !== agentId;
    state.agentId = agentId;
    document.title = agentId + " · agentwatch";
    $("agent-title").textContent = agentId;
    if (changed) { // (nothing of the agent shown before stays under this one's name)
      for (const id of ["agent-facts", "chart-svg", "threats"]) $(id).replaceChildren();
      $("agent-alerts").tBodies[0].replaceChildren();
      $("actions").hidden = true; // (until this agent's status says which action fits)
      $("chart-caption").textContent = "";
      $("agent").dataset.loaded = "false";
      $("agent-title").setAttribute("tabindex", "-1");
      $("agent-title").focus();
    }
    await loadAgent();
  }

  async function loadAgent() {
    const agentId = state.agentId;
    const a = "agents/" + encodeURIComponent(agentId);
    await keepingFocus(async () => {
      const [status, series, threats, anomalies, alerts] = await Promise.allSettled([
        api(a + "/status"),
        api(a + "/series" + query({ metric: state.metric, limit: 500 })),
        api(a + "/threats" + query({ limit: 50 })),
        api(a + "/anomalies" + query({ limit: 500 })),
        api(a + "/alerts" + query({ limit: 50 })),
      ]);
      if (agentId !== state.agentId) return; // the person moved on meanwhile
      if (status.status === "rejected") {
        say(`Agent ${agentId}: ${status.reason.message}`, "error");
        return;
      }
      const problems = [series, threats, anomalies, alerts]
        .filter((r) => r.status === "rejected").map((r) => r.reason.message);
      say(problems.length ? "Some of the agent could not be read: " + problems.join("; ") : "",
        problems.length ? "error" : "info");
      renderFacts(status.value);
      const threatList = threats.status === "fulfilled" ? threats.value.threats : [];
      const anomalyList = anomalies.status === "fulfilled" ? anomalies.value.anomalies : [];
      if (series.status === "fulfilled") renderChart(series.value, anomalyList, threatList);
      renderThreats(threatList);
      renderAgentAlerts(alerts.status === "fulfilled" ? alerts.value.alerts : []);
      renderActions(status.value);
      $("agent").dataset.loaded = "true";
    });
  }

  function renderFacts(status) {
    const named = status.name && status.name !== status.agent_id;
    const name = named ? `${status.name} (${status.agent_id})` : status.agent_id;
    $("agent-title").textContent = name;
    const anomaly = status.latest_anomaly;
    $("agent-facts").replaceChildren(
      card("Tenant", status.tenant_id || "—"),
      card("State", status.lifecycle_state || "active",
        status.quarantined ? "quarantined" : status.lifecycle_since ? "since " + when(status.lifecycle_since) : null),
      card("Health", number(status.health), status.health_band),
      card("Security score", number(status.security_score)),
      card("Last heartbeat", ago(status.last_heartbeat), when(status.last_heartbeat)),
      card("Latest anomaly", anomaly ? anomaly.top_feature : "none",
        anomaly ? `score ${number(anomaly.score, 2)} · ${when(anomaly.timestamp)}` : null),
    );
  }

  // ---- the chart: inline SVG, drawn here ------------------------------------------------

  function renderChart(series, anomalies, threats) {
    const box = $("chart-svg");
    const points = series.points.map((p) => ({ t: Date.parse(p.timestamp), v: p.value }));
    const band = series.band;
    if (!points.length) {
      box.replaceChildren(el("p", { class: "empty", text: `No ${series.metric} stored yet.` }));
      $("chart-caption").textContent = "";
      return;
    }
    const W = 900, H = 280, left = 64, right = 16, top = 12, bottom = 36;
    const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1000);
    let lo = Math.min(...points.map((p) => p.v));
    let hi = Math.max(...points.map((p) => p.v));
    if (band) {
      lo = Math.min(lo, band.low);
      hi = Math.max(hi, band.high);
    }
    if (hi === lo) { hi += 1; lo -= 1; }
    const pad = (hi - lo) * 0.05;
    lo -= pad; hi += pad;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
    const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (H - top - bottom);
    const outside = band ? points.filter((p) => p.v < band.low || p.v > band.high).length : 0;

    const chart = svg("svg", {
      viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-t chart-d",
      class: "plot", preserveAspectRatio: "none",
    });
    chart.append(svg("title", { id: "chart-t" }, `${series.metric} of ${series.agent_id}`));
    const summary = `${points.length} heartbeats from ${when(series.points[0].timestamp)} to ` +
      `${when(series.points[points.length - 1].timestamp)}; ` +
      (band ? `baseline ${number(band.mean)} ± ${band.sigmas}σ (${number(band.low)} to ` +
        `${number(band.high)}); ${outside} outside the band.` : "no baseline yet.");
    chart.append(svg("desc", { id: "chart-d" }, summary));

    // threat windows behind everything
    for (const threat of threats) {
      const s = Date.parse(threat.evidence.window_start), e = Date.parse(threat.evidence.window_end);
      if (e < t0 || s > t1) continue;
      const xs = x(Math.max(s, t0)), xe = x(Math.min(e, t1));
      chart.append(svg("rect", {
        x: xs, y: top, width: Math.max(2, xe - xs), height: H - top - bottom,
        class: "threat-window",
      }));
    }
    // the baseline band and its mean
    if (band) {
      chart.append(svg("rect", {
        x: left, y: y(band.high), width: W - left - right,
        height: Math.max(1, y(band.low) - y(band.high)), class: "band",
      }));
      chart.append(svg("line", {
        x1: left, x2: W - right, y1: y(band.mean), y2: y(band.mean), class: "mean",
      }));
    }
    // axes and ticks
    chart.append(svg("line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }));
    chart.append(svg("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }));
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      chart.append(svg("line", { x1: left - 4, x2: left, y1: y(v), y2: y(v), class: "axis" }));
      chart.append(svg("text", { x: left - 8, y: y(v) + 4, class: "tick", "text-anchor": "end" }, number(v)));
    }
    for (let i = 0; i <= 4; i++) {
      const t = t0 + ((t1 - t0) * i) / 4;
      const label = new Date(t).toISOString().slice(11, 16);
      chart.append(svg("text", {
        x: x(t), y: H - bottom + 18, class: "tick",
        "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle",
      }, label));
    }
    chart.append(svg("text", { x: W - right, y: H - 4, class: "tick", "text-anchor": "end" }, "UTC"));
    // the metric
    chart.append(svg("polyline", {
      points: points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" "),
      class: "line",
    }));
    // heartbeats outside the band, and the detector's anomalies
    if (band) {
      for (const p of points) {
        if (p.v >= band.low && p.v <= band.high) continue;
        chart.append(svg("circle", { cx: x(p.t), cy: y(p.v), r: 2.5, class: "outside" }));
      }
    }
    const values = new Map(points.map((p) => [p.t, p.v]));
    let marked = 0;
    for (const anomaly of anomalies) {
      // the detector's anomalies that this metric drove (a reason names it)
      if (!anomaly.is_anomaly || !anomaly.reasons.some((r) => r.feature === series.metric)) continue;
      const t = Date.parse(anomaly.timestamp);
      if (t < t0 || t > t1 || !values.has(t)) continue;
      const mark = svg("circle", { cx: x(t), cy: y(values.get(t)), r: 5, class: "anomaly" });
      mark.append(svg("title", {}, `anomaly ${number(anomaly.score, 2)}: ${anomaly.top_feature}`));
      chart.append(mark);
      marked += 1;
    }
    box.replaceChildren(chart);
    const legend = el("ul", { class: "legend" },
      el("li", { class: "l-line", text: series.metric }),
      band ? el("li", { class: "l-band", text: `baseline mean ± ${band.sigmas}σ` + (band.warmed_up ? "" : " (warming up)") }) : null,
      el("li", { class: "l-anomaly", text: `anomalies of ${series.metric} (${marked})` }),
      el("li", { class: "l-threat", text: "threat windows" }));
    $("chart-caption").replaceChildren(el("p", { text: summary }), legend);
    $("chart").dataset.points = String(points.length);
    $("chart").dataset.outside = String(outside);
  }

  // ---- threats, alerts, actions -----------------------------------------------------------

  function renderThreats(threats) {
    const list = $("threats");
    list.replaceChildren();
    if (!threats.length) {
      list.append(el("li", { class: "empty", text: "No threat recorded for this agent." }));
      return;
    }
    for (const threat of threats) {
      const evidence = threat.evidence;
      const item = el("li", { class: "threat" },
        el("h4", {}, severity(threat.severity), " ", threat.rule,
          el("span", { class: "category", text: " · " + threat.category })),
        el("p", { class: "span" }, `${when(threat.first_seen)} → ${when(threat.last_seen)}`),
        el("p", { class: "reason" }, el("strong", { text: "Why: " }), evidence.condition));
      const values = Object.entries(evidence.values);
      if (values.length) {
        item.append(el("p", { class: "values" }, "Judged: " +
          values.map(([name, value]) => `${name} = ${number(value, 2)}`).join(", ")));
      }
      if (evidence.baseline.length) {
        const table = el("table", { class: "compact deviations" },
          el("caption", { text: "Off the baseline" }),
          el("thead", {}, el("tr", {}, ...["Metric", "Value", "Mean", "Std", "z"].map((h) =>
            el("th", { scope: "col", text: h })))));
        const body = el("tbody");
        for (const d of evidence.baseline) {
          body.append(el("tr", {}, el("td", { text: d.feature }),
            el("td", { class: "num", text: number(d.value, 2) }),
            el("td", { class: "num", text: number(d.baseline_mean, 2) }),
            el("td", { class: "num", text: number(d.baseline_std, 2) }),
            el("td", { class: "num", text: d.z.toFixed(1) })));
        }
        table.append(body);
        item.append(table);
      }
      for (const excerpt of evidence.excerpts || []) item.append(el("blockquote", { text: excerpt }));
      list.append(item);
    }
  }

  function renderAgentAlerts(alerts) {
    fill($("agent-alerts").tBodies[0], alerts.map((alert) => el("tr", {},
      el("td", { text: alert.state + (alert.silenced ? " (silenced)" : "") }),
      el("td", {}, severity(alert.severity)),
      el("td", { text: alert.rule }),
      el("td", { text: when(alert.fired_at || alert.started_at) }),
      el("td", { text: alert.summary }),
    )), "No alert for this agent.", 5);
  }

  function renderActions(status) {
    // offered only to a key whose role may operate (the API checks the tenant as well)
    const section = $("actions");
    section.hidden = !may("operate");
    if (section.hidden) return;
    const quarantined = !!status.quarantined;
    for (const button of section.querySelectorAll("button")) {
      const release = button.dataset.action === "release";
      button.hidden = release !== quarantined;
    }
  }

  async function act(action) {
    const reason = $("action-reason").value.trim();
    if (!reason) return say("Say why, in the reason field.", "error");
    try {
      await api(`agents/${encodeURIComponent(state.agentId)}/${action}`, {
        method: "POST", body: { reason },
      });
      say(`${action} of ${state.agentId} requested; the dataflow applies it.`);
      $("action-reason").value = "";
    } catch (error) {
      say(`${action} refused: ${error.message}`, "error");
    }
  }

  // ---- keyboard ---------------------------------------------------------------------------

  function typing(target) {
    return target instanceof HTMLElement &&
      (target.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName));
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (event.key === "Escape") {
      if (target === $("search") && $("search").value) {
        $("search").value = "";
        renderAgents();
      } else if (state.view === "agent") {
        location.hash = "#/";
      } else if (typing(target)) {
        target.blur();
      }
      event.preventDefault();
      return;
    }
    if (typing(target) || !state.me) return;
    if (event.key === "/") {
      event.preventDefault();
      if (state.view !== "fleet") location.hash = "#/";
      $("search").focus();
      $("search").select();
    } else if (event.key === "r") {
      refresh();
    } else if ((event.key === "ArrowDown" || event.key === "ArrowUp") && target.matches(".agent-link")) {
      const links = [...document.querySelectorAll("#agents .agent-link")];
      const next = links[links.indexOf(target) + (event.key === "ArrowDown" ? 1 : -1)];
      if (next) {
        event.preventDefault();
        next.focus();
      }
    }
  }

  // ---- wiring -------------------------------------------------------------------------------

  function start() {
    const select = $("metric");
    for (const name of METRICS) select.append(el("option", { value: name, text: name }));
    select.value = state.metric;
    select.addEventListener("change", () => {
      state.metric = select.value;
      loadAgent();
    });
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      $("key").value = "";
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      say("");
      signIn();
    });
    $("sign-out").addEventListener("click", signOut);
    let searching = 0;
    $("search").addEventListener("input", () => {
      clearTimeout(searching);
      searching = setTimeout(() => renderAgents().catch((e) => say(e.message, "error")), 200);
    });
    $("search-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      clearTimeout(searching);
      await renderAgents().catch((e) => say(e.message, "error"));
      const first = document.querySelector("#agents .agent-link");
      if (first) location.hash = first.getAttribute("href");
    });
    $("action-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const button = event.submitter;
      if (button && button.dataset.action) act(button.dataset.action);
    });
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", route);
    setInterval(() => {
      if (document.visibilityState === "visible" && state.me) {
        refresh().catch((e) => say(e.message, "error"));
      }
    }, REFRESH_MS);
    signIn();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
