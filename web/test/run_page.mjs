// Opens a kd_jax web page in headless Chromium (tests/test_web.py, the README screenshot).
//   node run_page.mjs URL                 prints the page's #results JSON (open it with ?auto=1)
//   node run_page.mjs URL --screenshot F  saves a PNG of the page once it shows a prediction
// CHROMIUM (environment) names the browser; default /usr/bin/chromium.
import puppeteer from "puppeteer-core";

const [url, flag, screenshot] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu"] });
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 900, height: 560 });
  await page.goto(url);
  const ready = flag === "--screenshot"
    ? () => document.getElementById("latency").textContent ||
        document.getElementById("token-latency").textContent || document.body.dataset.error
    : () => document.body.dataset.done || document.body.dataset.error;
  await page.waitForFunction(ready, { timeout: 60000 });
  const error = await page.evaluate(() => document.body.dataset.error);
  if (error) throw new Error(`page error: ${error}`);
  if (flag === "--screenshot") {
    await page.screenshot({ path: screenshot });
  } else {
    console.log(await page.evaluate(() => document.getElementById("results").textContent));
  }
} finally {
  await browser.close();
}
