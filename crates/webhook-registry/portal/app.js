// The portal's shell: sign-in, navigation, and the hash router
// (#/overview, #/webhooks, #/webhooks/new, #/webhooks/<id>, #/webhooks/<id>/edit, #/events,
// #/audit, #/audit/<event id>).
import { api, token, setUnauthorizedHandler, el } from "./ui.js";
import { webhooksPage, webhookForm } from "./webhooks.js";
import { deliveriesPage } from "./deliveries.js";
import { eventsPage } from "./events.js";
import { overviewPage } from "./overview.js";
import { auditPage, auditEvent } from "./audit.js";

const $ = (id) => document.getElementById(id);
const view = $("view");
let cleanup = null;

function signedIn(on) {
  $("signin").hidden = on;
  $("nav").hidden = !on;
  $("sign-out").hidden = !on;
  view.hidden = !on;
}

function signOut(reason) {
  token.clear();
  if (cleanup) { cleanup(); cleanup = null; }
  view.replaceChildren();
  signedIn(false);
  $("signin-error").textContent = reason ? "Signed out: " + reason : "";
  $("token").focus();
}
setUnauthorizedHandler((detail) => signOut(detail || "the token was refused"));

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const t = $("token").value.trim();
  const err = $("signin-error");
  err.textContent = "";
  if (!t) { err.textContent = "Enter an API token."; return; }
  try {
    await api("GET", "/webhooks/stats", undefined, t);
  } catch (ex) {
    err.textContent = ex.status === 401 ? "Wrong token: " + ex.message
      : "Cannot sign in: " + ex.message;
    return;
  }
  token.set(t);
  $("token").value = "";
  signedIn(true);
  route();
});
$("sign-out").addEventListener("click", () => signOut(""));

const routes = [
  [/^#\/overview$/, () => overviewPage],
  [/^#\/webhooks(\?.*)?$/, () => webhooksPage],
  [/^#\/webhooks\/new$/, () => webhookForm],
  [/^#\/webhooks\/(\d+)\/edit$/, () => webhookForm],
  [/^#\/webhooks\/(\d+)(\?.*)?$/, () => deliveriesPage],
  [/^#\/events$/, () => eventsPage],
  [/^#\/audit(\?.*)?$/, () => auditPage],
  [/^#\/audit\/([^?]+)$/, () => auditEvent],
];

async function route() {
  if (!token.get()) { signedIn(false); return; }
  if (cleanup) { cleanup(); cleanup = null; }
  const hash = location.hash || "#/overview";
  const found = routes.find(([re]) => re.test(hash));
  if (!found) { location.hash = "#/overview"; return; }
  const m = hash.match(found[0]);
  for (const a of document.querySelectorAll("#nav a")) {
    const here = hash.startsWith(a.getAttribute("href"));
    if (here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const container = el("div", { class: "page" });
  view.replaceChildren(container);
  const params = new URLSearchParams((hash.split("?")[1]) || "");
  // An event id in the path (#/audit/<id>) is no number: it goes as a
  // parameter.
  if (m[1] && hash.startsWith("#/audit/")) {
    try { params.set("event", decodeURIComponent(m[1])); } catch { params.set("event", m[1]); }
  }
  try {
    cleanup = (await found[1]()(container, { id: m[1] && /^\d+$/.test(m[1]) ? Number(m[1]) : null, params })) || null;
  } catch (ex) {
    container.append(el("p", { class: "error", role: "alert", text: "Cannot load this page: " + ex.message }));
  }
  $("main").focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
signedIn(!!token.get());
if (token.get()) route(); else $("token").focus();
