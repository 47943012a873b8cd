// Renders the snapshots the server pushes (server-sent events): nothing is polled, nothing
// is written. Text goes in with textContent only, never as HTML. A snapshot carries the
// first services only; with a filter, the matching ones are asked for (/services.json) when
// the filter changes and with each new snapshot.
'use strict';

// This run's secret, which every request for data carries. It comes in the URL's fragment
// (#token=...), which the browser never sends; it leaves the address bar at once (a screen
// share, a copied link) and stays in this tab's session storage so that a reload still works.
const token = (() => {
  const given = new URLSearchParams(location.hash.slice(1)).get('token');
  if (given) {
    sessionStorage.setItem('token', given);
    history.replaceState(null, '', location.pathname + location.search);
  }
  return given || sessionStorage.getItem('token') || '';
})();

const MAX_SERVICE_ROWS = 500;
const DETACHING = 'being detached: its namespaces are not synced any more';
// A remote that answered but could not be read, as `status` says it (not "unreachable").
const NOT_READ = 'not read';
// A remote nothing was read of yet (the dashboard just started, the cluster was just
// attached): neither unreachable nor not read.
const READING = 'reading…';
let state = null;
// How far the server's clock is ahead of this browser's, in ms, as its stream last said
// (event `clock`): ages are reckoned from the server's time.
let serverAhead = 0;
// The server's answer for the filter last asked for: {filter, page}.
let filtered = null;
let asked = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === 'class') node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function labelsText(labels) {
  const pairs = Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`);
  return pairs.length ? pairs.join(',') : '-';
}

function renderClusters() {
  // A cluster being detached, as `status` says it: nothing syncs it any more.
  const rows = state.clusters.map((c) => el('tr', { 'data-cluster': c.name, 'data-reachability': c.reachability,
    'data-detaching': c.detaching ? 'true' : null, class: c.detaching ? 'detaching' : null },
    el('td', { title: c.detaching ? DETACHING : null }, c.detaching ? `${c.name} (detaching)` : c.name),
    el('td', { class: `state-${c.reachability}`, title: c.error || '' },
      reachabilityText(c)),
    el('td', {}, c.reachableCondition),
    el('td', {}, c.syncedCondition),
    el('td', { class: 'num' }, c.inSync),
    el('td', { class: 'num' }, c.drifted),
    el('td', { class: 'num' }, c.missing),
    timeCell('since', c.lastSyncedAtMs, NO_TIME),
    timeCell('until', c.tokenExpiresAtMs, c.tokenExpiry),
    el('td', { class: `state-${c.view === 'none' || c.view === 'failed' ? 'failed' : 'read'}`, title: c.viewHint || '' },
      c.viewHint ? `${c.view}: ${c.viewHint}` : c.view)));
  fill(document.querySelector('#clusters tbody'), rows);
}

// Ages and times left as `kubectl mesh list` prints them (`12s`, `3m20s`, `5h`, `2d3h`; `in 23h`,
// `expired 5m ago`), by the rule of kubectl's HumanDuration, as the CLI's `age` module has it.
// The server sends times, not ages: a quiet mesh sends no new snapshot, and the ages here are
// kept current (refreshTimes).
const NO_TIME = '<none>';

function humanDuration(ms) {
  const secs = Math.trunc(ms / 1000);
  // A clock skew this large is worth showing as such, as kubectl does.
  if (secs < -1) return '<invalid>';
  if (secs < 0) return '0s';
  const minutes = Math.floor(secs / 60);
  const hours = Math.floor(minutes / 60);
  const days = Math.floor(hours / 24);
  const years = Math.floor(days / 365);
  const two = (big, unit, small, smallUnit) => (small ? `${big}${unit}${small}${smallUnit}` : `${big}${unit}`);
  if (secs < 60 * 2) return `${secs}s`;
  if (minutes < 10) return two(minutes, 'm', secs % 60, 's');
  if (minutes < 60 * 3) return `${minutes}m`;
  if (hours < 8) return two(hours, 'h', minutes % 60, 'm');
  if (hours < 48) return `${hours}h`;
  if (hours < 24 * 8) return two(days, 'd', hours % 24, 'h');
  if (hours < 24 * 365 * 2) return `${days}d`;
  if (hours < 24 * 365 * 8) return two(years, 'y', days % 365, 'd');
  return `${years}y`;
}

// The text of a cell of time `at` (ms since the epoch) at `now`: its age (`since`), or when it
// comes or came (`until`).
function relativeTime(relation, at, now) {
  if (relation === 'since') return humanDuration(now - at);
  const left = at - now;
  return left < 0 ? `expired ${humanDuration(-left)} ago` : `in ${humanDuration(left)}`;
}

// A cell showing time `at` relative to now, kept current; `absent` (what stands for no time)
// without one.
function timeCell(relation, at, absent) {
  if (at === undefined || at === null) return el('td', {}, absent);
  return el('td', { 'data-time': at, 'data-relation': relation }, relativeTime(relation, at, Date.now() + serverAhead));
}

function refreshTimes() {
  const now = Date.now() + serverAhead;
  for (const cell of document.querySelectorAll('td[data-time]')) {
    const text = relativeTime(cell.dataset.relation, Number(cell.dataset.time), now);
    if (cell.textContent !== text) cell.textContent = text;
  }
}

function reachabilityText(cluster) {
  const said = { 'not-read': NOT_READ, pending: READING }[cluster.reachability] || cluster.reachability;
  return cluster.error ? `${said}: ${cluster.error}` : said;
}

// The cells `status` shows without labels.
const BARE_CELLS = { missing: '(missing)', absent: '(absent)', unreachable: '(unreachable)',
  'not-read': `(${NOT_READ})`, pending: `(${READING})`, 'scope-invalid': '(scope invalid)' };

function renderMatrix() {
  const matrix = state.matrix;
  const head = el('tr', {}, el('th', {}, 'Namespace'), el('th', {}, 'primary'),
    ...matrix.clusters.map((c) => el('th', { 'data-cluster': c.name, 'data-detaching': c.detaching ? 'true' : null,
      title: c.detaching ? DETACHING : null }, c.detaching ? `${c.name} (detaching)` : c.name)));
  document.querySelector('#matrix thead').replaceChildren(head);
  const rows = matrix.namespaces.map((row) => el('tr', { 'data-ns': row.name },
    el('td', {}, row.name),
    el('td', { 'data-ns': row.name, 'data-cluster': 'primary', 'data-state': row.primary.exists ? 'present' : 'absent' },
      row.primary.exists ? labelsText(row.primary.labels) : '(absent)'),
    ...matrix.clusters.map((c) => {
      const cell = row.clusters[c.name];
      const st = cell ? cell.state : 'unreachable';
      let text;
      if (st in BARE_CELLS) text = BARE_CELLS[st];
      else if (st === 'drifted') text = `${labelsText(cell.labels)} (drift)`;
      else if (st === 'excluded') text = `${labelsText(cell.labels)} (excluded)`;
      else text = labelsText(cell.labels);
      // Its drift and missing namespaces are what they are, not what a sync will correct.
      const shown = c.detaching && (st === 'drifted' || st === 'missing') ? 'detaching' : st;
      return el('td', { class: `state-${shown}`, 'data-ns': row.name, 'data-cluster': c.name, 'data-state': st }, text);
    })));
  fill(document.querySelector('#matrix tbody'), rows);
}

// The first column is the primary's, kept apart from the remotes' (one may be named primary).
function serviceCell(column, row, isPrimary) {
  const cell = isPrimary ? row.primary : row.clusters[column.name];
  if (!cell) {
    const text = { 'no-credentials': '(no view credentials)', failed: '(cannot read)', unreachable: '(unreachable)',
      pending: `(${READING})` }[column.state] || '-';
    const title = [column.error, column.enable].filter(Boolean).join('; ');
    return el('td', { class: `state-${column.state === 'no-credentials' ? 'failed' : column.state}`, 'data-cluster': column.name, title }, text);
  }
  let text = cell.exists ? `${cell.readyEndpoints} ready` : '-';
  if (cell.injected) text += ' (injected)';
  if (cell.pods) text += ` · pods ${cell.pods.withProxy} with proxy, ${cell.pods.withoutProxy} without`;
  return el('td', { 'data-cluster': column.name, class: cell.exists ? '' : 'state-absent' }, text);
}

function currentFilter() {
  return document.getElementById('filter').value.trim();
}

async function fetchServices() {
  const filter = currentFilter();
  const ticket = ++asked;
  if (!filter) {
    filtered = null;
    renderServices();
    return;
  }
  try {
    const query = `filter=${encodeURIComponent(filter)}&limit=${MAX_SERVICE_ROWS}&token=${encodeURIComponent(token)}`;
    const response = await fetch(`/services.json?${query}`);
    if (!response.ok) return;
    const page = await response.json();
    // An answer to an older question is dropped.
    if (ticket !== asked) return;
    filtered = { filter, page };
    renderServices();
  } catch (e) {
    // The event stream shows whether the server is there.
  }
}

function renderServices() {
  if (!state) return;
  const filter = currentFilter();
  let report = state.services;
  if (filter) {
    // Until the answer for this filter comes, the rows shown stay.
    if (!filtered || filtered.filter !== filter) return;
    report = filtered.page;
  }
  const head = el('tr', {}, el('th', {}, 'Namespace'), el('th', {}, 'Name'), el('th', {}, 'Type'), el('th', {}, 'Ports'),
    ...report.clusters.map((c) => el('th', {}, c.name)));
  document.querySelector('#services thead').replaceChildren(head);
  const rows = report.services.slice(0, MAX_SERVICE_ROWS).map((s) => {
    const ports = s.ports.map((p) => (p.name ? `${p.name}:` : '') + `${p.port}/${p.protocol}`).join(',') || '-';
    return el('tr', { 'data-service': `${s.namespace}/${s.name}` },
      el('td', {}, s.namespace), el('td', {}, s.name), el('td', {}, s.type),
      el('td', { class: s.portsMatch ? '' : 'differ' }, s.portsMatch ? ports : `${ports} (differ)`),
      ...report.clusters.map((c, i) => serviceCell(c, s, i === 0)));
  });
  fill(document.querySelector('#services tbody'), rows);
  const more = report.total - rows.length;
  document.getElementById('services-more').textContent =
    more > 0 ? `${more} more services; filter to narrow` : `${report.total} services`;
}

function renderEvents() {
  const rows = state.events.map((e) => el('tr', { 'data-reason': e.reason },
    el('td', {}, e.time), el('td', {}, e.type), el('td', {}, e.reason), el('td', {}, e.object),
    el('td', {}, e.count > 1 ? `${e.note} (x${e.count})` : e.note)));
  fill(document.querySelector('#events tbody'), rows);
}

function render() {
  renderClusters();
  renderMatrix();
  renderServices();
  renderEvents();
  const error = document.getElementById('primary-error');
  error.hidden = !state.primaryError;
  error.textContent = state.primaryError ? `The primary cannot be read: ${state.primaryError}` : '';
  document.getElementById('updated').textContent = `updated ${state.generatedAt}`;
}

function connection(name, text) {
  const node = document.getElementById('connection');
  node.dataset.state = name;
  node.textContent = text || name;
}

function applySnapshot(data) {
  state = JSON.parse(data);
  render();
  connection('live');
  if (currentFilter()) fetchServices();
}

// Opens this dashboard's event stream; `tell` passes on what it brings: {state, ahead} for a
// snapshot's JSON and how far the server's clock is ahead of this browser's, {connection, text} for the stream's state. Settles once the server closed
// it for good.
function stream(tell) {
  tell({ connection: 'connecting' });
  // EventSource cannot send headers: the token goes in the query.
  const source = new EventSource(`/events?token=${encodeURIComponent(token)}`);
  // Each snapshot comes after the server's time as it was sent (a snapshot may be older): the
  // offset goes with it to the pages this one streams for, which share this browser's clock.
  let ahead = 0;
  source.addEventListener('clock', (event) => { ahead = Number(event.data) - Date.now(); });
  source.addEventListener('state', (event) => tell({ state: event.data, ahead }));
  return new Promise((closed) => source.addEventListener('error', async () => {
    // A lost server is retried; an answer other than a stream (403: no token or a wrong one;
    // 503: too many pages open) closes it for good, and says nothing of why: asked again.
    if (source.readyState !== EventSource.CLOSED) {
      tell({ connection: 'reconnecting' });
      return;
    }
    const response = await fetch(`/state.json?token=${encodeURIComponent(token)}`).catch(() => null);
    if (response && response.status === 403) {
      tell({ connection: 'refused', text: 'refused: open the URL the dashboard printed, with its #token' });
    } else {
      tell({ connection: 'refused', text: 'closed: the dashboard has too many pages open (those of other browsers count too); close some, then reload' });
    }
    closed();
  }));
}

function show(message) {
  if (message.state !== undefined) {
    serverAhead = message.ahead || 0;
    applySnapshot(message.state);
  }
  else if (message.connection) connection(message.connection, message.text);
}

// One stream for every page of this dashboard in the browser: a browser opens at most six
// connections to one server, and a stream holds one for as long as its page is open, so a
// seventh page would load nothing. The page holding the lock streams and passes on what it
// brings to the others; the next one takes over when it closes, or when the server closed
// its stream for good. Without the Lock API (a page not served from this machine is no
// secure context), each page streams itself.
if (navigator.locks && window.BroadcastChannel) {
  const name = `mesh-dashboard-${token}`;
  const channel = new BroadcastChannel(name);
  const me = crypto.randomUUID();
  // What the streaming page tells a page that opens: the last snapshot, then the stream's
  // state when it is not live.
  let streaming = false;
  let snapshot = null;
  let trouble = null;
  channel.addEventListener('message', (event) => {
    const message = event.data;
    if (message.ask) {
      if (!streaming) return;
      for (const told of [snapshot, trouble]) {
        if (told) channel.postMessage({ ...told, to: message.ask });
      }
    } else if (!message.to || message.to === me) {
      show(message);
    }
  });
  channel.postMessage({ ask: me });
  navigator.locks.request(name, async () => {
    streaming = true;
    await stream((message) => {
      if (message.state !== undefined) {
        snapshot = message;
        trouble = null;
      } else {
        trouble = message;
      }
      channel.postMessage(message);
      show(message);
    });
    streaming = false;
  });
} else {
  stream(show);
}
document.getElementById('filter').addEventListener('input', fetchServices);
setInterval(refreshTimes, 1000);
