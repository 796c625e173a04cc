// The Tasklane operator console: a client of the admin API and nothing more.
//
// The session's tokens live in this module's memory only (never localStorage or cookies):
// a reload or a closed tab signs out. Every figure comes from /api/v1/admin/*, so the
// console can do nothing the API would refuse; a 403 from it hides every figure. The live
// figures (queues, fleet, backlog) arrive on one Server-Sent Events stream per page,
// which the API feeds from one sampler per instance. Everything is built with
// textContent, never HTML strings, so data cannot inject markup.

const API = '/api/v1';
const $ = (id) => document.getElementById(id);

let session = null; // { access, refresh, user }
let generation = 0; // bumped at sign-out, so late callbacks of an old session do nothing
let source = null;
let last = null; // the last live snapshot
const jobsView = { cursors: [null], page: 0, loadedAt: 0, counts: '' };
let auditCursor = null;
let kindsSignature = '';
let outboxLoadedAt = 0;

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// ---------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'text') el.textContent = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) el.append(child);
  }
  return el;
}

function fill(tbody, rows, columns, empty) {
  // A keyboard user keeps their place: the control they were on is focused again.
  const focused = tbody.contains(document.activeElement) ? document.activeElement.id : '';
  tbody.replaceChildren(...(rows.length ? rows
    : [h('tr', { class: 'empty' }, h('td', { colspan: columns, text: empty }))]));
  labelCells(tbody);
  if (focused) document.getElementById(focused)?.focus();
}

/// Each cell carries its column's name, which narrow screens show beside the value
/// (console.css stacks table rows into cards there).
function labelCells(tbody) {
  const names = [...tbody.closest('table').querySelectorAll('thead th')].map((th) => th.textContent);
  for (const row of tbody.rows) {
    if (row.classList.contains('empty')) continue;
    [...row.cells].forEach((cell, i) => cell.setAttribute('data-label', names[i] || ''));
  }
}

const time = (value) => (value ? new Date(value).toLocaleString() : '—');
const ms = (value) => (value === null || value === undefined ? '—'
  : value < 1000 ? `${value} ms` : `${(value / 1000).toFixed(1)} s`);
const age = (seconds) => (seconds < 1 ? '—' : seconds < 120 ? `${Math.round(seconds)} s`
  : `${Math.round(seconds / 60)} min`);

function say(message) {
  $('status').textContent = message;
}

function notice(message) {
  $('notice').textContent = message;
  $('notice').hidden = !message;
}

function button(label, onclick, attrs = {}) {
  return h('button', { type: 'button', onclick, ...attrs, text: label });
}

// ---------------------------------------------------------------------------------------
// The API

async function refreshTokens() {
  const resp = await fetch(`${API}/auth/refresh`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ refresh_token: session.refresh }),
  });
  if (!resp.ok) return false;
  const data = await resp.json();
  session.access = data.access_token;
  session.refresh = data.refresh_token;
  return true;
}

