// The live event view: a client of the gateway's /ws, or of its /sse
// (docs/contract.md, "WebSocket" and "Server-Sent Events"), with its
// controls. One file, served by the gateway for its console (/live.js) and
// by the webhook-registry for the portal (/portal/live.js), so both behave
// the same: type filters, pause, resume with since/epoch after a reconnect
// (also after a pause; over SSE with the event's id), "catching up".
//
//   const live = mountLive(container, { url: () => "ws://host/ws", token: () => "…" });
//   live.connect(); live.pause(); live.resume(); live.disconnect();

export const EVENT_TYPES = ["user.created", "payment.completed", "transaction.created",
  "ticket.created", "ticket.status_changed", "ticket.message_added"];
const MAX_ROWS = 500;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

// Builds the view inside `root`. Options: url() gives the gateway's /ws URL
// (no query; /sse is found beside it), token() the API token, types the
// event types to offer, onRunning(bool) is told when the stream starts or
// stops wanting a socket.
export function mountLive(root, opts) {
  const types = opts.types || EVENT_TYPES;
  const all = el("input", { type: "checkbox", id: "all" });
  all.checked = true;
  const filters = el("fieldset", { id: "filters", class: "live-filters" }, el("legend", { text: "Event types" }),
    el("label", {}, all, " all (", el("code", { text: "*" }), ")"));
  for (const t of types) {
    const box = el("input", { type: "checkbox", class: "type", value: t });
    box.checked = true;
    filters.append(el("label", {}, box, " " + t));
  }
  const pauseBtn = el("button", { type: "button", id: "pause", text: "Pause" });
  pauseBtn.disabled = true;
  const clearBtn = el("button", { type: "button", id: "clear", text: "Clear" });
  const transport = el("select", { id: "transport", "aria-label": "Transport" },
    el("option", { value: "ws", text: "WebSocket" }), el("option", { value: "sse", text: "Server-Sent Events" }));
  const status = el("b", { id: "status", "data-state": "idle", text: "not connected" });
  const lastSeq = el("b", { id: "last-seq", text: "–" });
  const count = el("b", { id: "count", text: "0" });
  const connects = el("b", { id: "connects", text: "0" });
  const bar = el("div", { id: "bar", class: "live-bar", role: "status" },
    el("span", {}, "Status: ", status), el("span", {}, "Last seq: ", lastSeq),
    el("span", {}, "Events: ", count), el("span", {}, "Connects: ", connects));
  const banner = el("div", { id: "banner", class: "live-banner", role: "alert" });
  banner.hidden = true;
  const log = el("ol", { id: "log", class: "live-log", reversed: "", "aria-label": "Live events" });
  root.append(filters, el("div", { class: "live-actions" }, pauseBtn, clearBtn, transport), bar, banner, log);

  const s = { ws: null, lastSeq: null, epoch: null, want: false, paused: false, retry: 0,
    timer: null, pinger: null, count: 0, connects: 0 };

  const patterns = () => all.checked ? ["*"]
    : [...filters.querySelectorAll("input.type:checked")].map((b) => b.value);
  const setStatus = (text, state) => { status.textContent = text; status.dataset.state = state; };
  const running = (on) => { pauseBtn.disabled = !on && !s.paused; if (opts.onRunning) opts.onRunning(on); };
  const showBanner = (text) => { banner.textContent = text; banner.hidden = !text; };

  function row(cls, parts) {
    const li = el("li", { class: cls });
    for (const [c, text] of parts) li.append(el("span", c ? { class: c, text } : { text }));
    log.prepend(li);
    while (log.children.length > MAX_ROWS) log.lastChild.remove();
  }
  const info = (text) => row("info", [["", new Date().toLocaleTimeString() + "  " + text]]);

  const sse = () => transport.value === "sse";
  function url() {
    const base = opts.url();
    let u = (sse() ? base.replace(/^ws/, "http").replace(/\/ws$/, "/sse") : base) +
      "?token=" + encodeURIComponent(opts.token());
    if (s.lastSeq !== null && sse() && s.epoch) {
      // a new EventSource cannot send Last-Event-ID itself
      u += "&last_event_id=" + encodeURIComponent(s.epoch + ":" + s.lastSeq);
    } else if (s.lastSeq !== null) {
      u += "&since=" + s.lastSeq;
      if (s.epoch) u += "&epoch=" + encodeURIComponent(s.epoch);
    }
    const p = patterns();
    if (p[0] !== "*") u += "&events=" + encodeURIComponent(p.join(","));
    return u;
  }

  function onMessage(ev) {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { info("unreadable message"); return; }
    switch (msg.type) {
      case "connection": s.retry = 0; setStatus("connected", "connected"); break;
      case "pong": break;
      case "subscribed": info("subscribed to " + msg.events.join(", ")); break;
      case "resumed":
        if (msg.epoch) s.epoch = msg.epoch;
        info("resumed after seq " + msg.since + ": " + msg.replayed + " missed event(s) replayed");
        break;
      case "catching_up":
        setStatus("catching up (" + msg.behind + " behind)…", "connecting");
        info("catching up after seq " + msg.since + ": " + msg.behind + " event(s) behind");
        break;
      case "caught_up":
        setStatus("connected", "connected");
        info("caught up: " + msg.replayed + " event(s) sent from the stream");
        break;
      case "resync_required":
        showBanner("Events were missed and cannot be replayed (" + msg.message + "). Reload the data you show.");
        info("resync required: " + msg.message);
        setStatus("connected", "connected");
        s.lastSeq = null;
        s.epoch = msg.epoch || null;
        break;
      case "error": info("server: " + msg.message); break;
      case "close": // SSE: the server ends the stream (a WebSocket's close frame)
        info("closed " + msg.code + " " + msg.reason);
        if (msg.code === 1008) { showBanner("The token was refused: " + msg.reason); stop("refused"); }
        break;
      default:
        if (typeof msg.seq === "number") {
          s.lastSeq = msg.seq;
          if (msg.epoch) s.epoch = msg.epoch;
          lastSeq.textContent = msg.seq;
        }
        s.count += 1;
        count.textContent = s.count;
        row("event", [["seq", "#" + (msg.seq ?? "?") + "  "], ["type", msg.type + "  "],
          ["", (msg.timestamp || "") + "  " + (msg.id || "") + "\n"],
          ["payload", JSON.stringify(msg.payload)]]);
    }
  }

  // Over SSE the browser reconnects by itself (sending Last-Event-ID);
  // only a refused request (EventSource CLOSED) is retried from here.
  function connectSse(resuming) {
    let es;
    try { es = new EventSource(url()); } catch (e) {
      setStatus("cannot connect: " + e.message, "error"); s.want = false; running(false); return;
    }
    s.ws = es;
    running(true);
    es.onopen = () => {
      s.connects += 1;
      connects.textContent = s.connects;
      info(resuming || s.lastSeq !== null ? "connected, resuming after seq " + s.lastSeq : "connected");
    };
    es.onmessage = onMessage;
    for (const name of ["connection", "subscribed", "resumed", "catching_up", "caught_up",
      "resync_required", "server_error", "close"]) es.addEventListener(name, onMessage);
    es.onerror = () => {
      if (s.ws !== es) return;
      if (es.readyState === EventSource.CONNECTING) {
        setStatus("reconnecting (since " + s.lastSeq + ")…", "connecting");
        return;
      }
      s.ws = null;
      setStatus("closed", "closed");
      info("the event stream was refused or failed");
      if (s.want) {
        const delay = Math.min(15000, 500 * 2 ** s.retry);
        s.retry += 1;
        s.timer = setTimeout(connect, delay);
      } else {
        running(false);
      }
    };
  }

  function connect() {
    clearTimeout(s.timer);
    s.want = true;
    s.paused = false;
    pauseBtn.textContent = "Pause";
    const resuming = s.lastSeq !== null;
    setStatus(resuming ? "reconnecting (since " + s.lastSeq + ")…" : "connecting…", "connecting");
    if (sse()) { connectSse(resuming); return; }
    let ws;
    try { ws = new WebSocket(url()); } catch (e) {
      setStatus("cannot connect: " + e.message, "error"); s.want = false; running(false); return;
    }
    s.ws = ws;
    running(true);
    ws.onopen = () => {
      s.connects += 1;
      connects.textContent = s.connects;
      info(resuming ? "connected, resuming after seq " + s.lastSeq : "connected");
    };
    ws.onmessage = onMessage;
    ws.onclose = (ev) => {
      if (s.ws !== ws) return;
      s.ws = null;
      clearInterval(s.pinger);
      setStatus(s.paused ? "paused" : "closed (" + ev.code + (ev.reason ? ": " + ev.reason : "") + ")",
        s.paused ? "idle" : "closed");
      info("closed " + ev.code + (ev.reason ? " " + ev.reason : ""));
      if (ev.code === 1008) { s.want = false; showBanner("The token was refused: " + ev.reason); }
      if (s.want) {
        const delay = Math.min(15000, 500 * 2 ** s.retry);
        s.retry += 1;
        info("reconnecting in " + delay / 1000 + " s");
        s.timer = setTimeout(connect, delay);
      } else {
        running(false);
      }
    };
    clearInterval(s.pinger);
    s.pinger = setInterval(() => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping" }));
    }, 30000);
  }

  function stop(reason) {
    s.want = false;
    clearTimeout(s.timer);
    const ws = s.ws;
    if (ws instanceof WebSocket) { ws.close(1000, reason); return; }
    if (ws) {
      // an EventSource closes at once and says nothing
      ws.close();
      s.ws = null;
      setStatus(s.paused ? "paused" : "closed", s.paused ? "idle" : "closed");
      info("closed: " + reason);
    }
    running(false);
  }

  function reopen() {
    if (!s.ws) return;
    const old = s.ws;
    s.ws = null;
    old.close();
    connect();
  }

  // Pausing closes the socket and keeps the last sequence: resuming
  // reconnects with since/epoch, and the gateway replays what was missed.
  function pause() {
    if (s.paused || !s.want) return;
    s.paused = true;
    pauseBtn.textContent = "Resume";
    info("paused after seq " + (s.lastSeq ?? "–"));
    stop("paused");
  }

  pauseBtn.addEventListener("click", () => (s.paused ? connect() : pause()));
  clearBtn.addEventListener("click", () => { log.replaceChildren(); s.count = 0; count.textContent = "0"; });
  filters.addEventListener("change", (e) => {
    if (e.target === all && all.checked) {
      filters.querySelectorAll("input.type").forEach((b) => { b.checked = true; });
    } else if (e.target.classList.contains("type") && !e.target.checked) {
      all.checked = false;
    }
    if (s.ws instanceof WebSocket && s.ws.readyState === WebSocket.OPEN) {
      s.ws.send(JSON.stringify({ type: "subscribe", events: patterns() }));
    } else if (s.ws) {
      reopen(); // an SSE filter is in its URL
    }
  });
  transport.addEventListener("change", () => { if (s.ws) reopen(); });

  return Object.assign(s, {
    connect() { showBanner(""); if (s.ws) { const old = s.ws; s.ws = null; old.close(); } connect(); },
    disconnect() { s.paused = false; pauseBtn.textContent = "Pause"; stop("closed from the page"); },
    pause,
    resume: connect,
    info,
  });
}
