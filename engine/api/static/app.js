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

// Keyed rows: a row that stays is updated in place (its buttons keep working between pushes);
// `cells(item)` gives [text, className] per column, `decorate(tr, item)` sets data-* attributes,
// `action(item)` makes the last cell's button once, when the row first appears.
function fill(tableId, items, key, cells, decorate, action) {
  const body = $(tableId).querySelector("tbody");
  const old = new Map([...body.children].map((tr) => [tr.dataset.key, tr]));
  const rows = [];
  for (const item of items) {
    const k = String(key(item));
    const values = cells(item);
    let tr = old.get(k);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.key = k;
      for (const [, className] of values) {
        const td = document.createElement("td");
        if (className) td.className = className;
        tr.appendChild(td);
      }
      if (action) {
        const td = document.createElement("td");
        td.appendChild(action(item));
        tr.appendChild(td);
      }
    }
    values.forEach(([text, className], i) => {
      const td = tr.children[i];
      const t = text === null || text === undefined ? "" : String(text);
      if (td.textContent !== t) td.textContent = t;
      if (className && td.className !== className) td.className = className;
    });
    if (decorate) decorate(tr, item);
    old.delete(k);
    rows.push(tr);
  }
  for (const tr of old.values()) tr.remove();
  rows.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
}

function button(className, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
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
  if (me.permissions.includes("calls.monitor") || allowed("desktop")) connect();
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
  fill("queues-table", Object.entries(d.queues), ([name]) => name, ([name, q]) => [
    [name], [q.waiting, "waiting"], [q.longest_wait.toFixed(1), "longest-wait"],
    [q.service_level === null ? "–" : `${Math.round(q.service_level * 100)} %`],
    [q.abandoned, "abandoned"],
  ], (tr, [name]) => { tr.dataset.queue = name; });
  fill("agents-table", Object.entries(d.agents), ([name]) => name, ([name, a]) => [
    [name], [a.break_reason ? `${a.state} (${a.break_reason})` : a.state, `state state-${a.state}`],
    [`${Math.max(0, Math.round(message.at - a.since))} s`], [a.handled],
  ], (tr, [name]) => { tr.dataset.agent = name; });
  fill("calls-table", d.calls, (call) => call.id, (call) => [
    [call.id], [call.caller, "caller"], [call.callee], [call.queue], [call.agent],
    [call.state, "call-state"], [call.seconds],
    [call.pci_pause ? "paused (PCI)" : call.recorded ? "yes" : "no", "recorded"],
  ], (tr, call) => { tr.dataset.call = call.id; tr.dataset.callState = call.state; },
  (call) => button("hangup", "Hang up", () => hangup(call.id)));
  if (me && me.extension) renderDesktop(d);
  drawChart();
}

function renderDesktop(d) {
  const own = d.agents[me.extension];
  if (own) {
    $("desktop-state").textContent = own.break_reason ? `${own.state} (${own.break_reason})`
      : own.state;
  }
  const call = d.calls.find((c) => c.agent === me.extension);
  $("desktop-call").hidden = !call;
  if (!call) return;
  $("desktop-call").dataset.call = call.id;
  $("desktop-caller").textContent = call.caller;
  $("desktop-queue").textContent = call.queue || "";
  $("desktop-seconds").textContent = call.seconds;
  $("desktop-recorded").textContent = call.pci_pause ? "paused (PCI)"
    : call.recorded ? "recording" : "not recorded";
  $("pci-pause").textContent = call.pci_pause ? "Resume recording" : "PCI pause";
  $("pci-pause").dataset.on = call.pci_pause ? "1" : "";
}

async function pciPause() {
  const id = $("desktop-call").dataset.call;
  const on = !$("pci-pause").dataset.on;
  const { status, data } = await api("POST", `/calls/${encodeURIComponent(id)}/sensitive`, { on });
  $("desktop-message").textContent = status === 200 ? "" : data.reason || data.error || status;
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
      : data.state;  // the feed confirms it within a fraction of a second
    $("desktop-message").textContent = "";
  } else {
    $("desktop-message").textContent = data.reason || data.error || `failed (${status})`;
  }
}

