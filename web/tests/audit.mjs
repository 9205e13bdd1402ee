// Browser test of the web UI's audit page: Playwright (playwright-core)
// drives the machine's Chromium against a real `flotilla server` whose audit
// holds more than one page (test/e2e/audit_ui_test.go writes 1,200 tenants,
// the last of them "newest", and starts this script). The newest page shows first, newest at the top;
// "Load older records" follows the server's page token until there is no
// older page, and the oldest record, the organization's create, is shown.
// Exits 1 on the first failed check. Env: FLOTILLA_URL, FLOTILLA_CREDENTIAL,
// CHROMIUM (default /usr/bin/chromium), FLOTILLA_SCREENSHOTS (a directory).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = process.env.FLOTILLA_URL;
const credential = process.env.FLOTILLA_CREDENTIAL;
const shots = process.env.FLOTILLA_SCREENSHOTS;

function check(ok, what) {
  if (!ok) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
  page.setDefaultTimeout(10_000);
  await page.goto(base + "/audit");
  await page.getByLabel("Credential or access token").fill(credential);
  await page.getByRole("button", { name: "Log in" }).click();

  const records = page.getByRole("table", { name: "Audit records" }).locator(":scope > tbody > tr");
  const more = page.getByRole("button", { name: "Load older records" });
  await more.waitFor();
  check((await records.count()) === 500, "the first page shows 500 records");
  check((await records.first().textContent()).includes("organizations/acme/tenants/newest"), "the newest record is at the top");
  check((await page.getByText("500 records loaded; older ones exist.").count()) === 1, "the page says that older records exist");
  await more.click();
  await page.getByText("1000 records loaded; older ones exist.").waitFor();
  check((await records.count()) === 1000, "load older records appends the next page");
  await more.click();
  await page.getByText("1201 records loaded (all there are).").waitFor();
  check((await more.count()) === 0, "after the last page there is nothing more to load");
  check((await records.last().textContent()).includes("Organization"), "the oldest record, the organization's create, is at the bottom");
  if (shots) {
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: join(shots, "audit-pages.png") });
  }
} catch (e) {
  failed = true;
  console.log("not ok - " + e.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
