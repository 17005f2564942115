// Review: one card per document with a suggestion waiting (or applied, for undo). Each field
// shows Paperless's current value next to the suggestion, with a switch (apply it or leave the
// field alone) and an editable suggestion; Approve sends the edits, Undo restores what was there.

import { api, h, toast, when, safeUrl } from '/ui/api.js';

const LABELS = { title: 'Title', tags: 'Tags', correspondent: 'Correspondent', document_type: 'Document type', created: 'Created' };
let state = 'pending';
let cursor = null;
const $ = (id) => document.getElementById(id);

export function init() {
  for (const b of document.querySelectorAll('[data-review-state]')) {
    b.addEventListener('click', () => {
      state = b.dataset.reviewState;
      for (const o of document.querySelectorAll('[data-review-state]')) o.setAttribute('aria-pressed', String(o === b));
      $('approve-all').hidden = state !== 'pending';
      load(true);
    });
  }
  $('review-more').addEventListener('click', () => load(false));
  $('approve-all').addEventListener('click', approveAll);
  $('review-list').addEventListener('keydown', keys);
}

export async function show() { await load(true); }

async function load(reset) {
  const list = $('review-list');
  if (reset) { cursor = null; list.replaceChildren(h('p', { class: 'empty' }, 'Loading…')); }
  const q = new URLSearchParams({ state });
  if (cursor) q.set('cursor', cursor);
  let page;
  try {
    page = await api('/review?' + q);
  } catch (e) {
    list.replaceChildren(h('p', { class: 'error', role: 'alert' }, e.message));
    throw e;
  }
  if (reset) list.replaceChildren();
  for (const c of page.cards) list.append(card(c));
  cursor = page.next_cursor;
  $('review-more').hidden = !cursor;
  if (!list.children.length) {
    list.append(h('p', { class: 'empty' }, state === 'pending'
      ? (page.review_mode ? 'Nothing waits for review.' : 'Nothing waits for review: REVIEW_MODE is off, so suggestions are applied as they come (undo them under Applied).')
      : 'No applied suggestions.'));
  }
}

function display(v) {
  if (v === null || v === undefined || v === '') return h('span', { class: 'none' }, 'none');
  if (Array.isArray(v)) return v.length ? h('span', { class: 'chips' }, v.map((t) => h('span', { class: 'chip' }, t))) : h('span', { class: 'none' }, 'none');
  return String(v);
}

function editor(doc, f) {
  const id = `s-${doc}-${f.field}`;
  const label = `Suggested ${LABELS[f.field].toLowerCase()}`;
  const value = Array.isArray(f.suggested) ? f.suggested.join(', ') : (f.suggested ?? '');
  const attrs = { id, name: f.field, 'aria-label': label, value, autocomplete: 'off', 'data-original': value };
  if (f.field === 'created') return h('input', { ...attrs, type: 'date' });
  return h('input', { ...attrs, type: 'text', placeholder: f.field === 'tags' ? 'tag, tag' : '' });
}

function empty(v) { return v === null || v === undefined || v === '' || (Array.isArray(v) && !v.length); }

function card(c) {
  const doc = c.doc_id;
  const title = c.fields.find((f) => f.field === 'title');
  const heading = (title && (title.current || title.suggested)) || `Document ${doc}`;
  const url = safeUrl(c.url);
  const rows = c.fields.map((f) => {
    const on = f.mode !== 'never' && !empty(f.suggested);
    const sw = h('input', { type: 'checkbox', id: `a-${doc}-${f.field}`, 'data-apply': f.field, checked: on, disabled: c.state !== 'pending' });
    return h('tr', { 'data-field': f.field },
      h('th', { scope: 'row' }, h('label', { class: 'switch', for: `a-${doc}-${f.field}` }, sw, LABELS[f.field]),
        f.mode === 'never' ? h('span', { class: 'badge' }, 'never written') : null,
        f.mode === 'if_empty' ? h('span', { class: 'badge' }, 'only if empty') : null),
      h('td', { class: 'current', 'data-label': 'Now' }, display(f.current)),
      h('td', { class: 'arrow', 'aria-hidden': 'true' }, '→'),
      h('td', { class: 'suggested', 'data-label': 'Suggested' }, c.state === 'pending' ? editor(doc, f) : display(f.suggested)));
  });
  const actions = c.state === 'pending'
    ? [h('button', { type: 'button', class: 'primary', 'data-action': 'approve', onclick: () => approve(el) }, 'Approve')]
    : [h('button', { type: 'button', 'data-action': 'undo', onclick: () => undo(el) }, 'Undo')];
  const el = h('article', { class: 'card', tabindex: '0', 'data-doc': doc, 'data-state': c.state, 'aria-labelledby': `t-${doc}` },
    h('header', {},
      h('h2', { id: `t-${doc}` }, heading),
      h('p', { class: 'meta' }, `Document ${doc} · ${c.provider} · ${when(c.at)} `,
        url ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, 'Open in Paperless') : null)),
    c.current_error ? h('p', { class: 'warning' }, `Current values unavailable: ${c.current_error}`) : null,
    c.rejected && c.rejected.length ? h('p', { class: 'hint' }, 'Refused from the model\'s reply: ' + c.rejected.join('; ')) : null,
    h('table', { class: 'diff' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Apply'), h('th', { scope: 'col' }, 'Now'), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'becomes')), h('th', { scope: 'col' }, 'Suggested'))),
      h('tbody', {}, rows)),
    h('div', { class: 'actions' }, actions, h('span', { class: 'result', role: 'status' })));
  return el;
}

