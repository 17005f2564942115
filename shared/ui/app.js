// The shell: sign-in, the four pages behind hash routes (#review, #jobs, #chat, #status), and
// keyboard focus moved to each page's heading so screen readers and keyboards follow along.

import { api, session, onUnauthorized, ApiError } from '/ui/api.js';
import * as review from '/ui/review.js';
import * as jobs from '/ui/jobs.js';
import * as chat from '/ui/chat.js';
import * as status from '/ui/status.js';

const pages = { review, jobs, chat, status };
const $ = (id) => document.getElementById(id);

function showOnly(id) {
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== id;
}

function showSignIn(message) {
  showOnly('sign-in');
  $('sign-out').hidden = true;
  $('sign-in-error').textContent = message || '';
  $('api-key').focus();
}

async function route() {
  const name = (location.hash || '#review').slice(1);
  const page = pages[name] ? name : 'review';
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  showOnly('page-' + page);
  $('sign-out').hidden = !session.key;
  const heading = document.querySelector(`#page-${page} h1`);
  heading.setAttribute('tabindex', '-1');
  heading.focus({ preventScroll: true });
  document.title = `${heading.textContent} · paperless-ai`;
  try {
    await pages[page].show();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) console.warn(e);
  }
}

async function signedIn() {
  // Without a key, a server that needs one is not even asked (nothing fails on purpose).
  const auth = document.querySelector('meta[name="pai-auth"]');
  if (!session.key && auth && auth.content === 'key') return false;
  // A cheap authenticated call: succeeds with a good key, or with none when none is needed.
  try {
    await api('/jobs?limit=1');
    return true;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return false;
    throw e;
  }
}

async function start() {
  onUnauthorized((message) => showSignIn(session.key ? `The key was not accepted: ${message}` : ''));
  for (const p of Object.values(pages)) p.init();
  $('sign-in-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    session.save($('api-key').value.trim(), $('paperless-token').value.trim());
    $('api-key').value = '';
    $('paperless-token').value = '';
    // A refused key is not kept: the next visit asks again instead of failing again.
    if (await signedIn()) route(); else session.clear();
  });
  $('sign-out').addEventListener('click', () => { session.clear(); showSignIn('Signed out.'); });
  window.addEventListener('hashchange', () => { if (!$('sign-in').hidden && !session.key) return; route(); });
  try {
    if (await signedIn()) route(); else showSignIn('');
  } catch (e) {
    showSignIn(e.message);
  }
}

start();
