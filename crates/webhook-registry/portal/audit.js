// Audit: every event the delivery worker processed, newest first, with
// type, state and time filters and cursor paging (#/audit), and one
// event's state and attempts per webhook (#/audit/<event id>).
import { api, el, fmtTime, pretty, errorBox } from "./ui.js";
import { eventCatalogue } from "./webhooks.js";

const PAGE = 25;
const STATES = ["succeeded", "retrying", "rate_limited", "circuit_open", "queued", "exhausted",
  "failed", "disabled", "filtered_out", "deleted"];
const TONE = { succeeded: "ok", exhausted: "bad", failed: "bad", circuit_open: "bad", disabled: "off",
  filtered_out: "off", deleted: "off" };
const badge = (s, n) => el("span", { class: "badge " + (TONE[s] || "wait"), text: n === undefined ? s : `${s} ${n}` });

// A datetime-local value (local time) as RFC 3339, or "".
const toRfc = (v) => (v ? new Date(v).toISOString() : "");
const toLocal = (s) => {
  if (!s) return "";
  const d = new Date(s);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
};

export async function auditPage(root, { params }) {
  const cat = await eventCatalogue();
  const typeSel = el("select", { id: "audit-type" }, el("option", { value: "", text: "any" }),
    cat.types.map((t) => el("option", { value: t, text: t })));
  typeSel.value = params.get("type") || "";
  const stateSel = el("select", { id: "audit-state" }, el("option", { value: "", text: "any" }),
    STATES.map((s) => el("option", { value: s, text: s })));
  stateSel.value = params.get("state") || "";
  const sinceIn = el("input", { id: "audit-since", type: "datetime-local", value: toLocal(params.get("since")) });
  const untilIn = el("input", { id: "audit-until", type: "datetime-local", value: toLocal(params.get("until")) });
  const filters = el("form", { class: "filters", "aria-label": "Filter events" },
    el("label", { for: "audit-type", text: "Event type" }), typeSel,
    el("label", { for: "audit-state", text: "A webhook in state" }), stateSel,
    el("label", { for: "audit-since", text: "Processed from" }), sinceIn,
    el("label", { for: "audit-until", text: "until" }), untilIn,
    el("button", { type: "submit", text: "Apply filters" }));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (typeSel.value) q.set("type", typeSel.value);
    if (stateSel.value) q.set("state", stateSel.value);
    if (sinceIn.value) q.set("since", toRfc(sinceIn.value));
    if (untilIn.value) q.set("until", toRfc(untilIn.value));
    location.hash = "#/audit" + (q.toString() ? "?" + q : "");
  });
  root.append(el("h1", { text: "Delivery audit" }),
    el("p", { class: "hint", text: "Every event the delivery worker processed and where it stands for each webhook. " +
      "With a state filter a page may be short while more events follow." }), filters);

  const q = new URLSearchParams({ limit: PAGE });
  for (const k of ["type", "state", "since", "until", "cursor"]) if (params.get(k)) q.set(k, params.get(k));
  let page;
  try { page = await api("GET", "/events?" + q); } catch (e) { root.append(errorBox(e)); return; }
  if (!page.items.length) {
    root.append(el("p", { class: "empty", text: page.next_cursor ? "None on this page; older events follow." : "No events match." }));
  } else {
    const heads = ["Event", "Type", "Processed", "Webhooks", "States"];
    const rows = page.items.map((e) => el("tr", {}, [
      el("a", { href: "#/audit/" + encodeURIComponent(e.event_id), text: e.event_id }),
      el("code", { text: e.event_type }),
      fmtTime(e.processed_at),
      String(e.webhooks),
      el("span", { class: "codes" }, Object.entries(e.states).map(([s, n], i) => [i ? " " : null, badge(s, n)])),
    ].map((c, i) => el("td", { "data-label": heads[i], class: i === 0 ? "url" : null }, c))));
    root.append(el("div", { class: "table-wrap" }, el("table", { class: "stack", "aria-label": "Events" },
      el("thead", {}, el("tr", {}, heads.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows))));
  }
  const next = new URLSearchParams(params);
  next.set("cursor", page.next_cursor || "");
  const first = new URLSearchParams(params);
  first.delete("cursor");
  root.append(el("nav", { class: "pager", "aria-label": "Pages" },
    params.get("cursor") ? el("a", { href: "#/audit?" + first, text: "Newest" }) : null,
    page.next_cursor ? el("a", { href: "#/audit?" + next, text: "Older events" }) : null));
}

function attemptItem(a) {
  return el("li", { class: "attempt " + a.status },
    el("div", { class: "attempt-head" },
      el("b", { text: "Attempt " + a.attempt_number }),
      el("span", { class: "badge " + (a.status === "success" ? "ok" : a.status === "failed" ? "bad" : "wait"), text: a.status }),
      el("span", { text: "created " + fmtTime(a.created_at) }),
      a.delivered_at ? el("span", { text: "delivered " + fmtTime(a.delivered_at) }) : null,
      a.response_status !== null ? el("span", { text: "HTTP " + a.response_status }) : null,
      a.held ? el("span", { text: "held: " + a.held }) : null,
      a.next_retry_at ? el("span", { text: (a.status === "pending" ? "due " : "next retry ") + fmtTime(a.next_retry_at) }) : null),
    a.error_message ? el("p", { class: "error", text: a.error_message }) : null);
}

export async function auditEvent(root, { params }) {
  const id = params.get("event");
  let ev;
  try { ev = await api("GET", "/events/" + encodeURIComponent(id)); } catch (e) {
    root.append(el("h1", { text: "Event " + id }), errorBox(e));
    return;
  }
  root.append(
    el("div", { class: "title" }, el("h1", { text: "Event " + ev.event_id }),
      el("a", { href: "#/audit", text: "All events" })),
    el("dl", { class: "facts" },
      el("dt", { text: "Type" }), el("dd", {}, el("code", { text: ev.event_type })),
      el("dt", { text: "Stream sequence" }), el("dd", { text: String(ev.stream_sequence) }),
      el("dt", { text: "Published" }), el("dd", { text: fmtTime(ev.published_at) }),
      el("dt", { text: "Processed" }), el("dd", { text: fmtTime(ev.processed_at) })),
    el("section", { "aria-labelledby": "audit-hooks" },
      el("h2", { id: "audit-hooks", text: "Webhooks" }),
      ev.webhooks.length ? el("ul", { class: "plain" }, ev.webhooks.map((w) => el("li", { class: "audit-hook" },
        el("div", { class: "attempt-head" },
          w.name === null ? el("b", { text: `#${w.webhook_id} (deleted)` })
            : el("a", { href: "#/webhooks/" + w.webhook_id, text: w.name }),
          badge(w.state),
          w.next_attempt_at ? el("span", { text: "next attempt " + fmtTime(w.next_attempt_at) }) : null),
        w.attempts.length ? el("ol", { class: "attempts" }, w.attempts.map(attemptItem)) : null)))
        : el("p", { class: "empty", text: "It matched no webhook." })),
    el("section", { "aria-labelledby": "audit-payload" },
      el("h2", { id: "audit-payload", text: "Payload" }),
      ev.payload !== null ? el("pre", { text: pretty(ev.payload) })
        : el("p", { class: "empty", text: "Not available: " + ev.payload_unavailable })));
}
