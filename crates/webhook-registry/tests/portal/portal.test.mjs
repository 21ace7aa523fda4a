// The portal in headless Chromium (Playwright) against the real services,
// started by deploy/portal-test.sh, which passes:
//   PORTAL_URL, PORTAL_TOKEN, PORTAL_OUT (screenshots), PLAYWRIGHT_DIR
//   (where playwright-core is installed), CHROMIUM, EVENTCTL (with NATS_URL
//   and NATS_PREFIX in the environment).
// Controls are found by their accessible names, as a screen reader would.
import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import http from "node:http";
import path from "node:path";
import assert from "node:assert/strict";

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(k + " is not set"); return v; };
const BASE = env("PORTAL_URL");
const TOKEN = env("PORTAL_TOKEN");
const OUT = env("PORTAL_OUT");
const { chromium } = createRequire(path.join(env("PLAYWRIGHT_DIR"), "node_modules", "x.js"))("playwright-core");
const WAIT = 20000;

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

function publish(type, payload) {
  execFileSync(env("EVENTCTL"), ["publish", "--type", type, "--payload", JSON.stringify(payload)],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
}

const steps = [];
async function step(name, f) {
  const t = Date.now();
  process.stdout.write(`portal: ${name} … `);
  await f();
  steps.push(name);
  console.log(`ok (${Date.now() - t} ms)`);
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const problems = [];
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(BASE).origin });
  page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  // Errors in the console fail the suite, except the answers the steps
  // provoke on purpose (a wrong token, a bad URL).
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of (401|422) /.test(m.text())) problems.push("console: " + m.text());
  });
  page.on("response", (r) => {
    if (r.status() >= 400 && ![401, 422].includes(r.status())) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  // Every control of the page has an accessible name; then the screenshot.
  const shot = async (name) => {
    const unnamed = await page.evaluate(() => [...document.querySelectorAll("button, input, select, textarea, a[href]")]
      .filter((e) => !((e.labels && e.labels.length) || e.getAttribute("aria-label") || e.textContent.trim()))
      .map((e) => e.outerHTML.slice(0, 80)));
    assert.deepEqual(unnamed, [], name + ": controls without an accessible name");
    assert.ok(!(await page.locator("body").innerText()).includes("[object "), name + ": an object rendered as text");
    await page.screenshot({ path: path.join(OUT, name + ".png"), fullPage: true });
  };
  const main = page.getByRole("main");
  const marker = "portal-" + Date.now().toString(36);
  let hookId;

  await step("a wrong token is refused and says so", async () => {
    await page.goto(BASE);
    await page.getByLabel("API token").fill("not-a-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByText("Wrong token: Invalid or expired API key").waitFor();
    await shot("01-sign-in");
  });

  await step("sign in; the token stays in sessionStorage only", async () => {
    await page.getByLabel("API token").fill(TOKEN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    const where = await page.evaluate((t) => ({
      session: Object.values(sessionStorage).includes(t),
      local: Object.values(localStorage).includes(t) || document.cookie.includes(t),
      url: location.href.includes(t),
    }), TOKEN);
    assert.deepEqual(where, { session: true, local: false, url: false });
  });

  await step("overview: figures and readiness of every service", async () => {
    await page.getByRole("table", { name: "Service readiness" }).waitFor();
    for (const s of ["webhook-registry", "gateway", "delivery-worker"]) {
      const row = page.getByRole("row", { name: new RegExp("^" + s) });
      await row.getByText("ready", { exact: true }).waitFor();
    }
    await shot("02-overview-empty");
  });

  await step("create: the API's 422 message appears beside the URL field", async () => {
    await page.getByRole("link", { name: "Webhooks", exact: true }).click();
    await page.getByRole("link", { name: "New webhook" }).click();
    await page.getByLabel("Name").fill("CRM " + marker);
    await page.getByLabel("URL", { exact: true }).fill("ftp://crm.example/hook");
    await page.getByLabel("Event type").fill("user.created");
    await page.getByRole("button", { name: "Create webhook" }).click();
    const err = page.locator("#err-url");
    await err.filter({ hasText: /./ }).waitFor();
    assert.equal(await page.getByLabel("URL", { exact: true }).getAttribute("aria-invalid"), "true");
    assert.equal(await page.locator("#err-name").textContent(), "");
    await shot("03-webhook-form-error");
  });

  await step("create a webhook pointing at the local receiver", async () => {
    await page.getByLabel("URL", { exact: true }).fill(hookUrl);
    await page.getByRole("button", { name: "Create webhook" }).click();
    await page.getByRole("heading", { name: "CRM " + marker }).waitFor();
    hookId = Number(new URL(page.url()).hash.split("/")[2]);
    assert.ok(hookId > 0);
  });

  await step("edit it", async () => {
    await page.getByRole("link", { name: "Edit", exact: true }).click();
    await page.getByLabel("Description").fill("CRM sync (edited)");
    await page.getByRole("button", { name: "Save changes" }).click();
    await main.getByText("CRM sync (edited)").waitFor();
  });

  let failedId;
  await step("publish an event: the failed delivery appears with its payload", async () => {
    // the worker has the new webhook once the registry's change notice is in
    await page.waitForTimeout(1000);
    publish("user.created", { user_id: 7, telegram_id: 700, username: marker, first_name: "Иван",
      last_name: "Петров 🚀", referral_code: "r7", referred_by_id: null });
    const pre = main.locator("article.event pre", { hasText: `"username": "${marker}"` });
    await pre.waitFor();
    const attempt = main.locator("li.attempt.failed");
    await attempt.getByText("HTTP 500", { exact: true }).waitFor();
    const label = await attempt.getByRole("button", { name: /^Retry delivery/ }).getAttribute("aria-label");
    failedId = label.split(" ").pop();
    assert.ok(received.some((r) => r.body.includes(marker)), "the receiver got the event");
  });

  await step("overview lists the webhook as failing now", async () => {
    await page.getByRole("link", { name: "Overview", exact: true }).click();
    const failing = page.getByRole("region", { name: "Failing now" });
    await failing.getByRole("link", { name: "CRM " + marker }).waitFor();
    await page.getByRole("table", { name: "Service readiness" }).waitFor();
    await shot("02-overview");
    await failing.getByRole("link", { name: "CRM " + marker }).click();
    await main.getByRole("button", { name: "Retry delivery " + failedId }).waitFor();
  });

  await step("retry the failed delivery: the new attempt succeeds", async () => {
    answer = 200;
    await main.getByRole("button", { name: "Retry delivery " + failedId }).click();
    // a new row (the worker runs without automatic retries, so none was queued)
    await page.getByText("Attempt 2 queued.").waitFor();
    const ok = main.locator("li.attempt.success", { hasText: "Attempt 2" });
    await ok.waitFor();
    await ok.getByText("HTTP 200", { exact: true }).waitFor();
    // both attempts of the event in one group
    assert.equal(await main.locator("article.event", { hasText: marker }).locator("li.attempt").count(), 2);
    await main.getByRole("img", { name: /Deliveries per hour over the last 24 hours: 1 succeeded, 1 failed/ }).waitFor();
    await shot("04-deliveries");
  });

  await step("filter deliveries by status", async () => {
    await main.getByLabel("Status").selectOption("failed");
    await main.getByRole("heading", { name: "Deliveries (1)" }).waitFor();
    await main.getByLabel("Status").selectOption("");
    await main.getByRole("heading", { name: "Deliveries (2)" }).waitFor();
  });

  await step("replay the stream from the portal: the job completes, every event once", async () => {
    const before = received.filter((r) => r.body.includes(marker)).length;
    const jobs = main.getByRole("region", { name: "Recovery jobs" });
    await jobs.getByText("Recover, replay or retry in bulk").click();
    await jobs.getByLabel("Kind").selectOption("replay");
    // a 422 lands beside its field
    await jobs.getByLabel(/Deliveries per second/).fill("0");
    await jobs.getByRole("button", { name: "Start job" }).click();
    await jobs.getByText("Input should be greater than or equal to 1").waitFor();
    await jobs.getByLabel(/Deliveries per second/).fill("100");
    await jobs.getByLabel(/After stream sequence/).fill("0");
    await jobs.getByRole("button", { name: "Start job" }).click();
    await page.getByText(/^Job \d+ queued\.$/).waitFor();
    await jobs.locator("li.job.completed").waitFor();
    assert.equal(received.filter((r) => r.body.includes(marker)).length, before + 1, "the marker event replayed once");
    await shot("04b-replay-job");
  });

  await step("send a test ping", async () => {
    await main.getByRole("button", { name: "Send test ping" }).click();
    await main.getByText("Test ping delivered").waitFor();
    assert.ok(received.some((r) => r.headers["x-webhook-event"] === "webhook.test"));
  });

  await step("rotate the secret: shown once, with a copy button", async () => {
    await main.getByRole("button", { name: "Rotate secret" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Rotate secret" }).click();
    const secret = page.getByLabel(/New secret/);
    await secret.waitFor();
    const value = await secret.inputValue();
    assert.match(value, /^[A-Za-z0-9]{40}$/);
    await page.getByRole("button", { name: "Copy secret" }).click();
    await page.getByText(/^(Copied\.|Select the text and copy it\.)$/).waitFor();
    await shot("05-rotated-secret");
    // the next delivery is signed with it
    const before = received.length;
    await main.getByRole("button", { name: "Send test ping" }).click();
    await main.getByText("Test ping delivered").waitFor();
    assert.ok(received.length > before);
  });

  await step("disable it", async () => {
    await main.getByRole("button", { name: "Disable" }).click();
    await main.getByRole("button", { name: "Enable" }).waitFor();
    await main.getByText("inactive", { exact: true }).first().waitFor();
  });

  await step("webhooks table with filters", async () => {
    await page.getByRole("link", { name: "Webhooks", exact: true }).click();
    const table = page.getByRole("table", { name: "Webhooks" });
    await table.getByRole("link", { name: "CRM " + marker }).waitFor();
    await table.getByText("inactive").waitFor();
    await page.getByLabel("State").selectOption("true");
    await page.getByRole("button", { name: "Apply filters" }).click();
    await page.getByText("No webhooks match.").waitFor();
    await page.getByLabel("State").selectOption("false");
    await page.getByRole("button", { name: "Apply filters" }).click();
    await table.getByRole("link", { name: "CRM " + marker }).waitFor();
    await shot("06-webhooks");
  });

  await step("events: catalogue and a published event in the live stream", async () => {
    await page.getByRole("link", { name: "Events", exact: true }).click();
    await main.locator("details.type summary", { hasText: "ticket.status_changed" }).click();
    await main.getByRole("heading", { name: "JSON Schema" }).first().waitFor();
    await main.locator("p.hint code", { hasText: "ticket.*" }).waitFor();
    await main.getByRole("button", { name: "Connect", exact: true }).click();
    await page.locator("#status", { hasText: /^connected$/ }).waitFor();
    const live = marker + "-live";
    publish("ticket.created", { ticket_id: 1, user_id: 7, title: live, status: "open", priority: "low", has_media: false });
    await page.getByRole("list", { name: "Live events" }).getByText(live).waitFor();
    // pause, miss an event, resume: it is replayed with since
    await main.getByRole("button", { name: "Pause" }).click();
    await page.locator("#status", { hasText: "paused" }).waitFor();
    publish("ticket.created", { ticket_id: 2, user_id: 7, title: live + "-missed", status: "open", priority: "low", has_media: false });
    await main.getByRole("button", { name: "Resume" }).click();
    await page.getByRole("list", { name: "Live events" }).getByText(live + "-missed").waitFor();
    await page.getByText("1 missed event(s) replayed").waitFor();
    await shot("07-events");
  });

  await step("usable on a 390 px phone screen", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    for (const [hash, name] of [["#/overview", "08-phone-overview"], ["#/webhooks", "09-phone-webhooks"], ["#/events", "10-phone-events"],
      [`#/webhooks/${hookId}`, "11-phone-deliveries"]]) {
      await page.evaluate((h) => { location.hash = h; }, hash);
      await page.getByRole("heading", { level: 1 }).waitFor();
      await page.waitForLoadState("networkidle");
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(wide <= 390, `${hash} is ${wide} px wide at 390 px`);
      await shot(name);
    }
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  await step("delete with a confirmation", async () => {
    await page.getByRole("link", { name: "Webhooks", exact: true }).click();
    await page.getByRole("table", { name: "Webhooks" }).getByRole("link", { name: "CRM " + marker }).click();
    await main.getByRole("button", { name: "Delete webhook" }).click();
    const dialog = page.getByRole("dialog");
    await dialog.getByRole("button", { name: "Cancel" }).click();
    await main.getByRole("heading", { name: "CRM " + marker }).waitFor();
    await main.getByRole("button", { name: "Delete webhook" }).click();
    await dialog.getByRole("button", { name: "Delete" }).click();
    await page.getByText("No webhooks match.").waitFor();
    const res = await fetch(new URL("/webhooks?limit=200", BASE), { headers: { Authorization: "Bearer " + TOKEN } });
    assert.equal((await res.json()).total, 0);
  });

  await step("sign out forgets the token", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("API token").waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  });
  assert.deepEqual(problems, [], "no console errors or CSP violations");
  console.log(`portal: ${steps.length} steps passed; screenshots in ${OUT}`);
} catch (e) {
  if (page) await page.screenshot({ path: path.join(OUT, "failure.png"), fullPage: true }).catch(() => {});
  if (page) console.error("\npage shows:\n" + (await page.locator("body").innerText().catch(() => "?")));
  console.error(problems.join("\n"));
  throw e;
} finally {
  await browser.close();
  receiver.close();
}
