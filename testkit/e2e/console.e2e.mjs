// The operator console end to end, in Debian's Chromium (never a downloaded browser),
// driven by playwright-core. testkit/tests/console/e2e.rs builds the world and runs this
// with: CONSOLE_URL, API_URL, ADMIN_EMAIL, ADMIN_PASSWORD, MAIL_API_URL, DEAD_JOBS,
// SCREENSHOT_DIR. Steps go to stderr; stdout carries `need-second-worker` for the test.
// Every wait is on a condition with a deadline, never a fixed sleep.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const CONSOLE_URL = env('CONSOLE_URL');
const API_URL = env('API_URL');
const MAIL_API_URL = env('MAIL_API_URL');
const DEAD_JOBS = Number(env('DEAD_JOBS'));
const SHOTS = env('SCREENSHOT_DIR');
const DEADLINE = 30_000;

const step = (message) => process.stderr.write(`[console.e2e] ${message}\n`);

/// Polls `check` every 100 ms until it returns a truthy value or the deadline passes.
async function until(what, check, deadline = DEADLINE) {
  const end = Date.now() + deadline;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${deadline} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function mailsTo(address) {
  const all = await (await fetch(`${MAIL_API_URL}/email`)).json();
  return all.filter((mail) => (mail.to || []).some((to) => to.address.toLowerCase() === address.toLowerCase()));
}

mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium' });
const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
const page = await context.newPage();
page.setDefaultTimeout(DEADLINE);
const problems = [];
page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
page.on('console', (message) => {
  // A CSP violation is reported on the console; so would be anything the page blocked.
  if (/Content Security Policy|Refused to/i.test(message.text())) problems.push(message.text());
});

const rows = (selector) => page.locator(selector);
const testid = (id) => page.getByTestId(id);

/// Shows the jobs matching the filter, again until `selector` has `count` rows.
async function showJobs({ queue = '', state }, selector, count) {
  await page.selectOption('#jobs-queue', queue);
  await page.selectOption('#jobs-state', state);
  const shown = async () => (await rows(selector).count()) === count;
  await until(`${count} job row(s) ${selector} for ${queue || 'any queue'}/${state}`, async () => {
    await page.click('#jobs-filter button[type=submit]');
    return until('the list to load', shown, 1000).catch(() => false);
  });
}

async function run() {
  step(`open ${CONSOLE_URL} and sign in as the admin`);
  await page.goto(CONSOLE_URL);
  await testid('login-email').fill(env('ADMIN_EMAIL'));
  await testid('login-password').fill(env('ADMIN_PASSWORD'));
  await testid('login-submit').click();

  step('three queues, live');
  for (const queue of ['emails', 'uploads', 'maintenance']) await testid(`queue-row-${queue}`).waitFor();
  await until('exactly three queue rows', async () => (await rows('[data-testid^="queue-row-"]').count()) === 3);
  await until('one worker in the fleet', async () =>
    (await rows('[data-testid="workers-table"] tbody tr[data-worker]').count()) === 1);

  step('pause emails; a registration\'s email waits');
  await testid('pause-emails').click();
  await testid('queue-state-emails').filter({ hasText: /^paused$/ }).waitFor();
  const user = `console-${Date.now()}@example.test`;
  const registered = await fetch(`${API_URL}/api/v1/auth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: user, password: env('ADMIN_PASSWORD') }),
  });
  if (registered.status !== 201) throw new Error(`register: ${registered.status}`);
  await showJobs({ queue: 'emails', state: 'pending' }, '[data-testid="jobs-table"] tbody tr[data-kind="send_email"]', 1);
  // The job is in Redis, pending, with two workers running: the pause is what holds it.
  const waiting = await mailsTo(user);
  if (waiting.length) throw new Error('the email was sent while its queue was paused');
  await until('the emails row counts it pending', async () =>
    Number(await testid('queue-row-emails').locator('[data-field="pending"]').textContent()) >= 1);

  step('resume emails; the email arrives');
  await testid('resume-emails').click();
  await testid('queue-state-emails').filter({ hasText: /^running$/ }).waitFor();
  await until(`the verification email to ${user}`, async () => (await mailsTo(user)).length === 1);

  step(`retry the dead set (${DEAD_JOBS} jobs)`);
  await showJobs({ state: 'dead' }, '[data-testid="jobs-table"] tbody tr[data-state="dead"]', DEAD_JOBS);
  await testid('retry-dead').click();
  await page.locator('#status').filter({ hasText: `Dead jobs retried: ${DEAD_JOBS} of ${DEAD_JOBS} matching` }).waitFor();
  await showJobs({ state: 'dead' }, '[data-testid="jobs-table"] tbody tr[data-job]', 0);

  step('run a schedule now, and see its job done with its attempt');
  await testid('schedule-run-mark_overdue').click();
  const status = page.locator('#status').filter({ hasText: /mark_overdue queued to run now as job/ });
  const job = (await status.textContent()).trim().split(' ').pop();
  await showJobs({ queue: 'maintenance', state: 'done' }, `[data-testid="jobs-table"] tbody tr[data-job="${job}"]`, 1);
  await page.getByRole('button', { name: `Show job ${job}` }).click();
  await page.locator('#job-detail').waitFor();
  await page.locator('#attempts-table tbody tr').filter({ hasText: 'succeeded' }).waitFor();

  step('a second worker joins the fleet');
  process.stdout.write('need-second-worker\n');
  await until('two workers in the fleet', async () =>
    (await rows('[data-testid="workers-table"] tbody tr[data-worker]').count()) === 2, 60_000);

  step('screenshots');
  await page.locator('#job-close').click();
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(SHOTS, 'console-laptop.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(SHOTS, 'console-phone.png') });
  await page.setViewportSize({ width: 1280, height: 1000 });

  step('sign out; a non-admin signs in with the keyboard alone and sees no data');
  await page.locator('#signout').click();
  await testid('login-email').waitFor();
  await until('focus on the email field', () => page.evaluate(() => document.activeElement?.id === 'login-email'));
  await page.keyboard.type(user);
  await page.keyboard.press('Tab');
  await page.keyboard.type(env('ADMIN_PASSWORD'));
  await page.keyboard.press('Enter');
  await page.locator('#notice').filter({ hasText: 'is not an admin account' }).waitFor();
  if (await page.locator('#console').isVisible()) throw new Error('the console shows to a non-admin');
  for (const selector of ['[data-testid^="queue-row-"]', '[data-testid="jobs-table"] tbody tr',
    '[data-testid="workers-table"] tbody tr']) {
    const count = await rows(selector).count();
    if (count) throw new Error(`a non-admin sees ${count} row(s) of ${selector}`);
  }
  if (problems.length) throw new Error(`the page reported:\n${problems.join('\n')}`);
}

try {
  await run();
  step('all steps passed');
} catch (err) {
  step(`FAILED: ${err.stack || err}`);
  await page.screenshot({ path: join(SHOTS, 'failure.png'), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
