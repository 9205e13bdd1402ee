// The fleet overview with a large fleet: how long after the page loads
// the overview shows every cluster, and how long a status change takes to
// show. Run by test/e2e/ui_test.go (TestWebUIWithAThousandClusters), which
// answers "DRAIN <cluster>" with "drained" once the drain is stored.
// Prints "METRIC <name> <ms>" lines; exits 1 on a failed check.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const base = process.env.FLOTILLA_URL;
const want = Number(process.env.FLOTILLA_CLUSTERS);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(20_000);
  // Log in once; the session lives in the tab.
  await page.goto(base + "/");
  await page.getByLabel("Credential or access token").fill(process.env.FLOTILLA_CREDENTIAL);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("tr[data-cluster]").first().waitFor();

  // First render: from a fresh load of the page to every row shown. Three
  // loads; each is reported.
  for (let i = 0; i < 3; i++) {
    const t0 = Date.now();
    await page.reload({ waitUntil: "commit" });
    await page.waitForFunction((n) => document.querySelectorAll("tr[data-cluster]").length === n, want, { polling: "raf" });
    console.log("METRIC overview_first_render_ms " + (Date.now() - t0));
  }
  // A status change: a cluster is drained; the time until its row says so.
  for (const name of ["c500", "c999", "c17"]) {
    console.log("DRAIN " + name);
    if ((await lines.next()).value !== "drained") throw new Error("no drain");
    const t0 = Date.now();
    await page.locator(`tr[data-cluster="${name}"] .badge`, { hasText: "drained" }).waitFor();
    console.log("METRIC status_change_shown_ms " + (Date.now() - t0));
  }
} catch (e) {
  failed = true;
  console.log("FAIL " + (e?.message ?? e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
