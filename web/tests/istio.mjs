// Browser test of the cluster page's Istio: Playwright (playwright-core)
// drives the machine's Chromium against a real `flotilla server` and two
// local-fleet clusters with their agents. test/e2e/istio_ui_test.go starts
// them and this script, and answers on stdin:
//
//   script → "INSTALL"     the Go test applies an IstioInstallation for c2,
//   Go     → "installed"   and says so.
//
// c1 runs an istiod Deployment of revision canary (2 replicas, all ready
// once the real istiod the local fleet runs for it is) with its injection webhook, the revision tag prod-canary and one pod it
// injected; its agent manages Istio's lifecycle, so it reports webhooks and
// tags. c2 runs no istiod, and its agent does not manage Istio's
// lifecycle. Exits 1 on the first failed check, or when a page broke its
// Content Security Policy. Env: FLOTILLA_URL, FLOTILLA_CREDENTIAL, CHROMIUM
// (default /usr/bin/chromium), FLOTILLA_SCREENSHOTS (a directory).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { check, shot, watchPolicy } from "./browser.mjs";

const base = process.env.FLOTILLA_URL;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const cell = (row, col) => row.locator(`[data-col="${col}"]`);
const exactly = (s) => new RegExp("^" + s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "$");

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
let violations = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
  page.setDefaultTimeout(10_000);
  violations = await watchPolicy(page);
  await page.goto(base + "/clusters/organizations/acme/clusters/c1");
  await page.getByLabel("Credential or access token").fill(process.env.FLOTILLA_CREDENTIAL);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Cluster c1" }).waitFor();

  // c1: the canary revision as its agent reports it (every 10 s).
  const revisions = page.getByRole("table", { name: "Istio revisions" });
  const canary = revisions.locator('tr[data-revision="canary"]');
  await cell(canary, "proxies").filter({ hasText: exactly("1") }).waitFor({ timeout: 40_000 });
  check(true, "c1's page shows the canary revision with the one proxy it injected");
  check((await cell(canary, "version").textContent()) === "1.31.0", "the revision's version is its istiod's, 1.31.0");
  await cell(canary, "istiod").filter({ hasText: exactly("2/2 ready") }).waitFor({ timeout: 60_000 });
  check(true, "istiod's ready and desired replicas are shown, without a reload: 2/2 ready");
  check((await cell(canary, "tags").textContent()) === "prod-canary", "the revision tag prod-canary points at canary");
  const hooks = await cell(canary, "webhooks").locator("li").allTextContents();
  check(hooks.join(",") === "istio-revision-tag-prod-canary,istio-sidecar-injector-canary", "the revision's webhooks are listed: " + hooks.join(", "));
  check((await cell(canary, "installation").textContent()) === "not Flotilla's", "no IstioInstallation wants the canary revision");
  check((await revisions.locator("tbody tr").count()) === 1, "c1 runs one revision");
  check((await page.getByTestId("istio-lifecycle").textContent()).includes("not managed by Flotilla"), "c1's Istio lifecycle is not Flotilla's");
  await shot(page, "cluster-istio");

  // c2: no istiod, nothing wants one: the empty state.
  await page.getByRole("link", { name: "← Fleet" }).click();
  await page.locator('tr[data-cluster="c2"]').getByRole("link", { name: "c2" }).click();
  await page.getByRole("heading", { name: "Cluster c2" }).waitFor();
  await page.getByText("No istiod revision reported: Istio is not installed.").waitFor({ timeout: 30_000 });
  check((await page.getByRole("table", { name: "Istio revisions" }).count()) === 0, "c2's page shows no revision table, but says that no istiod revision is reported");

  // An IstioInstallation selects c2, whose agent may not install Istio:
  // the revision it wants shows, not running, with the installation's error.
  console.log("INSTALL");
  check((await lines.next()).value === "installed", "the Go test applied an IstioInstallation for c2");
  const wanted = page.getByRole("table", { name: "Istio revisions" }).locator('tr[data-revision="default"]');
  await cell(wanted, "installation").filter({ hasText: "Failed" }).waitFor({ timeout: 60_000 });
  check((await cell(wanted, "installation").textContent()).startsWith("stable"), "the default revision is IstioInstallation stable's, without a reload");
  check((await cell(wanted, "istiod").textContent()) === "not running", "its istiod is not running in c2");
  check((await page.getByTestId("istio-lifecycle").textContent()).includes("managed by Flotilla: IstioInstallation stable"), "c2's Istio lifecycle is Flotilla's");
  const lastError = await page.getByTestId("istio-last-error").textContent();
  check(lastError.includes("does not manage Istio's lifecycle"), "the last error says that c2's agent does not manage Istio's lifecycle: " + lastError);
  await shot(page, "cluster-istio-failed");
  check(violations.length === 0, "no page broke its Content Security Policy");
} catch (e) {
  failed = true;
  console.log("FAIL " + (e?.message ?? e));
  for (const v of violations) console.log("FAIL the Content Security Policy refused: " + v);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