function edits(el) {
  const out = { skip: [] };
  for (const sw of el.querySelectorAll('[data-apply]')) {
    const field = sw.dataset.apply;
    if (!sw.checked) { out.skip.push(field); continue; }
    const input = el.querySelector(`input[name="${field}"]`);
    if (!input || input.value === input.dataset.original) continue;
    const v = input.value.trim();
    if (field === 'tags') out.tags = v.split(',').map((t) => t.trim()).filter(Boolean);
    else if (v) out[field] = v;
    else out.skip.push(field);
  }
  return out;
}

async function approve(el) {
  const doc = el.dataset.doc;
  const button = el.querySelector('[data-action="approve"]');
  button.disabled = true;
  try {
    await api(`/documents/${encodeURIComponent(doc)}/approve`, { method: 'POST', body: edits(el) });
    toast(`Applied to document ${doc}.`);
    await replace(el, 'applied');
  } catch (e) {
    button.disabled = false;
    el.querySelector('.result').textContent = e.message;
    toast(`Document ${doc}: ${e.message}`, 'error');
  }
}

async function undo(el) {
  const doc = el.dataset.doc;
  const button = el.querySelector('[data-action="undo"]');
  button.disabled = true;
  try {
    await api(`/documents/${encodeURIComponent(doc)}/undo`, { method: 'POST' });
    toast(`Undone: document ${doc} has its previous values again.`);
    await replace(el, 'pending');
  } catch (e) {
    button.disabled = false;
    el.querySelector('.result').textContent = e.message;
    toast(`Document ${doc}: ${e.message}`, 'error');
  }
}

/// Re-reads the document's card in its new state, keeping its place and focus.
async function replace(el, newState) {
  const doc = el.dataset.doc;
  const page = await api(`/review?doc=${encodeURIComponent(doc)}`);
  const c = page.cards.find((x) => x.doc_id === doc && x.state === newState);
  if (!c) { el.remove(); return; }
  const fresh = card(c);
  el.replaceWith(fresh);
  const next = fresh.querySelector('[data-action]');
  (next || fresh).focus();
}

async function approveAll() {
  const cards = [...document.querySelectorAll('#review-list .card[data-state="pending"]')];
  if (!cards.length) return;
  let ok = 0;
  for (const el of cards) {
    if (!el.isConnected) continue;
    try {
      await api(`/documents/${encodeURIComponent(el.dataset.doc)}/approve`, { method: 'POST', body: edits(el) });
      ok += 1;
    } catch (e) {
      el.querySelector('.result').textContent = e.message;
    }
  }
  toast(`Approved ${ok} of ${cards.length}.`, ok === cards.length ? 'info' : 'error');
  await load(true);
}

function keys(ev) {
  const el = ev.target.closest('.card');
  if (!el || ev.target !== el || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const all = [...document.querySelectorAll('#review-list .card')];
  const i = all.indexOf(el);
  if (ev.key === 'a' && el.dataset.state === 'pending') { ev.preventDefault(); approve(el); }
  else if (ev.key === 'u' && el.dataset.state === 'applied') { ev.preventDefault(); undo(el); }
  else if (ev.key === 'j' && all[i + 1]) { ev.preventDefault(); all[i + 1].focus(); }
  else if (ev.key === 'k' && all[i - 1]) { ev.preventDefault(); all[i - 1].focus(); }
}
