// What every page of the portal shares: the token, API calls, elements,
// formatting, messages beside form fields, confirmations.

const KEY = "bedolaga.portal.token";
export const token = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, body) {
    const d = body && body.detail;
    super(typeof d === "string" ? d : Array.isArray(d) ? "Some fields are not valid" : "HTTP " + status);
    this.status = status;
    this.body = body;
  }
}

// Signed-out handler, set by app.js: a 401 on any call signs out.
let onUnauthorized = () => {};
export function setUnauthorizedHandler(f) { onUnauthorized = f; }

// Where the registry is, as this page was reached: "" when the portal is
// served at "/", "/bedolaga-events" behind an edge proxy that serves it
// under that prefix (deploy/beside-bot/). API paths are prefixed with it.
export const base = new URL(".", location.href).pathname.replace(/\/$/, "");

export async function api(method, path, body, tok = token.get()) {
  const init = { method, headers: { Authorization: "Bearer " + tok }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try { res = await fetch(base + path, init); } catch { throw new ApiError(0, { detail: "The registry cannot be reached" }); }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!res.ok) {
    if (res.status === 401 && tok === token.get()) onUnauthorized(data && data.detail);
    throw new ApiError(res.status, data);
  }
  return data;
}

export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== false && c !== "") e.append(c);
  return e;
}

export const fmtTime = (s) => (s ? new Date(s).toLocaleString() : "—");
export const pretty = (v) => JSON.stringify(v, null, 2);

export function rate(w) {
  const n = w.success_count + w.failure_count;
  return n ? (w.success_count / n * 100).toFixed(1) + " %" : "—";
}

export function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

// A labelled field with a place for the API's message; returns the wrapper.
export function field(name, label, input, hint) {
  input.id = "f-" + name;
  input.name = name;
  const err = el("p", { class: "field-error", id: "err-" + name, role: "alert" });
  input.setAttribute("aria-describedby", err.id);
  return el("div", { class: "field" }, el("label", { for: input.id, text: label }), input,
    hint ? el("p", { class: "hint", text: hint }) : null, err);
}

// A labelled group of controls (checkboxes, rows) with one place for the
// API's message, like field(); returns the fieldset.
export function group(name, legend, children, hint) {
  const err = el("p", { class: "field-error", id: "err-" + name, role: "alert" });
  return el("fieldset", { class: "field group", id: "f-" + name, "aria-describedby": err.id },
    el("legend", { text: legend }), children, hint ? el("p", { class: "hint", text: hint }) : null, err);
}

// The field a 422 entry's `loc` names: the longest prefix of its path after
// "body"/"query" joined with dots (`auth.token`, else `auth`), else its last
// item. Returns the name and the rest of the path (`and.0.eq` inside a
// filter), or null.
function fieldOf(form, loc) {
  const path = Array.isArray(loc) ? loc.map(String) : [];
  for (let k = path.length; k > 1; k--) {
    const name = path.slice(1, k).join(".");
    if (form.querySelector("#err-" + CSS.escape(name))) return { name, rest: path.slice(k) };
  }
  const last = path[path.length - 1];
  return last !== undefined && form.querySelector("#err-" + CSS.escape(last)) ? { name: last, rest: [] } : null;
}

// Puts each 422 entry beside the field its `loc` names; returns the
// messages no field took.
export function showFieldErrors(form, detail) {
  form.querySelectorAll(".field-error").forEach((p) => { p.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
  const rest = [];
  for (const e of Array.isArray(detail) ? detail : []) {
    const at = fieldOf(form, e.loc);
    if (at) {
      const p = form.querySelector("#err-" + CSS.escape(at.name));
      const msg = (at.rest.length ? at.rest.join(".") + ": " : "") + e.msg;
      p.textContent = (p.textContent ? p.textContent + " " : "") + msg;
      const input = form.querySelector("#f-" + CSS.escape(at.name));
      if (input) input.setAttribute("aria-invalid", "true");
    } else rest.push((e.loc || []).join(".") + ": " + e.msg);
  }
  return rest;
}

// A modal question; resolves true when `yes` is chosen.
export function confirmDialog(text, yes) {
  return new Promise((resolve) => {
    const d = el("dialog", { class: "confirm", "aria-label": "Confirm" },
      el("p", { text }),
      el("div", { class: "actions" },
        el("button", { type: "button", class: "danger", text: yes, onclick: () => { d.close(); resolve(true); } }),
        el("button", { type: "button", text: "Cancel", onclick: () => { d.close(); resolve(false); } })));
    d.addEventListener("close", () => { d.remove(); resolve(false); });
    document.body.append(d);
    d.showModal();
  });
}

export async function copy(text) {
  try { await navigator.clipboard.writeText(text); return true; } catch { return false; }
}

export function errorBox(e) {
  return el("p", { class: "error", role: "alert", text: e instanceof Error ? e.message : String(e) });
}

// The circuit breaker's badge: nothing while closed; open or half-open
// with since when.
export function circuitBadge(w) {
  const c = w.circuit;
  if (!c || c.state === "closed") return null;
  const text = (c.state === "open" ? "circuit open" : "circuit half-open") +
    (c.since ? " since " + fmtTime(c.since) : "");
  return el("span", { class: "badge " + (c.state === "open" ? "bad" : "wait"), text,
    title: c.consecutive_failures + " consecutive failures" });
}

// A webhook's delivery policy in words.
export function policyText(w) {
  const parts = [];
  parts.push(w.rate_limit_per_s === null ? "no rate limit"
    : `at most ${w.rate_limit_per_s}/s` + (w.rate_burst === null ? "" : `, bursts of ${w.rate_burst}`));
  if (w.ordered) parts.push("ordered since " + fmtTime(w.ordered_since));
  parts.push("circuit opens after " + (w.circuit_threshold ?? "the worker's default of") + " failures, cooldown " +
    (w.circuit_cooldown_s === null ? "the worker's default" : w.circuit_cooldown_s + " s"));
  return parts.join("; ");
}
