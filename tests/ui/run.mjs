// Browser tests of the web UI: headless Debian chromium (driven by playwright-core, no
// browser download) over a real `pai serve` with the fakes (tests/src/bin/pai-ui-fixture.rs).
//
//   node tests/ui/run.mjs [NAME…]      run all tests, or only those named (in this order)
//
// Env: PAI_BIN, UI_FIXTURE (built binaries; default target/debug/…), CHROMIUM (/usr/bin/chromium),
// SCREENSHOTS (target/ui-screenshots), DOCS_SHOTS (also write the README's screenshots, one
// screen high, to this folder: `DOCS_SHOTS=docs/ui scripts/ui-test.sh`).
// Prints one line per test and "N passed, N failed".
// Scenarios run in order on one archive; each can also run alone (it prepares what it needs).

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const PAI = process.env.PAI_BIN || join(root, 'target/debug/pai');
const FIXTURE = process.env.UI_FIXTURE || join(root, 'target/debug/pai-ui-fixture');
const SHOTS = process.env.SCREENSHOTS || join(root, 'target/ui-screenshots');
const TIMEOUT = 15000;
const DESKTOP = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

/// Starts the fixture and returns what it printed (its URLs, key, document ids).
async function startFixture() {
  const child = spawn(FIXTURE, [PAI], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((ok, fail) => {
    child.once('exit', (code) => fail(new Error(`the fixture exited (${code}) before it was ready`)));
    lines.once('line', ok);
  });
  return { child, world: JSON.parse(first) };
}

/// The fake Paperless as the tests check it (the API, with the fixture's token).
async function paperlessDoc(world, id) {
  const r = await fetch(`${world.paperless_url}/api/documents/${id}/`, {
    headers: { Authorization: `Token ${world.paperless_token}`, Accept: 'application/json; version=9' },
  });
  return r.json();
}

async function signIn(page, world) {
  await page.goto(world.url + '/#review');
  await page.locator('#sign-in').waitFor({ state: 'visible' });
  await page.fill('#api-key', world.api_key);
  await page.press('#api-key', 'Enter');
  await page.locator('#page-review').waitFor({ state: 'visible' });
}

async function screenshots(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  for (const [label, size] of [['desktop', DESKTOP], ['phone', PHONE]]) {
    await page.setViewportSize(size);
    await page.screenshot({ path: join(SHOTS, `${name}-${label}.png`), fullPage: true });
    if (process.env.DOCS_SHOTS) {
      mkdirSync(process.env.DOCS_SHOTS, { recursive: true });
      await page.screenshot({ path: join(process.env.DOCS_SHOTS, `${name}-${label}.png`) });
    }
  }
  await page.setViewportSize(DESKTOP);
}

/// Polls the page (reloading its data with `refresh`) until `check` holds: another process
/// (the workers) changes what it shows, so there is no event to await.
async function eventually(refresh, check, what) {
  const deadline = Date.now() + 30000;
  for (;;) {
    await refresh();
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const tests = {
  async sign_in({ page, world, expectHttpErrors }) {
    await page.goto(world.url + '/');
    await page.locator('#sign-in').waitFor({ state: 'visible' });
    assert(await page.locator('#api-key').evaluate((e) => e === document.activeElement), 'the key field has focus');
    // A wrong key is refused with a clear message, and nothing is kept.
    expectHttpErrors(1);
    await page.fill('#api-key', 'not-the-right-key-at-all');
    await page.click('#sign-in-form button[type=submit]');
    await page.locator('#sign-in-error', { hasText: 'not accepted' }).waitFor();
    await signIn(page, world);
    assert(await page.evaluate(() => sessionStorage.getItem('pai.apiKey')) === world.api_key, 'the key is kept for the tab');
    assert(await page.evaluate(() => localStorage.length) === 0, 'nothing is written to localStorage');
  },

  async review_approve_edited_then_undo({ page, world }) {
    await signIn(page, world);
    const card = page.locator('#review-list .card[data-state="pending"]').first();
    await card.waitFor();
    const doc = await card.getAttribute('data-doc');
    const before = await paperlessDoc(world, doc);
    // Current → suggested for each field.
    const title = card.locator('tr[data-field="title"]');
    assert((await title.locator('.current').textContent()).includes(before.title), 'the current title is shown');
    await screenshots(page, 'review');
    // Edit the title, leave the correspondent alone, approve.
    await card.locator('input[name="title"]').fill('Edited by the reviewer');
    await card.locator('input[data-apply="correspondent"]').uncheck();
    await card.locator('[data-action="approve"]').click();
    const applied = page.locator(`#review-list .card[data-doc="${doc}"][data-state="applied"]`);
    await applied.waitFor();
    let now = await paperlessDoc(world, doc);
    assert(now.title === 'Edited by the reviewer', `Paperless has the edited title (got ${now.title})`);
    assert(now.correspondent === before.correspondent, 'the switched-off correspondent is untouched');
    assert(now.document_type !== before.document_type, 'the other fields are applied');
    // Undo from the same card (keyboard: focus is on its Undo button).
    assert(await applied.locator('[data-action="undo"]').evaluate((e) => e === document.activeElement), 'focus moves to Undo');
    await page.keyboard.press('Enter');
    await page.locator(`#review-list .card[data-doc="${doc}"][data-state="pending"]`).waitFor();
    now = await paperlessDoc(world, doc);
    assert(now.title === before.title, `undo restores the title (got ${now.title})`);
    assert(now.document_type === before.document_type, 'undo restores the document type');
  },

  async review_from_the_keyboard({ page, world }) {
    await signIn(page, world);
    const cards = page.locator('#review-list .card[data-state="pending"]');
    await cards.first().waitFor();
    const count = await cards.count();
    assert(count >= 2, `at least two cards wait (${count})`);
    await cards.nth(0).focus();
    await page.keyboard.press('j');
    const second = await cards.nth(1).getAttribute('data-doc');
    assert(await page.evaluate(() => document.activeElement.dataset.doc) === second, 'j moves to the next card');
    await page.keyboard.press('a');
    await page.locator(`#review-list .card[data-doc="${second}"][data-state="applied"]`).waitFor();
    await page.keyboard.press('Enter'); // focus is on Undo
    await page.locator(`#review-list .card[data-doc="${second}"][data-state="pending"]`).waitFor();
  },

  // Needs POST /jobs/{id}/retry (issue 10).
  async retry_a_failed_job({ page, world }) {
    await signIn(page, world);
    await page.click('nav a[href="#jobs"]');
    await page.click('[data-job-filter="failed"]');
    const row = page.locator('#jobs-body tr[data-class="failed"]').first();
    await row.waitFor();
    assert((await row.locator('.stage.failed .detail').count()) > 0, 'the failure says why');
    await screenshots(page, 'jobs');
    await row.locator('[data-action="retry"]').click();
    await row.locator('.result', { hasText: 'Queued again' }).waitFor();
    // The workers run it again; the fake model now answers: no failed job is left.
    await eventually(
      () => page.click('[data-job-filter="failed"]'),
      async () => (await page.locator('#jobs-empty').isVisible()) && (await page.locator('#jobs-body tr').count()) === 0,
      'the retried job to succeed',
    );
  },

  // Needs POST /documents/{id}/retag (issue 11).
  async retag_a_document({ page, world }) {
    await signIn(page, world);
    await page.click('nav a[href="#jobs"]');
    await page.click('[data-job-filter="done"]');
    const row = page.locator('#jobs-body tr').first();
    await row.waitFor();
    await row.locator('[data-action="retag"]').click();
    await row.locator('.result', { hasText: 'Re-tag queued' }).waitFor();
  },

  async jobs_page_pages_and_links({ page, world }) {
    await signIn(page, world);
    await page.click('nav a[href="#jobs"]');
    const rows = page.locator('#jobs-body tr');
    await rows.first().waitFor();
    assert((await rows.count()) >= 4, 'every job is listed');
    const link = rows.first().locator('a').first();
    const href = await link.getAttribute('href');
    assert(/\/documents\/\d+\/details$/.test(href), `the document links to Paperless (${href})`);
    if (!(await page.locator('#jobs-body tr[data-class="failed"]').count())) await screenshots(page, 'jobs');
  },

  async chat_answer_with_a_clickable_citation({ page, world, context }) {
    await signIn(page, world);
    await page.click('nav a[href="#chat"]');
    await page.fill('#chat-question', 'How much was the Acme Plumbing invoice for the kitchen sink repair?');
    await page.press('#chat-question', 'Enter');
    const cite = page.locator('#chat-log .answer a.cite').first();
    await cite.waitFor({ timeout: TIMEOUT });
    assert((await page.locator('#chat-log .answer .answer-text').first().textContent()).includes('120.00 EUR'), 'the streamed answer is shown');
    await screenshots(page, 'chat');
    const [popup] = await Promise.all([context.waitForEvent('page'), cite.click()]);
    await popup.waitForLoadState();
    assert(/\/documents\/\d+\/details$/.test(popup.url()), `the citation opens the document (${popup.url()})`);
    assert((await popup.title()).includes('Paperless'), 'Paperless shows the document');
    await popup.close();
    // The session is kept: a follow-up goes to the same session.
    const sessions = await page.evaluate(() => JSON.parse(sessionStorage.getItem('pai.chatSessions') || '[]'));
    assert(sessions.length === 1 && sessions[0].turns.length === 1, 'the session is remembered');
  },

  async status_page_checks({ page, world }) {
    await signIn(page, world);
    await page.click('nav a[href="#status"]');
    for (const name of ['paperless', 'model', 'embeddings', 'state store']) {
      const check = page.locator(`#checks .check[data-check="${name}"]`);
      await check.waitFor({ timeout: TIMEOUT });
      assert((await check.getAttribute('class')).includes('ok'), `${name}: ${await check.textContent()}`);
    }
    assert((await page.locator('#checks [data-check="paperless"] .detail').textContent()).includes('may do everything'), 'the token\'s permissions are checked');
    const row = (name) => page.locator('#config-body tr', { has: page.locator(`code:text-is("${name}")`) });
    assert((await row('PAPERLESS_URL').textContent()).includes('environment'), 'PAPERLESS_URL comes from the environment');
    assert((await row('PORT').textContent()).includes('environment'), 'PORT comes from the environment');
    assert((await row('CHUNK_TOKENS').textContent()).includes('default'), 'CHUNK_TOKENS is a default');
    const text = await page.locator('body').textContent();
    assert(!text.includes(world.api_key) && !text.includes(world.paperless_token), 'no secret is shown');
    await screenshots(page, 'status');
  },
};

async function main() {
  const only = process.argv.slice(2);
  const unknown = only.filter((n) => !tests[n]);
  if (unknown.length) throw new Error(`no such test: ${unknown.join(', ')} (have: ${Object.keys(tests).join(', ')})`);
  const { child, world } = await startFixture();
  const profile = mkdtempSync(join(tmpdir(), 'pai-ui-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: DESKTOP,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(TIMEOUT);
  let passed = 0;
  let failed = 0;
  try {
    for (const [name, test] of Object.entries(tests)) {
      if (only.length && !only.includes(name)) continue;
      // A fresh page (and tab storage) per test; console errors and page errors fail it.
      const page = await context.newPage();
      const errors = [];
      let allowed = 0;
      page.on('console', (m) => {
        if (m.type() !== 'error') return;
        if (allowed > 0 && /status of 401/.test(m.text())) { allowed -= 1; return; }
        errors.push(m.text());
      });
      page.on('pageerror', (e) => errors.push(String(e)));
      const started = Date.now();
      try {
        await test({ page, world, context, expectHttpErrors: (n) => { allowed += n; } });
        assert(errors.length === 0, `console errors: ${errors.join(' | ')}`);
        passed += 1;
        console.log(`ok   ${name} (${Date.now() - started} ms)`);
      } catch (e) {
        failed += 1;
        console.log(`FAIL ${name}: ${e.message}`);
        await page.screenshot({ path: join(SHOTS, `failed-${name}.png`), fullPage: true }).catch(() => {});
      }
      await page.close();
    }
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    child.stdin.end();
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

mkdirSync(SHOTS, { recursive: true });
main().catch((e) => {
  console.error(e.message);
  console.log('0 passed, 1 failed');
  process.exitCode = 1;
});
