// Screenshots of the Dagster UI for the README (headless Debian Chromium, playwright-core).
//   npm install --prefix /tmp/shots playwright-core@1.64.1
//   set -a; . .stack/env; set +a   # DAGSTER_USER and DAGSTER_PASSWORD_FILE: the UI's login
//   NODE_PATH=/tmp/shots/node_modules node docs/screenshots.cjs [http://127.0.0.1:3000]
const fs = require("fs");
const { chromium } = require("playwright-core");

// the login of the stack's proxy (HTTP Basic): the user, and the password read from its file
function credentials() {
  const user = process.env.DAGSTER_USER;
  const file = process.env.DAGSTER_PASSWORD_FILE;
  if (!user) return undefined;
  if (!file) throw new Error("DAGSTER_USER is set: DAGSTER_PASSWORD_FILE must name its password");
  return { username: user, password: fs.readFileSync(file, "utf8").trim() };
}

(async () => {
const base = process.argv[2] ?? "http://127.0.0.1:3000";
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({
  viewport: { width: 1800, height: 1100 },
  httpCredentials: credentials(),
});

async function dismissOnboarding() {
  const skip = page.getByRole("button", { name: "Skip" });
  if (await skip.isVisible().catch(() => false)) await skip.click();
}

// the reconciliation's whole upstream: the stream lineage and the batch lineage side by side
await page.goto(
  `${base}/assets/reconciliation/stream_vs_batch?view=lineage&lineageScope=upstream&lineageDepth=10`,
  { waitUntil: "networkidle" },
);
await dismissOnboarding();
await page.waitForTimeout(8000);
await page.screenshot({ path: "docs/asset-graph.png" });

// the batch lineage: the dbt models and the verdicts step over the sink's reviews table
await page.goto(`${base}/locations/__repository__@reviews/asset-groups/batch`, {
  waitUntil: "networkidle",
});
await dismissOnboarding();
await page.waitForTimeout(8000);
await page.screenshot({ path: "docs/batch-graph.png" });

await page.goto(`${base}/assets/reconciliation/stream_vs_batch`, { waitUntil: "networkidle" });
await dismissOnboarding();
await page.waitForTimeout(6000);
await page.screenshot({ path: "docs/reconciliation.png", fullPage: true });
await browser.close();

})();
