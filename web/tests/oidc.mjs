// The OIDC login of the web UI in Chromium: the login page offers the
// server's issuer, the browser goes there and back (authorization code
// with PKCE), and lands logged in on the page it started from. Run by
// test/e2e/ui_test.go (TestWebUILogsInThroughOIDC). Env: FLOTILLA_URL.
import { chromium } from "playwright-core";

const base = process.env.FLOTILLA_URL;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
// What the Content Security Policy refused (the issuer's fetches must pass).
const violations = [];
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15_000);
  page.on("console", (m) => {
    if (m.text().includes("Content Security Policy")) violations.push(m.text());
  });
  await page.addInitScript(() =>
    document.addEventListener("securitypolicyviolation", (e) =>
      console.error(`securitypolicyviolation: Content Security Policy ${e.effectiveDirective} refused ${e.blockedURI}`),
    ),
  );
  const first = await page.goto(base + "/audit");
  if (!(first.headers()["content-security-policy"] ?? "").includes("connect-src 'self' ")) throw new Error("the page's connect-src names no issuer: " + first.headers()["content-security-policy"]);
  await page.getByRole("button", { name: "Log in with OIDC" }).click();
  await page.getByTestId("subject").filter({ hasText: "user:" }).waitFor();
  const subject = await page.getByTestId("subject").textContent();
  console.log((subject === "user:kilgore@kilgore.trout" ? "ok - " : "not ok - ") + "logged in through OIDC as " + subject);
  if (!page.url().endsWith("/audit")) throw new Error("the login did not return to /audit: " + page.url());
  console.log("ok - back on the page the login started from");
  await page.getByRole("link", { name: "Fleet" }).click();
  await page.getByText("No clusters yet").waitFor();
  console.log("ok - no binding, no cluster shown");
  if (violations.length > 0) throw new Error("the Content Security Policy refused something");
  console.log("ok - the login broke no rule of the Content Security Policy");
} catch (e) {
  failed = true;
  console.log("FAIL " + (e?.message ?? e));
  for (const v of violations) console.log("FAIL the Content Security Policy refused: " + v);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
