// Jobs: the most recent jobs, newest first, with each stage's state and the reason of a
// failure, filters, paging by cursor (fast with any number of jobs), and the actions a failure
// calls for: retry the job, re-tag the document, or retry every failed job.

import { api, h, toast, when, safeUrl } from '/ui/api.js';

let filter = '';
let cursor = null;
const $ = (id) => document.getElementById(id);

export function init() {
  for (const b of document.querySelectorAll('[data-job-filter]')) {
    b.addEventListener('click', () => {
      filter = b.dataset.jobFilter;
      for (const o of document.querySelectorAll('[data-job-filter]')) o.setAttribute('aria-pressed', String(o === b));
      load(true);
    });
  }
  $('jobs-more').addEventListener('click', () => load(false));
  $('retry-failed').addEventListener('click', retryFailed);
}

export async function show() { await load(true); }

async function load(reset) {
  const body = $('jobs-body');
  if (reset) { cursor = null; body.replaceChildren(); }
  const q = new URLSearchParams({ limit: '25' });
  if (filter) q.set('status', filter);
  if (cursor) q.set('cursor', cursor);
  let page;
  try {
    page = await api('/jobs?' + q);
  } catch (e) {
    toast(e.message, 'error');
    throw e;
  }
  for (const j of page.jobs) body.append(row(j));
  cursor = page.next_cursor;
  $('jobs-more').hidden = !cursor;
  $('jobs-empty').hidden = body.children.length > 0 || !!cursor;
}

const STAGES = ['chunk', 'embed', 'tag'];

function row(j) {
  const url = safeUrl(j.doc_url);
  const name = j.filename || (j.doc_id ? `Document ${j.doc_id}` : 'Upload');
  const doc = url ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, name) : name;
  const stages = STAGES.map((s) => {
    const st = j.stages[s] || { status: 'pending' };
    return h('li', { class: `stage ${st.status}` },
      h('span', { class: 'stage-name' }, s), ' ', h('span', { class: 'stage-status' }, st.status),
      st.detail ? h('span', { class: 'detail' }, st.detail) : null);
  });
  const actions = [];
  if (j.class === 'failed') actions.push(h('button', { type: 'button', 'data-action': 'retry', onclick: (ev) => retry(ev.currentTarget, j) }, 'Retry'));
  if (j.doc_id && /^\d+$/.test(j.doc_id)) actions.push(h('button', { type: 'button', class: 'quiet', 'data-action': 'retag', onclick: (ev) => retag(ev.currentTarget, j) }, 'Re-tag'));
  return h('tr', { 'data-job': j.id, 'data-class': j.class },
    h('td', { 'data-label': 'Document' }, doc, h('div', { class: 'meta' }, `${j.origin} · job …${j.id.slice(-8)}`)),
    h('td', { 'data-label': 'Status' }, h('span', { class: `badge ${j.class}` }, j.class)),
    h('td', { 'data-label': 'Stages' }, h('ul', { class: 'stages' }, stages)),
    h('td', { 'data-label': 'Started' }, when(j.created_at)),
    h('td', { class: 'row-actions' }, actions, h('span', { class: 'result', role: 'status' })));
}

async function act(button, path, done) {
  button.disabled = true;
  const result = button.closest('td').querySelector('.result');
  try {
    const r = await api(path, { method: 'POST' });
    result.textContent = done(r);
    toast(result.textContent);
  } catch (e) {
    button.disabled = false;
    result.textContent = e.message;
    toast(e.message, 'error');
  }
}

function retry(button, j) {
  return act(button, `/jobs/${encodeURIComponent(j.id)}/retry`, () => 'Queued again.');
}

function retag(button, j) {
  return act(button, `/documents/${encodeURIComponent(j.doc_id)}/retag`, (r) => (r && r.job_id ? `Re-tag queued (job …${String(r.job_id).slice(-8)}).` : 'Re-tag queued.'));
}

async function retryFailed() {
  const button = $('retry-failed');
  button.disabled = true;
  try {
    const r = await api('/jobs/retry-failed', { method: 'POST' });
    const n = r && (r.retried ?? r.count ?? (Array.isArray(r.jobs) ? r.jobs.length : null));
    toast(n === null || n === undefined ? 'Failed jobs queued again.' : `${n} failed job(s) queued again.`);
    await load(true);
  } catch (e) {
    toast(e.message, 'error');
  } finally {
    button.disabled = false;
  }
}
