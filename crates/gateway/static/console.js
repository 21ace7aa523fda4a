// The gateway's live console: the token form around the shared live view
// (live.js, also used by the webhook-registry's portal).
import { mountLive } from "/live.js";

const $ = (id) => document.getElementById(id);
const proto = location.protocol === "https:" ? "wss:" : "ws:";
let token = "";
const live = mountLive($("live"), {
  url: () => proto + "//" + location.host + "/ws",
  token: () => token,
  onRunning: (on) => { $("connect").disabled = on; $("disconnect").disabled = !on; },
});
window.gatewayConsole = live;

$("connect-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  live.connect();
});
$("disconnect").addEventListener("click", () => live.disconnect());

// `/#token=…` connects at once; the token is then removed from the address bar.
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) {
  $("token").value = params.get("token");
  history.replaceState(null, "", location.pathname + location.search);
  token = params.get("token");
  live.connect();
}
