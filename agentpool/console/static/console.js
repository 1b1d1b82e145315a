// agentpool console: one page shell, one renderer per page kind, live data over SSE.
// Everything a task or a pool says is put in the page as text (textContent), never as HTML.
"use strict";

const main = document.getElementById("main");
const SVG = "http://www.w3.org/2000/svg";
const FINAL = new Set(["succeeded", "dead", "cancelled"]);
let consoleInfo = { writes: false, source: "redis" };
const listeners = new WeakMap();  // an element's handlers as el() added them (see patch)

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) {
      node.addEventListener(key.slice(2), value);
      listeners.set(node, [...(listeners.get(node) || []), [key.slice(2), value]]);
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const present = (nodes) => nodes.flat().filter((n) => n !== null && n !== undefined);
// A page's first drawing; its live redraws go through redraw.
const render = (...nodes) => main.replaceChildren(...present(nodes));

// A live redraw changes only what changed, in place: a link or box that has the focus keeps
// it, selected text stays selected, and a snapshot like the one shown changes nothing.
// Children are matched by id or row key (data-task, data-pool, data-event), else by position.
const keyOf = (node) => {
  if (node.nodeType !== Node.ELEMENT_NODE) return null;
  if (node.id) return `#${node.id}`;
  const row = node.dataset && (node.dataset.task ?? node.dataset.pool ?? node.dataset.event);
  return row === undefined ? null : `${node.nodeName}:${row}`;
};
const sameKind = (a, b) => a.nodeType === b.nodeType && a.nodeName === b.nodeName;
function patch(old, fresh) {
  if (old.nodeType !== Node.ELEMENT_NODE) {
    if (old.nodeValue !== fresh.nodeValue) old.nodeValue = fresh.nodeValue;
    return;
  }
  for (const { name } of [...old.attributes]) if (!fresh.hasAttribute(name)) old.removeAttribute(name);
  for (const { name, value } of fresh.attributes) {
    if (old.getAttribute(name) !== value) old.setAttribute(name, value);
  }
  for (const [type, handler] of listeners.get(old) || []) old.removeEventListener(type, handler);
  for (const [type, handler] of listeners.get(fresh) || []) old.addEventListener(type, handler);
  listeners.set(old, listeners.get(fresh) || []);
  if (old instanceof HTMLInputElement && old.checked !== fresh.checked) old.checked = fresh.checked;
  morph(old, [...fresh.childNodes]);
}
// A node that holds the focus is never moved (moving it blurs it): when the order changes
// (the running list reorders on heartbeats), the nodes from `first` up to it go after it.
function moveAfter(parent, first, anchor) {
  const after = anchor.nextSibling;
  for (let node = first; node !== anchor;) {
    const next = node.nextSibling;
    parent.insertBefore(node, after);
    node = next;
  }
}
function morph(parent, fresh) {
  const keyed = new Map();
  for (const child of parent.childNodes) {
    const key = keyOf(child);
    if (key) keyed.set(key, child);
  }
  let cursor = parent.firstChild;
  for (const node of fresh) {
    const key = keyOf(node);
    let match = key ? keyed.get(key) : cursor && !keyOf(cursor) && sameKind(cursor, node) ? cursor : null;
    if (match && !sameKind(match, node)) match = null;
    if (!match) {
      parent.insertBefore(node, cursor);
      continue;
    }
    if (key) keyed.delete(key);
    if (match === cursor) cursor = cursor.nextSibling;
    else if (match.contains(document.activeElement)) moveAfter(parent, cursor, match);
    else parent.insertBefore(match, cursor);
    patch(match, node);
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
}
const redraw = (parent, ...nodes) => morph(parent, present(nodes));
const enc = encodeURIComponent;
const show = (value) => (value === null || value === undefined ? "-" : String(value));
const pretty = (value) =>
  value === null || value === undefined ? "-" :
    typeof value === "string" ? value : JSON.stringify(value, null, 2);
const rate = (value) => (value === null || value === undefined ? "-" : `${value.toFixed(1)}/s`);
const state = (name) => el("span", { class: `state ${name}` }, show(name));

// Ages are counted on the console's clock, not this browser's: each snapshot says when the
// console read it ("at", seconds), which sets how far apart the two clocks are. A snapshot
// is sent a moment after it was read (the one a new stream starts with too: the console
// stamps its latest on every read), so the latest sets it: either clock may be corrected
// while the page is open.
let clockSkewMs = null;
function heardAt(at) {
  if (typeof at !== "number" || !(at > 0)) return;
  clockSkewMs = at * 1000 - Date.now();
}
const serverNow = () => Date.now() + (clockSkewMs || 0);
const utc = (ms) => new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");
function agoText(iso) {
  const s = Math.max(0, Math.round((serverNow() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h ago`;
}
// A time shown as its age keeps counting between updates: a quiet page is sent nothing new.
function ago(iso) {
  if (!iso) return "-";
  const ms = Date.parse(iso);
  return el("span", { class: "ago", "data-since": iso, title: Number.isNaN(ms) ? iso : utc(ms) },
    agoText(iso));
}
setInterval(() => {
  for (const span of document.querySelectorAll("span.ago[data-since]")) {
    span.textContent = agoText(span.dataset.since);
  }
}, 1000);
function table(headers, rows, attrs) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => h instanceof Node ? el("th", {}, h) :
      el("th", { class: h.endsWith("#") ? "num" : null }, h.replace(/#$/, ""))))),
    el("tbody", {}, rows));
}
const num = (value) => el("td", { class: "num" }, show(value));
const card = (label, value, id) =>
  el("div", { class: "card" }, el("div", { class: "label" }, label),
    el("div", { class: "value", id }, show(value)));

function crumbs(title, ...parts) {
  document.title = `${title} — agentpool console`;
  const nav = document.getElementById("crumbs");
  nav.replaceChildren(...parts.flatMap((p, i) => [i ? " / " : "",
    Array.isArray(p) ? el("a", { href: p[1] }, p[0]) : p]));
}

// -- live data ---------------------------------------------------------------------------

// One live stream per tab, closed while the tab is hidden: a browser opens at most six
// connections to one host, and tabs left open in the background must not take them all.
let stream = null;
let livePage = null;
let retryTimer = null;
// An answer that is not a stream (a proxy's 502 while the console is redeployed, the console's
// 503 when too many pages are watched) ends an EventSource for good: the page keeps what it
// shows, says why above it, and opens a new stream after 1 s, 2 s, 4 s ... up to 30 s.
const RETRY_FIRST_MS = 1000;
const RETRY_MOST_MS = 30000;
function setIndicator(text, kind, title) {
  const indicator = document.getElementById("live");
  indicator.textContent = text;
  indicator.className = `live ${kind}`;
  indicator.title = title || "live updates";
}
const errorLine = (text) => el("p", { class: "error", id: "page-error", "aria-live": "polite" }, text);
function showError(text) {
  const shown = document.getElementById("page-error");
  if (shown) shown.textContent = text;
  else main.prepend(errorLine(text));
}
// While a page's data cannot be read (Redis or the console does not answer), what it shows
// stays, dimmed, with the reason and the time it was last read above it (a line that stays
// in view while the page scrolls).
function markStale(target, reason) {
  const shown = target.drawn !== null;
  if (shown) main.classList.add("stale");
  showError(shown && target.asOf ? `${reason} — showing data as of ${utc(target.asOf)}` : reason);
}
function markFresh() {
  main.classList.remove("stale");
  const shown = document.getElementById("page-error");
  if (shown) shown.remove();
}
function live(url, draw, events) {
  livePage = { url, draw, events, lastEvent: null, retryMs: 0, drawn: null, asOf: null, failing: null };
  connect(livePage);
}
// What the console (or whatever answers in its place) says to a stream request now, and
// whether asking again cannot help (a refusal of the request itself: 4xx).
async function probe(url) {
  const control = new AbortController();
  try {
    const response = await fetch(url, { headers: { Accept: "text/event-stream" }, signal: control.signal });
    if (response.ok && (response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
      control.abort();
      return { error: "the live stream ended", final: false };
    }
    const doc = await response.json().catch(() => ({}));
    const final = response.status >= 400 && response.status < 500 && ![408, 429].includes(response.status);
    return { error: doc.error || `the console answered ${response.status} ${response.statusText}`.trim(), final };
  } catch (error) {
    control.abort();
    return { error: "the console does not answer", final: false };
  }
}
function connect(target) {
  if (stream) stream.close();
  clearTimeout(retryTimer);
  const url = target.lastEvent
    ? `${target.url}${target.url.includes("?") ? "&" : "?"}after=${encodeURIComponent(target.lastEvent)}`
    : target.url;
  const source = stream = new EventSource(url);
  stream.onopen = () => {
    if (target.failing === null) setIndicator("live", "on");
    target.retryMs = 0;
  };
  stream.onerror = () => {
    // what the page shows was current until now: the console sends every change
    if (target.asOf === null && target.drawn !== null) target.asOf = serverNow();
    if (source.readyState !== EventSource.CLOSED) {  // the browser tries again by itself
      setIndicator("reconnecting", "off");
      markStale(target, "the console does not answer: reconnecting");
      return;
    }
    setIndicator("retrying", "off");
    probe(url).then(({ error, final }) => {
      if (stream !== source) return;
      if (final) {  // the console refuses the page itself (a bad state, a page out of range)
        setIndicator("stopped", "off");
        main.classList.remove("stale");
        render(errorLine(error));
        return;
      }
      const wait = target.retryMs = Math.min(RETRY_MOST_MS, Math.max(RETRY_FIRST_MS, target.retryMs * 2));
      markStale(target, `${error}: trying again in ${Math.round(wait / 1000)} s`);
      retryTimer = setTimeout(() => { if (stream === source && livePage === target) connect(target); }, wait);
    });
  };
  stream.onmessage = (event) => {
    const doc = JSON.parse(event.data);
    heardAt(doc.at);
    if (doc.not_found) {
      render(errorLine(doc.error));
      source.close();
      stream = livePage = null;
      setIndicator(`checking again every ${NOT_FOUND_RETRY_MS / 1000} s`, "off");
      lookAgain(target.url);
    } else if (doc.error) {  // e.g. Redis unreachable: what the page showed stays, marked stale
      target.failing = doc.error;
      if (typeof doc.as_of === "number") target.asOf = doc.as_of * 1000;
      const reason = doc.error.split(": ")[0];
      setIndicator(target.drawn === null ? reason : `stale: ${reason}`, "off", doc.error);
      markStale(target, doc.error);
    } else {
      target.failing = target.asOf = null;
      setIndicator("live", "on");
      markFresh();
      const drawn = JSON.stringify({ ...doc, at: null });
      if (drawn !== target.drawn) {
        target.drawn = drawn;
        target.draw(doc);
      }
    }
  };
  // a batch of the page's events; the browser resumes after the last one it got (Last-Event-ID)
  if (target.events) {
    stream.addEventListener("events", (event) => {
      if (event.lastEventId) target.lastEvent = event.lastEventId;
      target.events(JSON.parse(event.data));
    });
  }
}
// Not found may mean not yet (a pool just created, a Redis that did not answer yet): the page
// asks again now and then, and shows itself once there is something to show.
const NOT_FOUND_RETRY_MS = 5000;
function lookAgain(url) {
  setTimeout(() => fetch(url, { headers: { Accept: "application/json" } })
    .then((response) => response.json())
    .then((doc) => (doc.not_found ? lookAgain(url) : location.reload()))
    .catch(() => lookAgain(url)), NOT_FOUND_RETRY_MS);
}
document.addEventListener("visibilitychange", () => {
  if (!livePage) return;
  if (document.hidden) {
    clearTimeout(retryTimer);
    if (stream) { stream.close(); stream = null; }
    setIndicator("paused", "off");
  } else if (!stream) {
    connect(livePage);
  }
});

// -- write actions -----------------------------------------------------------------------

function tokenBox() {
  if (!consoleInfo.writes) return null;
  return el("label", {}, "Token ",
    el("input", { type: "password", id: "token", autocomplete: "off",
      value: sessionStorage.getItem("agentpool-token") || "",
      oninput: (e) => sessionStorage.setItem("agentpool-token", e.target.value) }));
}

const actionMessage = () => el("span", { id: "action-message", "aria-live": "polite" });
function say(text, ok) {
  const message = document.getElementById("action-message");
  message.className = ok ? "ok" : "error";
  message.textContent = text;
}
const UNKNOWN = "whether it was done is unknown: reload the page to see";

// An answer that is not the console's JSON (a proxy's 502 page, a plain-text refusal) or no
// answer at all may come after the action was done, or before: the page says it cannot tell.
async function act(url, body) {
  const token = (document.getElementById("token") || {}).value || "";
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body),
      credentials: "same-origin" });
  } catch (error) {
    say(`no answer (${error.message || error}): ${UNKNOWN}`, false);
    return false;
  }
  const doc = await response.json().catch(() => null);
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    say(`the answer was ${`${response.status} ${response.statusText}`.trim()}, not the console's: ${UNKNOWN}`, false);
    return false;
  }
  say(response.ok ? Object.entries(doc).map(([k, v]) => `${k}: ${v}`).join(", ")
    : `refused: ${doc.error || response.status}`, response.ok);
  return response.ok;
}

// -- pages -------------------------------------------------------------------------------

// A condition's status as text, coloured by whether it is a problem (the console says which:
// Degraded True, QueueReachable False, Ready False or Unknown), not by its word alone.
const conditionClass = (c) => (c.bad ? "bad" : c.status === "True" || c.status === "False" ? "good" : "unknown");
const condition = (c) => el("span", { class: `state condition ${conditionClass(c)}`,
  title: [c.reason, c.message].filter(Boolean).join(": ") || null }, `${c.type}: ${show(c.status)}`);

function fleetPage() {
  crumbs("Fleet", "Fleet");
  live("/api/fleet", (doc) => {
    const kube = doc.source === "kubernetes";
    // a pool on another Redis than the console's has no task pages here; one whose Redis
    // could not be read shows its status's figures, or the console's queue of its name
    const rows = doc.pools.map((p) => el("tr", { "data-pool": p.name },
      el("td", {}, el("a", { href: `/pools/${enc(p.namespace)}/${enc(p.name)}` }, p.name)),
      kube ? el("td", {}, p.namespace) : null,
      el("td", { class: "mono" }, p.own_redis === false ? p.queue
        : el("a", { href: `/queues/${enc(p.queue)}/tasks` }, p.queue),
      p.figures_note ? el("div", { class: "muted figures-from", title: p.figures_note },
        { status: "status figures", "console-fallback": "console's Redis" }[p.figures_from]
          || "its own Redis") : null),
      el("td", { class: "num" }, p.desired_replicas === null ? "-" :
        `${show(p.ready_replicas)}/${p.desired_replicas}` +
        (p.draining_replicas ? ` (+${p.draining_replicas} draining)` : "")),
      num(p.queued), num(p.in_flight),
      el("td", { class: "num" }, p.own_redis === false ? show(p.dead)
        : el("a", { href: `/queues/${enc(p.queue)}/dead` }, show(p.dead))),
      num(p.workers), el("td", { class: "num" }, rate(p.rates && p.rates.succeeded_per_second)),
      el("td", {}, state(p.health)),
      el("td", { class: "conditions" }, joined(p.conditions.map(condition), " "))));
    const headers = ["Pool", ...(kube ? ["Namespace"] : []), "Queue", "Ready#", "Queued#",
      "In flight#", "Dead#", "Workers#", "Done#", "Health", "Conditions"];
    redraw(main,
      el("h1", {}, "Fleet"),
      el("p", { class: "muted" }, kube ? `AgentPools from Kubernetes (${doc.namespaces ? doc.namespaces.join(", ") : "all namespaces"})`
        : "Queues found in Redis (no Kubernetes access)"),
      rows.length ? table(headers, rows, { id: "fleet" }) : el("p", { class: "muted" }, "No pools yet."));
  });
}

function chart(history) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 1000 220");
  svg.setAttribute("preserveAspectRatio", "none");
  // the last hour, or the span the console has seen so far (at least a minute)
  const now = serverNow() / 1000;
  const start = Math.min(now - 60, Math.max(now - 3600, history.length ? history[0][0] : now));
  const span = now - start;
  const max = Math.max(1, ...history.flatMap((p) => [p[1], p[2], p[3] || 0]));
  const x = (t) => (((t - start) / span) * 960 + 30).toFixed(1);
  const y = (v) => (200 - (v / max) * 180).toFixed(1);
  [["queued", 1], ["in_flight", 2], ["replicas", 3]].forEach(([name, i]) => {
    const points = history.filter((p) => p[i] !== null).map((p) => `${x(p[0])},${y(p[i])}`);
    if (!points.length) return;
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", name);
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  });
  const since = document.createElementNS(SVG, "text");
  since.setAttribute("x", "30");
  since.setAttribute("y", "216");
  since.textContent = `${Math.round(span / 60)} min ago`;
  svg.append(since);
  for (const [label, v] of [[String(max), max], ["0", 0]]) {
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", "2");
    text.setAttribute("y", String(Number(y(v)) + 4));
    text.textContent = label;
    svg.append(text);
  }
  return svg;
}

function limitRates(d) {
  if (!d) return "-";
  const parts = [];
  if (d.requestsPerMinute) parts.push(`${d.requestsPerMinute}/min req`);
  if (d.tokensPerMinute) parts.push(`${d.tokensPerMinute}/min tok`);
  if (parts.length) parts.push(`burst ${d.burstSeconds ?? 1}s`);
  if (d.maxConcurrent) parts.push(`at most ${d.maxConcurrent} at once`);
  return parts.join(", ");
}

function effectiveRates(l) {
  const parts = [];
  if (l.effective_rpm !== null) parts.push(`${Math.round(l.effective_rpm)}/min req`);
  if (l.effective_tpm !== null) parts.push(`${Math.round(l.effective_tpm)}/min tok`);
  if (l.paused_seconds) parts.push(`paused ${l.paused_seconds.toFixed(0)}s`);
  if (l.serving && l.serving.maxConcurrent && l.held !== null) {
    parts.push(`${l.held}/${l.serving.maxConcurrent} at once` +
      (l.in_line ? `, ${l.in_line} in line` : ""));
  }
  return parts.length ? parts.join(", ") : "-";
}

const poolLink = (p) => el("a", { href: `/pools/${enc(p.namespace)}/${enc(p.name)}` },
  p.namespace === "-" ? p.name : `${p.namespace}/${p.name}`);
// A running worker that claims nothing (its ready hook fails, its slots are stuck, Redis is
// full) says so, with why under it: a tooltip alone would hide it from a screen reader.
const workerState = (w) => (w.state === "running" && w.not_ready
  ? [el("span", { class: "state NotReady" }, "running (not ready)"),
    el("div", { class: "muted not-ready" }, w.not_ready)]
  : state(w.state));
const joined = (items, separator) => items.flatMap((item, i) => (i ? [separator, item] : [item]));

function poolPage(namespace, name) {
  crumbs(`Pool ${name}`, ["Fleet", "/"], name);
  live(`/api/pools/${enc(namespace)}/${enc(name)}`, (doc) => {
    const f = doc.figures;
    const q = enc(doc.queue);
    const here = doc.own_redis !== false;  // its queue is on the console's Redis
    redraw(main,
      el("h1", {}, `Pool ${doc.name} `, state(doc.health)),
      el("p", {}, "Queue ", el("span", { class: "mono" }, doc.queue), here ? [" · ",
        el("a", { href: `/queues/${q}/tasks` }, "tasks"), " · ",
        el("a", { href: `/queues/${q}/tenants` }, "tenants"), " · ",
        el("a", { href: `/queues/${q}/dead` }, "dead letters")] : null),
      doc.figures_note ? el("p", { class: "muted", id: "figures-note" }, doc.figures_note) : null,
      doc.submits_to && doc.submits_to.length ? el("p", { id: "submits-to" }, "Hands tasks to ",
        joined(doc.submits_to.map((s) => [
          here ? el("a", { class: "mono", href: `/queues/${enc(s.queue)}/tasks` }, s.queue)
            : el("span", { class: "mono" }, s.queue), " (",
          s.pools.length ? joined(s.pools.map(poolLink), ", ") : "no pool serves it", ")"]),
        " · ")) : null,
      doc.fed_by && doc.fed_by.length ? el("p", { id: "fed-by" }, "Gets tasks from ",
        joined(doc.fed_by.map(poolLink), ", ")) : null,
      el("div", { class: "cards" },
        card("Ready / desired", doc.desired_replicas === null ? "-" :
          `${show(doc.ready_replicas)} / ${doc.desired_replicas}`),
        doc.draining_replicas ? card("Draining", doc.draining_replicas, "pool-draining") : null,
        card("Queued", f.queued, "pool-queued"), card("In flight", f.in_flight, "pool-in-flight"),
        card("Delayed", f.delayed), f.deferred ? card("Deferred", f.deferred) : null,
        card("Dead", f.dead), card("Workers", f.workers),
        card("Done", f.rates ? rate(f.rates.succeeded_per_second) : "-")),
      el("h2", {}, "Last hour"),
      el("div", { class: "legend" }, el("span", { class: "queued" }, "— queued"),
        el("span", { class: "in_flight" }, "— in flight"),
        el("span", { class: "replicas" }, "- - replicas")),
      chart(doc.history),
      doc.conditions.length ? el("h2", {}, "Conditions") : null,
      doc.conditions.length ? table(["Type", "Status", "Reason", "Message"], doc.conditions.map((c) =>
        el("tr", {}, el("td", {}, c.type), el("td", {}, el("span", { class: `state ${conditionClass(c)}` },
          show(c.status))), el("td", {}, show(c.reason)),
          el("td", {}, show(c.message))))) : null,
      el("h2", {}, "Workers"),
      doc.workers === null ? el("p", { class: "muted", id: "workers-unread" }, "Not read (see above).") :
      doc.workers.length ? table(["Pod", "Instance", "State", "In flight#", "Done#", "Failed#", "Last heartbeat"],
        doc.workers.map((w) => el("tr", {}, el("td", { class: "mono" }, w.pod),
          el("td", { class: "mono" }, w.instance), el("td", {}, workerState(w)),
          num(`${w.in_flight}/${w.concurrency}`), num(w.done), num(w.failed),
          el("td", {}, ago(w.last_heartbeat)))), { id: "workers" })
        : el("p", { class: "muted" }, "No live workers."),
      doc.limits && doc.limits.length ? el("h2", {}, "Rate limits") : null,
      doc.limits && doc.limits.length ? table(
        ["Limit", "Declared", "Effective", "Waiting#", "Grants#", "429s#", "Last 429"],
        doc.limits.map((l) => el("tr", {}, el("td", { class: "mono" }, l.name),
          el("td", {}, limitRates(l.declared),
            l.conflict ? el("div", { class: "muted" }, `serving: ${limitRates(l.serving)}`) : null),
          el("td", {}, effectiveRates(l)), num(show(l.waiting)), num(show(l.grants)),
          num(show(l.throttles)),
          el("td", {}, l.last_throttle ? ago(l.last_throttle) : "never"))), { id: "limits" }) : null,
      doc.schedules && doc.schedules.length ? el("h2", {}, "Schedules") : null,
      doc.schedules && doc.schedules.length ? table(["Schedule", "When", "Next", "Last task"],
        doc.schedules.map((s) => el("tr", {}, el("td", { class: "mono" }, s.name),
          el("td", {}, el("span", { class: "mono" }, s.cron), ` (${s.time_zone})`,
            s.concurrency_policy && s.concurrency_policy !== "Allow"
              ? el("div", { class: "muted" }, `${s.concurrency_policy} overlap`) : null),
          el("td", {}, s.suspend ? "suspended" : show(s.next_schedule_time)),
          el("td", {}, s.last_task_id ? (here ? el("a", { class: "mono",
            href: `/queues/${q}/tasks/${enc(s.last_task_id)}` }, s.last_task_id)
            : el("span", { class: "mono" }, s.last_task_id)) : "-",
          s.last_schedule_time ? el("div", { class: "muted" }, `for ${s.last_schedule_time}`)
            : null))), { id: "schedules" }) : null,
      el("h2", {}, "Scaling decisions and recovery actions"),
      doc.events ? (doc.events.length ? table(["When", "Type", "Reason", "Message", "Count#"],
        doc.events.map((e) => el("tr", {}, el("td", {}, ago(e.last)), el("td", {}, show(e.type)),
          el("td", {}, show(e.reason)), el("td", {}, show(e.message)), num(e.count)))) :
        el("p", { class: "muted" }, "No events."))
        : el("p", { class: "muted" }, show(doc.events_note)));
  });
}

function tasksPage(queue, dead) {
  const params = new URLSearchParams(location.search);
  const taskState = dead ? "dead" : params.get("state") || "queued";
  const running = taskState === "running";
  const page = Math.max(1, Number(params.get("page")) || 1);
  const base = `/queues/${enc(queue)}`;
  crumbs(`${queue}: ${dead ? "dead letters" : `${taskState} tasks`}`, ["Fleet", "/"], queue,
    dead ? "Dead letters" : "Tasks");
  const selected = new Set();
  let shownIds = new Set();
  const api = dead ? `/api${base}/dead?page=${page}` : `/api${base}/tasks?state=${enc(taskState)}&page=${page}`;
  const search = el("form", { class: "toolbar", id: "search", onsubmit: async (event) => {
    event.preventDefault();
    const text = event.target.elements.q.value.trim();
    const out = document.getElementById("search-result");
    const response = await fetch(`/api${base}/find?q=${enc(text)}`);
    const doc = await response.json().catch(() => ({ error: `the console answered ${response.status}` }));
    if (doc.id) location.assign(`${base}/tasks/${enc(doc.id)}`);
    else out.textContent = doc.error || `no task with id or idempotency key ${text}`;
  } }, el("input", { type: "text", name: "q", placeholder: "task id or idempotency key",
    "aria-label": "task id or idempotency key" }),
  el("button", { type: "submit" }, "Find"), el("span", { id: "search-result", class: "muted", "aria-live": "polite" }));
  const boxes = () => document.querySelectorAll("#tasks input[data-id], #select-all");
  // An action acts on the tasks checked on the page as it is shown, once: the buttons wait
  // for its answer, and a done action leaves nothing checked (a task that comes back dead
  // again must not be acted on by the next click).
  const onSelected = async (url) => {
    const buttons = [document.getElementById("requeue"), document.getElementById("purge")];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      if (await act(url, { ids: [...selected] })) {
        selected.clear();
        boxes().forEach((box) => { box.checked = false; });
      }
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  };
  const noneChecked = (verb) => {
    if (selected.size) return false;
    say(`Check the dead letters to ${verb} first.`, false);
    return true;
  };
  const actions = dead && consoleInfo.writes ? el("div", { class: "toolbar" }, tokenBox(),
    el("button", { id: "requeue", onclick: () => {
      if (!noneChecked("requeue")) onSelected(`/api${base}/dead/requeue`);
    } }, "Requeue selected"),
    el("button", { id: "purge", class: "danger", onclick: () => {
      if (!noneChecked("purge") && confirm(`Purge ${selected.size} dead task(s) for good?`)) {
        onSelected(`/api${base}/dead/purge`);
      }
    } }, "Purge selected"),
    actionMessage()) : null;
  const selectAll = (event) => {
    for (const id of shownIds) (event.target.checked ? selected.add(id) : selected.delete(id));
    document.querySelectorAll("#tasks input[data-id]").forEach((box) => { box.checked = event.target.checked; });
  };
  const holder = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  render(el("h1", {}, dead ? `Dead letters of ${queue}` : `Tasks of ${queue}`),
    dead ? null : el("div", { class: "tabs" }, ["queued", "delayed", "deferred", "running", "dead"].map((s) =>
      el("a", { href: `${base}/tasks?state=${s}`, class: s === taskState ? "current" : null }, s))),
    search, actions, holder);
  live(api, (doc) => {
    // only what the page shows can be acted on
    shownIds = new Set(doc.tasks.map((t) => t.id));
    for (const id of [...selected]) if (!shownIds.has(id)) selected.delete(id);
    const checks = dead && consoleInfo.writes;
    const tenants = doc.tasks.some((t) => t.tenant != null);
    const payload = (t) => el("td", { class: "mono payload" }, t.payload);
    const error = (t) => el("td", { class: "mono payload" }, show(t.error));
    const rows = doc.tasks.map((t) => el("tr", { "data-task": t.id },
      checks ? el("td", {}, el("input", { type: "checkbox", "data-id": t.id, "aria-label": `select ${t.id}`,
        checked: selected.has(t.id), onchange: (e) => {
          if (e.target.checked) selected.add(t.id); else selected.delete(t.id);
          document.getElementById("select-all").checked = selected.size === shownIds.size;
        } })) : null,
      el("td", { class: "mono id" }, el("a", { href: `${base}/tasks/${enc(t.id)}` }, t.id)),
      el("td", {}, state(t.state), t.capped ? el("span", { class: "muted capped", title: "waits for its tenant's cap on runs at once" }, " capped") : null),
      tenants ? el("td", { class: "tenant" }, show(t.tenant)) : null,
      num(t.max_attempts ? `${t.attempts}/${t.max_attempts}` : t.attempts),
      running ? el("td", {}, progressBar(t.progress) || "-") : null, el("td", {}, ago(t.created)),
      running ? el("td", {}, ago(t.started)) : null, dead ? el("td", {}, ago(t.finished)) : null,
      el("td", { class: "mono" }, show(t.owner)),
      // a dead letter is looked at for its error first
      dead ? [error(t), payload(t)] : [payload(t), error(t)],
      dead ? num(t.next_count) : null));
    const pages = doc.pages || Math.max(1, Math.ceil(doc.total / doc.per_page));
    const link = (p) => dead ? `${base}/dead?page=${p}` : `${base}/tasks?state=${enc(taskState)}&page=${p}`;
    // a page past the last (a shared link to a list that shrank since) says so, with the last
    const pager = page > pages
      ? el("p", { class: "pager", id: "no-such-page" }, `There is no page ${page}: the list has ${pages} page${pages === 1 ? "" : "s"}.`,
        el("a", { href: link(pages) }, `Go to page ${pages}`))
      : el("div", { class: "pager" }, page > 1 ? el("a", { href: link(page - 1) }, "← previous") : null,
        `page ${doc.page} of ${pages}`, page < pages ? el("a", { href: link(page + 1) }, "next →") : null);
    const all = el("input", { type: "checkbox", id: "select-all", "aria-label": "select every dead letter shown",
      checked: shownIds.size > 0 && selected.size === shownIds.size, onchange: selectAll });
    redraw(holder,
      el("p", { class: "muted", id: "task-total" }, `${doc.total} ${doc.state} task(s)`),
      rows.length ? table([...(checks ? [all] : []), "Id", "State",
        ...(tenants ? ["Tenant"] : []), "Attempts#",
        ...(running ? ["Progress"] : []), "Created", ...(running ? ["Started"] : []),
        ...(dead ? ["Died"] : []), "Owner",
        ...(dead ? ["Error", "Payload"] : ["Payload", "Error"]), ...(dead ? ["After it#"] : [])],
      rows, { id: "tasks" }) : el("p", { class: "muted" }, "None."),
      pager);
  });
}

function tenantsPage(queue) {
  const base = `/queues/${enc(queue)}`;
  crumbs(`${queue}: tenants`, ["Fleet", "/"], queue, "Tenants");
  live(`/api${base}/tenants`, (doc) => {
    redraw(main, el("h1", {}, `Tenants of ${queue}`),
      el("p", { class: "muted" }, "Tenants take turns within a priority; a tenant of weight w ",
        "takes w turns to one of weight 1, and runs at most its cap of tasks at once. ",
        el("a", { href: `${base}/tasks` }, "tasks")),
      doc.counted < doc.total ? el("p", { class: "muted", id: "tenants-partial" },
        `Counted the first ${doc.counted} of ${doc.total} tasks.`) : null,
      doc.capped ? el("p", { id: "tenants-capped" }, `${doc.capped} queued task${
        doc.capped === 1 ? " waits" : "s wait"} for their tenant's cap on runs at once.`) : null,
      doc.tenants.length ? table(["Tenant", "Weight#", "Cap#", "Queued#", "Running#", "Later#",
        "Oldest queued"],
        doc.tenants.map((t) => el("tr", {}, el("td", { class: "tenant" },
          t.tenant === null ? el("span", { class: "muted" }, "(none)") : t.tenant),
          num(t.weight), num(t.max_running), num(t.queued), num(t.running), num(t.later),
          el("td", {}, ago(t.oldest_queued)))),
        { id: "tenants" }) : el("p", { class: "muted" }, "No task is waiting or running."));
  });
}

const percent = (fraction) => `${Math.round(fraction * 100)}%`;
function progressBar(progress, id) {
  if (!progress) return null;
  return el("span", { class: "progress", id },
    el("progress", { max: "1", value: String(progress.fraction) }),
    ` ${percent(progress.fraction)}${progress.message ? ` ${progress.message}` : ""}`);
}
// an event's time as the CLI prints times: UTC, with its date, marked Z
const clock = (iso) => iso || "-";
function eventDetail(e) {
  if (e.kind === "progress" && e.data && typeof e.data.fraction === "number") {
    return `${percent(e.data.fraction)}${e.data.message ? ` ${e.data.message}` : ""}`;
  }
  return typeof e.data === "string" && e.cut ? e.data : JSON.stringify(e.data);
}

// a payload, result or error too big to send whole comes as the start of its text, with its size
function field(title, id, value, bytes) {
  return [el("h2", {}, title),
    bytes ? el("p", { class: "muted", id: `${id}-cut` },
      `the first ${value.length} characters of ${bytes} bytes`) : null,
    el("pre", { id }, pretty(value))];
}

// The event rows a task page keeps: a chatty task's older rows go (the page says how many).
const MAX_EVENT_ROWS = 1000;

function taskPage(queue, id) {
  const base = `/queues/${enc(queue)}`;
  crumbs(`task ${id}`, ["Fleet", "/"], [queue, `${base}/tasks`], id);
  const head = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const progress = el("div", { id: "task-progress-box" });
  const rows = el("tbody", {});
  const noEvents = el("p", { class: "muted", id: "no-events" }, "No events.");
  const droppedNote = el("p", { class: "muted", id: "events-dropped", hidden: true });
  let droppedRows = 0;
  const tail = el("div", {});
  let latest = null;  // the newest progress: its event (with its attempt) or the task's own
  const drawProgress = () => redraw(progress, latest ?
    el("div", { class: "toolbar" }, latest.attempt ? el("span", { class: "attempt" }, `attempt ${latest.attempt}`) : null,
      progressBar(latest, "task-progress")) : null);
  let shownState = null;  // the task's state as the page shows it
  const cancel = () => {
    const now = shownState === "running" ? "running: its worker will be told to stop it" : shownState;
    if (confirm(`Cancel task ${id}? It is ${now || "not shown yet"}.`)) act(`/api${base}/tasks/${enc(id)}/cancel`, {});
  };
  // built once, outside the live redraw: what is typed in the token box and the outcome of a
  // cancel stay while the task changes
  const actions = consoleInfo.writes ? el("div", { class: "toolbar", id: "task-actions", hidden: true },
    tokenBox(),
    el("button", { id: "cancel", class: "danger", onclick: cancel }, "Cancel"),
    actionMessage()) : null;
  render(head, actions, progress,
    el("h2", {}, "Events"), droppedNote,
    el("table", { id: "events" }, el("thead", {}, el("tr", {},
      ["Time", "Attempt", "Kind", "Data"].map((h) => el("th", {}, h)))), rows),
    noEvents, tail);
  live(`/api${base}/tasks/${enc(id)}`, (doc) => {
    const t = doc.task;
    const running = !FINAL.has(t.state);
    shownState = t.state;
    if (!latest && t.progress) { latest = t.progress; drawProgress(); }
    redraw(head,
      el("h1", {}, "Task ", el("span", { class: "mono" }, t.id), " ",
        el("span", { class: `state ${t.state}`, id: "task-state" }, t.state),
        t.capped ? el("span", { class: "muted", id: "task-capped" }, " waits for its tenant's cap on runs at once") : null),
      el("dl", { class: "detail" }, [
        ["Queue", t.queue], ["Priority", t.priority], ...(t.tenant != null ? [["Tenant", t.tenant]] : []), ["Attempts", t.max_attempts ? `${t.attempts} of ${t.max_attempts}` : t.attempts],
        ["Owner", show(t.owner)], ["Created", show(t.created)], ["Started", show(t.started)],
        ["Finished", show(t.finished)], ...(t.expires ? [["Expires", t.expires]] : []),
        ...(t.timeout_seconds != null ? [["Timeout", `${t.timeout_seconds} s per run (or the pool's task timeout, if shorter)`]] : []),
        ...(t.after && t.after.length ? [["After", [...t.after.flatMap((before, i) => [i ? ", " : "",
          el("a", { href: `${base}/tasks/${enc(before)}` }, before)]),
          " (runs once they have all succeeded)"]]] : []),
        ...(t.next_count ? [["Next", [...t.next.flatMap((after, i) => [i ? ", " : "",
          el("a", { href: `${base}/tasks/${enc(after)}` }, after)]),
          t.next_count > t.next.length ? ` and ${t.next_count - t.next.length} more` : "",
          " (submitted to run after it)"]]] : [])
      ].flatMap(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, Array.isArray(v) ? v : String(v))])));
    // a final task keeps the outcome of its cancel in view
    if (actions && running) actions.hidden = false;
    if (actions) document.getElementById("cancel").disabled = !running;
    const cp = doc.checkpoint;
    redraw(tail, ...present([
      el("h2", {}, "Checkpoint"),
      cp ? el("p", { class: "muted" }, `${cp.complete ? `${cp.bytes} bytes`
        : `the first ${cp.state.length} characters of ${cp.bytes} bytes`}${
        running ? "; the next attempt resumes from it" : ""}`) : null,
      cp ? el("pre", { id: "task-checkpoint" }, pretty(cp.state))
        : el("p", { class: "muted", id: "task-checkpoint" }, "None."),
      field("Payload", "task-payload", t.payload, t.cut && t.cut.payload),
      field("Result", "task-result", t.result, t.cut && t.cut.result),
      field("Error", "task-error", t.error, t.cut && t.cut.error)]));
  }, (events) => {
    noEvents.remove();
    const kept = events.slice(-MAX_EVENT_ROWS);
    droppedRows += events.length - kept.length;
    rows.append(...kept.map((e) => el("tr", { "data-event": e.id, class: e.kind === "final" ? "final" : null },
      el("td", { class: "mono" }, clock(e.time)),
      el("td", {}, el("span", { class: "attempt" }, show(e.attempt))),
      el("td", { class: "mono" }, e.kind),
      el("td", { class: "mono" }, eventDetail(e)))));
    while (rows.children.length > MAX_EVENT_ROWS) {
      rows.firstElementChild.remove();
      droppedRows += 1;
    }
    if (droppedRows) {
      droppedNote.hidden = false;
      droppedNote.textContent = `The ${droppedRows} oldest events are not shown: the page keeps the latest ${MAX_EVENT_ROWS} (agentpool get ${id} --follow prints them all).`;
    }
    const last = events.filter((e) => e.kind === "progress" && e.data && typeof e.data.fraction === "number").pop();
    if (last) { latest = { ...last.data, attempt: last.attempt }; drawProgress(); }
  });
}

async function start() {
  try {
    consoleInfo = await (await fetch("/api/console")).json();
  } catch (error) { /* the page still renders read-only */ }
  document.getElementById("mode").textContent = consoleInfo.writes ? "write actions on" : "read-only";
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0) fleetPage();
  else if (parts[0] === "pools" && parts.length === 3) poolPage(parts[1], parts[2]);
  else if (parts[0] === "queues" && parts[2] === "tasks" && parts.length === 3) tasksPage(parts[1], false);
  else if (parts[0] === "queues" && parts[2] === "tasks" && parts.length === 4) taskPage(parts[1], parts[3]);
  else if (parts[0] === "queues" && parts[2] === "dead") tasksPage(parts[1], true);
  else if (parts[0] === "queues" && parts[2] === "tenants" && parts.length === 3) tenantsPage(parts[1]);
  else {
    crumbs("No such page");
    render(el("p", { class: "error" }, "No such page."));
  }
}

start();
