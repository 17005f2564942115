// Status: connection checks (Paperless and what its token may do, the model, the embedder, the
// store), figures, and the effective configuration with where each value comes from — what
// to look at instead of a setup wizard when something does not work.

import { api, h, toast } from '/ui/api.js';

const $ = (id) => document.getElementById(id);

export function init() {
  $('run-checks').addEventListener('click', () => checks());
}

export async function show() {
  await Promise.all([overview(), checks()]);
}

function number(v, digits = 0) {
  return typeof v === 'number' ? v.toLocaleString(undefined, { maximumFractionDigits: digits }) : '—';
}

async function overview() {
  let s;
  try {
    s = await api('/status');
  } catch (e) {
    toast(e.message, 'error');
    throw e;
  }
  $('config-body').replaceChildren(...s.config.map((c) => h('tr', {},
    h('th', { scope: 'row' }, h('code', {}, c.name)),
    h('td', { 'data-label': 'Value' }, c.secret ? h('span', { class: 'secret' }, c.value) : c.value),
    h('td', { 'data-label': 'Source' }, h('span', { class: `source ${c.source === '.env' ? 'dotenv' : c.source}` }, c.source)))));
  const f = s.figures;
  const m = f.metrics;
  const jobs = f.recent_jobs.by_status;
  const tagged = m ? Object.entries(m.documents_tagged).filter(([k]) => k !== 'failed').reduce((a, [, v]) => a + v, 0) : null;
  const rows = [
    ['Model', s.model],
    ['Embeddings', s.embedder],
    ['Review mode', s.review_mode ? 'on: suggestions wait for approval' : 'off: suggestions are applied'],
    ['Tokens today (tagging / chat)', `${number(f.tokens_today.tagging)} / ${number(f.tokens_today.chat)}`],
    [`Last ${number(f.recent_jobs.scanned)} jobs`, `${number(jobs.done)} done, ${number(jobs.failed)} failed, ${number(jobs.excluded)} excluded, ${number(jobs.waiting)} waiting`],
  ];
  if (m) {
    rows.push(['Documents tagged since start', number(tagged)]);
    rows.push(['Failures since start', `${number(m.documents_tagged.failed || 0)} documents, ${number(m.messages_failed)} messages`]);
    rows.push(['Cache hit rate', m.cache_hit_rate === null ? 'no lookups yet' : `${number(m.cache_hit_rate * 100, 1)} %`]);
    rows.push(['Model tokens since start (in / out)', `${number(m.tokens_in)} / ${number(m.tokens_out)}`]);
    rows.push(['Queue depth', m.queue_depth ? Object.entries(m.queue_depth).map(([q, n]) => `${q} ${number(n)}`).join(', ') : 'not reported']);
  }
  $('figures').replaceChildren(...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

const LABEL = { true: 'OK', false: 'Failed', null: 'Not configured' };

async function checks() {
  const list = $('checks');
  const button = $('run-checks');
  button.disabled = true;
  list.setAttribute('aria-busy', 'true');
  if (!list.children.length) list.replaceChildren(h('li', {}, 'Checking…'));
  try {
    const r = await api('/status/checks');
    list.replaceChildren(...r.checks.map((c) => h('li', { class: `check ${c.ok === true ? 'ok' : c.ok === false ? 'failed' : 'off'}`, 'data-check': c.name },
      h('span', { class: 'check-state' }, LABEL[String(c.ok)]),
      h('span', { class: 'check-name' }, c.name),
      h('span', { class: 'detail' }, c.detail),
      h('span', { class: 'meta' }, `${c.millis} ms`))));
  } catch (e) {
    list.replaceChildren(h('li', { class: 'check failed' }, e.message));
    throw e;
  } finally {
    list.removeAttribute('aria-busy');
    button.disabled = false;
  }
}
