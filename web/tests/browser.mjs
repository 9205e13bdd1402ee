// What the browser test scripts share: checks that print "ok - …" and
// throw on failure, screenshots, and the watch on the pages' Content
// Security Policy.
import { mkdirSync } from "node:fs";
import { join } from "node:path";

/** check throws when ok is false, else prints "ok - what". */
export function check(ok, what) {
  if (!ok) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

/** shot writes a full-page screenshot of page to $FLOTILLA_SCREENSHOTS/name.png, when that is set. */
export async function shot(page, name) {
  const dir = process.env.FLOTILLA_SCREENSHOTS;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, name + ".png"), fullPage: true });
}

// watchPolicy collects what the pages' Content Security Policy refused:
// the browser's console report and the securitypolicyviolation event.
export async function watchPolicy(page) {
  const seen = [];
  page.on("console", (m) => {
    if (m.text().includes("Content Security Policy")) seen.push(m.text());
  });
  await page.addInitScript(() =>
    document.addEventListener("securitypolicyviolation", (e) =>
      console.error(`securitypolicyviolation: Content Security Policy ${e.effectiveDirective} refused ${e.blockedURI}`),
    ),
  );
  return seen;
}
