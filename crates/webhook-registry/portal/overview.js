// Overview: the /webhooks/stats figures, the webhooks failing now or
// switched off by the worker, and each service's readiness.
import { api, base, el, fmtTime, errorBox } from "./ui.js";

const figure = (label, value) => el("div", { class: "figure" }, el("span", { class: "value", text: String(value) }),
  el("span", { class: "label", text: label }));

// Every webhook, a page of 200 at a time (the table is small; at most 2,000 read).
async function allWebhooks() {
  const out = [];
  for (let offset = 0; offset < 2000; offset += 200) {
    const page = await api("GET", `/webhooks?limit=200&offset=${offset}`);
    out.push(...page.items);
    if (out.length >= page.total || !page.items.length) break;
  }
  return out;
}

function checks(c) {
  if (!c || typeof c !== "object") return "";
  return Object.entries(c).map(([k, v]) => k + ": " + (typeof v === "string" ? v : JSON.stringify(v))).join(", ");
}

function serviceRow(name, ready, detail) {
  return el("tr", {}, el("th", { scope: "row", text: name }),
    el("td", {}, el("span", { class: "badge " + (ready ? "ok" : "bad"), text: ready ? "ready" : "not ready" })),
    el("td", { class: "muted", text: detail }));
}

async function readiness() {
  const rows = [];
  try {
    const res = await fetch(base + "/readyz", { cache: "no-store" });
    const body = await res.json().catch(() => ({}));
    rows.push(serviceRow("webhook-registry", res.ok, checks(body.checks)));
  } catch { rows.push(serviceRow("webhook-registry", false, "no answer")); }
  try {
    const r = await api("GET", "/services/readiness");
    for (const s of r.services) {
      rows.push(serviceRow(s.name, s.ready, s.error ? s.error + " (" + s.url + ")"
        : (s.status_code !== 200 ? "HTTP " + s.status_code + ". " : "") + checks(s.checks)));
    }
  } catch (e) { rows.push(el("tr", {}, el("td", { colspan: 3 }, errorBox(e)))); }
  return el("div", { class: "table-wrap" }, el("table", { "aria-label": "Service readiness" },
    el("thead", {}, el("tr", {}, ["Service", "State", "Checks"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows)));
}

function hookList(items, what) {
  if (!items.length) return el("p", { class: "empty", text: "None." });
  return el("ul", { class: "hooks" }, items.map((w) => el("li", {},
    el("a", { href: "#/webhooks/" + w.id, text: w.name }), " ", el("code", { text: w.event_type }), " — ", what(w))));
}

export async function overviewPage(root) {
  const [stats, hooks, ready] = await Promise.all([api("GET", "/webhooks/stats"), allWebhooks().catch((e) => e), readiness()]);
  const failing = Array.isArray(hooks) ? hooks.filter((w) => w.is_active && w.failing_since) : [];
  const disabled = Array.isArray(hooks) ? hooks.filter((w) => !w.is_active && w.disabled_reason) : [];
  root.append(
    el("h1", { text: "Overview" }),
    el("section", { class: "figures", "aria-label": "Statistics" },
      figure("webhooks", stats.total_webhooks), figure("active", stats.active_webhooks),
      figure("deliveries", stats.total_deliveries), figure("succeeded", stats.successful_deliveries),
      figure("failed", stats.failed_deliveries), figure("success rate", stats.success_rate.toFixed(2) + " %")),
    el("section", { "aria-labelledby": "failing-title" }, el("h2", { id: "failing-title", text: "Failing now" }),
      hooks instanceof Error ? errorBox(hooks) : hookList(failing, (w) => "failing since " + fmtTime(w.failing_since))),
    el("section", { "aria-labelledby": "disabled-title" }, el("h2", { id: "disabled-title", text: "Disabled by the delivery worker" }),
      hooks instanceof Error ? "" : hookList(disabled, (w) => w.disabled_reason)),
    el("section", { "aria-labelledby": "ready-title" }, el("h2", { id: "ready-title", text: "Services" }), ready));
}
