// Webhooks: the filtered, paged table, and the create and edit forms.
import { api, el, field, fmtTime, rate, showFieldErrors, toast, errorBox } from "./ui.js";

const PAGE = 20;
let catalogue = null;
export async function eventTypes() {
  if (!catalogue) {
    const c = await api("GET", "/events/types");
    catalogue = [...c.items.map((i) => i.type), ...c.patterns];
  }
  return catalogue;
}

function typeList(id, types) {
  return el("datalist", { id }, types.map((t) => el("option", { value: t })));
}

export async function webhooksPage(root, { params }) {
  const offset = Math.max(0, Number(params.get("offset")) || 0);
  const eventType = params.get("event_type") || "";
  const active = params.get("is_active") || "";
  const types = await eventTypes();

  const typeInput = el("input", { id: "filter-type", type: "text", list: "filter-types", value: eventType,
    placeholder: "any" });
  const activeSel = el("select", { id: "filter-active" },
    el("option", { value: "", text: "any" }), el("option", { value: "true", text: "active" }),
    el("option", { value: "false", text: "inactive" }));
  activeSel.value = active;
  const filters = el("form", { class: "filters", "aria-label": "Filter webhooks" },
    el("label", { for: "filter-type", text: "Event type" }), typeInput, typeList("filter-types", types),
    el("label", { for: "filter-active", text: "State" }), activeSel,
    el("button", { type: "submit", text: "Apply filters" }));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (typeInput.value.trim()) q.set("event_type", typeInput.value.trim());
    if (activeSel.value) q.set("is_active", activeSel.value);
    location.hash = "#/webhooks" + (q.toString() ? "?" + q : "");
  });

  root.append(el("div", { class: "title" }, el("h1", { text: "Webhooks" }),
    el("a", { class: "button", href: "#/webhooks/new", text: "New webhook" })), filters);

  const q = new URLSearchParams({ limit: PAGE, offset });
  if (eventType) q.set("event_type", eventType);
  if (active) q.set("is_active", active);
  let page;
  try { page = await api("GET", "/webhooks?" + q); } catch (e) { root.append(errorBox(e)); return; }

  if (!page.items.length) {
    root.append(el("p", { class: "empty", text: page.total ? "No webhooks on this page." : "No webhooks match." }));
  } else {
    const heads = ["Name", "URL", "Event type", "Active", "Success rate", "Last triggered", "Failing since / disabled reason"];
    const rows = page.items.map((w) => el("tr", {}, [
      el("a", { href: "#/webhooks/" + w.id, text: w.name }),
      w.url,
      el("code", { text: w.event_type }),
      el("span", { class: "badge " + (w.is_active ? "ok" : "off"), text: w.is_active ? "active" : "inactive" }),
      rate(w),
      fmtTime(w.last_triggered_at),
      w.disabled_reason || (w.failing_since ? "failing since " + fmtTime(w.failing_since) : ""),
    ].map((c, i) => el("td", { "data-label": heads[i], class: i === 1 ? "url" : i === 6 ? "problem" : null }, c))));
    // On a phone each row becomes a card, labelled by data-label.
    root.append(el("div", { class: "table-wrap" }, el("table", { class: "stack", "aria-label": "Webhooks" },
      el("thead", {}, el("tr", {}, heads.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows))));
  }
  const link = (o) => {
    const p = new URLSearchParams(params);
    p.set("offset", o);
    return "#/webhooks?" + p;
  };
  root.append(el("nav", { class: "pager", "aria-label": "Pages" },
    offset > 0 ? el("a", { href: link(Math.max(0, offset - PAGE)), text: "Previous page" }) : null,
    el("span", { text: page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "0 of 0" }),
    offset + PAGE < page.total ? el("a", { href: link(offset + PAGE), text: "Next page" }) : null));
}

// Create (no id) or edit (id) a webhook; 422 messages go beside their fields.
export async function webhookForm(root, { id }) {
  const types = await eventTypes();
  const w = id ? await api("GET", "/webhooks/" + id) : null;
  const input = (name, attrs) => el("input", { type: "text", ...attrs, value: w ? (w[name] ?? "") : "" });
  const name = input("name", { autocomplete: "off" });
  const url = input("url", { type: "url", inputmode: "url", placeholder: "https://crm.example/hooks/bedolaga" });
  const type = input("event_type", { list: "form-types", autocomplete: "off" });
  const desc = el("textarea", { rows: 2 });
  desc.value = w ? w.description || "" : "";
  const secret = el("input", { type: "password", autocomplete: "new-password" });
  const format = el("select", {},
    el("option", { value: "canonical", text: "canonical: keys sorted, ASCII (default)" }),
    el("option", { value: "bot", text: "bot: the bot's own bytes (key order, raw UTF-8)" }));
  format.value = w ? w.body_format : "canonical";
  const activeBox = el("input", { type: "checkbox" });
  if (w) activeBox.checked = w.is_active;
  const general = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "edit", novalidate: true, "aria-label": w ? "Edit webhook" : "New webhook" },
    field("name", "Name", name),
    field("url", "URL", url, "Where the signed POSTs go (http or https)."),
    field("event_type", "Event type", type, "A type, a family such as ticket.*, or * for everything."),
    typeList("form-types", types),
    field("description", "Description", desc),
    field("secret", w ? "New secret (leave empty to keep the current one)" : "Secret (optional)", secret,
      w ? "Replaces the secret at once; use Rotate secret for a grace period." : "Signs every delivery (HMAC-SHA256)."),
    field("body_format", "Body format", format, "How the POSTed JSON is written; signatures cover the bytes sent."),
    w ? el("div", { class: "field check" }, activeBox, el("label", { for: "f-is_active", text: "Active" })) : null,
    general,
    el("div", { class: "actions" }, el("button", { type: "submit", text: w ? "Save changes" : "Create webhook" }),
      el("a", { href: w ? "#/webhooks/" + w.id : "#/webhooks", text: "Cancel" })));
  activeBox.id = "f-is_active";
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    general.textContent = "";
    const body = { name: name.value, url: url.value, event_type: type.value };
    // On an edit an empty description clears it (null would keep it).
    if (desc.value || w) body.description = desc.value;
    body.body_format = format.value;
    if (secret.value) body.secret = secret.value;
    if (w) body.is_active = activeBox.checked;
    try {
      const saved = await api(w ? "PATCH" : "POST", w ? "/webhooks/" + w.id : "/webhooks", body);
      toast(w ? "Saved." : "Webhook created.");
      location.hash = "#/webhooks/" + saved.id;
    } catch (ex) {
      const rest = showFieldErrors(form, ex.body && ex.body.detail);
      general.textContent = ex.status === 422 ? (rest.length ? rest.join("; ") : "Correct the fields marked above.") : ex.message;
    }
  });
  root.append(el("h1", { text: w ? "Edit " + w.name : "New webhook" }), form);
  name.focus();
}
