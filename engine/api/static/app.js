// vaultpbx web console: one plain ES module, no build step, no third-party code.
// Invariants: the session token never reaches script (it is an HttpOnly cookie); the CSRF token
// comes from the server at run time and goes back in X-CSRF-Token on every state change; every
// value from the server is written with textContent (never innerHTML), so a caller name cannot
// become markup; the page never polls: live data arrives over the WebSocket.

const VIEWS = {
  wallboard: { label: "Wallboard", needs: ["calls.monitor"] },
  calls: { label: "Live calls", needs: ["calls.monitor", "calls.handle"] },
  desktop: { label: "Agent desktop", needs: ["calls.handle"], extension: true },
  recordings: { label: "Recordings", needs: ["recording.list", "recording.play"] },
  audit: { label: "Audit", needs: ["audit.read"] },
};

const $ = (id) => document.getElementById(id);
let me = null;          // {user, role, permissions, csrf, extension}
let socket = null;
let history = [];        // [time, waiting, available]
let latest = null;       // the last snapshot

function allowed(view) {
  const spec = VIEWS[view];
  if (!me || !spec) return false;
  if (spec.extension && !me.extension) return false;
  return spec.needs.every((p) => me.permissions.includes(p));
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (me && method !== "GET") headers["X-CSRF-Token"] = me.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = {};
  try { data = await response.json(); } catch { data = {}; }
  return { status: response.status, data };
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, build) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const tr = document.createElement("tr");
    build(tr, item);
    body.appendChild(tr);
  }
}

// -- login -----------------------------------------------------------------------------------
async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  const otp = $("login-otp").value.trim();
  const { status, data } = await api("POST", "/session", {
    user: $("login-user").value, password: $("login-password").value, otp: otp || null,
  });
  $("login-password").value = "";
  $("login-otp").value = "";
  if (status !== 200) {
    $("login-error").textContent = data.second_factor_required
      ? "Enter the TOTP code from your authenticator." : (data.error || `failed (${status})`);
    return;
  }
  me = data;
  started();
}

async function logout() {
  await api("DELETE", "/session");
  if (socket) socket.close();
  me = null;
  window.location.hash = "";
  window.location.reload();
}

function started() {
  $("login-view").hidden = true;
  $("logout").hidden = false;
  $("who").textContent = `${me.user} (${me.role})`;
  const nav = $("nav");
  nav.replaceChildren();
  for (const [name, spec] of Object.entries(VIEWS)) {
    if (!allowed(name)) continue;
    const link = document.createElement("a");
    link.href = `#${name}`;
    link.id = `nav-${name}`;
    link.textContent = spec.label;
    nav.appendChild(link);
  }
  nav.hidden = false;
  if (me.permissions.includes("calls.monitor")) connect();
  const first = Object.keys(VIEWS).find(allowed);
  if (!window.location.hash && first) window.location.hash = first;
  else show();
}

// -- views -----------------------------------------------------------------------------------
function show() {
  if (!me) return;
  const view = window.location.hash.slice(1);
  for (const section of document.querySelectorAll("main > section")) section.hidden = true;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.id === `nav-${view}`);
  }
  if (!VIEWS[view]) return;
  if (!allowed(view)) {
    $("denied-message").textContent = `Your role (${me.role}) may not open ${VIEWS[view].label}.`;
    $("denied-view").hidden = false;
    document.body.dataset.view = "denied";
    return;
  }
  $(`${view}-view`).hidden = false;
  document.body.dataset.view = view;
  if (view === "recordings") loadRecordings();
  if (view === "audit") loadAudit();
  if (view === "desktop") $("desktop-agent").textContent = me.extension;
  if (latest) render(latest);
}

