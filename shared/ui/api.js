// The one door to the HTTP API: every page calls `api()`, which adds the key kept for this
// browser tab (sessionStorage) and turns error bodies {"error": {"code", "message"}} into
// exceptions a page can show. Also the small DOM helpers the pages share.

const KEY = 'pai.apiKey';
const TOKEN = 'pai.paperlessToken';

export const session = {
  get key() { return sessionStorage.getItem(KEY) || ''; },
  get paperlessToken() { return sessionStorage.getItem(TOKEN) || ''; },
  save(key, token) {
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    if (token) sessionStorage.setItem(TOKEN, token); else sessionStorage.removeItem(TOKEN);
  },
  clear() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(TOKEN); },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/// Listeners told when the server refuses the key (the app shows the sign-in form).
const unauthorized = new Set();
export function onUnauthorized(f) { unauthorized.add(f); }

export function authHeader(forChat = false) {
  if (forChat && session.paperlessToken) return { Authorization: `Token ${session.paperlessToken}` };
  return session.key ? { Authorization: `Bearer ${session.key}` } : {};
}

export async function api(path, { method = 'GET', body, base = '', chat = false } = {}) {
  const headers = { Accept: 'application/json', ...authHeader(chat) };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'network', 'The server cannot be reached.');
  }
  return parse(response);
}

export async function parse(response) {
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!response.ok) {
    const err = json && json.error ? json.error : { code: 'http_' + response.status, message: text.slice(0, 200) || response.statusText };
    if (response.status === 401) unauthorized.forEach((f) => f(err.message));
    throw new ApiError(response.status, err.code, err.message);
  }
  return json;
}

/// `h('button', {class: 'x', onclick}, 'text', child…)`: text is always set as text, never HTML.
export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

let toastTimer;
export function toast(message, kind = 'info') {
  const t = document.getElementById('toast');
  t.textContent = message;
  t.dataset.kind = kind;
  t.classList.add('shown');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove('shown'), 6000);
}

export function when(unixSeconds) {
  if (!unixSeconds) return '';
  const d = new Date(unixSeconds * 1000);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/// Only http(s) links are followed: a stored URL is outside input.
export function safeUrl(u) {
  try {
    const url = new URL(u, location.href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch { return null; }
}
