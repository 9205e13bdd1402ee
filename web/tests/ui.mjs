// Browser tests of the web UI: Playwright (playwright-core) drives the
// machine's Chromium against a real `flotilla server`. The Go test
// test/e2e/ui_test.go starts the server, the local fleet's agents and this
// script, and answers its requests on stdin/stdout:
//
//   script → "STOP <cluster>"   the Go test stops that cluster's agent,
//   Go     → "stopped"          and says so.
//
// The script prints "METRIC <name> <value>" lines, and fails (exit 1) on
// the first failed check. Env: FLOTILLA_URL, FLOTILLA_CREDENTIAL,
// CHROMIUM (default /usr/bin/chromium), FLOTILLA_SCREENSHOTS (a directory;
// screenshots of each page are written there when set).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { readFileSync } from "node:fs";
import { check, shot, watchPolicy } from "./browser.mjs";

const base = process.env.FLOTILLA_URL;
const credential = process.env.FLOTILLA_CREDENTIAL;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
let violations = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
  page.setDefaultTimeout(10_000);
  violations = await watchPolicy(page);

  // 1. Log in: a deep link survives the login.
  const first = await page.goto(base + "/");
  check((first.headers()["content-security-policy"] ?? "").includes("script-src 'self'"), "the page is served with a strict Content Security Policy");
  await page.getByLabel("Credential or access token").fill("fla_wrong");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("alert").waitFor();
  check((await page.getByRole("alert").textContent()).length > 0, "a wrong credential is refused in plain words");
  await shot(page, "login");
  await page.getByLabel("Credential or access token").fill(credential);
  const loaded = Date.now();
  await page.getByRole("button", { name: "Log in" }).click();

  // 2. Both clusters connected, live.
  const row = (name) => page.locator(`tr[data-cluster="${name}"]`);
  await row("c1").waitFor();
  console.log("METRIC overview_first_render_ms " + (Date.now() - loaded));
  for (const c of ["c1", "c2"]) {
    await row(c).locator('[data-col="connection"]', { hasText: "connected" }).waitFor();
    await row(c).locator('[data-col="sync"]', { hasText: "in sync" }).waitFor({ timeout: 30_000 });
  }
  check(true, "both clusters are connected and in sync");
  check((await page.getByTestId("subject").textContent()) === "user:admin", "the header names the logged-in user");

  // 3. Apply the quickstart through the editor: the plan comes first.
  await page.getByRole("link", { name: "Configuration" }).click();
  await page.getByRole("link", { name: "Apply YAML…" }).click();
  await page.getByRole("textbox", { name: "YAML", exact: true }).fill(readFileSync("../examples/quickstart.yaml", "utf8"));
  check(await page.getByRole("button", { name: "Apply" }).isDisabled(), "Apply is disabled until a plan is shown");
  await page.getByRole("button", { name: "Plan" }).click();
  const planned = page.getByRole("region", { name: "Plan" });
  await planned.waitFor();
  for (const c of ["c1", "c2"]) {
    const text = await planned.locator(`[data-plan-cluster="${c}"]`).textContent();
    check(text.includes("create Gateway payments/shop") && text.includes("create VirtualService payments/shop-shop"), `the plan shows ${c}'s new Gateway and VirtualService`);
  }
  await shot(page, "apply-plan");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.getByRole("status").filter({ hasText: "Saved at store revision" }).waitFor();
  check(true, "the quickstart is saved after its plan");

  // 4. Both clusters reach Applied, live: the page is never reloaded.
  await page.getByRole("link", { name: "Configuration" }).click();
  await page.getByRole("link", { name: "payments-gateway" }).waitFor();
  await shot(page, "config-tree");
  await page.getByRole("link", { name: "payments-gateway" }).click();
  await page.getByRole("link", { name: "shop" }).click();
  await page.getByRole("heading", { name: "IngressGateway shop" }).waitFor();
  const stateOf = (c) => page.locator(`tr[data-status-cluster="${c}"] [data-col="state"]`);
  for (const c of ["c1", "c2"]) await stateOf(c).filter({ hasText: "Applied" }).waitFor({ timeout: 30_000 });
  check(true, "both clusters show Applied without a reload");
  await page.getByRole("group", { name: "Compiled output for cluster" }).getByRole("button", { name: "c1" }).click();
  const compiledC1 = page.getByLabel("Compiled for c1");
  await compiledC1.waitFor();
  check((await compiledC1.textContent()).includes("kind: VirtualService"), "the resource's compiled output in c1 is shown");
  const objectURL = page.url();
  check(objectURL.includes("/config/IngressGateway/organizations/acme/"), "the resource has a deep link: " + objectURL);
  await shot(page, "resource");

  // 7. An invalid edit shows the field path, and nothing is saved.
  const yaml = await page.getByRole("textbox", { name: "YAML", exact: true }).inputValue();
  const serverPort = /^(\s*)port: 80$/m; // the server's port, not a route's 8080
  check(serverPort.test(yaml), "the editor holds the stored YAML");
  await page.getByRole("textbox", { name: "YAML", exact: true }).fill(yaml.replace(serverPort, "$1port: 999999"));
  await page.getByRole("button", { name: "Plan" }).click();
  const problems = page.getByRole("alert").filter({ hasText: "Nothing was saved" });
  await problems.waitFor();
  check((await problems.textContent()).includes("spec.http[0].port"), "the refusal names the field spec.http[0].port");
  await shot(page, "invalid-edit");
  await page.reload();
  await page.getByRole("textbox", { name: "YAML", exact: true }).waitFor();
  check(serverPort.test(await page.getByRole("textbox", { name: "YAML", exact: true }).inputValue()), "the stored resource is unchanged");

  // 8. A stale etag: someone writes meanwhile; the save is refused, shown, and theirs stands.
  const mine = await page.getByRole("textbox", { name: "YAML", exact: true }).inputValue();
  console.log("TOUCH");
  check((await lines.next()).value === "touched", "the Go test changed the IngressGateway meanwhile");
  await page.getByRole("alert").filter({ hasText: "Someone changed this resource" }).waitFor();
  check(true, "the page says at once that someone else changed the resource");
  await page.getByRole("textbox", { name: "YAML", exact: true }).fill(mine.replace("shop.example.com", "mine.example.com"));
  await page.getByRole("button", { name: "Plan" }).click();
  const conflict = page.getByRole("alert").filter({ hasText: "Conflict" });
  await conflict.waitFor();
  check((await conflict.textContent()).includes("nothing was saved"), "the stale edit shows a conflict");
  await shot(page, "conflict");

  await page.getByRole("link", { name: "Fleet" }).click();
  await row("c1").waitFor();
  await shot(page, "fleet-overview");

  // Filter narrows the table; the URL of a cluster is its own page.
  await page.getByLabel("Filter").fill("c2");
  check((await page.locator("tr[data-cluster]").count()) === 1, "the filter narrows the table to c2");
  await page.getByLabel("Filter").fill("");
  await row("c1").getByRole("link", { name: "c1" }).click();
  await page.getByRole("heading", { name: "Cluster c1" }).waitFor();
  check(page.url().endsWith("/clusters/organizations/acme/clusters/c1"), "a cluster has a deep link: " + page.url());
  await page.getByLabel("Compiled objects (YAML)").waitFor();
  check((await page.getByLabel("Compiled objects (YAML)").textContent()).includes("kind: Gateway"), "the cluster page shows its compiled Istio objects");
  await page.getByRole("group", { name: "Namespaces" }).getByRole("button", { name: "payments" }).click();
  await page.getByRole("heading", { name: "In effect in payments" }).waitFor();
  check(true, "the cluster page shows what is in effect in a namespace");
  await shot(page, "cluster-detail");
  await page.goBack();
  await row("c2").waitFor();
  check(page.url() === base + "/", "back returns to the fleet overview");
  await page.reload();
  await row("c2").waitFor();
  check(true, "a reload keeps the session and the page");

  // The services of the fleet registry, with the clusters they run in.
  await page.getByRole("link", { name: "Services" }).click();
  const kube = page.locator('tr[data-service="default/kubernetes"]');
  await kube.waitFor();
  const kubeText = await kube.textContent();
  check(kubeText.includes("c1") && kubeText.includes("c2"), "the registry shows default/kubernetes in c1 and c2");
  await shot(page, "services");

  // 6. The audit entry of the drain shows its field diff.
  await page.getByRole("link", { name: "Audit log" }).click();
  await page.getByLabel("Operation").selectOption("update");
  await page.getByRole("button", { name: "organizations/acme/clusters/c1" }).first().click();
  const diff = page.getByLabel("Field changes");
  await diff.waitFor();
  check((await diff.textContent()).includes("spec.drained"), "the audit entry of the drain shows the spec.drained change");
  check(page.url().includes("operation=update"), "the audit filters are in the URL");
  // A time filter after every record leaves none.
  await page.getByLabel("Since").fill("2099-01-01T00:00");
  await page.getByText("No audit record matches.").waitFor();
  await page.getByLabel("Since").fill("");
  await page.getByRole("button", { name: "organizations/acme/clusters/c1" }).first().waitFor();
  check(true, "the time filter narrows the audit log");
  await shot(page, "audit-log");

  // 5. An agent stops: its cluster shows disconnected within seconds, without a reload.
  await page.getByRole("link", { name: "Fleet" }).click();
  await row("c2").locator('[data-col="connection"]', { hasText: "connected" }).waitFor();
  const stopped = Date.now(); // the agent's stop is asked for now
  console.log("STOP c2");
  const answer = await lines.next();
  check(answer.value === "stopped", "the Go test stopped c2's agent");
  await row("c2").locator('[data-col="connection"]', { hasText: "disconnected" }).waitFor({ timeout: 15_000 });
  console.log("METRIC disconnect_shown_ms " + (Date.now() - stopped));
  check(true, "c2 shows disconnected without a reload");
  check((await page.locator("tr[data-cluster]").first().getAttribute("data-cluster")) === "c2", "problems first: the disconnected cluster leads the table");
  await page.emulateMedia({ colorScheme: "dark" });
  await shot(page, "fleet-overview-dark");
  check(violations.length === 0, "no page broke its Content Security Policy");
} catch (e) {
  failed = true;
  console.log("FAIL " + (e?.message ?? e));
  for (const v of violations) console.log("FAIL the Content Security Policy refused: " + v);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
