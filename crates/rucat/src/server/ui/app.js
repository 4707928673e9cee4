// Rucat web console: plain JavaScript over the REST API of the server that serves it. Every call
// carries the user's bearer token (kept in sessionStorage); the page itself holds no data.
"use strict";

(() => {
  const TOKEN_KEY = "rucat.token";
  const POLL_MS = 2000;
  const PAGE = 500;

  const STOPPABLE = ["WaitToStart", "StartInProgress", "Running"];
  const RESTARTABLE = ["Terminated", "WaitToTerminate"];
  const DELETABLE = ["WaitToStart", "Terminated", "ErrorClean"];

  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    anonymous: false,
    signedIn: false,
    versions: [],
    rows: new Map(), // engine id -> <tr>
    engine: null, // the engine the engine page shows
    timer: null,
    generation: 0, // bumps on every view change: late answers of an old view are dropped
  };

  // ---- API --------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body, token = state.token) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, "network", `cannot reach Rucat: ${error.message}`);
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!response.ok) {
      const error = json && json.error;
      throw new ApiError(
        response.status,
        (error && error.code) || "http_" + response.status,
        (error && error.message) || `HTTP ${response.status}${text ? ": " + text.slice(0, 200) : ""}`,
      );
    }
    return json;
  }

  // ---- small helpers ------------------------------------------------------------------------

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function stateClass(name) {
    if (name === "Running") return "state running";
    if (name === "Terminated") return "state stopped";
    if (name && name.startsWith("Error")) return "state failed";
    return "state";
  }

  function stateBadge(node, name) {
    setText(node, name || "");
    const cls = stateClass(name);
    if (node.className !== cls) node.className = cls;
    node.dataset.state = name || "";
  }

  function age(since) {
    const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(since)) / 1000));
    if (!Number.isFinite(seconds)) return "";
    if (seconds < 60) return `${seconds}s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes}m`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return `${hours}h ${minutes % 60}m`;
    return `${Math.floor(hours / 24)}d`;
  }

  function when(time) {
    const date = new Date(time);
    return Number.isNaN(date.getTime()) ? String(time) : date.toLocaleString();
  }

  // The endpoint with `;token=` added (PySpark wants `=` written as %3D in a token).
  function withToken(endpoint) {
    if (!state.token) return endpoint;
    const base = endpoint.includes("/;") ? endpoint : endpoint.replace(/\/?$/, "/");
    return `${base};token=${state.token.replace(/=/g, "%3D")}`;
  }

  function masked(endpoint) {
    return state.token ? withToken(endpoint).replace(/;token=.*$/, ";token=<your token>") : endpoint;
  }

  function snippet(connection) {
    return [
      "from pyspark.sql import SparkSession",
      "",
      `spark = SparkSession.builder.remote("${connection}").getOrCreate()`,
      'spark.sql("SELECT 1").show()',
    ].join("\n");
  }

  // ---- banner and confirmation -------------------------------------------------------------

  function showError(error) {
    const message = error instanceof ApiError && error.code !== "network" && error.status
      ? `${error.message} (${error.code}, HTTP ${error.status})`
      : error.message || String(error);
    $("banner").className = "banner";
    setText($("banner-text"), message);
    $("banner").hidden = false;
  }

  function showInfo(message) {
    $("banner").className = "banner info";
    setText($("banner-text"), message);
    $("banner").hidden = false;
  }

  function clearBanner() {
    $("banner").hidden = true;
  }

  // An in-page confirmation (not window.confirm): resolves to true when confirmed.
  function confirmAction(title, text, ok) {
    const dialog = $("confirm");
    setText($("confirm-title"), title);
    setText($("confirm-text"), text);
    setText($("confirm-ok"), ok);
    return new Promise((resolve) => {
      const done = (answer) => {
        $("confirm-ok").removeEventListener("click", yes);
        $("confirm-cancel").removeEventListener("click", no);
        dialog.removeEventListener("cancel", no);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const yes = () => done(true);
      const no = () => done(false);
      $("confirm-ok").addEventListener("click", yes);
      $("confirm-cancel").addEventListener("click", no);
      dialog.addEventListener("cancel", no);
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  const OPS = {
    stop: { title: "Stop engine", verb: "Stop", allowed: STOPPABLE,
      text: (e) => `Stop engine "${e.name}"? Its Spark Connect server goes away; sessions on it end.` },
    restart: { title: "Restart engine", verb: "Restart", allowed: RESTARTABLE,
      text: (e) => `Restart engine "${e.name}" with the same configuration?` },
    delete: { title: "Delete engine", verb: "Delete", allowed: DELETABLE,
      text: (e) => `Delete engine "${e.name}" and its history and kept log? This cannot be undone.` },
  };

  async function operate(op, engine) {
    const spec = OPS[op];
    if (!(await confirmAction(spec.title, spec.text(engine), spec.verb))) return;
    try {
      if (op === "delete") {
        await api("DELETE", `/engines/${encodeURIComponent(engine.id)}`);
        state.rows.get(engine.id)?.remove();
        state.rows.delete(engine.id);
        showInfo(`Engine "${engine.name}" (${engine.id}) deleted.`);
        if (location.hash !== "#/") location.hash = "#/";
        else refreshSoon(0);
        return;
      }
      await api("POST", `/engines/${encodeURIComponent(engine.id)}/${op}`);
      clearBanner();
    } catch (error) {
      showError(error);
    }
    refreshSoon(0);
  }

  // ---- views --------------------------------------------------------------------------------

  function showView(name) {
    $("loading").hidden = true;
    for (const view of ["sign-in-view", "list-view", "engine-view"]) {
      $(view).hidden = view !== name;
    }
  }

  function setSignedIn() {
    state.signedIn = true;
    if (state.anonymous) {
      setText($("who"), "anonymous (authentication is off)");
      $("sign-out").hidden = true;
    } else {
      setText($("who"), "signed in with a token");
      $("sign-out").hidden = false;
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.signedIn = false;
    state.anonymous = false;
    state.rows.forEach((row) => row.remove());
    state.rows.clear();
    stopPolling();
    setText($("who"), "");
    $("sign-out").hidden = true;
    showView("sign-in-view");
    $("token-input").value = "";
    $("token-input").focus();
    if (message) showError(message);
    else clearBanner();
  }

  function handle(error) {
    if (error instanceof ApiError && error.status === 401 && !state.anonymous) {
      signOut(new ApiError(401, error.code, `Signed out: ${error.message}`));
      return;
    }
    showError(error);
  }

  function route() {
    if (!state.signedIn) return;
    state.generation += 1;
    const match = /^#\/engines\/([^/]+)$/.exec(location.hash);
    if (match) {
      state.engine = null;
      resetEngineView(decodeURIComponent(match[1]));
      showView("engine-view");
    } else {
      state.engine = null;
      showView("list-view");
    }
    refreshSoon(0);
  }

  // ---- the engines table -------------------------------------------------------------------

  async function loadVersions() {
    const answer = await api("GET", "/versions");
    state.versions = (answer && answer.versions) || [];
    const select = $("create-version");
    select.replaceChildren(...state.versions.map((v) => el("option", { value: v, text: v })));
    select.disabled = state.versions.length === 0;
  }

  async function listAll() {
    const engines = [];
    let cursor = null;
    for (let page = 0; page < 20; page += 1) {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (cursor) query.set("cursor", cursor);
      const answer = await api("GET", `/engines?${query}`);
      engines.push(...answer.engines);
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    return engines;
  }

  function actionButton(op, engine) {
    const button = el("button", { type: "button", class: op === "delete" ? "small danger" : "small",
      text: OPS[op].verb, dataset: { op } });
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      operate(op, button.closest("tr").engine);
    });
    button.disabled = !OPS[op].allowed.includes(engine.state);
    return button;
  }

  function newRow(engine) {
    const link = el("a", { href: `#/engines/${encodeURIComponent(engine.id)}` });
    const row = el("tr", { dataset: { id: engine.id } },
      el("td", { class: "id" }, el("a", { href: link.getAttribute("href"), text: engine.id })),
      el("td", { class: "name" }, link),
      el("td", { class: "owner" }),
      el("td", { class: "version" }),
      el("td", { class: "state-cell" }, el("span", { class: "state" })),
      el("td", { class: "age" }),
      el("td", { class: "actions-cell" },
        actionButton("stop", engine), actionButton("restart", engine), actionButton("delete", engine)),
    );
    return row;
  }

  function updateRow(row, engine) {
    row.engine = engine;
    setText(row.querySelector(".name a"), engine.name);
    setText(row.querySelector(".owner"), engine.owner);
    setText(row.querySelector(".version"), engine.version);
    stateBadge(row.querySelector(".state"), engine.state);
    row.querySelector(".state").title = engine.error || "";
    setText(row.querySelector(".age"), age(engine.create_time));
    row.querySelector(".age").title = when(engine.create_time);
    for (const button of row.querySelectorAll("button[data-op]")) {
      button.disabled = !OPS[button.dataset.op].allowed.includes(engine.state);
    }
  }

  async function refreshList(generation) {
    const engines = await listAll();
    if (generation !== state.generation) return;
    const body = $("engine-rows");
    const seen = new Set();
    engines.forEach((engine, index) => {
      seen.add(engine.id);
      let row = state.rows.get(engine.id);
      if (!row) {
        row = newRow(engine);
        state.rows.set(engine.id, row);
      }
      updateRow(row, engine);
      if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
    });
    for (const [id, row] of state.rows) {
      if (!seen.has(id)) {
        row.remove();
        state.rows.delete(id);
      }
    }
    $("no-engines").hidden = engines.length > 0;
    $("engines").hidden = engines.length === 0;
    setText($("list-status"),
      `${engines.length} engine${engines.length === 1 ? "" : "s"} · updated ${new Date().toLocaleTimeString()}`);
  }

  function parseConfigs(text) {
    const configs = {};
    text.split("\n").forEach((raw, index) => {
      const line = raw.trim();
      if (!line || line.startsWith("#")) return;
      const at = line.indexOf("=");
      if (at <= 0) throw new Error(`configs line ${index + 1}: expected key=value, got "${line}"`);
      configs[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    });
    return configs;
  }

  async function create(event) {
    event.preventDefault();
    const button = $("create-submit");
    try {
      const request = {
        name: $("create-name").value.trim(),
        engine_type: "Spark",
        version: $("create-version").value,
        configs: parseConfigs($("create-configs").value),
      };
      const idle = $("create-idle").value.trim();
      if (idle !== "") request.idle_timeout_minutes = Number(idle);
      button.disabled = true;
      const created = await api("POST", "/engines", request);
      showInfo(`Engine "${request.name}" created: ${created.id}`);
      $("create-form").reset();
      if (state.versions.length) $("create-version").value = state.versions[0];
      refreshSoon(0);
    } catch (error) {
      handle(error);
    } finally {
      button.disabled = false;
    }
  }

  // ---- the engine page ---------------------------------------------------------------------

  function resetEngineView(id) {
    setText($("engine-name"), id);
    stateBadge($("engine-state"), "");
    $("engine-error").hidden = true;
    $("engine-facts").replaceChildren();
    $("event-rows").replaceChildren();
    setText($("logs"), "");
    setText($("log-source"), "");
    $("connect-ready").hidden = true;
    $("connect-wait").hidden = false;
    for (const op of Object.keys(OPS)) $(`engine-${op}`).disabled = true;
    $("engine-view").dataset.id = id;
  }

  function fact(term, value, mono) {
    return [el("dt", { text: term }), el("dd", { class: mono ? "mono" : "", text: value })];
  }

  function renderEngine(engine) {
    state.engine = engine;
    setText($("engine-name"), engine.name);
    stateBadge($("engine-state"), engine.state);
    $("engine-error").hidden = !engine.error;
    setText($("engine-error"), engine.error || "");
    const configs = Object.entries(engine.configs || {}).map(([k, v]) => `${k}=${v}`).join("\n");
    const facts = [
      ...fact("ID", engine.id, true),
      ...fact("Owner", engine.owner),
      ...fact("Type", `${engine.engine_type} ${engine.version}`),
      ...fact("Created", `${when(engine.create_time)} (${age(engine.create_time)} ago)`),
      ...fact("Updated", when(engine.update_time)),
      ...fact("Idle timeout", engine.idle_timeout_minutes ? `${engine.idle_timeout_minutes} minutes` : "none"),
      ...fact("Configs", configs || "none", true),
    ];
    const old = $("engine-facts");
    const same = old.children.length === facts.length &&
      facts.every((node, i) => old.children[i].textContent === node.textContent);
    if (!same) old.replaceChildren(...facts);
    for (const op of Object.keys(OPS)) {
      $(`engine-${op}`).disabled = !OPS[op].allowed.includes(engine.state);
    }
    if (engine.endpoint) {
      setText($("connection-string"), masked(engine.endpoint));
      setText($("pyspark-snippet"), snippet(masked(engine.endpoint)));
      $("connect-ready").hidden = false;
      $("connect-wait").hidden = true;
    } else {
      $("connect-ready").hidden = true;
      $("connect-wait").hidden = false;
    }
  }

  function describeCause(cause) {
    if (!cause || typeof cause !== "object") return "";
    const { kind, ...rest } = cause;
    const details = Object.entries(rest)
      .map(([key, value]) => (typeof value === "object" ? `${key}=${JSON.stringify(value)}` : `${key}: ${value}`))
      .join(", ");
    return details ? `${kind} (${details})` : String(kind || "");
  }

  function renderEvents(events) {
    const rows = events.slice().reverse().map((event) => {
      const change = event.from && event.from !== event.to
        ? [el("span", { class: stateClass(event.from), text: event.from }), " → ",
          el("span", { class: stateClass(event.to), text: event.to })]
        : [el("span", { class: stateClass(event.to), text: event.to }),
          el("span", { class: "muted small", text: event.from ? " (attempt failed)" : " (created)" })];
      const by = el("td", { class: "by" });
      if (event.actor) {
        by.append(el("span", { class: "kind", text: event.actor.kind }), event.actor.name);
      }
      const cause = describeCause(event.cause);
      if (cause) by.append(el("div", { class: "cause", text: `cause: ${cause}` }));
      return el("tr", { class: "event", dataset: { to: event.to } },
        el("td", { class: "time", text: when(event.time) }),
        el("td", { class: "change" }, ...change),
        el("td", { class: "message", text: event.message || "" }),
        by);
    });
    const body = $("event-rows");
    const signature = JSON.stringify(events);
    if (body.dataset.signature !== signature) {
      body.replaceChildren(...rows);
      body.dataset.signature = signature;
    }
  }

  async function refreshLogs(generation, id) {
    const answer = await api("GET", `/engines/${encodeURIComponent(id)}/logs`);
    if (generation !== state.generation) return;
    const pre = $("logs");
    const text = answer.log || (answer.source === "none" ? "(no driver log yet)" : "");
    setText($("log-source"), { live: "live", kept: "kept after the engine stopped", none: "none yet" }[answer.source] || answer.source);
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    setText(pre, text);
    if ($("follow-logs").checked || atBottom) pre.scrollTop = pre.scrollHeight;
  }

  async function refreshEngine(generation, first) {
    const id = $("engine-view").dataset.id;
    const path = `/engines/${encodeURIComponent(id)}`;
    const [engine, events] = await Promise.all([api("GET", path), api("GET", `${path}/events`)]);
    if (generation !== state.generation) return;
    renderEngine(engine);
    renderEvents((events && events.events) || []);
    if (first || $("follow-logs").checked) await refreshLogs(generation, id);
  }

  // ---- polling ------------------------------------------------------------------------------

  function stopPolling() {
    clearTimeout(state.timer);
    state.timer = null;
  }

  let refreshing = false;
  let pending = false;

  async function refresh() {
    if (!state.signedIn) return;
    if (refreshing) {
      pending = true;
      return;
    }
    refreshing = true;
    const generation = state.generation;
    const first = !state.engine;
    try {
      if (!$("engine-view").hidden) await refreshEngine(generation, first);
      else if (!$("list-view").hidden) await refreshList(generation);
    } catch (error) {
      if (generation === state.generation) handle(error);
    } finally {
      refreshing = false;
    }
    if (pending) {
      pending = false;
      refreshSoon(0);
    } else {
      refreshSoon(POLL_MS);
    }
  }

  function refreshSoon(delay) {
    stopPolling();
    if (!state.signedIn) return;
    if (document.hidden && delay > 0) return; // resumes on visibilitychange
    state.timer = setTimeout(refresh, delay);
  }

  // ---- start --------------------------------------------------------------------------------

  async function enter() {
    setSignedIn();
    try {
      const me = await api("GET", "/me");
      if (!state.anonymous) {
        setText($("who"), `signed in as ${me.user}${me.role === "admin" ? " (admin)" : ""}`);
      }
      await loadVersions();
    } catch (error) {
      handle(error);
      return;
    }
    route();
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    const button = $("sign-in");
    button.disabled = true;
    try {
      await api("GET", "/versions", undefined, token);
      state.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-input").value = "";
      clearBanner();
      await enter();
    } catch (error) {
      showError(error.status === 401 ? new ApiError(401, error.code, `Sign-in refused: ${error.message}`) : error);
    } finally {
      button.disabled = false;
    }
  }

  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard API here (an insecure origin, or no permission): the old way.
      const area = el("textarea", { class: "offscreen", readonly: "" });
      area.value = text;
      document.body.append(area);
      area.select();
      const done = document.execCommand("copy");
      area.remove();
      if (!done) throw new Error("the browser refused to copy");
    }
  }

  function copyButton(button, text) {
    button.addEventListener("click", async () => {
      if (!state.engine || !state.engine.endpoint) return;
      try {
        await copy(text());
        setText($("copy-status"), "Copied to the clipboard.");
      } catch (error) {
        setText($("copy-status"), `Cannot copy: ${error.message}`);
      }
      setTimeout(() => setText($("copy-status"), ""), 3000);
    });
  }

  async function start() {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut());
    $("banner-close").addEventListener("click", clearBanner);
    $("create-form").addEventListener("submit", create);
    for (const op of Object.keys(OPS)) {
      $(`engine-${op}`).addEventListener("click", () => state.engine && operate(op, state.engine));
    }
    $("follow-logs").addEventListener("change", () => refreshSoon(0));
    $("refresh-logs").addEventListener("click", () => {
      const id = $("engine-view").dataset.id;
      refreshLogs(state.generation, id).catch(handle);
    });
    copyButton($("copy-connection"), () => withToken(state.engine.endpoint));
    copyButton($("copy-snippet"), () => snippet(withToken(state.engine.endpoint)));
    window.addEventListener("hashchange", route);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.signedIn) refreshSoon(0);
    });

    if (state.token) {
      await enter();
      return;
    }
    // Without a token: a server without authentication answers anyway (anonymous mode).
    try {
      await api("GET", "/versions", undefined, null);
      state.anonymous = true;
      await enter();
    } catch (error) {
      if (error.status === 401) {
        showView("sign-in-view");
        $("token-input").focus();
      } else {
        showView("sign-in-view");
        showError(error);
      }
    }
  }

  start();
})();
