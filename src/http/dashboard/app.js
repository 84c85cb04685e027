// agentd's dashboard: the JSON API and its event stream, nothing else.
// Everything from the server is shown with textContent, never parsed as
// HTML. The page keeps only what is on screen: one page of tasks, one
// task's journal; live events update them in place, and listings that
// change often (queue counts, the first page of tasks) are re-read at most
// once a second.
'use strict';

const $ = (sel) => document.querySelector(sel);
const PAGE = 50;

const view = {
  agents: new Map(),        // name -> last status object
  pages: [],                // `before` ids of the pages behind the current one
  before: null,             // the current page's `before` (null: newest)
  next: null,               // the next page's `before`
  taskRows: new Map(),      // task id -> row, for the current page
  open: null,               // the task shown in the journal view
  msgTask: null,            // the task the message box waits for
  msgStreamed: false,
};

async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const j = await r.json().catch(() => ({}));
  if (r.status === 401) {
    location.reload();
  }
  if (!r.ok) {
    throw new Error(j.error || `HTTP ${r.status}`);
  }
  return j;
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

function later(fn, ms) {
  let t = null;
  return () => {
    if (t === null) t = setTimeout(() => { t = null; fn(); }, ms);
  };
}

const time = (ms) => (ms ? new Date(ms).toLocaleString() : '');
const shownState = (a) => (a.paused ? (a.state === 'running' ? 'paused' : `${a.state}, paused`) : a.state);

// ---- agents ----

function agentRow(a) {
  const row = el('tr', { id: `agent-${a.name}` });
  const state = el('td', { class: 'state' });
  const pause = el('button', { type: 'button', class: 'pause', onclick: () => togglePause(a.name) });
  const restart = el('button', {
    type: 'button', class: 'restart', text: 'Restart',
    onclick: () => act(a.name, 'restart'),
  });
  const talk = el('button', {
    type: 'button', class: 'talk', text: 'Message',
    onclick: () => { $('#msg-agent').value = a.name; $('#msg-text').focus(); },
  });
  row.append(
    el('th', { scope: 'row', text: a.name }), state, el('td', { class: 'num wide pid' }),
    el('td', { class: 'wide host' }), el('td', { class: 'num restarts' }), el('td', { class: 'num queued' }), el('td', { class: 'wide schedules' }),
    el('td', {}, el('div', { class: 'actions' }, pause, restart, talk)),
  );
  return row;
}

function paintAgent(a) {
  let row = document.getElementById(`agent-${a.name}`);
  if (!row) {
    row = agentRow(a);
    $('#agents tbody').append(row);
  }
  const s = shownState(a);
  const state = row.children[1];
  state.textContent = s;
  state.className = `state s-${a.paused ? 'paused' : a.state}`;
  if (a.last_error) state.title = a.last_error; else state.removeAttribute('title');
  row.querySelector('.pid').textContent = a.pid ?? '–';
  // In a fleet: the member running the agent (any member's dashboard shows them all).
  row.querySelector('.host').textContent = a.host ?? '–';
  row.querySelector('.restarts').textContent = a.restarts ?? 0;
  if (a.queued !== undefined) row.querySelector('.queued').textContent = a.queued;
  if (a.schedules) {
    row.querySelector('.schedules').textContent = a.schedules
      .map((x) => `${x.cron} (next ${x.next_run ? new Date(x.next_run).toLocaleString() : 'never'})`)
      .join('; ');
  }
  const pause = row.querySelector('.pause');
  pause.textContent = a.paused ? 'Resume' : 'Pause';
  pause.setAttribute('aria-label', `${a.paused ? 'Resume' : 'Pause'} ${a.name}`);
  row.querySelector('.restart').setAttribute('aria-label', `Restart ${a.name}`);
  row.querySelector('.talk').setAttribute('aria-label', `Message ${a.name}`);
}

function syncAgentLists() {
  const names = [...view.agents.keys()].sort();
  for (const sel of [$('#msg-agent'), $('#f-agent')]) {
    const keep = sel.value;
    const have = [...sel.options].map((o) => o.value).filter((v) => v !== '');
    if (have.join() === names.join()) continue;
    for (const o of [...sel.options]) if (o.value !== '') o.remove();
    for (const n of names) sel.append(el('option', { value: n, text: n }));
    if (keep) sel.value = keep;
  }
  $('#agent-count').textContent = `(${names.length})`;
}

