// Webhooks: the filtered, paged table, and the create and edit forms
// (patterns, payload filter, custom headers, receiver auth, signature
// scheme).
import { api, el, field, group, fmtTime, pretty, rate, showFieldErrors, toast, errorBox, circuitBadge } from "./ui.js";

const PAGE = 20;
let catalogue = null;
// The event catalogue: its types, and the patterns a webhook may take
// besides them (`*` and families such as `ticket.*`).
export async function eventCatalogue() {
  if (!catalogue) {
    const c = await api("GET", "/events/types");
    catalogue = { types: c.items.map((i) => i.type), patterns: c.patterns };
  }
  return catalogue;
}

function typeList(id, types) {
  return el("datalist", { id }, types.map((t) => el("option", { value: t })));
}

const codes = (list) => el("span", { class: "codes" }, list.map((t, i) => [i ? ", " : null, el("code", { text: t })]));

export async function webhooksPage(root, { params }) {
  const offset = Math.max(0, Number(params.get("offset")) || 0);
  const eventType = params.get("event_type") || "";
  const matching = params.get("matching") || "";
  const active = params.get("is_active") || "";
  const cat = await eventCatalogue();

  const typeInput = el("input", { id: "filter-type", type: "text", list: "filter-types", value: eventType,
    placeholder: "any" });
  const activeSel = el("select", { id: "filter-active" },
    el("option", { value: "", text: "any" }), el("option", { value: "true", text: "active" }),
    el("option", { value: "false", text: "inactive" }));
  activeSel.value = active;
  // Webhooks an event of this type goes to (through any of their patterns).
  const matchSel = el("select", { id: "filter-matching" }, el("option", { value: "", text: "any" }),
    cat.types.map((t) => el("option", { value: t, text: t })));
  matchSel.value = matching;
  const filters = el("form", { class: "filters", "aria-label": "Filter webhooks" },
    el("label", { for: "filter-type", text: "Event type" }), typeInput,
    typeList("filter-types", [...cat.types, ...cat.patterns]),
    el("label", { for: "filter-matching", text: "Receives events of type" }), matchSel,
    el("label", { for: "filter-active", text: "State" }), activeSel,
    el("button", { type: "submit", text: "Apply filters" }));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (typeInput.value.trim()) q.set("event_type", typeInput.value.trim());
    if (matchSel.value) q.set("matching", matchSel.value);
    if (activeSel.value) q.set("is_active", activeSel.value);
    location.hash = "#/webhooks" + (q.toString() ? "?" + q : "");
  });

  root.append(el("div", { class: "title" }, el("h1", { text: "Webhooks" }),
    el("a", { class: "button", href: "#/webhooks/new", text: "New webhook" })), filters);

  const q = new URLSearchParams({ limit: PAGE, offset });
  if (eventType) q.set("event_type", eventType);
  if (matching) q.set("matching", matching);
  if (active) q.set("is_active", active);
  let page;
  try { page = await api("GET", "/webhooks?" + q); } catch (e) { root.append(errorBox(e)); return; }

  if (!page.items.length) {
    root.append(el("p", { class: "empty", text: page.total ? "No webhooks on this page." : "No webhooks match." }));
  } else {
    const heads = ["Name", "URL", "Event types", "Active", "Success rate", "Last triggered", "Failing since / disabled reason"];
    const rows = page.items.map((w) => el("tr", {}, [
      el("a", { href: "#/webhooks/" + w.id, text: w.name }),
      w.mode === "pull" ? "pull (no URL)" : w.url,
      codes(w.event_types),
      [el("span", { class: "badge " + (w.is_active ? "ok" : "off"), text: w.is_active ? "active" : "inactive" }),
        circuitBadge(w) ? [" ", circuitBadge(w)] : null],
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

// The patterns as checkboxes: the catalogue's types, then `*` and the
// families. The order they are checked in is kept; the first is the
// webhook's `event_type`.
function patternPicker(cat, given) {
  const chosen = [...given];
  const known = [...cat.types, ...cat.patterns];
  const first = el("p", { class: "hint" });
  const show = () => {
    first.textContent = chosen.length ? "Main event type (the first checked): " + chosen[0] : "Check at least one.";
  };
  const box = (p) => el("label", { class: "check" },
    el("input", { type: "checkbox", value: p, checked: chosen.includes(p), onchange: (e) => {
      const at = chosen.indexOf(p);
      if (e.target.checked && at < 0) chosen.push(p);
      if (!e.target.checked && at >= 0) chosen.splice(at, 1);
      show();
    } }), el("code", { text: p }));
  show();
  return {
    box: group("event_types", "Event types",
      [el("div", { class: "choices" }, [...cat.types, ...given.filter((p) => !known.includes(p))].map(box)),
        el("div", { class: "choices" }, cat.patterns.map(box)), first],
      "Types, whole families (ticket.*) or * for every event; 1 to 20."),
    value: () => [...chosen],
  };
}

// Custom headers as rows of name, value and "secret". A stored secret value
// is never shown: its row says "stored" (sent back as {"secret": true},
// which keeps it) until Replace is pressed.
function headerRows(given) {
  const list = el("div", { class: "rows" });
  const rows = [];
  const relabel = () => rows.forEach((r, i) => r.label(i + 1));
  const add = (name, value) => {
    let keep = value !== null && typeof value === "object" && value.secret === true;
    const nameIn = el("input", { type: "text", autocomplete: "off", spellcheck: "false", placeholder: "X-Tenant", value: name });
    const valueIn = el("input", { type: "text", autocomplete: "off", spellcheck: "false",
      readonly: keep, class: keep ? "stored" : null, value: keep ? "stored" : value });
    const secretBox = el("input", { type: "checkbox", checked: keep, disabled: keep,
      onchange: () => { valueIn.type = secretBox.checked ? "password" : "text"; } });
    const replace = el("button", { type: "button", text: "Replace", hidden: !keep, onclick: () => {
      keep = false;
      valueIn.readOnly = false;
      valueIn.classList.remove("stored");
      valueIn.value = "";
      valueIn.type = "password";
      valueIn.autocomplete = "new-password";
      secretBox.disabled = false;
      replace.hidden = true;
      valueIn.focus();
    } });
    const row = el("div", { class: "row" }, nameIn, valueIn, replace,
      el("label", { class: "check" }, secretBox, "secret"),
      el("button", { type: "button", text: "Remove", onclick: () => {
        rows.splice(rows.indexOf(r), 1);
        row.remove();
        relabel();
      } }));
    const r = {
      label: (n) => {
        nameIn.setAttribute("aria-label", `Header ${n} name`);
        valueIn.setAttribute("aria-label", `Header ${n} value`);
        secretBox.setAttribute("aria-label", `Header ${n} secret`);
        replace.setAttribute("aria-label", `Replace header ${n} value`);
        row.lastChild.setAttribute("aria-label", `Remove header ${n}`);
      },
      entry: () => {
        const n = nameIn.value.trim();
        if (!n && !keep && !valueIn.value) return null;
        return [n, keep ? { secret: true } : secretBox.checked ? { value: valueIn.value, secret: true } : valueIn.value];
      },
    };
    rows.push(r);
    list.append(row);
    relabel();
    return nameIn;
  };
  for (const [name, value] of Object.entries(given || {})) add(name, value);
  return {
    box: group("headers", "Custom headers", [list,
      el("button", { type: "button", text: "Add header", onclick: () => add("", "").focus() })],
      "Sent with every delivery. A secret value is write-only: shown as “stored”, kept unless replaced."),
    value: () => Object.fromEntries(rows.map((r) => r.entry()).filter(Boolean)),
  };
}

const AUTH_TYPES = [
  ["none", "none"],
  ["basic", "basic: user name and password"],
  ["bearer", "bearer: a fixed token"],
  ["oauth2", "oauth2: client credentials, a token fetched from the token URL"],
];

// Receiver auth: a type and the fields of that type. Credentials are
// write-only; on an edit, left empty they keep the stored one of the same
// type.
function authFields(stored) {
  const kind = el("select", {}, AUTH_TYPES.map(([v, t]) => el("option", { value: v, text: t })));
  kind.value = stored ? stored.type : "none";
  const of = (t) => (stored && stored.type === t ? stored : {});
  const text = (v, attrs) => el("input", { type: "text", autocomplete: "off", spellcheck: "false", value: v ?? "", ...attrs });
  const credential = () => el("input", { type: "password", autocomplete: "new-password" });
  const keep = (t) => (stored && stored.type === t ? "Leave empty to keep the stored one." : null);
  const f = {
    username: text(of("basic").username), password: credential(), token: credential(),
    token_url: text(of("oauth2").token_url, { type: "url", inputmode: "url", placeholder: "https://auth.example/oauth/token" }),
    client_id: text(of("oauth2").client_id), client_secret: credential(), scope: text(of("oauth2").scope),
  };
  const parts = {
    basic: [field("auth.username", "User name", f.username), field("auth.password", "Password", f.password, keep("basic"))],
    bearer: [field("auth.token", "Bearer token", f.token, keep("bearer"))],
    oauth2: [field("auth.token_url", "Token URL", f.token_url),
      field("auth.client_id", "Client ID", f.client_id),
      field("auth.client_secret", "Client secret", f.client_secret, keep("oauth2")),
      field("auth.scope", "Scope (optional)", f.scope)],
  };
  const boxes = Object.fromEntries(Object.entries(parts).map(([t, p]) => [t, el("div", { class: "auth-part" }, p)]));
  const show = () => { for (const [t, b] of Object.entries(boxes)) b.hidden = t !== kind.value; };
  kind.addEventListener("change", show);
  show();
  const keys = { basic: ["username", "password"], bearer: ["token"], oauth2: ["token_url", "client_id", "client_secret", "scope"] };
  return {
    box: el("div", {}, field("auth", "Receiver auth", kind, "How deliveries authenticate to the receiver."), Object.values(boxes)),
    // Empty fields are left out: a credential is then kept, a required
    // field is reported missing by the API.
    value: () => {
      const a = { type: kind.value };
      for (const k of keys[kind.value] || []) if (f[k].value) a[k] = f[k].value;
      return a;
    },
  };
}

// Create (no id) or edit (id) a webhook; 422 messages go beside their fields.
export async function webhookForm(root, { id }) {
  const cat = await eventCatalogue();
  const w = id ? await api("GET", "/webhooks/" + id) : null;
  const input = (name, attrs) => el("input", { type: "text", ...attrs, value: w ? (w[name] ?? "") : "" });
  const name = input("name", { autocomplete: "off" });
  const url = input("url", { type: "url", inputmode: "url", placeholder: "https://crm.example/hooks/bedolaga" });
  const patterns = patternPicker(cat, w ? w.event_types : []);
  const desc = el("textarea", { rows: 2 });
  desc.value = w ? w.description || "" : "";
  const filter = el("textarea", { rows: 4, spellcheck: "false", class: "code",
    placeholder: '{"and": [{"path": "type", "eq": "deposit"}, {"path": "amount_kopeks", "gte": 100000}]}' });
  filter.value = w && w.filter ? pretty(w.filter) : "";
  const headers = headerRows(w ? w.headers : {});
  const auth = authFields(w ? w.auth : null);
  const scheme = el("select", {},
    el("option", { value: "hmac", text: "hmac: HMAC-SHA256 with the secret (default)" }),
    el("option", { value: "ed25519", text: "ed25519: signed with a private key, verified with its public key" }));
  scheme.value = w ? w.signature_scheme : "hmac";
  const secret = el("input", { type: "password", autocomplete: "new-password" });
  const format = el("select", {},
    el("option", { value: "canonical", text: "canonical: keys sorted, ASCII (default)" }),
    el("option", { value: "bot", text: "bot: the bot's own bytes (key order, raw UTF-8)" }));
  format.value = w ? w.body_format : "canonical";
  // The mode is chosen once: a pull webhook has no URL.
  const mode = el("select", {},
    el("option", { value: "push", text: "push: events are POSTed to the URL (default)" }),
    el("option", { value: "pull", text: "pull: no URL; the owner reads events with GET /webhooks/{id}/pull" }));
  mode.value = w ? w.mode || "push" : "push";
  mode.disabled = !!w;
  // Delivery policy (push only): empty means unlimited, or the worker's
  // setting.
  const num = (name, attrs) => el("input", { type: "number", inputmode: "decimal", ...attrs,
    value: w && w[name] !== null && w[name] !== undefined ? w[name] : "" });
  const rateIn = num("rate_limit_per_s", { min: "0", step: "any", placeholder: "unlimited" });
  const burstIn = num("rate_burst", { min: "1", step: "1", placeholder: "the rate, rounded up" });
  const orderedBox = el("input", { type: "checkbox", id: "f-ordered" });
  orderedBox.checked = !!(w && w.ordered);
  const thresholdIn = num("circuit_threshold", { min: "1", step: "1", placeholder: "worker default (5)" });
  const cooldownIn = num("circuit_cooldown_s", { min: "1", step: "1", placeholder: "worker default (60)" });
  const policy = el("fieldset", { class: "field group" }, el("legend", { text: "Delivery policy" }),
    field("rate_limit_per_s", "Rate limit (requests per second)", rateIn, "Across every worker replica; deliveries over it wait, they do not fail. Empty: unlimited."),
    field("rate_burst", "Burst", burstIn, "Requests allowed at once above the rate; needs a rate limit."),
    el("div", { class: "field check" }, orderedBox, el("label", { for: "f-ordered", text: "Ordered delivery (one at a time, in stream order)" }),
      el("p", { class: "field-error", id: "err-ordered", role: "alert" })),
    field("circuit_threshold", "Circuit breaker: failures to open", thresholdIn, "Consecutive failed attempts; empty: the worker's setting."),
    field("circuit_cooldown_s", "Circuit breaker: cooldown (seconds)", cooldownIn, "How long an open circuit waits before one probe; empty: the worker's setting."));
  const activeBox = el("input", { type: "checkbox" });
  if (w) activeBox.checked = w.is_active;
  const general = el("p", { class: "error", role: "alert" });
  const urlField = field("url", "URL", url, "Where the signed POSTs go (http or https).");
  const showMode = () => { urlField.hidden = mode.value === "pull"; policy.hidden = mode.value === "pull"; };
  mode.addEventListener("change", showMode);
  showMode();
  const form = el("form", { class: "edit", novalidate: true, "aria-label": w ? "Edit webhook" : "New webhook" },
    field("name", "Name", name),
    field("mode", "Mode", mode, w ? "Fixed when the webhook is created." : "Pull webhooks keep their events in the stream until the owner reads them."),
    urlField,
    patterns.box,
    field("description", "Description", desc),
    field("filter", "Payload filter (JSON, optional)", filter,
      "Only events whose payload passes it are delivered, e.g. {\"path\": \"amount_kopeks\", \"gte\": 100000}; " +
      "and, or, not; eq, ne, in, gt, gte, lt, lte, exists. Empty for every event."),
    headers.box,
    auth.box,
    field("signature_scheme", "Signature scheme", scheme,
      w ? "A change drops the current secret; a change to ed25519 generates a signing key unless one is given below."
        : "ed25519 generates a signing key unless one is given below; its public key is shown on the webhook's page."),
    field("secret", w ? "New secret (leave empty to keep the current one)" : "Secret (optional)", secret,
      (w ? "Replaces the secret at once; use Rotate secret for a grace period. " : "hmac: signs every delivery (HMAC-SHA256). ") +
      "ed25519: a signing key, whsk_…"),
    field("body_format", "Body format", format, "How the POSTed JSON is written; signatures cover the bytes sent."),
    policy,
    w ? el("div", { class: "field check" }, activeBox, el("label", { for: "f-is_active", text: "Active" })) : null,
    general,
    el("div", { class: "actions" }, el("button", { type: "submit", text: w ? "Save changes" : "Create webhook" }),
      el("a", { href: w ? "#/webhooks/" + w.id : "#/webhooks", text: "Cancel" })));
  activeBox.id = "f-is_active";
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    general.textContent = "";
    const body = { name: name.value, event_types: patterns.value() };
    if (mode.value === "pull") {
      if (!w) body.mode = "pull";
    } else body.url = url.value;
    // On an edit an empty description clears it (null would keep it).
    if (desc.value || w) body.description = desc.value;
    // On an edit an empty filter, no headers and auth "none" remove them.
    if (filter.value.trim()) {
      try { body.filter = JSON.parse(filter.value); } catch (ex) {
        showFieldErrors(form, [{ loc: ["body", "filter"], msg: "Not valid JSON: " + ex.message }]);
        general.textContent = "Correct the fields marked above.";
        return;
      }
    } else if (w) body.filter = {};
    const h = headers.value();
    if (Object.keys(h).length || w) body.headers = h;
    const a = auth.value();
    if (a.type !== "none" || w) body.auth = a;
    // Sent only when it changes: a change drops the secret.
    if (!w || scheme.value !== w.signature_scheme) body.signature_scheme = scheme.value;
    body.body_format = format.value;
    if (secret.value) body.secret = secret.value;
    if (w) body.is_active = activeBox.checked;
    if (mode.value !== "pull") {
      // Empty: unlimited, or the worker's setting (null clears on an edit).
      const numOr = (input) => (input.value.trim() === "" ? null : Number(input.value));
      for (const [k, input] of [["rate_limit_per_s", rateIn], ["rate_burst", burstIn],
        ["circuit_threshold", thresholdIn], ["circuit_cooldown_s", cooldownIn]]) {
        const v = numOr(input);
        if (v !== null || w) body[k] = v;
      }
      if (orderedBox.checked || (w && w.ordered)) body.ordered = orderedBox.checked;
    }
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