async function loadRecordings(event) {
  if (event) event.preventDefault();
  // The server filters (queue, agent, the caller as this role sees it, dates): the page shows
  // what it answers and never holds the rest of the listing.
  const query = new URLSearchParams();
  const day = (id, offset) => {
    const value = $(id).value;
    if (value) query.set(id === "rec-from" ? "from" : "to", Date.parse(value) / 1000 + offset);
  };
  day("rec-from", 0);
  day("rec-to", 86400);  // the whole of the last day
  for (const [name, id] of [["queue", "rec-queue"], ["agent", "rec-agent"],
    ["caller", "rec-caller"]]) {
    const value = $(id).value.trim();
    if (value) query.set(name, value);
  }
  const { status, data } = await api("GET", `/recordings?${query}`);
  if (status !== 200) {
    $("recordings-message").textContent = data.reason || data.error || `failed (${status})`;
    return;
  }
  const rows = data.recordings;
  fill("recordings-table", rows, (r) => r.recording_id, (r) => [
    [r.recording_id], [new Date(r.created_at * 1000).toISOString().replace("T", " ").slice(0, 19)],
    [r.caller, "caller"], [r.queue, "queue"], [r.agent, "agent"], [r.state],
    [r.legal_hold ? "legal hold" : ""],
  ], (tr, r) => { tr.dataset.recording = r.recording_id; }, (r) => {
    const span = document.createElement("span");
    span.appendChild(button("play", "Play", () => play(r.recording_id)));
    span.appendChild(button("waveform", "Waveform", () => showWaveform(r.recording_id)));
    if (me.permissions.includes("recording.export")) {
      span.appendChild(button("request-export", "Request export",
        () => requestExport(r.recording_id)));
    }
    if (me.permissions.includes("recording.legal_hold")) {
      span.appendChild(button("request-hold", "Legal hold", () => requestHold(r.recording_id)));
    }
    return span;
  });
  loadApprovals();
  loadHolds();
  $("recordings-message").textContent = `${rows.length} recording(s)`;
}

async function requestExport(id) {
  const { status, data } = await api("POST", `/recordings/${encodeURIComponent(id)}/export-requests`);
  $("recordings-message").textContent = status === 201
    ? `Export ${data.id} requested: a second person must approve it.`
    : `Export refused: ${data.reason || data.error || status}`;
  loadApprovals();
}

// Four eyes: requesters see their own open requests; approvers see every open request and
// approve those of others. The server enforces both rules.
async function loadApprovals() {
  if (!me.permissions.includes("recording.export")) return;
  const { status, data } = await api("GET", "/export-requests");
  if (status !== 200) return;
  $("approvals").hidden = false;
  const approver = me.permissions.includes("approval.grant");
  fill("approvals-table", data.requests, (a) => `${a.id}/${a.status}`, (a) => [
    [a.id], [a.recording_id], [a.requester], [a.status, "approval-status"],
  ], (tr, a) => { tr.dataset.request = a.id; }, (a) => {
    if (approver && a.requester !== me.user && a.status === "pending") {
      return button("approve", "Approve", () => approve(a.id));
    }
    return document.createElement("span");
  });
}

async function approve(id) {
  const { status, data } = await api("POST", `/export-requests/${encodeURIComponent(id)}/approve`);
  $("recordings-message").textContent = status === 200 ? `Export ${id} approved.`
    : `Approval refused: ${data.reason || data.error || status}`;
  loadApprovals();
}

// Legal hold, two people: one asks (with a reason), another with approval.grant approves; the
// server refuses the requester's own approval and audits the attempt.
async function requestHold(id) {
  const reason = $("hold-reason").value.trim();
  if (!reason) {
    $("recordings-message").textContent = "Give a reason for the legal hold first.";
    $("holds").hidden = false;
    return;
  }
  const { status, data } = await api("POST", `/recordings/${encodeURIComponent(id)}/legal-hold`,
    { reason });
  $("recordings-message").textContent = status === 201
    ? `Legal hold of ${id} requested: a second person must approve it.`
    : `Legal hold refused: ${data.reason || data.error || status}`;
  loadHolds();
}

