// Drives Debian's chromium (playwright-core) for tests/e2e/test_vnc.py. argv[2] is a JSON
// object: {modules: node_modules dir, chromium, hangard: https URL, page, viewers: [ws URL, ws URL],
// reused: ws URL, foreign_page, foreign: ws URL, text}. Prints one JSON line of what each
// viewer saw; exits 1 on an exception (the Python test asserts on the figures).
import { createRequire } from 'node:module';

const cfg = JSON.parse(process.argv[2]);
// playwright-core lives in the cache scripts/fetch-browser-deps.sh filled, not in the tree.
const { chromium } = createRequire(cfg.modules + '/')('playwright-core');
const deadline = (ms) => Date.now() + ms;

async function waitFor(page, fn, arg, ms, what) {
    const until = deadline(ms);
    for (;;) {
        const v = await page.evaluate(fn, arg);
        if (v) return v;
        if (Date.now() > until) {
            const state = await page.evaluate(() => JSON.stringify(
                { events: window.viewer.events, screen: window.viewer.screen() }));
            throw new Error('timed out waiting for ' + what + ': ' + state);
        }
        await new Promise((r) => setTimeout(r, 100));
    }
}

async function open(context, pageUrl, ws) {
    const page = await context.newPage();
    page.on('pageerror', (e) => console.error('page error:', e.message));
    await page.goto(pageUrl + '?ws=' + encodeURIComponent(ws));
    await page.waitForFunction(() => window.viewer !== undefined, null, { timeout: 15000 });
    return page;
}

// Connected, or disconnected: which happens first.
async function outcome(page) {
    return waitFor(page, () => (window.viewer.connected || window.viewer.disconnected)
        ? { connected: window.viewer.connected, events: window.viewer.events } : null,
        null, 20000, 'connect or disconnect');
}

const browser = await chromium.launch({
    executablePath: cfg.chromium,
    args: ['--ignore-certificate-errors', '--no-sandbox'],
});
const out = {};
try {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    // hangard's TLS asks every client for a certificate (it may stand for a user). Chromium
    // answers that question on a page load (none: go on without) and keeps the answer for the
    // host, but cancels a WebSocket handshake that meets it first: load a page of hangard's
    // first, as a user who opened its address (or its dashboard) has.
    const first = await context.newPage();
    await first.goto(cfg.hangard + '/v1/health');
    await first.close();
    const a = await open(context, cfg.page, cfg.viewers[0]);
    out.a = await outcome(a);
    out.a_screen = await waitFor(a, () => { const s = window.viewer.screen(); return s.lit > 500 ? s : null; },
        null, 20000, 'viewer A to show the screen');

    const b = await open(context, cfg.page, cfg.viewers[1]);
    out.b = await outcome(b);
    out.b_screen = await waitFor(b, () => { const s = window.viewer.screen(); return s.lit > 500 ? s : null; },
        null, 20000, 'viewer B to show the screen');
    out.a_after_b = await a.evaluate(() => ({ connected: window.viewer.connected, events: window.viewer.events }));

    // A types; B sees the screen change (one display, shared).
    const before = await b.evaluate(() => window.viewer.screen().sum);
    await a.evaluate((t) => window.viewer.type(t), cfg.text);
    out.b_changed = await waitFor(b, (s) => window.viewer.screen().sum !== s, before, 20000,
        'viewer B to see the typed text') && true;
    out.a_final = await a.evaluate(() => window.viewer.screen());

    const reused = await open(context, cfg.page, cfg.reused);
    out.reused = await outcome(reused);
    const foreign = await open(context, cfg.foreign_page, cfg.foreign);
    out.foreign = await outcome(foreign);
} finally {
    await browser.close();
}
console.log(JSON.stringify(out));