// -- live feed -------------------------------------------------------------------------------
function connect() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${window.location.host}/ws`);
  socket.addEventListener("open", () => { $("feed-state").textContent = "live"; });
  socket.addEventListener("close", () => {
    $("feed-state").textContent = "disconnected";
    if (me) setTimeout(connect, 2000);
  });
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "history") {
      history = message.points;
    } else if (message.type === "snapshot") {
      latest = message;
      const d = message.data;
      const waiting = Object.values(d.queues).reduce((n, q) => n + q.waiting, 0);
      const available = Object.values(d.agents).filter((a) => a.state === "available").length;
      history.push([message.at, waiting, available]);
      const cutoff = message.at - 3600;
      while (history.length && history[0][0] < cutoff) history.shift();
      render(message);
    }
  });
}

function render(message) {
  const d = message.data;
  fill("queues-table", Object.entries(d.queues), (tr, [name, q]) => {
    tr.dataset.queue = name;
    cell(tr, name);
    cell(tr, q.waiting, "waiting");
    cell(tr, q.longest_wait.toFixed(1), "longest-wait");
    cell(tr, q.service_level === null ? "–" : `${Math.round(q.service_level * 100)} %`);
    cell(tr, q.abandoned, "abandoned");
  });
  fill("agents-table", Object.entries(d.agents), (tr, [name, a]) => {
    tr.dataset.agent = name;
    cell(tr, name);
    const state = a.break_reason ? `${a.state} (${a.break_reason})` : a.state;
    cell(tr, state, `state state-${a.state}`);
    cell(tr, `${Math.max(0, Math.round(message.at - a.since))} s`);
    cell(tr, a.handled);
  });
  fill("calls-table", d.calls, (tr, call) => {
    tr.dataset.call = call.id;
    tr.dataset.callState = call.state;
    cell(tr, call.id);
    cell(tr, call.caller, "caller");
    cell(tr, call.callee);
    cell(tr, call.queue);
    cell(tr, call.agent);
    cell(tr, call.state, "call-state");
    cell(tr, call.seconds);
    cell(tr, call.recorded ? "yes" : "no");
    const td = cell(tr, "");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hangup";
    button.textContent = "Hang up";
    button.addEventListener("click", () => hangup(call.id));
    td.appendChild(button);
  });
  drawChart();
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!history.length) return;
  const end = history[history.length - 1][0];
  const top = Math.max(2, ...history.map((p) => Math.max(p[1], p[2])));
  const x = (t) => canvas.width - ((end - t) / 3600) * canvas.width;
  const y = (v) => canvas.height - 8 - (v / top) * (canvas.height - 16);
  for (const [index, colour] of [[1, "#c62828"], [2, "#2e7d32"]]) {
    ctx.beginPath();
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    history.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[index])) : ctx.moveTo(x(p[0]), y(p[index]))));
    ctx.stroke();
  }
  ctx.fillStyle = "#555";
  ctx.fillText(`max ${top}`, 4, 12);
}

// -- actions ---------------------------------------------------------------------------------
async function hangup(id) {
  const { status, data } = await api("POST", `/calls/${encodeURIComponent(id)}/hangup`);
  $("calls-message").textContent = status === 200 ? `Call ${id} is being hung up.`
    : `Hang-up refused: ${data.reason || data.error || status}`;
}

async function agentAction(action) {
  const body = { agent: me.extension };
  if (action === "pause") body.reason = $("pause-reason").value;
  const { status, data } = await api("POST", `/agents/${action}`, body);
  if (status === 200) {
    $("desktop-state").textContent = data.break_reason ? `${data.state} (${data.break_reason})`
      : data.state;
    $("desktop-message").textContent = "";
  } else {
    $("desktop-message").textContent = data.reason || data.error || `failed (${status})`;
  }
}

async function loadRecordings(event) {
  if (event) event.preventDefault();
  const { status, data } = await api("GET", "/recordings");
  if (status !== 200) {
    $("recordings-message").textContent = data.reason || data.error || `failed (${status})`;
    return;
  }
  const from = $("rec-from").value ? Date.parse($("rec-from").value) / 1000 : 0;
  const caller = $("rec-caller").value.trim();
  const rows = data.recordings.filter((r) => r.created_at >= from
    && (!caller || String(r.caller).includes(caller)));
  fill("recordings-table", rows, (tr, r) => {
    tr.dataset.recording = r.recording_id;
    cell(tr, r.recording_id);
    cell(tr, new Date(r.created_at * 1000).toISOString().replace("T", " ").slice(0, 19));
    cell(tr, r.caller, "caller");
    cell(tr, r.state);
    cell(tr, r.legal_hold ? "legal hold" : "");
    const td = cell(tr, "");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "play";
    button.textContent = "Play";
    button.addEventListener("click", () => play(r.recording_id));
    td.appendChild(button);
  });
  $("recordings-message").textContent = `${rows.length} recording(s)`;
}

function play(id) {
  const player = $("player");
  player.src = `/recordings/${encodeURIComponent(id)}/play`;
  player.play().catch((error) => {
    $("recordings-message").textContent = `cannot play: ${error.message}`;
  });
  player.dataset.playing = id;
}

async function loadAudit() {
  const verify = await api("GET", "/audit/verify");
  $("audit-verify").textContent = verify.status === 200
    ? `${verify.data.ok ? "passed" : "FAILED"}: ${verify.data.summary}` : `error ${verify.status}`;
  let records = [];
  let path = "/audit?limit=1000";
  for (let page = 0; page < 50 && path; page += 1) {
    const { status, data } = await api("GET", path);
    if (status !== 200) break;
    records = records.concat(data.records).slice(-500);
    path = data.next || null;
  }
  const filter = $("audit-filter").value.trim();
  const shown = records.filter((r) => !filter
    || `${r.action} ${r.actor} ${r.target}`.includes(filter)).reverse();
  fill("audit-table", shown, (tr, r) => {
    tr.dataset.action = r.action;
    cell(tr, r.seq);
    cell(tr, r.time || r.ts || "");
    cell(tr, r.actor);
    cell(tr, r.action, "action");
    cell(tr, r.target);
  });
}

// -- start -----------------------------------------------------------------------------------
async function boot() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("recordings-filter").addEventListener("submit", loadRecordings);
  $("audit-filter").addEventListener("input", loadAudit);
  for (const action of ["login", "ready", "pause", "logout"]) {
    $(`agent-${action}`).addEventListener("click", () => agentAction(action));
  }
  window.addEventListener("hashchange", show);
  const { status, data } = await api("GET", "/session");
  if (status === 200 && data.user) {
    me = data;
    started();
  }
  document.body.dataset.ready = "1";
}

boot();