async function call(method, path, body) {
  const mine = generation;
  const send = () => {
    const headers = { accept: 'application/json', authorization: `Bearer ${session?.access}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    return fetch(`${API}${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  };
  let resp = await send();
  if (resp.status === 401 && session && (await refreshTokens())) resp = await send();
  if (mine !== generation) throw new ApiError(0, { detail: 'signed out' });
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (resp.status === 401) {
    signOut('Your session ended. Sign in again.');
  } else if (resp.status === 403) {
    denied();
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

/// Runs an action, reporting its outcome in the status line.
async function act(what, work) {
  try {
    const message = await work();
    say(message || `${what}: done`);
  } catch (err) {
    if (err.status !== 0) say(`${what} failed: ${err.message}`);
  }
}

// ---------------------------------------------------------------------------------------
// Session

async function signIn(event) {
  event.preventDefault();
  notice('');
  const email = $('login-email').value.trim();
  const password = $('login-password').value;
  if (!email || !password) {
    notice('Enter your email and password.');
    return;
  }
  $('login-submit').disabled = true;
  try {
    const resp = await fetch(`${API}/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email, password }),
    });
    const data = await resp.json().catch(() => null);
    if (resp.status === 429) {
      notice(`Too many attempts; try again in ${resp.headers.get('retry-after') || 'a few'} seconds.`);
      return;
    }
    if (!resp.ok) {
      notice(resp.status === 401 ? 'The email or password is wrong.' : `Sign-in failed: ${data?.detail || resp.status}`);
      return;
    }
    session = { access: data.access_token, refresh: data.refresh_token, user: data.user };
    $('login-password').value = '';
    $('signin').hidden = true;
    $('signout').hidden = false;
    $('who').hidden = false;
    $('who').textContent = `Signed in as ${data.user.email}`;
    if (data.user.role !== 'admin') {
      denied();
      return;
    }
    start();
  } catch (err) {
    notice(`Sign-in failed: ${err.message}`);
  } finally {
    $('login-submit').disabled = false;
  }
}

function closeLive() {
  if (source) source.close();
  source = null;
  $('live').hidden = true;
}

function clearData() {
  for (const id of ['queues-table', 'kinds-table', 'jobs-table', 'schedules-table',
    'workers-table', 'quarantine-table', 'audit-table', 'attempts-table']) {
    $(id).querySelector('tbody').replaceChildren();
  }
  $('outbox-facts').replaceChildren();
  $('job-facts').replaceChildren();
  $('job-detail').hidden = true;
  say('');
  last = null;
}

/// The account is not an admin (or no longer is): show nothing but that.
function denied() {
  generation += 1;
  closeLive();
  clearData();
  $('console').hidden = true;
  notice(`${session?.user?.email || 'This account'} is not an admin account: the console shows `
    + 'nothing to it. Sign out and sign in as an admin.');
}

function signOut(message) {
  generation += 1;
  const refresh = session?.refresh;
  session = null;
  closeLive();
  clearData();
  if (refresh) {
    fetch(`${API}/auth/logout`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ refresh_token: refresh }),
    }).catch(() => {});
  }
  $('console').hidden = true;
  $('signout').hidden = true;
  $('who').hidden = true;
  $('signin').hidden = false;
  $('login-email').value = '';
  notice(typeof message === 'string' ? message : '');
  $('login-email').focus();
}

function start() {
  notice('');
  $('console').hidden = false;
  jobsView.cursors = [null];
  jobsView.page = 0;
  openLive();
  loadKinds().then(loadJobs);
  loadSchedules();
  loadOutbox();
  loadAudit(false);
  $('queues-title').setAttribute('tabindex', '-1');
  $('queues-title').focus();
}

// ---------------------------------------------------------------------------------------
// Live figures

async function openLive() {
  const mine = generation;
  if (!session || source) return;
  let ticket;
  try {
    ticket = await call('POST', '/events/ticket');
  } catch {
    if (mine === generation) setTimeout(openLive, 5000);
    return;
  }
  if (mine !== generation) return;
  source = new EventSource(`${API}/admin/live?ticket=${encodeURIComponent(ticket.ticket)}`);
  source.addEventListener('snapshot', (event) => onSnapshot(JSON.parse(event.data)));
  source.onerror = () => {
    // A ticket works once, so EventSource's own reconnect cannot: take a new one.
    closeLive();
    $('live').hidden = false;
    $('live').textContent = 'Live figures interrupted; reconnecting…';
    if (mine === generation) setTimeout(openLive, 2000);
  };
}

function onSnapshot(snapshot) {
  last = snapshot;
  $('live').hidden = false;
  $('live').textContent = snapshot.error
    ? `Live figures stale: ${snapshot.error}`
    : `Live · ${new Date(snapshot.at).toLocaleTimeString()}`;
  renderQueues(snapshot.queues);
  renderWorkers(snapshot.workers);
  renderBacklog(snapshot.outbox_backlog);
  const signature = JSON.stringify(snapshot.queues.map((q) => [q.paused_kinds, q.held.map((k) => k.kind)]));
  if (signature !== kindsSignature) {
    kindsSignature = signature;
    loadKinds();
  }
  // The job list follows the queues it shows, at most every two seconds.
  const queue = $('jobs-queue').value;
  const counts = JSON.stringify(snapshot.queues.filter((q) => !queue || q.queue === queue)
    .map((q) => [q.pending, q.running, q.scheduled, q.dead, q.done_last_minute]));
  // Not while a keyboard user is inside the table: re-rendering would lose their focus.
  const busy = $('jobs-table').contains(document.activeElement);
  if (counts !== jobsView.counts && !busy && Date.now() - jobsView.loadedAt > 2000) {
    jobsView.counts = counts;
    loadJobs();
  }
  if (Date.now() - outboxLoadedAt > 5000 && snapshot.outbox_backlog > 0) loadOutbox();
}

function renderQueues(queues) {
  const tbody = $('queues-table').querySelector('tbody');
  tbody.querySelector('tr.empty')?.remove();
  for (const q of queues) {
    let row = tbody.querySelector(`tr[data-queue="${q.queue}"]`);
    if (!row) {
      row = h('tr', { 'data-queue': q.queue, 'data-testid': `queue-row-${q.queue}` },
        h('th', { scope: 'row', text: q.queue }),
        h('td', { 'data-testid': `queue-state-${q.queue}`, class: 'state' }),
        ...['pending', 'running', 'scheduled', 'dead', 'done', 'age', 'held'].map((f) => h('td', { 'data-field': f })),
        h('td', { class: 'actions' },
          button('Pause', () => setPaused('queues', q.queue, true),
            { 'data-testid': `pause-${q.queue}`, 'aria-label': `Pause queue ${q.queue}` }),
          button('Resume', () => setPaused('queues', q.queue, false),
            { 'data-testid': `resume-${q.queue}`, 'aria-label': `Resume queue ${q.queue}` })));
      tbody.append(row);
      labelCells(tbody);
    }
    const state = row.querySelector('.state');
    state.textContent = q.paused ? 'paused' : 'running';
    state.className = `state ${q.paused ? 'paused' : 'running'}`;
    const set = (field, text) => { row.querySelector(`[data-field="${field}"]`).textContent = text; };
    set('pending', q.pending);
    set('running', q.running);
    set('scheduled', q.scheduled);
    set('dead', q.dead);
    set('done', q.done_last_minute);
    set('age', age(q.oldest_pending_age_seconds));
    set('held', [...q.held.map((k) => `${k.kind} (${k.dependency} down since ${time(k.since)})`),
      ...q.paused_kinds.map((k) => `${k} paused`)].join('; ') || '—');
  }
}

function renderWorkers(workers) {
  const rows = workers.map((w) => h('tr', { 'data-worker': w.id },
    h('th', { scope: 'row', text: w.id }), h('td', { text: w.host }), h('td', { text: w.pid }),
    h('td', { text: w.version }), h('td', { text: time(w.started_at) }),
    h('td', { text: time(w.last_seen) }), h('td', { text: w.concurrency }),
    h('td', { text: Object.entries(w.running).map(([k, n]) => `${k}: ${n}`).join(', ') || 'idle' })));
  fill($('workers-table').querySelector('tbody'), rows, 8, 'No live workers.');
}

function renderBacklog(backlog) {
  let item = $('outbox-backlog');
  if (!item) {
    item = h('dd', { id: 'outbox-backlog' });
    $('outbox-facts').prepend(h('dt', { text: 'Backlog (live)' }), item);
  }
  item.textContent = `${backlog} row(s) waiting for the relay`;
}

async function setPaused(scope, name, paused) {
  const verb = paused ? 'pause' : 'resume';
  await act(`${verb} ${name}`, async () => {
    const result = await call('POST', `/admin/${scope}/${encodeURIComponent(name)}/${verb}`);
    loadAudit(false);
    if (scope === 'kinds') loadKinds();
    if (scope === 'schedules') loadSchedules();
    return `${result.scope} ${result.name}: ${result.paused ? 'paused' : 'running'}${result.changed ? '' : ' (unchanged)'}`;
  });
}

// ---------------------------------------------------------------------------------------
// Kinds, limits

async function loadKinds() {
  let kinds;
  try {
    kinds = await call('GET', '/admin/kinds');
  } catch {
    return;
  }
  for (const select of [$('jobs-kind'), $('dead-kind')]) {
    if (select.options.length > 1) continue;
    select.append(...kinds.map((k) => h('option', { value: k.kind, text: k.kind })));
  }
  for (const select of [$('jobs-queue'), $('dead-queue')]) {
    if (select.options.length > 1) continue;
    const queues = [...new Set(kinds.map((k) => k.queue))];
    select.append(...queues.map((q) => h('option', { value: q, text: q })));
  }
  const rows = kinds.map((k) => {
    const rate = h('input', { id: `rate-${k.kind}`, type: 'number', min: '0', step: 'any', inputmode: 'decimal', value: k.limits.rate_per_second ?? '' });
    const conc = h('input', { id: `concurrency-${k.kind}`, type: 'number', min: '1', step: '1', inputmode: 'numeric', value: k.limits.concurrency ?? '' });
    const state = k.held ? `held (${k.held.dependency} down)` : k.paused ? 'paused'
      : k.queue_paused ? 'queue paused' : 'running';
    return h('tr', {},
      h('th', { scope: 'row', text: k.kind }), h('td', { text: k.queue }), h('td', { text: k.priority }),
      h('td', { text: state }), h('td', { text: k.pending }), h('td', { text: k.running }),
      h('td', { class: 'limits' },
        h('label', { for: `rate-${k.kind}`, class: 'sr-only', text: `Jobs per second for ${k.kind}` }), rate,
        h('label', { for: `concurrency-${k.kind}`, class: 'sr-only', text: `Jobs at once for ${k.kind}` }), conc,
        button('Save', () => saveLimits(k.kind, rate.value, conc.value), { id: `save-${k.kind}`, 'aria-label': `Save limits of ${k.kind}` })),
      h('td', { class: 'actions' },
        button('Pause', () => setPaused('kinds', k.kind, true), { id: `pause-kind-${k.kind}`, 'aria-label': `Pause kind ${k.kind}` }),
        button('Resume', () => setPaused('kinds', k.kind, false), { id: `resume-kind-${k.kind}`, 'aria-label': `Resume kind ${k.kind}` })));
  });
  fill($('kinds-table').querySelector('tbody'), rows, 8, 'No job kinds.');
}

async function saveLimits(kind, rate, concurrency) {
  await act(`limits of ${kind}`, async () => {
    const body = {
      rate_per_second: rate === '' ? null : Number(rate),
      concurrency: concurrency === '' ? null : Number(concurrency),
    };
    const saved = await call('PUT', `/admin/kinds/${encodeURIComponent(kind)}/limits`, body);
    loadKinds();
    loadAudit(false);
    return `${kind}: ${saved.rate_per_second ?? 'no'} per second, ${saved.concurrency ?? 'no limit'} at once`;
  });
}

// ---------------------------------------------------------------------------------------
// Jobs

function jobsQuery() {
  const params = new URLSearchParams();
  for (const name of ['queue', 'kind', 'state', 'limit']) {
    const value = $(`jobs-${name}`).value;
    if (value) params.set(name, value);
  }
  const cursor = jobsView.cursors[jobsView.page];
  if (cursor) params.set('cursor', cursor);
  return params;
}

async function loadJobs() {
  jobsView.loadedAt = Date.now();
  let page;
  try {
    page = await call('GET', `/admin/jobs?${jobsQuery()}`);
  } catch (err) {
    if (err.status && err.status !== 403) say(`Jobs: ${err.message}`);
    return;
  }
  const rows = page.data.map((job) => h('tr', { 'data-job': job.id, 'data-kind': job.kind, 'data-state': job.state },
    h('th', { scope: 'row' }, button(job.id.slice(-12), () => showJob(job.id), { id: `show-${job.id}`, 'aria-label': `Show job ${job.id}`, class: 'link' })),
    h('td', { text: job.kind }), h('td', { text: job.queue }), h('td', { text: job.state }),
    h('td', { text: `${job.attempts}/${job.max_attempts}` }), h('td', { text: time(job.created_at) }),
    h('td', { class: 'error', text: job.last_error || '—' }),
    h('td', { class: 'actions' },
      ['pending', 'scheduled', 'running'].includes(job.state)
        ? button('Cancel', () => cancelJob(job.id), { 'aria-label': `Cancel job ${job.id}` }) : null,
      job.state === 'dead'
        ? button('Retry', () => retryJob(job.id), { 'aria-label': `Retry job ${job.id}` }) : null)));
  fill($('jobs-table').querySelector('tbody'), rows, 8, 'No jobs match.');
  jobsView.cursors.length = jobsView.page + 1;
  if (page.next_cursor) jobsView.cursors.push(page.next_cursor);
  $('jobs-prev').disabled = jobsView.page === 0;
  $('jobs-next').disabled = !page.next_cursor;
  $('jobs-page').textContent = `Page ${jobsView.page + 1}`;
}

async function showJob(id) {
  await act(`job ${id}`, async () => {
    const job = await call('GET', `/admin/jobs/${encodeURIComponent(id)}`);
    const facts = [['Id', job.id], ['Kind', job.kind], ['Queue', job.queue], ['State', job.state],
      ['Attempts', `${job.attempts} of ${job.max_attempts}`], ['Created', time(job.created_at)],
      ['Finished', time(job.finished_at)], ['Worker', job.worker || '—'],
      ['Last error', job.last_error || '—'], ['Request', job.request_id || '—'],
      ['Trace', job.trace_id || '—'], ['Payload', JSON.stringify(job.payload)]];
    $('job-facts').replaceChildren(...facts.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })]));
    const rows = job.history.map((a) => h('tr', {},
      h('td', { text: a.attempt }), h('td', { text: a.worker || '—' }), h('td', { text: time(a.started_at) }),
      h('td', { text: ms(a.duration_ms) }), h('td', { class: 'error', text: a.error || 'succeeded' }),
      h('td', { text: ms(a.retry_in_ms) })));
    fill($('attempts-table').querySelector('tbody'), rows, 6, 'No attempt yet.');
    $('job-detail-title').textContent = `Job ${job.kind} ${job.id}`;
    $('job-detail').hidden = false;
    $('job-detail-title').focus();
    return `Showing job ${job.id}`;
  });
}

async function cancelJob(id) {
  await act(`cancel ${id}`, async () => {
    const result = await call('POST', `/admin/jobs/${encodeURIComponent(id)}/cancel`);
    loadJobs();
    loadAudit(false);
    return `Job ${result.id} cancelled (was ${result.was})`;
  });
}

async function retryJob(id) {
  await act(`retry ${id}`, async () => {
    await call('POST', `/admin/jobs/${encodeURIComponent(id)}/retry`);
    loadJobs();
    loadAudit(false);
    return `Job ${id} is back in its queue`;
  });
}

async function bulk(action) {
  const body = { state: 'dead' };
  for (const [field, id] of [['queue', 'dead-queue'], ['kind', 'dead-kind'], ['error_contains', 'dead-error']]) {
    if ($(id).value) body[field] = $(id).value;
  }
  if (action === 'discard' && !window.confirm('Discard every dead job matching the filter? This cannot be undone.')) return;
  await act(`${action} dead jobs`, async () => {
    const result = await call('POST', `/admin/jobs/${action}`, body);
    loadJobs();
    loadAudit(false);
    const done = action === 'retry' ? 'retried' : 'discarded';
    return `Dead jobs ${done}: ${result.changed} of ${result.matched} matching`;
  });
}

// ---------------------------------------------------------------------------------------
// Schedules, outbox, audit

async function loadSchedules() {
  let schedules;
  try {
    schedules = await call('GET', '/admin/schedules');
  } catch {
    return;
  }
  const rows = schedules.map((s) => h('tr', { 'data-schedule': s.kind },
    h('th', { scope: 'row', text: s.kind }), h('td', { text: s.queue }), h('td', { class: 'mono', text: s.cron }),
    h('td', { text: time(s.last_run) }), h('td', { text: time(s.next_run) }),
    h('td', { text: s.paused ? 'paused' : 'active' }),
    h('td', { class: 'actions' },
      button('Run now', () => runSchedule(s.kind), { id: `run-${s.kind}`, 'data-testid': `schedule-run-${s.kind}`, 'aria-label': `Run ${s.kind} now` }),
      button('Pause', () => setPaused('schedules', s.kind, true), { id: `pause-schedule-${s.kind}`, 'aria-label': `Pause schedule ${s.kind}` }),
      button('Resume', () => setPaused('schedules', s.kind, false), { id: `resume-schedule-${s.kind}`, 'aria-label': `Resume schedule ${s.kind}` }))));
  fill($('schedules-table').querySelector('tbody'), rows, 7, 'No schedules.');
}

async function runSchedule(name) {
  await act(`run ${name}`, async () => {
    const run = await call('POST', `/admin/schedules/${encodeURIComponent(name)}/run`);
    loadAudit(false);
    return `${run.kind} queued to run now as job ${run.job_id}`;
  });
}

async function loadOutbox() {
  outboxLoadedAt = Date.now();
  let outbox;
  try {
    outbox = await call('GET', '/admin/outbox?limit=20');
  } catch {
    return;
  }
  const facts = [['Oldest waiting', age(outbox.oldest_age_seconds)], ['Jobs in flight', outbox.in_flight],
    ['Quarantined', outbox.quarantined_total]];
  $('outbox-facts').replaceChildren(...facts.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })]));
  renderBacklog(last ? last.outbox_backlog : outbox.backlog);
  const rows = outbox.quarantined.map((r) => h('tr', {},
    h('th', { scope: 'row', class: 'mono', text: r.id }), h('td', { text: r.queue }), h('td', { text: r.kind }),
    h('td', { class: 'error', text: r.reason }), h('td', { text: time(r.quarantined_at) })));
  fill($('quarantine-table').querySelector('tbody'), rows, 5, 'No quarantined rows.');
}

async function loadAudit(more) {
  const params = new URLSearchParams({ limit: '20' });
  if ($('audit-action').value.trim()) params.set('action', $('audit-action').value.trim());
  if (more && auditCursor) params.set('cursor', auditCursor);
  let page;
  try {
    page = await call('GET', `/admin/audit?${params}`);
  } catch (err) {
    if (err.status === 422) say(`Audit: ${err.message}`);
    return;
  }
  auditCursor = page.next_cursor;
  $('audit-more').disabled = !auditCursor;
  const rows = page.data.map((e) => h('tr', {},
    h('td', { text: time(e.at) }), h('th', { scope: 'row', text: e.action }), h('td', { text: e.target }),
    h('td', { class: 'mono', text: e.actor }), h('td', { class: 'mono', text: JSON.stringify(e.detail) })));
  const tbody = $('audit-table').querySelector('tbody');
  if (more) tbody.append(...rows);
  else fill(tbody, rows, 5, 'No audited actions yet.');
}

// ---------------------------------------------------------------------------------------
// Wiring

$('signin-form').addEventListener('submit', signIn);
$('signout').addEventListener('click', () => signOut(''));
$('jobs-filter').addEventListener('submit', (event) => {
  event.preventDefault();
  jobsView.cursors = [null];
  jobsView.page = 0;
  loadJobs();
});
$('jobs-next').addEventListener('click', () => { jobsView.page += 1; loadJobs(); });
$('jobs-prev').addEventListener('click', () => { jobsView.page = Math.max(0, jobsView.page - 1); loadJobs(); });
$('job-close').addEventListener('click', () => { $('job-detail').hidden = true; $('jobs-title').focus(); });
$('retry-dead').addEventListener('click', () => bulk('retry'));
$('discard-dead').addEventListener('click', () => bulk('discard'));
$('outbox-refresh').addEventListener('click', loadOutbox);
$('audit-filter').addEventListener('submit', (event) => { event.preventDefault(); loadAudit(false); });
$('audit-more').addEventListener('click', () => loadAudit(true));
$('jobs-title').setAttribute('tabindex', '-1');
$('login-email').focus();
