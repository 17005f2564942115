// Chat: questions over the archive, answered as the model writes (server-sent events over
// fetch), with numbered citations that open the document in Paperless, filters, and sessions
// (kept for this browser tab; the server keeps each session's history for follow-ups).
// On AWS the answer streams from the chat function URL named in the page's meta tag.

import { h, toast, parse, authHeader, safeUrl } from '/ui/api.js';

const SESSIONS = 'pai.chatSessions';
const $ = (id) => document.getElementById(id);
let current = null;
let busy = false;

function chatBase() {
  const meta = document.querySelector('meta[name="pai-chat-url"]');
  const url = meta ? meta.content.trim() : '';
  return url && !url.includes('{{') ? url.replace(/\/+$/, '') : '';
}

function sessions() {
  try { return JSON.parse(sessionStorage.getItem(SESSIONS) || '[]'); } catch { return []; }
}
function saveSessions(list) { sessionStorage.setItem(SESSIONS, JSON.stringify(list.slice(0, 30))); }

export function init() {
  $('chat-form').addEventListener('submit', (ev) => { ev.preventDefault(); ask(); });
  $('chat-question').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); ask(); }
  });
  $('chat-new').addEventListener('click', () => { current = null; renderSessions(); renderLog(); $('chat-question').focus(); });
  $('chat-session').addEventListener('change', (ev) => {
    current = sessions().find((s) => s.id === ev.target.value) || null;
    renderLog();
  });
}

export async function show() {
  renderSessions();
  renderLog();
}

function renderSessions() {
  const select = $('chat-session');
  const list = sessions();
  select.replaceChildren(h('option', { value: '' }, 'New chat'),
    ...list.map((s) => h('option', { value: s.id, selected: current && current.id === s.id }, s.title)));
}

function renderLog() {
  const log = $('chat-log');
  log.replaceChildren();
  for (const t of (current ? current.turns : [])) {
    log.append(h('li', { class: 'question' }, t.q));
    const a = h('li', { class: 'answer' });
    renderAnswer(a, t.a, t.citations, t.provider);
    log.append(a);
  }
}

/// The answer with each `[n]` as a link to source n, then the list of sources.
function renderAnswer(li, text, citations, provider) {
  const byN = new Map((citations || []).map((c) => [c.n, c]));
  const p = h('div', { class: 'answer-text' });
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    p.append(text.slice(last, m.index));
    const c = byN.get(Number(m[1]));
    const url = c && safeUrl(c.url);
    p.append(url
      ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'cite', 'aria-label': `Source ${m[1]}: ${c.title}` }, `[${m[1]}]`)
      : m[0]);
    last = m.index + m[0].length;
  }
  p.append(text.slice(last));
  li.replaceChildren(p);
  if (citations && citations.length) {
    li.append(h('ol', { class: 'sources', 'aria-label': 'Sources' }, citations.map((c) => {
      const url = safeUrl(c.url);
      return h('li', { value: c.n },
        url ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, c.title || `Document ${c.doc_id}`) : (c.title || `Document ${c.doc_id}`),
        c.snippet ? h('span', { class: 'snippet' }, ` — ${c.snippet}`) : null);
    })));
  }
  if (provider) li.append(h('p', { class: 'meta' }, `answered by ${provider}`));
}

function filters() {
  const v = (id) => $(id).value.trim();
  const f = {};
  const tags = v('f-tags').split(',').map((t) => t.trim()).filter(Boolean);
  if (tags.length) f.tags = tags;
  if (v('f-correspondent')) f.correspondent = v('f-correspondent');
  if (v('f-type')) f.document_type = v('f-type');
  if (v('f-from')) f.created_from = v('f-from');
  if (v('f-to')) f.created_to = v('f-to');
  return Object.keys(f).length ? f : undefined;
}

/// Reads `text/event-stream` events from a fetch body: `{event, data}` as they arrive.
async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const raw = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of raw.split('\n')) {
        if (line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (field === 'event') event = val;
        else if (field === 'data') data.push(val);
      }
      if (data.length) yield { event, data: data.join('\n') };
    }
  }
}

async function ask() {
  const input = $('chat-question');
  const question = input.value.trim();
  if (!question || busy) return;
  busy = true;
  $('chat-send').disabled = true;
  const log = $('chat-log');
  log.append(h('li', { class: 'question' }, question));
  const li = h('li', { class: 'answer', 'aria-busy': 'true' }, h('div', { class: 'answer-text' }, '…'));
  log.append(li);
  input.value = '';
  const body = { question };
  const f = filters();
  if (f) body.filters = f;
  if (current) body.session_id = current.id;
  let text = '';
  try {
    const response = await fetch(chatBase() + '/chat', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream', ...authHeader(true) },
      body: JSON.stringify(body),
    });
    if (!response.ok || !(response.headers.get('content-type') || '').includes('text/event-stream')) {
      await parse(response);
      throw new Error('unexpected answer from the server');
    }
    let final = null;
    for await (const ev of events(response.body)) {
      if (ev.event === 'token') {
        text += ev.data;
        li.firstChild.textContent = text;
      } else if (ev.event === 'done') {
        final = JSON.parse(ev.data);
      } else if (ev.event === 'error') {
        const e = JSON.parse(ev.data);
        throw new Error(e.error ? e.error.message : 'the answer failed');
      }
    }
    if (!final) throw new Error('the answer was cut off');
    renderAnswer(li, text, final.citations, final.provider);
    const list = sessions();
    let s = list.find((x) => x.id === final.session_id);
    if (!s) {
      s = { id: final.session_id, title: question.slice(0, 60), turns: [] };
      list.unshift(s);
    }
    s.turns.push({ q: question, a: text, citations: final.citations, provider: final.provider });
    saveSessions(list);
    current = s;
    renderSessions();
  } catch (e) {
    li.replaceChildren(h('p', { class: 'error', role: 'alert' }, e.message));
    toast(e.message, 'error');
  } finally {
    li.removeAttribute('aria-busy');
    busy = false;
    $('chat-send').disabled = false;
    input.focus();
  }
}
