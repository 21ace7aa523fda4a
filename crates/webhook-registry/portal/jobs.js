// One webhook's recover, replay and bulk retry jobs: a form to start one
// (the API's 422 messages beside the fields) and the latest jobs with
// their progress, each unfinished one with a Cancel button.
import { api, el, fmtTime, field, showFieldErrors, errorBox, toast } from "./ui.js";

const PATHS = { recover: "recover", replay: "replay", retry: "deliveries/retry" };

export function jobsSection(webhookId) {
  const box = el("section", { "aria-label": "Recovery jobs" });
  const list = el("div");
  const out = el("div", { role: "status" });
  const kind = el("select", {}, Object.keys(PATHS).map((k) => el("option", { value: k, text: k })));
  const since = el("input", { type: "datetime-local" });
  const until = el("input", { type: "datetime-local" });
  const sinceSeq = el("input", { type: "number", min: 0, step: 1 });
  const rate = el("input", { type: "number", min: 1, max: 10000, step: 1 });
  const form = el("form", { class: "job-form", novalidate: true, "aria-label": "Start a job" },
    field("kind", "Kind", kind, "recover: events whose last attempt failed; replay: stored events from the stream; retry: every failed delivery"),
    field("since", "Since", since), field("until", "Until (optional)", until),
    field("since_seq", "After stream sequence (replay, instead of Since)", sinceSeq),
    field("rate_per_s", "Deliveries per second (optional)", rate),
    el("button", { type: "submit", text: "Start job" }));
  const iso = (i) => (i.value ? new Date(i.value).toISOString() : undefined);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    const body = { since: iso(since), until: iso(until), rate_per_s: rate.value ? Number(rate.value) : undefined };
    if (kind.value === "replay" && sinceSeq.value !== "") body.since_seq = Number(sinceSeq.value);
    try {
      const j = await api("POST", `/webhooks/${webhookId}/${PATHS[kind.value]}`, body);
      showFieldErrors(form, []);
      toast(j.status === "queued" && j.kind === kind.value ? `Job ${j.id} queued.` : `Job ${j.id} is still unfinished; it runs first.`);
      refresh();
    } catch (e) {
      const rest = e.status === 422 ? showFieldErrors(form, e.body.detail) : [e.message];
      if (rest.length) out.replaceChildren(errorBox(rest.join("; ")));
    }
  });

  function row(j) {
    const progress = `${j.done} of ${j.total ?? "?"} done, ${j.failed} failed` +
      (j.unavailable ? `, ${j.unavailable} no longer in the stream` : "");
    return el("li", { class: "job " + j.status },
      el("b", { text: `#${j.id} ${j.kind}` }), " ",
      el("span", { class: "badge " + (j.status === "completed" ? "ok" : j.status === "failed" ? "bad" : "wait"), text: j.status }), " ",
      el("span", { text: progress }), " ",
      el("span", { class: "muted", text: `started ${fmtTime(j.started_at)}, finished ${fmtTime(j.finished_at)}` }),
      j.error ? el("p", { class: "error-text", text: j.error }) : null,
      j.status === "queued" || j.status === "running" ? action(j, "Pause", "POST", "/pause", "paused") : null,
      j.status === "paused" ? action(j, "Resume", "POST", "/resume", "resumed") : null,
      ["queued", "running", "paused"].includes(j.status) ? action(j, "Cancel", "DELETE", "", "cancelled") : null);
  }

  // A button acting on one job: "Pause job 7" and so on.
  function action(j, label, method, suffix, done) {
    return el("button", { type: "button", "aria-label": `${label} job ${j.id}`, text: label, onclick: async () => {
      try { await api(method, `/webhooks/${webhookId}/jobs/${j.id}${suffix}`); toast(`Job ${j.id} ${done}.`); refresh(); }
      catch (e) { toast(`${label} failed: ` + e.message); }
    } });
  }

  async function refresh() {
    try {
      const page = await api("GET", `/webhooks/${webhookId}/jobs?limit=5`);
      list.replaceChildren(page.items.length ? el("ol", { class: "jobs" }, page.items.map(row))
        : el("p", { class: "empty", text: "No jobs yet." }));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  }

  box.append(el("details", {}, el("summary", { text: "Recover, replay or retry in bulk" }), form, out), list);
  return { box, refresh };
}