async function loadAgents() {
  try {
    const r = await api('GET', '/api/v1/agents');
    const seen = new Set();
    for (const a of r.agents) {
      seen.add(a.name);
      view.agents.set(a.name, a);
      paintAgent(a);
    }
    for (const name of [...view.agents.keys()]) {
      if (!seen.has(name)) {
        view.agents.delete(name);
        document.getElementById(`agent-${name}`)?.remove();
      }
    }
    syncAgentLists();
    $('#agents-error').hidden = true;
  } catch (e) {
    $('#agents-error').textContent = `Cannot read the agents: ${e.message}`;
    $('#agents-error').hidden = false;
  }
}
const reloadAgents = later(loadAgents, 1000);

async function act(name, what) {
  try {
    const a = await api('POST', `/api/v1/agents/${encodeURIComponent(name)}/${what}`);
    view.agents.set(a.name, a);
    paintAgent(a);
  } catch (e) {
    $('#agents-error').textContent = `${what} ${name}: ${e.message}`;
    $('#agents-error').hidden = false;
  }
}

function togglePause(name) {
  const a = view.agents.get(name);
  return act(name, a && a.paused ? 'resume' : 'pause');
}

// ---- tasks ----

function taskQuery() {
  const q = new URLSearchParams({ limit: PAGE });
  if ($('#f-agent').value) q.set('agent', $('#f-agent').value);
  if ($('#f-state').value) q.set('state', $('#f-state').value);
  if (view.before !== null) q.set('before', view.before);
  return q;
}

function summary(t) {
  const tr = t.trigger || {};
  switch (t.trigger_kind) {
    case 'message': return tr.text || '';
    case 'resource': return tr.uri || '';
    case 'schedule': return `cron ${tr.cron || ''}`;
    case 'webhook': return `webhook ${tr.delivery || ''}`;
    default: return t.trigger_kind;
  }
}

function taskRow(t) {
  const open = el('button', {
    type: 'button', class: 'link', text: `#${t.id}`,
    'aria-label': `Open task ${t.id}`, onclick: () => openTask(t.id),
  });
  const line = summary(t).split('\n')[0];
  return el('tr', { id: `task-${t.id}` },
    el('td', {}, open), el('td', { text: t.agent }),
    el('td', { class: `state s-${t.state}`, text: t.state }),
    el('td', { text: line.length > 120 ? `${line.slice(0, 120)}…` : line }),
    el('td', { class: 'wide', text: time(t.created_at) }));
}

async function loadTasks() {
  const r = await api('GET', `/api/v1/tasks?${taskQuery()}`);
  const body = $('#tasks tbody');
  body.replaceChildren();
  view.taskRows.clear();
  for (const t of r.tasks) {
    const row = taskRow(t);
    view.taskRows.set(t.id, row);
    body.append(row);
  }
  view.next = r.next;
  $('#older').disabled = r.next === null;
  $('#newer').disabled = view.pages.length === 0;
  $('#page-info').textContent = r.tasks.length
    ? `tasks #${r.tasks[0].id}–#${r.tasks[r.tasks.length - 1].id}`
    : 'no tasks';
}
const reloadFirstPage = later(() => { if (view.before === null) loadTasks(); }, 1000);

function paintTaskState(id, state) {
  const row = view.taskRows.get(id);
  if (row) {
    const cell = row.children[2];
    cell.textContent = state;
    cell.className = `state s-${state}`;
  }
}

// ---- one task's journal ----

function stepItem(s) {
  const p = s.payload || {};
  const li = el('li', { class: `step k-${s.kind}` }, el('span', { class: 'kind', text: s.kind }));
  const pre = (text) => el('pre', { text: typeof text === 'string' ? text : JSON.stringify(text, null, 2) });
  switch (s.kind) {
    case 'llm': {
      const reply = p.reply || {};
      li.append(el('span', { class: 'muted', text: `turn ${p.turn ?? ''}, ${s.input_tokens}+${s.output_tokens} tokens` }));
      if (reply.content) li.append(pre(reply.content));
      for (const c of reply.tool_calls || []) li.append(pre(`→ ${c.name}(${c.arguments})`));
      break;
    }
    case 'tool':
      li.append(el('span', { text: p.name || '' }), pre(p.arguments ?? {}), pre(p.error ?? p.result ?? ''));
      break;
    case 'fence':
      li.append(el('span', { text: `${p.block || ''} (line ${p.line ?? '?'})` }), pre(p.result ?? ''));
      break;
    case 'notify':
      li.append(el('span', {
        text: `${p.url || ''}: attempt ${p.attempt}, ${p.delivered ? 'delivered' : `failed (${p.error || p.status})`}`,
      }));
      break;
    default:
      li.append(pre(p));
  }
  return li;
}

