// Events: the catalogue (each type's JSON Schema and an example payload)
// and the live stream through the gateway, with the console's live view.
import { api, el, pretty, token } from "./ui.js";
import { mountLive } from "./live.js";

export async function eventsPage(root) {
  const cat = await api("GET", "/events/types");
  const gateway = document.querySelector('meta[name="gateway-url"]').content;

  const connectBtn = el("button", { type: "button", id: "connect", text: "Connect" });
  const disconnectBtn = el("button", { type: "button", id: "disconnect", text: "Disconnect", disabled: true });
  const liveBox = el("div", { class: "live" });
  const live = mountLive(liveBox, {
    url: () => gateway,
    token: () => token.get(),
    types: cat.items.map((i) => i.type),
    onRunning: (on) => { connectBtn.disabled = on; disconnectBtn.disabled = !on; },
  });
  connectBtn.addEventListener("click", () => live.connect());
  disconnectBtn.addEventListener("click", () => live.disconnect());

  root.append(
    el("h1", { text: "Events" }),
    el("section", { "aria-labelledby": "live-title" },
      el("h2", { id: "live-title", text: "Live stream" }),
      el("p", { class: "hint" }, "Through the gateway at ", el("code", { text: gateway }),
        ". A dropped connection or a pause resumes after the last event seen, without gaps."),
      el("div", { class: "actions" }, connectBtn, disconnectBtn), liveBox),
    el("section", { "aria-labelledby": "cat-title" },
      el("h2", { id: "cat-title", text: "Catalogue" }),
      el("p", { class: "hint" }, "A webhook's event type may also be a pattern: ",
        cat.patterns.map((p, i) => [i ? ", " : "", el("code", { text: p })])),
      cat.items.map((t) => el("details", { class: "type" },
        el("summary", {}, el("code", { text: t.type }), " — " + t.description),
        el("div", { class: "two" },
          el("div", {}, el("h3", { text: "Example payload" }), el("pre", { text: pretty(t.example) })),
          el("div", {}, el("h3", { text: "JSON Schema" }), el("pre", { text: pretty(t.schema) })))))));
  return () => live.disconnect();
}
