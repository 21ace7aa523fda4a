// The portal in a real browser against the real services, run by
// deploy/portal-test.sh once per browser: Debian's chromium (DevTools
// protocol) and firefox-esr (WebDriver BiDi), both driven by puppeteer-core,
// so one description of the steps covers both (Playwright needs its own
// patched Firefox build, which is no package here, and its experimental
// WebDriver BiDi channel uses commands firefox-esr 153 lacks). The script
// passes:
//   PORTAL_URL, PORTAL_TOKEN, PORTAL_OUT (screenshots), PORTAL_BROWSER
//   (chromium or firefox), PORTAL_BROWSER_BIN, PUPPETEER_DIR (where this
//   folder's package-lock.json is installed), EVENTCTL (with NATS_URL and
//   NATS_PREFIX in the environment).
// Controls are found by their role and accessible name in the browser's own
// accessibility tree (Puppeteer's ARIA queries), as a screen reader would.
import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import assert from "node:assert/strict";

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(k + " is not set"); return v; };
const BASE = env("PORTAL_URL");
const TOKEN = env("PORTAL_TOKEN");
const OUT = env("PORTAL_OUT");
const BROWSER = env("PORTAL_BROWSER");
const puppeteer = createRequire(path.join(env("PUPPETEER_DIR"), "node_modules", "x.js"))("puppeteer-core");
const WAIT = 20000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A local receiver: answers 500 until told to answer 200.
let answer = 500;
const received = [];
const receiver = http.createServer((req, res) => {
  let body = "";
  req.on("data", (c) => { body += c; });
  req.on("end", () => {
    received.push({ headers: req.headers, body });
    res.writeHead(answer, { "Content-Type": "text/plain" });
    res.end(answer === 200 ? "thanks" : "receiver says no");
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;

// SQL on the services' database: what the delivery worker would have
// written (the audit's processed events, a circuit it opened).
function sql(statement) {
  execFileSync("psql", [env("DATABASE_URL"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", statement],
    { stdio: ["ignore", "ignore", "inherit"] });
}

function publish(type, payload) {
  execFileSync(env("EVENTCTL"), ["publish", "--type", type, "--payload", JSON.stringify(payload)],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
}

const steps = [];
async function step(name, f) {
  const t = Date.now();
  process.stdout.write(`portal (${BROWSER}): ${name} … `);
  await f();
  steps.push(name);
  console.log(`ok (${Date.now() - t} ms)`);
}

// Selectors. The argument of a P-selector is quoted, so names may hold
// parentheses and commas.
const arg = (s) => JSON.stringify(s);
// An element by role and accessible name (both exact).
const role = (r, name) => `::-p-aria(${arg(`[name="${name}"][role="${r}"]`)})`;
// A form field by its accessible name (its label). By name only: HTML-AAM
// gives a password field no ARIA role, and Chromium and Firefox disagree.
const field = (name) => `:is(input, select, textarea)::-p-aria(${arg(name)})`;
// The innermost elements containing a text.
const text = (s) => `::-p-text(${arg(s)})`;
const exactly = (s) => new RegExp("^" + s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "$");

// A cold browser start on a busy machine can take a while (Firefox creates
// its profile first): up to 90 s, and one more try after a failed start.
const LAUNCH_TIMEOUT = 90000;
const launch = {
  chromium: () => puppeteer.launch({
    executablePath: env("PORTAL_BROWSER_BIN"), headless: true, timeout: LAUNCH_TIMEOUT,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  }),
  firefox: () => puppeteer.launch({
    browser: "firefox", executablePath: env("PORTAL_BROWSER_BIN"), headless: true, timeout: LAUNCH_TIMEOUT,
  }),
}[BROWSER];
if (!launch) throw new Error("PORTAL_BROWSER must be chromium or firefox, not " + BROWSER);

const browser = await launch().catch((e) => {
  console.log(`portal (${BROWSER}): the browser did not start (${e.message}); trying once more`);
  return launch();
});
console.log(`portal (${BROWSER}): ${await browser.version()}`);
const problems = [];
let page;

// The first element `selector` matches that is shown (and enabled, for a
// control) and, when `has` is given, whose visible text matches it (a
// RegExp, or a string the text contains); waits up to WAIT for one.
async function find(selector, has) {
  const re = has === undefined ? null : has instanceof RegExp ? has
    : new RegExp(has.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const deadline = Date.now() + WAIT;
  for (;;) {
    for (const h of await page.$$(selector).catch(() => [])) {
      const ok = await h.evaluate((e, src, flags) => {
        if (!e.isConnected || !e.checkVisibility() || e.disabled === true) return false;
        if (src === null) return true;
        const t = (e.innerText ?? e.textContent).replace(/\s+/g, " ").trim();
        return new RegExp(src, flags).test(t);
      }, re && re.source, re && re.flags).catch(() => false);
      if (ok) return h;
      await h.dispose().catch(() => {});
    }
    if (Date.now() > deadline) throw new Error(`nothing shown for ${selector}${re ? " with text " + re : ""} after ${WAIT} ms`);
    await sleep(100);
  }
}
// Clicks what find() finds; a page that re-renders meanwhile is retried.
async function click(selector, has) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const h = await find(selector, has);
    try { await h.click(); return; } catch (e) {
      if (Date.now() > deadline) throw e;
    } finally { await h.dispose().catch(() => {}); }
    await sleep(100);
  }
}
// Replaces a field's value as typing would (Puppeteer's locator fill).
const fill = (selector, value) => page.locator(selector).fill(value);
const choose = async (selector, value) => { await (await find(selector)).select(value); };
const api = (method, p) => fetch(new URL(p, BASE), { method, headers: { Authorization: "Bearer " + TOKEN } });
const attr = async (selector, name) => (await find(selector)).evaluate((e, n) => e.getAttribute(n), name);

try {
  if (BROWSER === "chromium") {
    // Firefox lets a click write to the clipboard without a permission (and
    // its WebDriver BiDi knows no clipboard permission); Chromium needs one.
    await browser.defaultBrowserContext().overridePermissions(new URL(BASE).origin,
      ["clipboard-read", "clipboard-write", "clipboard-sanitized-write"]);
  }
  page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  page.setDefaultTimeout(WAIT);
  // Errors in the console fail the suite, except the answers the steps
  // provoke on purpose (a wrong token, a bad URL). Chromium logs a CSP
  // violation to the console, Firefox reports it as a page error; the
  // listener below reports it the same way in both.
  await page.evaluateOnNewDocument(() => {
    document.addEventListener("securitypolicyviolation", (e) =>
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline code"}`));
  });
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of (401|408|422) /.test(m.text())) problems.push("console: " + m.text());
  });
  page.on("response", (r) => {
    // 408: the server's answer on a connection that sent no request within
    // its 5 s (Firefox opens connections ahead and may leave one idle on a
    // busy machine); the page's own requests are checked step by step.
    if (r.status() >= 400 && ![401, 408, 422].includes(r.status())) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  page.on("pageerror", (e) => problems.push("page error: " + (e.message || e)));
  // Every control of the page has an accessible name; then the screenshot.
  const shot = async (name) => {
    const unnamed = await page.evaluate(() => [...document.querySelectorAll("button, input, select, textarea, a[href]")]
      .filter((e) => !((e.labels && e.labels.length) || e.getAttribute("aria-label") || e.textContent.trim()))
      .map((e) => e.outerHTML.slice(0, 80)));
    assert.deepEqual(unnamed, [], name + ": controls without an accessible name");
    assert.ok(!(await page.evaluate(() => document.body.innerText)).includes("[object "), name + ": an object rendered as text");
    await page.screenshot({ path: path.join(OUT, name + ".png"), fullPage: true });
  };
  const marker = "portal-" + BROWSER + "-" + Date.now().toString(36);
  const hookName = "CRM " + marker;
  let hookId;
  // The browsers run one after the other against the same services: a run
  // that failed half-way may have left its webhook behind.
  for (const w of (await (await api("GET", "/webhooks?limit=200")).json()).items) {
    assert.equal((await api("DELETE", "/webhooks/" + w.id)).status, 204);
  }

  await step("a wrong token is refused and says so", async () => {
    await page.goto(BASE);
    await fill(field("API token"), "not-a-token");
    await click(role("button", "Sign in"));
    await find("[role=alert]", "Wrong token: Invalid or expired API key");
    await shot("01-sign-in");
  });

  await step("sign in; the token stays in sessionStorage only", async () => {
    await fill(field("API token"), TOKEN);
    await click(role("button", "Sign in"));
    await find(role("heading", "Overview"));
    const where = await page.evaluate((t) => ({
      session: Object.values(sessionStorage).includes(t),
      local: Object.values(localStorage).includes(t) || document.cookie.includes(t),
      url: location.href.includes(t),
    }), TOKEN);
    assert.deepEqual(where, { session: true, local: false, url: false });
  });

  await step("overview: figures and readiness of every service", async () => {
    const table = role("table", "Service readiness");
    await find(table);
    for (const s of ["webhook-registry", "gateway", "delivery-worker"]) {
      // the row's cells: service, state, checks
      await find(`${table} tr`, new RegExp(`^${s} ready( |$)`));
    }
    await shot("02-overview-empty");
  });

  await step("create: the API's 422 message appears beside the URL field", async () => {
    await click(role("link", "Webhooks"));
    await click(role("link", "New webhook"));
    await fill(field("Name"), hookName);
    await fill(field("URL"), "ftp://crm.example/hook");
    await click(role("checkbox", "user.created"));
    await click(role("button", "Create webhook"));
    await find("#err-url", /./);
    assert.equal(await attr(field("URL"), "aria-invalid"), "true");
    assert.equal(await page.$eval("#err-name", (e) => e.textContent), "");
    await shot("03-webhook-form-error");
  });

  await step("create a webhook pointing at the local receiver", async () => {
    await fill(field("URL"), hookUrl);
    await click(role("button", "Create webhook"));
    await find(role("heading", hookName));
    hookId = Number(new URL(page.url()).hash.split("/")[2]);
    assert.ok(hookId > 0);
  });

  await step("edit it", async () => {
    await click(role("link", "Edit"));
    await fill(field("Description"), "CRM sync (edited)");
    await click(role("button", "Save changes"));
    await find("main dd", exactly("CRM sync (edited)"));
  });

  let failedId;
  await step("publish an event: the failed delivery appears with its payload", async () => {
    // the worker has the new webhook once the registry's change notice is in
    await sleep(1000);
    publish("user.created", { user_id: 7, telegram_id: 700, username: marker, first_name: "Иван",
      last_name: "Петров 🚀", referral_code: "r7", referred_by_id: null });
    await find("main article.event pre", `"username": "${marker}"`);
    await find("main li.attempt.failed span", exactly("HTTP 500"));
    const label = await attr('main li.attempt.failed button[aria-label^="Retry delivery"]', "aria-label");
    failedId = label.split(" ").pop();
    assert.ok(received.some((r) => r.body.includes(marker)), "the receiver got the event");
  });

  await step("overview lists the webhook as failing now", async () => {
    await click(role("link", "Overview"));
    const failing = `${role("region", "Failing now")} ${role("link", hookName)}`;
    await find(failing);
    await find(role("table", "Service readiness"));
    await shot("02-overview");
    await click(failing);
    await find(role("button", "Retry delivery " + failedId));
  });

  await step("retry the failed delivery: the new attempt succeeds", async () => {
    answer = 200;
    await click(role("button", "Retry delivery " + failedId));
    // a new row (the worker runs without automatic retries, so none was queued)
    await find("#toast", exactly("Attempt 2 queued."));
    await find("main li.attempt.success .attempt-head", /^Attempt 2 success .* HTTP 200( |$)/);
    // both attempts of the event in one group
    const attempts = await page.$$eval("main article.event", (events, m) =>
      events.filter((e) => e.textContent.includes(m)).map((e) => e.querySelectorAll("li.attempt").length), marker);
    assert.deepEqual(attempts, [2]);
    await find(role("image", "Deliveries per hour over the last 24 hours: 1 succeeded, 1 failed"));
    await shot("04-deliveries");
  });

  await step("filter deliveries by status", async () => {
    await choose(field("Status"), "failed");
    await find(role("heading", "Deliveries (1)"));
    await choose(field("Status"), "");
    await find(role("heading", "Deliveries (2)"));
  });

  await step("replay the stream from the portal: the job completes, every event once", async () => {
    const before = received.filter((r) => r.body.includes(marker)).length;
    const jobs = role("region", "Recovery jobs");
    await click(`${jobs} summary`, "Recover, replay or retry in bulk");
    await choose(field("Kind"), "replay");
    // a 422 lands beside its field
    await fill(field("Deliveries per second (optional)"), "0");
    await click(role("button", "Start job"));
    await find("#err-rate_per_s", "Input should be greater than or equal to 1");
    await fill(field("Deliveries per second (optional)"), "100");
    await fill(field("After stream sequence (replay, instead of Since)"), "0");
    await click(role("button", "Start job"));
    await find("#toast", /^Job \d+ queued\.$/);
    await find(`${jobs} li.job.completed`);
    assert.equal(received.filter((r) => r.body.includes(marker)).length, before + 1, "the marker event replayed once");
    await shot("04b-replay-job");
  });

  await step("send a test ping", async () => {
    await click(role("button", "Send test ping"));
    await find("main .ping", "Test ping delivered");
    assert.ok(received.some((r) => r.headers["x-webhook-event"] === "webhook.test"));
  });

  await step("rotate the secret: shown once, with a copy button that copies", async () => {
    await click(role("button", "Rotate secret"));
    await click(`${role("dialog", "Confirm")} ${role("button", "Rotate secret")}`);
    const secret = field("New secret (shown only now; copy it to the receiver)");
    const value = await (await find(secret)).evaluate((e) => e.value);
    assert.match(value, /^[A-Za-z0-9]{40}$/);
    await click(role("button", "Copy secret"));
    await find(".secret-box [role=status]", exactly("Copied."));
    if (BROWSER === "chromium") {
      // Firefox lets a page read the clipboard only through its own paste prompt
      assert.equal(await page.evaluate(() => navigator.clipboard.readText()), value);
    }
    await shot("05-rotated-secret");
    // the next delivery is signed with it
    const before = received.length;
    await click(role("button", "Send test ping"));
    await find("main .ping", "Test ping delivered");
    assert.ok(received.length > before);
  });

  await step("disable it", async () => {
    await click(role("button", "Disable"));
    await find(role("button", "Enable"));
    await find("main .badge", exactly("inactive"));
  });

  await step("webhooks table with filters", async () => {
    await click(role("link", "Webhooks"));
    const table = role("table", "Webhooks");
    await find(`${table} ${role("link", hookName)}`);
    await find(`${table} .badge`, exactly("inactive"));
    await choose(field("State"), "true");
    await click(role("button", "Apply filters"));
    await find("main p.empty", exactly("No webhooks match."));
    await choose(field("State"), "false");
    await click(role("button", "Apply filters"));
    await find(`${table} ${role("link", hookName)}`);
    await shot("06-webhooks");
  });

  await step("events: catalogue and a published event in the live stream", async () => {
    await click(role("link", "Events"));
    await click("main details.type summary", "ticket.status_changed");
    // shown only inside the opened entry
    await find(role("heading", "JSON Schema"));
    await find("main p.hint code", exactly("ticket.*"));
    await click(role("button", "Connect"));
    await find("#status", exactly("connected"));
    const live = marker + "-live";
    const log = role("list", "Live events");
    publish("ticket.created", { ticket_id: 1, user_id: 7, title: live, status: "open", priority: "low", has_media: false });
    await find(`${log} li`, `"title":"${live}"`);
    // pause, miss an event, resume: it is replayed with since
    await click(role("button", "Pause"));
    await find("#status", exactly("paused"));
    publish("ticket.created", { ticket_id: 2, user_id: 7, title: live + "-missed", status: "open", priority: "low", has_media: false });
    await click(role("button", "Resume"));
    await find(`${log} li`, `"title":"${live}-missed"`);
    await find(`${log} li`, "1 missed event(s) replayed");
    await shot("07-events");
  });

  await step("the gateway console over SSE: a cut connection resumes by Last-Event-ID, nothing lost or repeated", async () => {
    // The browser reaches the gateway through a proxy whose connections the
    // step cuts mid-stream; the EventSource reconnects by itself.
    const [gwHost, gwPort] = env("GATEWAY_BIND").split(":");
    const sockets = new Set();
    const proxy = net.createServer((c) => {
      const up = net.connect(Number(gwPort), gwHost);
      for (const s of [c, up]) {
        sockets.add(s);
        s.on("error", () => {});
        s.on("close", () => { c.destroy(); up.destroy(); sockets.delete(s); });
      }
      c.pipe(up);
      up.pipe(c);
    });
    await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
    const portalPage = page;
    page = await browser.newPage();
    page.setDefaultTimeout(WAIT);
    page.on("pageerror", (e) => problems.push("console page error: " + (e.message || e)));
    try {
      await page.goto(`http://127.0.0.1:${proxy.address().port}/`);
      await choose(field("Transport"), "sse");
      await fill("#token", TOKEN);
      await click(role("button", "Connect"));
      await find("#status", exactly("connected"));
      const tag = marker + "-sse";
      const send = (i) => publish("ticket.created",
        { ticket_id: 100 + i, user_id: 7, title: `${tag}-${i}`, status: "open", priority: "low", has_media: false });
      for (let i = 0; i < 3; i++) send(i);
      await find("#log li", `"title":"${tag}-2"`);
      assert.equal(await page.$eval("#connects", (e) => e.textContent), "1");
      // cut every connection; events keep coming while the browser is away
      for (const s of sockets) s.destroy();
      for (let i = 3; i < 6; i++) send(i);
      await find("#connects", exactly("2"));
      for (let i = 6; i < 8; i++) send(i);
      await find("#log li", `"title":"${tag}-7"`);
      const rows = await page.$$eval("#log li.event", (lis) => lis.map((li) => li.textContent));
      for (let i = 0; i < 8; i++) {
        const n = rows.filter((t) => t.includes(`"title":"${tag}-${i}"`)).length;
        assert.equal(n, 1, `event ${i} shown ${n} times`);
      }
      await shot("07b-console-sse");
    } finally {
      await page.close().catch(() => {});
      page = portalPage;
      proxy.close();
    }
  });

  await step("usable on a 390 px phone screen", async () => {
    await page.setViewport({ width: 390, height: 844 });
    for (const [hash, heading, name] of [["#/overview", "Overview", "08-phone-overview"],
      ["#/webhooks", "Webhooks", "09-phone-webhooks"], ["#/events", "Events", "10-phone-events"],
      [`#/webhooks/${hookId}`, hookName, "11-phone-deliveries"], ["#/webhooks/new", "New webhook", "12-phone-form"]]) {
      await page.evaluate((h) => { location.hash = h; }, hash);
      await find(role("heading", heading));
      await page.waitForNetworkIdle({ idleTime: 500 });
      // no horizontal scrolling (headless Firefox keeps a classic
      // scrollbar, so its page is a little narrower than 390 px)
      const { wide, room } = await page.evaluate(() =>
        ({ wide: document.documentElement.scrollWidth, room: document.documentElement.clientWidth }));
      assert.ok(wide <= room && room <= 390, `${hash} is ${wide} px wide in ${room} px at 390 px`);
      await shot(name);
    }
    await page.setViewport({ width: 1280, height: 900 });
  });

  await step("subscriptions: patterns, filter, headers and auth through the form; ed25519", async () => {
    const subName = "Subscriptions " + marker;
    const filterField = field("Payload filter (JSON, optional)");
    const secretValue = "k-" + marker, tokenValue = "t-" + marker;
    await page.evaluate(() => { location.hash = "#/webhooks/new"; });
    await find(role("heading", "New webhook"));
    await fill(field("Name"), subName);
    await fill(field("URL"), hookUrl);
    // checked in this order: ticket.* becomes the event_type
    await click(role("checkbox", "ticket.*"));
    await click(role("checkbox", "payment.completed"));
    await find("#f-event_types .hint", "Main event type (the first checked): ticket.*");
    await click(role("button", "Add header"));
    await fill(field("Header 1 name"), "X-Tenant");
    await fill(field("Header 1 value"), "acme");
    await click(role("button", "Add header"));
    await fill(field("Header 2 name"), "X-Api-Key");
    await fill(field("Header 2 value"), secretValue);
    await click(role("checkbox", "Header 2 secret"));
    assert.equal(await attr(field("Header 2 value"), "type"), "password");
    await choose(field("Receiver auth"), "bearer");
    await fill(field("Bearer token"), tokenValue);
    assert.equal(await attr(field("Bearer token"), "type"), "password");
    // not JSON: said beside the field before anything is sent
    await fill(filterField, "{path");
    await click(role("button", "Create webhook"));
    await find("#err-filter", "Not valid JSON");
    // JSON the API refuses: its message beside the field
    await fill(filterField, '{"path": "amount_kopeks", "gte": "many"}');
    await click(role("button", "Create webhook"));
    await find("#err-filter", /^gte: .*number/);
    assert.equal(await attr(filterField, "aria-invalid"), "true");
    await shot("12-webhook-subscription-form");
    await fill(filterField, '{"path": "amount_kopeks", "gte": 100000}');
    await click(role("button", "Create webhook"));
    await find(role("heading", subName));
    const subId = Number(new URL(page.url()).hash.split("/")[2]);
    const read = async () => (await api("GET", "/webhooks/" + subId)).json();
    let got = await read();
    assert.deepEqual(got.event_types, ["ticket.*", "payment.completed"]);
    assert.equal(got.event_type, "ticket.*");
    assert.deepEqual(got.filter, { path: "amount_kopeks", gte: 100000 });
    assert.deepEqual(got.headers, { "X-Tenant": "acme", "X-Api-Key": { secret: true } });
    assert.deepEqual(got.auth, { type: "bearer" });
    assert.equal(got.signature_scheme, "hmac");
    assert.equal(got.public_key, null);
    const shown = JSON.stringify(got);
    assert.ok(!shown.includes(secretValue) && !shown.includes(tokenValue), "secret values are not returned");
    await find("main dd", "X-Api-Key: secret (stored)");
    await find("main dd", exactly("bearer"));

    // Edit: the secret header and the token are left as they are (empty).
    await click(role("link", "Edit"));
    await find(role("heading", "Edit " + subName));
    assert.deepEqual(JSON.parse(await (await find(filterField)).evaluate((e) => e.value)), got.filter);
    const rows = await page.$$eval("#f-headers .row", (rs) => rs.map((r) => {
      const [n, v] = r.querySelectorAll("input[type=text], input[type=password]");
      return { name: n.value, value: v.value, readonly: v.readOnly };
    }));
    const secretRow = rows.findIndex((r) => r.name === "X-Api-Key") + 1;
    const plainRow = rows.findIndex((r) => r.name === "X-Tenant") + 1;
    assert.deepEqual(rows[secretRow - 1], { name: "X-Api-Key", value: "stored", readonly: true });
    assert.deepEqual(rows[plainRow - 1], { name: "X-Tenant", value: "acme", readonly: false });
    assert.equal(await (await find(field("Bearer token"))).evaluate((e) => e.value), "");
    await click(role("checkbox", "payment.completed"));
    await click(role("checkbox", "user.created"));
    await fill(field(`Header ${plainRow} value`), "acme-2");
    await click(role("button", "Save changes"));
    await find("#toast", exactly("Saved."));
    await find(role("heading", subName));
    got = await read();
    assert.deepEqual(got.event_types, ["ticket.*", "user.created"]);
    assert.deepEqual(got.headers, { "X-Tenant": "acme-2", "X-Api-Key": { secret: true } });
    assert.deepEqual(got.auth, { type: "bearer" });
    // the kept secret header and token are sent: a test ping carries them
    const before = received.length;
    await click(role("button", "Send test ping"));
    await find("main .ping", "Test ping delivered");
    const ping = received.slice(before).find((r) => r.headers["x-webhook-event"] === "webhook.test");
    assert.ok(ping, "the receiver got the test ping");
    assert.equal(ping.headers["x-api-key"], secretValue);
    assert.equal(ping.headers["x-tenant"], "acme-2");
    assert.equal(ping.headers.authorization, "Bearer " + tokenValue);

    // ed25519: a signing key is generated, its public key shown read-only
    await click(role("link", "Edit"));
    await choose(field("Signature scheme"), "ed25519");
    await click(role("button", "Save changes"));
    await find("#toast", exactly("Saved."));
    const key = await find(field("Public key"));
    const publicKey = await key.evaluate((e) => e.value);
    assert.equal(await key.evaluate((e) => e.readOnly), true);
    assert.match(publicKey, /^whpk_/);
    got = await read();
    assert.equal(got.signature_scheme, "ed25519");
    assert.equal(got.public_key, publicKey);
    assert.deepEqual(got.headers, { "X-Tenant": "acme-2", "X-Api-Key": { secret: true } });
    await shot("13-webhook-ed25519");

    // the list by the event types a webhook receives
    await click(role("link", "Webhooks"));
    const table = role("table", "Webhooks");
    await choose(field("Receives events of type"), "ticket.created");
    await click(role("button", "Apply filters"));
    await find(`${table} ${role("link", subName)}`);
    assert.deepEqual(await page.$$eval("main table tbody tr", (trs) => trs.length), 1);
    await choose(field("Receives events of type"), "payment.completed");
    await click(role("button", "Apply filters"));
    await find("main p.empty", exactly("No webhooks match."));
    assert.equal((await api("DELETE", "/webhooks/" + subId)).status, 204);
  });

  await step("delivery policy through the form; the circuit badge; the audit of an event", async () => {
    await page.evaluate((h) => { location.hash = h; }, `#/webhooks/${hookId}/edit`);
    await fill(field("Rate limit (requests per second)"), "5");
    await fill(field("Burst"), "10");
    await click(field("Ordered delivery (one at a time, in stream order)"));
    await fill(field("Circuit breaker: failures to open"), "3");
    await fill(field("Circuit breaker: cooldown (seconds)"), "120");
    await click(role("button", "Save changes"));
    await find("main dd", "at most 5/s, bursts of 10");
    const saved = await (await api("GET", "/webhooks/" + hookId)).json();
    assert.deepEqual([saved.rate_limit_per_s, saved.rate_burst, saved.ordered, saved.circuit_threshold, saved.circuit_cooldown_s],
      [5, 10, true, 3, 120]);
    assert.ok(saved.ordered_since);
    // A burst without a rate: the API's message beside the field.
    await click(role("link", "Edit"));
    await fill(field("Rate limit (requests per second)"), "");
    await click(role("button", "Save changes"));
    await find("#err-rate_burst", "rate_limit_per_s");
    await fill(field("Burst"), "");
    await click(role("button", "Save changes"));
    await find("main dd", "no rate limit");

    // The suite's worker has a row for it already when an attempt failed.
    sql(`INSERT INTO webhook_circuit (webhook_id, state, since, consecutive_failures) VALUES (${hookId}, 'open', now(), 4)
         ON CONFLICT (webhook_id) DO UPDATE SET state = 'open', since = now(), consecutive_failures = 4`);
    await page.evaluate((h) => { location.hash = h; }, "#/webhooks");
    await find("main table .badge", "circuit open since");
    await page.evaluate((h) => { location.hash = h; }, `#/webhooks/${hookId}`);
    await find("main .title .badge", "circuit open since");
    await shot("14-webhook-circuit-open");

    const delivered = "audit-" + marker, refused = "audit-filtered-" + marker;
    sql(`INSERT INTO delivery_events (event_id, event_type, stream_seq, published_at, processed_at, matched, filtered) VALUES
      ('${delivered}', 'user.created', 1000001, now() - interval '2 seconds', now() - interval '1 second', ARRAY[${hookId}], '{}'),
      ('${refused}', 'ticket.created', 1000002, now() - interval '1 second', now(), '{}', ARRAY[${hookId}]);
      INSERT INTO webhook_deliveries (webhook_id, event_type, payload, response_status, status, attempt_number, event_id, delivered_at)
      VALUES (${hookId}, 'user.created', '{"user_id": 77}', 200, 'success', 1, '${delivered}', now())`);
    await click(role("link", "Audit"));
    await find(role("heading", "Delivery audit"));
    await find(`${role("table", "Events")} ${role("link", refused)}`);
    await choose(field("Event type"), "user.created");
    await click(role("button", "Apply filters"));
    await find(`${role("table", "Events")} ${role("link", delivered)}`);
    assert.equal(await page.$$eval(`main table a[href="#/audit/${refused}"]`, (a) => a.length), 0);
    await find("main table .badge", "succeeded 1");
    await shot("15-audit");
    await click(role("link", delivered));
    await find(role("heading", "Event " + delivered));
    await find("main .badge", exactly("succeeded"));
    await find("main li.attempt span", exactly("HTTP 200"));
    await find("main pre", '"user_id": 77');
    await shot("16-audit-event");
    await page.evaluate((h) => { location.hash = h; }, "#/audit/" + refused);
    await find("main .badge", exactly("filtered_out"));
    await find("main p.empty", "Not available");
    sql(`DELETE FROM webhook_circuit WHERE webhook_id = ${hookId}`);
  });

  await step("delete with a confirmation", async () => {
    await click(role("link", "Webhooks"));
    await click(`${role("table", "Webhooks")} ${role("link", hookName)}`);
    const dialog = role("dialog", "Confirm");
    await click(role("button", "Delete webhook"));
    await click(`${dialog} ${role("button", "Cancel")}`);
    await find(role("heading", hookName));
    await click(role("button", "Delete webhook"));
    await click(`${dialog} ${role("button", "Delete")}`);
    await find("#toast", exactly("Webhook deleted."));
    await find("main p.empty", exactly("No webhooks match."));
    assert.equal((await api("GET", "/webhooks/" + hookId)).status, 404);
  });

  await step("sign out forgets the token", async () => {
    await click(role("button", "Sign out"));
    await find(field("API token"));
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  });
  assert.deepEqual(problems, [], "no console errors or CSP violations");
  console.log(`portal (${BROWSER}): ${steps.length} steps passed; screenshots in ${OUT}`);
} catch (e) {
  if (page) await page.screenshot({ path: path.join(OUT, "failure.png"), fullPage: true }).catch(() => {});
  if (page) console.error("\npage shows:\n" + (await page.evaluate(() => document.body.innerText).catch(() => "?")));
  // What the API says, beside what the page shows: tells a slow page from
  // a delivery that did not happen.
  try {
    for (const w of (await (await api("GET", "/webhooks?limit=200")).json()).items) {
      const d = await (await api("GET", `/webhooks/${w.id}/deliveries?limit=20`)).json();
      console.error(`webhook ${w.id}: ` + JSON.stringify(d.items.map((x) =>
        ({ id: x.id, event_id: x.event_id, attempt: x.attempt_number, status: x.status, http: x.response_status }))));
    }
  } catch (why) { console.error("the API could not be asked: " + why); }
  console.error(`receiver got ${received.length} POST(s); failed in step: ${steps.length + 1}`);
  console.error(problems.join("\n"));
  throw e;
} finally {
  await browser.close();
  receiver.close();
}