function metaRow(dl, k, v) {
  if (v === null || v === undefined || v === '') return;
  dl.append(el('dt', { text: k }), el('dd', { text: String(v) }));
}

const OPEN_STATES = ['queued', 'running', 'waiting'];

function paintTask(t) {
  $('#task-cancel').hidden = !OPEN_STATES.includes(t.state);
  const dl = $('#task-meta');
  dl.replaceChildren();
  metaRow(dl, 'Agent', t.agent);
  metaRow(dl, 'State', t.state);
  metaRow(dl, 'Trigger', `${t.trigger_kind}: ${summary(t)}`);
  metaRow(dl, 'Attempts', t.attempts);
  if (t.host) metaRow(dl, 'Host', t.host);
  metaRow(dl, 'Tokens', `${t.input_tokens} in, ${t.output_tokens} out`);
  metaRow(dl, 'Created', time(t.created_at));
  metaRow(dl, 'Finished', time(t.finished_at));
  metaRow(dl, 'Result', t.result);
  metaRow(dl, 'Error', t.error);
}

async function openTask(id) {
  view.open = { id, seqs: new Set() };
  $('#task-h').textContent = `Task #${id}`;
  $('#journal').replaceChildren();
  $('#task-live').textContent = '';
  $('#task-live').hidden = true;
  $('#task-view').hidden = false;
  $('#task-h').focus();
  const r = await api('GET', `/api/v1/tasks/${id}`);
  if (!view.open || view.open.id !== id) return;
  paintTask(r.task);
  view.open.task = r.task;
  for (const s of r.steps) addStep(s);
}

function addStep(s) {
  if (!view.open || view.open.seqs.has(s.seq)) return;
  view.open.seqs.add(s.seq);
  $('#journal').append(stepItem(s));
  // The model's turn is in the journal now: the live text starts over.
  if (s.kind === 'llm') {
    $('#task-live').textContent = '';
    $('#task-live').hidden = true;
  }
}

function closeTask() {
  view.open = null;
  $('#task-view').hidden = true;
  $('#tasks-h').focus();
}

// ---- messages ----

async function sendMessage(ev) {
  ev.preventDefault();
  const agent = $('#msg-agent').value;
  const text = $('#msg-text').value;
  if (!agent || !text.trim()) return;
  $('#msg-send').disabled = true;
  $('#msg-reply').textContent = '';
  try {
    const r = await api('POST', `/api/v1/agents/${encodeURIComponent(agent)}/messages`, { text, wait: false });
    view.msgTask = r.task;
    view.msgStreamed = false;
    $('#msg-status').textContent = r.paused
      ? `task #${r.task} queued; ${agent} is paused`
      : `task #${r.task} queued`;
    $('#msg-text').value = '';
  } catch (e) {
    $('#msg-status').textContent = `Not sent: ${e.message}`;
  } finally {
    $('#msg-send').disabled = false;
  }
}

async function cancelTask() {
  if (!view.open) return;
  const id = view.open.id;
  $('#task-error').hidden = true;
  try {
    await api('POST', `/api/v1/tasks/${id}/cancel`, { reason: 'cancelled from the dashboard' });
  } catch (e) {
    $('#task-error').textContent = `Cancel #${id}: ${e.message}`;
    $('#task-error').hidden = false;
  }
}

// ---- approvals ----

function asks(subject) {
  if (!subject) return '';
  if (subject.kind === 'tool') return `tool ${subject.name} ${JSON.stringify(subject.arguments || {})}`;
  if (subject.kind === 'egress') return `connect to ${subject.host}:${subject.port}`;
  return `${subject.block || 'code'}: ${subject.code || ''}`;
}

function approvalItem(a) {
  const answer = (verb, remember) => async () => {
    try {
      await api('POST', `/api/v1/approvals/${a.id}/${verb}`, remember ? { remember } : {});
      loadApprovals();
    } catch (e) {
      $('#appr-error').textContent = `${verb} ${a.id}: ${e.message}`;
      $('#appr-error').hidden = false;
    }
  };
  // An egress ask's approval can hold for the task or for good.
  const longer = a.subject && a.subject.kind === 'egress' ? [
    el('button', { type: 'button', class: 'approve-task', text: 'For this task', onclick: answer('approve', 'task') }),
    el('button', { type: 'button', class: 'approve-always', text: 'Always', onclick: answer('approve', 'always') }),
  ] : [];
  return el('li', { id: `approval-${a.id}` },
    el('span', { class: 'who', text: `#${a.id} ${a.agent} (task #${a.task}): ` }),
    el('code', { class: 'asks', text: asks(a.subject) }),
    el('button', { type: 'button', class: 'approve', text: 'Approve', onclick: answer('approve') }),
    ...longer,
    el('button', { type: 'button', class: 'deny', text: 'Deny', onclick: answer('deny') }));
}