async function loadHolds() {
  if (!me.permissions.includes("recording.legal_hold")) return;
  const { status, data } = await api("GET", "/legal-holds");
  if (status !== 200) return;
  $("holds").hidden = false;
  const approver = me.permissions.includes("approval.grant");
  fill("holds-table", data.holds, (h) => `${h.recording_id}/${h.status}`, (h) => [
    [h.recording_id], [h.reason], [h.requested_by], [h.approved_by || ""],
    [h.status, "hold-status"],
  ], (tr, h) => { tr.dataset.hold = h.recording_id; tr.dataset.status = h.status; }, (h) => {
    if (approver && h.requested_by !== me.user && h.status === "pending") {
      return button("approve-hold", "Approve", () => approveHold(h.recording_id));
    }
    return document.createElement("span");
  });
}

async function approveHold(id) {
  const { status, data } = await api("POST",
    `/recordings/${encodeURIComponent(id)}/legal-hold/approve`);
  await loadRecordings();  // the row shows the hold (and rewrites the message line)
  $("recordings-message").textContent = status === 200 ? `Legal hold of ${id} approved.`
    : `Approval refused: ${data.reason || data.error || status}`;
}

function play(id) {
  const player = $("player");
  player.src = `/recordings/${encodeURIComponent(id)}/play`;
  player.play().catch((error) => {
    $("recordings-message").textContent = `cannot play: ${error.message}`;
  });
  player.dataset.playing = id;
}

// The waveform: the server sends a small envelope (min/max per column, null where no audio was
// kept) and the PCI-paused spans in samples; the spans are drawn as a shaded band and their
// pixel columns are left on the canvas (data-pci-spans) for tests and assistive tools.
async function showWaveform(id) {
  const canvas = $("waveform");
  const { status, data } = await api("GET",
    `/recordings/${encodeURIComponent(id)}/waveform?columns=${canvas.width}`);
  if (status !== 200) {
    $("recordings-message").textContent = `No waveform: ${data.reason || data.error || status}`;
    return;
  }
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const x = (sample) => (data.frames ? (sample / data.frames) * width : 0);
  const spans = data.pci_spans.map(([a, b]) => [Math.floor(x(a)), Math.ceil(x(b))]);
  ctx.fillStyle = "rgba(198, 40, 40, 0.18)";
  for (const [a, b] of spans) ctx.fillRect(a, 0, Math.max(1, b - a), height);
  const half = height / 2;
  data.channels.forEach((points, channel) => {
    const middle = half * channel + half / 2;
    const scale = (half / 2 - 2) / 32768;
    ctx.strokeStyle = channel ? "#2e7d32" : "#0050b3";
    ctx.beginPath();
    points.forEach((p, column) => {
      if (!p) return;
      const px = column * (width / data.columns) + 0.5;
      ctx.moveTo(px, middle - p[1] * scale);
      ctx.lineTo(px, middle - p[0] * scale + 1);
    });
    ctx.stroke();
  });
  ctx.fillStyle = "#555";
  ctx.fillText("caller", 4, 12);
  ctx.fillText("callee", 4, half + 12);
  canvas.dataset.recording = id;
  canvas.dataset.frames = data.frames;
  canvas.dataset.pciSpans = JSON.stringify(spans);
  const seconds = (sample) => (sample / data.sample_rate).toFixed(1);
  $("waveform-caption").textContent = `${id}: ${data.seconds.toFixed(1)} s`
    + (data.pci_spans.length ? `; PCI pause (shaded) ${data.pci_spans.map(([a, b]) =>
      `${seconds(a)}–${seconds(b)} s`).join(", ")}` : "; no PCI pause");
  $("waveform-box").hidden = false;
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
  fill("audit-table", shown, (r) => r.seq, (r) => [
    [r.seq], [r.time ? new Date(r.time * 1000).toISOString() : ""], [r.actor], [r.action, "action"],
    [r.target],
  ], (tr, r) => { tr.dataset.action = r.action; });
}

// -- start -----------------------------------------------------------------------------------
async function boot() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("pci-pause").addEventListener("click", pciPause);
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
