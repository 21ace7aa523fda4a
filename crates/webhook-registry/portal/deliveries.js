// One webhook: its actions (edit, enable/disable, test ping, rotate
// secret, delete), its recover/replay/retry jobs, the hourly chart of the
// last 24 hours, and its deliveries newest first, the attempts of one
// event grouped.
import { api, el, fmtTime, pretty, rate, toast, confirmDialog, copy, errorBox, circuitBadge, policyText } from "./ui.js";
import { jobsSection } from "./jobs.js";

const PAGE = 50;
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

// Stacked bars: successes (green) under failures (red), one per hour.
function chart(data) {
  const W = 720, H = 160, pad = 24, n = data.buckets.length;
  const max = Math.max(1, ...data.buckets.map((b) => b.success + b.failed));
  const bw = (W - pad) / n;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H + 20}`, role: "img", class: "chart",
    "aria-label": `Deliveries per hour over the last ${n} hours: ` +
      data.buckets.reduce((a, b) => a + b.success, 0) + " succeeded, " +
      data.buckets.reduce((a, b) => a + b.failed, 0) + " failed" });
  s.append(svg("text", { x: 0, y: 10, class: "axis" }, String(max)), svg("text", { x: 0, y: H, class: "axis" }, "0"));
  data.buckets.forEach((b, i) => {
    const x = pad + i * bw;
    const hs = (b.success / max) * (H - 10), hf = (b.failed / max) * (H - 10);
    const hour = new Date(b.hour);
    const g = svg("g", {});
    g.append(svg("title", {}, `${hour.toLocaleString()}: ${b.success} succeeded, ${b.failed} failed, ${b.pending} pending`));
    g.append(svg("rect", { x: x + 1, y: H - hs, width: bw - 2, height: hs, class: "ok" }));
    g.append(svg("rect", { x: x + 1, y: H - hs - hf, width: bw - 2, height: hf, class: "bad" }));
    if (i % 6 === 0) g.append(svg("text", { x, y: H + 14, class: "axis" }, hour.getHours() + ":00"));
    s.append(g);
  });
  return s;
}

function groupByEvent(items) {
  const groups = new Map();
  for (const d of items) {
    const key = d.event_id || "delivery-" + d.id;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(d);
  }
  return [...groups.values()];
}

function attemptRow(d, onRetry) {
  return el("li", { class: "attempt " + d.status },
    el("div", { class: "attempt-head" },
      el("b", { text: "Attempt " + d.attempt_number }),
      el("span", { class: "badge " + (d.status === "success" ? "ok" : d.status === "failed" ? "bad" : "wait"), text: d.status }),
      el("span", { text: "created " + fmtTime(d.created_at) }),
      d.delivered_at ? el("span", { text: "delivered " + fmtTime(d.delivered_at) }) : null,
      d.response_status !== null ? el("span", { text: "HTTP " + d.response_status }) : null,
      d.next_retry_at ? el("span", { text: (d.status === "pending" ? "due " : "next retry ") + fmtTime(d.next_retry_at) }) : null,
      d.status !== "pending" ? el("button", { type: "button", "aria-label": `Retry delivery ${d.id}`, text: "Retry",
        onclick: () => onRetry(d) }) : null),
    d.error_message ? el("p", { class: "error-text", text: "Error: " + d.error_message }) : null,
    d.response_body ? el("details", {}, el("summary", { text: "Response body" }), el("pre", { text: d.response_body })) : null);
}

// Custom headers as shown: secret values only as "secret (stored)".
function headerList(headers) {
  const entries = Object.entries(headers || {});
  if (!entries.length) return "none";
  return el("ul", { class: "plain" }, entries.map(([n, v]) => el("li", {}, el("code", { text: n }), ": ",
    v !== null && typeof v === "object" ? el("span", { class: "muted", text: "secret (stored)" }) : el("code", { text: String(v) }))));
}

// Receiver auth without its credential (the API never shows it).
function authText(a) {
  if (!a) return "none";
  if (a.type === "basic") return `basic, user ${a.username}`;
  if (a.type === "oauth2") return `oauth2, client ${a.client_id} at ${a.token_url}` + (a.scope ? `, scope ${a.scope}` : "");
  return a.type;
}

export async function deliveriesPage(root, { id, params }) {
  let w = await api("GET", "/webhooks/" + id);
  const head = el("div");
  const result = el("div", { class: "result", role: "status" });
  const chartBox = el("section", { "aria-label": "Deliveries per hour" });
  const list = el("section", { "aria-label": "Deliveries" });
  const status = params.get("status") || "";
  const cursors = [null];
  let cursor = params.get("cursor") || null;
  let shown = "";

  function header() {
    head.replaceChildren(
      el("div", { class: "title" }, el("h1", { text: w.name }),
        el("span", { class: "badge " + (w.is_active ? "ok" : "off"), text: w.is_active ? "active" : "inactive" }),
        circuitBadge(w)),
      el("dl", { class: "facts" },
        el("dt", { text: "Mode" }), el("dd", { text: w.mode === "pull"
          ? "pull: the owner reads events with GET /webhooks/" + w.id + "/pull" : "push: events are POSTed to the URL" }),
        w.mode === "pull"
          ? [el("dt", { text: "Pull cursor" }), el("dd", {}, w.pull_cursor ? el("code", { text: w.pull_cursor }) : "none acknowledged yet")]
          : [el("dt", { text: "URL" }), el("dd", { class: "url", text: w.url })],
        el("dt", { text: "Event types" }), el("dd", {}, w.event_types.map((t, i) => [i ? ", " : null, el("code", { text: t })])),
        el("dt", { text: "Payload filter" }), el("dd", {}, w.filter ? el("code", { text: JSON.stringify(w.filter) }) : "none (every event)"),
        el("dt", { text: "Custom headers" }), el("dd", {}, headerList(w.headers)),
        el("dt", { text: "Receiver auth" }), el("dd", { text: authText(w.auth) }),
        el("dt", { text: "Body format" }), el("dd", { text: w.body_format }),
        w.mode === "pull" ? null : [el("dt", { text: "Delivery policy" }), el("dd", { text: policyText(w) })],
        el("dt", { text: "Signature scheme" }), el("dd", { text: w.signature_scheme }),
        w.public_key ? [el("dt", {}, el("label", { for: "public-key", text: "Public key" })),
          el("dd", { class: "key-box" }, el("input", { id: "public-key", type: "text", readonly: true, value: w.public_key, class: "secret" }),
            el("button", { type: "button", text: "Copy public key", onclick: async (e) => {
              e.target.textContent = (await copy(w.public_key)) ? "Copied" : "Copy public key";
            } }))] : null,
        el("dt", { text: "Success rate" }), el("dd", { text: `${rate(w)} (${w.success_count} ok, ${w.failure_count} failed)` }),
        el("dt", { text: "Last triggered" }), el("dd", { text: fmtTime(w.last_triggered_at) }),
        w.failing_since ? [el("dt", { text: "Failing since" }), el("dd", { text: fmtTime(w.failing_since) })] : null,
        w.disabled_reason ? [el("dt", { text: "Disabled because" }), el("dd", { text: w.disabled_reason })] : null,
        w.description ? [el("dt", { text: "Description" }), el("dd", { text: w.description })] : null),
      el("div", { class: "actions" },
        el("a", { class: "button", href: `#/webhooks/${w.id}/edit`, text: "Edit" }),
        el("button", { type: "button", text: w.is_active ? "Disable" : "Enable", onclick: toggle }),
        w.mode === "pull" ? null : el("button", { type: "button", text: "Send test ping", onclick: ping }),
        el("button", { type: "button", text: "Rotate secret", onclick: rotate }),
        el("button", { type: "button", class: "danger", text: "Delete webhook", onclick: remove })));
  }

  async function act(f) {
    result.replaceChildren();
    try { await f(); } catch (e) { result.replaceChildren(errorBox(e)); }
  }
  const toggle = () => act(async () => {
    w = await api("PATCH", "/webhooks/" + w.id, { is_active: !w.is_active });
    header();
    toast(w.is_active ? "Enabled." : "Disabled.");
  });
  const ping = () => act(async () => {
    result.replaceChildren(el("p", { text: "Sending a test ping…" }));
    const r = await api("POST", `/webhooks/${w.id}/test`);
    result.replaceChildren(el("div", { class: "ping " + (r.success ? "ok" : "bad") },
      el("b", { text: r.success ? "Test ping delivered" : "Test ping failed" }),
      el("span", { text: ` — ${r.response_status !== null ? "HTTP " + r.response_status : "no response"}, ${r.latency_ms} ms` }),
      r.error ? el("p", { text: "Error: " + r.error }) : null,
      r.response_body ? el("pre", { text: r.response_body }) : null));
    refresh();
  });
  const rotate = () => act(async () => {
    if (!(await confirmDialog("Generate a new secret? The previous one keeps signing during the grace period.", "Rotate secret"))) return;
    const r = await api("POST", `/webhooks/${w.id}/rotate-secret`);
    w = r.webhook;
    const out = el("input", { id: "new-secret", type: "text", readonly: true, value: r.secret || "", class: "secret" });
    const copied = el("span", { role: "status" });
    result.replaceChildren(el("div", { class: "secret-box" },
      el("label", { for: "new-secret", text: "New secret (shown only now; copy it to the receiver)" }), out,
      el("button", { type: "button", text: "Copy secret", onclick: async () => {
        out.select();
        copied.textContent = (await copy(out.value)) ? "Copied." : "Select the text and copy it.";
      } }), copied,
      el("p", { class: "hint", text: r.previous_secret_expires_at
        ? "The previous secret keeps signing until " + fmtTime(r.previous_secret_expires_at) + "." : "" })));
  });
  const remove = () => act(async () => {
    if (!(await confirmDialog(`Delete webhook “${w.name}” and all its deliveries? This cannot be undone.`, "Delete"))) return;
    await api("DELETE", "/webhooks/" + w.id);
    toast("Webhook deleted.");
    location.hash = "#/webhooks";
  });

  const statusSel = el("select", { id: "delivery-status" },
    ["", "pending", "success", "failed"].map((s) => el("option", { value: s, text: s || "all" })));
  statusSel.value = status;
  statusSel.addEventListener("change", () => {
    location.hash = `#/webhooks/${w.id}` + (statusSel.value ? "?status=" + statusSel.value : "");
  });

  async function retry(d) {
    try {
      const r = await api("POST", `/webhooks/${w.id}/deliveries/${d.id}/retry`);
      toast(r.already_queued ? "An attempt of this event was already queued." : `Attempt ${r.attempt_number} queued.`);
      await refresh();
    } catch (e) { toast("Retry failed: " + e.message); }
  }

  async function loadChart() {
    try {
      const h = await api("GET", `/webhooks/${w.id}/deliveries/hourly?hours=24`);
      chartBox.replaceChildren(el("h2", { text: "Last 24 hours" }), chart(h),
        el("p", { class: "legend" }, el("span", { class: "key ok" }), " succeeded ", el("span", { class: "key bad" }), " failed"));
    } catch (e) { chartBox.replaceChildren(errorBox(e)); }
  }

  async function refresh() {
    const q = new URLSearchParams({ limit: PAGE });
    if (status) q.set("status", status);
    if (cursor) q.set("cursor", cursor);
    let page;
    try { page = await api("GET", `/webhooks/${w.id}/deliveries?` + q); } catch (e) { list.replaceChildren(errorBox(e)); return; }
    // Unchanged: keep the page as it is (open details, focus).
    const key = JSON.stringify([page, cursors.length]);
    if (key === shown) return;
    shown = key;
    loadChart();
    // the webhook's counters and state move with its deliveries
    api("GET", "/webhooks/" + w.id).then((fresh) => { w = fresh; header(); }).catch(() => {});
    const groups = groupByEvent(page.items).map((attempts) => {
      const first = attempts[0];
      return el("article", { class: "event" },
        el("h3", {}, el("code", { text: first.event_type }), " ",
          el("span", { class: "muted", text: (first.event_id || "") + " · " + attempts.length + " attempt(s) on this page" })),
        el("ol", { class: "attempts" }, attempts.map((d) => attemptRow(d, retry))),
        el("details", { class: "payload", open: true }, el("summary", { text: "Payload" }), el("pre", { text: pretty(first.payload) })));
    });
    list.replaceChildren(
      el("div", { class: "title" }, el("h2", { text: `Deliveries (${page.total})` }),
        el("label", { for: "delivery-status", text: "Status" }), statusSel,
        el("button", { type: "button", text: "Refresh", onclick: () => { shown = ""; refresh(); } })),
      ...(groups.length ? groups : [el("p", { class: "empty", text: "No deliveries yet." })]),
      el("nav", { class: "pager", "aria-label": "Delivery pages" },
        cursors.length > 1 ? el("button", { type: "button", text: "Newer", onclick: () => { cursor = cursors.pop(); refresh(); } }) : null,
        page.next_cursor ? el("button", { type: "button", text: "Older", onclick: () => { cursors.push(cursor); cursor = page.next_cursor; refresh(); } }) : null));
  }

  header();
  const jobs = jobsSection(w.id);
  root.append(el("p", {}, el("a", { href: "#/webhooks", text: "← All webhooks" })), head, result, jobs.box, chartBox, list);
  await refresh();
  jobs.refresh();
  // The first page follows new deliveries while it is shown.
  const timer = setInterval(() => {
    if (!root.isConnected) { clearInterval(timer); return; }
    if (document.visibilityState === "visible") jobs.refresh();
    if (!cursor && document.visibilityState === "visible") refresh();
  }, 3000);
  return () => clearInterval(timer);
}