async function loadApprovals() {
  try {
    const r = await api('GET', '/api/v1/approvals');
    const list = r.approvals || [];
    $('#approvals').replaceChildren(...list.map(approvalItem));
    $('#appr-count').textContent = list.length ? `(${list.length})` : '';
    $('#appr-empty').hidden = list.length > 0;
    $('#appr-error').hidden = true;
  } catch (e) {
    $('#appr-error').textContent = `Cannot read the approvals: ${e.message}`;
    $('#appr-error').hidden = false;
  }
}
const reloadApprovals = later(loadApprovals, 300);

// ---- live events ----

function onTask(e) {
  const t = JSON.parse(e.data);
  paintTaskState(t.task, t.state);
  if (t.state === 'queued' && !view.taskRows.has(t.task)) reloadFirstPage();
  reloadAgents();
  reloadApprovals();
  if (view.open && view.open.id === t.task && view.open.task) {
    Object.assign(view.open.task, { state: t.state });
    if (t.result !== undefined) view.open.task.result = t.result;
    if (t.error !== undefined) view.open.task.error = t.error;
    if (['succeeded', 'failed', 'cancelled'].includes(t.state)) {
      view.open.task.finished_at = Date.now();
    }
    paintTask(view.open.task);
  }
  if (t.task === view.msgTask) {
    if (t.state === 'running') $('#msg-status').textContent = `task #${t.task} running`;
    if (['succeeded', 'failed', 'cancelled'].includes(t.state)) {
      $('#msg-status').textContent = `task #${t.task} ${t.state}${t.error ? `: ${t.error}` : ''}`;
      if (!view.msgStreamed && t.result) $('#msg-reply').textContent = t.result;
      view.msgTask = null;
    }
  }
}

function onStep(e) {
  const s = JSON.parse(e.data);
  if (view.open && view.open.id === s.task) addStep(s);
}

function onOutput(e) {
  const o = JSON.parse(e.data);
  if (o.task === view.msgTask) {
    view.msgStreamed = true;
    $('#msg-reply').append(o.text);
  }
  if (view.open && view.open.id === o.task) {
    $('#task-live').hidden = false;
    $('#task-live').append(o.text);
  }
}

function onAgent(e) {
  const a = JSON.parse(e.data);
  if (a.state === 'removed') {
    view.agents.delete(a.agent);
    document.getElementById(`agent-${a.agent}`)?.remove();
    syncAgentLists();
    return;
  }
  const known = view.agents.get(a.agent) || { name: a.agent };
  Object.assign(known, { state: a.state, pid: a.pid, restarts: a.restarts, paused: a.paused, last_error: a.last_error });
  view.agents.set(a.agent, known);
  paintAgent(known);
  if (!known.schedules) reloadAgents();
  syncAgentLists();
}

function connect() {
  const es = new EventSource('/api/v1/events');
  es.onopen = () => { $('#live').textContent = 'live'; $('#live').className = 'live on'; };
  es.onerror = () => { $('#live').textContent = 'reconnecting…'; $('#live').className = 'live'; };
  es.addEventListener('task', onTask);
  es.addEventListener('step', onStep);
  es.addEventListener('output', onOutput);
  es.addEventListener('agent', onAgent);
  // Events were missed (agentd restarted, or this page fell far behind):
  // read everything again.
  es.addEventListener('reset', () => {
    loadAgents();
    loadTasks();
    if (view.open) openTask(view.open.id);
  });
}

// ---- wiring ----

function init() {
  $('#msg-form').addEventListener('submit', sendMessage);
  $('#f-agent').addEventListener('change', () => { view.pages = []; view.before = null; loadTasks(); });
  $('#f-state').addEventListener('change', () => { view.pages = []; view.before = null; loadTasks(); });
  $('#older').addEventListener('click', () => {
    if (view.next === null) return;
    view.pages.push(view.before);
    view.before = view.next;
    loadTasks();
  });
  $('#newer').addEventListener('click', () => {
    if (!view.pages.length) return;
    view.before = view.pages.pop();
    loadTasks();
  });
  $('#task-close').addEventListener('click', closeTask);
  $('#task-cancel').addEventListener('click', cancelTask);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && view.open) closeTask();
  });
  connect();
  loadAgents();
  loadTasks();
  loadApprovals();
}

document.addEventListener('DOMContentLoaded', init);
