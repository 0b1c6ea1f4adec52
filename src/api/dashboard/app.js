// dram dashboard: reads the node's public API every 2 s and shows the cluster.
// Plain JavaScript, no framework. Every value from the API reaches the page as
// a text node or an attribute set with setAttribute: nothing is parsed as HTML.
'use strict';

(() => {
  const REFRESH_MS = 2000;
  const EVENTS_RETRY_MS = 30000; // after a 404: the node has no events endpoint
  const TOKEN_KEY = 'dram.token';

  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers -------------------------------------------------------

  // el('td', {class: 'num'}, 'text', childNode, …): attributes through
  // setAttribute, children as text nodes or nodes; null/false children skipped.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text;
  }

  // ---- formatting --------------------------------------------------------

  const pad = (n) => String(n).padStart(2, '0');

  function clock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function when(ms) {
    if (typeof ms !== 'number') return '—';
    const d = new Date(ms);
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return clock(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ms)}`;
  }

  function ago(ms) {
    if (typeof ms !== 'number') return '';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  function bytes(n) {
    if (typeof n !== 'number') return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
  }

  const num = (n) => (typeof n === 'number' ? n.toLocaleString() : '—');

  // ---- token -------------------------------------------------------------

  function storedToken() {
    try {
      return localStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      return '';
    }
  }

  function storeToken(token) {
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // localStorage unavailable: the token lives until the page closes.
    }
    memoryToken = token;
  }

  let memoryToken = storedToken();

  function showTokenForm(reason) {
    const form = $('token-form');
    if (reason) setText('token-reason', reason);
    form.hidden = false;
  }

  // ---- API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(path, status, code, message) {
      super(message);
      this.path = path;
      this.status = status;
      this.code = code;
    }
  }

  async function api(path) {
    const headers = { Accept: 'application/json' };
    if (memoryToken) headers.Authorization = `Bearer ${memoryToken}`;
    let response;
    try {
      response = await fetch(path, { headers, cache: 'no-store' });
    } catch (e) {
      throw new ApiError(path, 0, 'unreachable', `node unreachable (${e.message})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiError(
        path,
        response.status,
        error.code || `http_${response.status}`,
        error.message || response.statusText || `HTTP ${response.status}`,
      );
    }
    return body;
  }

  const settle = (promise) => promise.then(
    (value) => ({ ok: true, value }),
    (error) => ({ ok: false, error }),
  );

  // ---- refresh -----------------------------------------------------------

  let eventsMissingUntil = 0;
  let lastSuccess = null;
  let refreshes = 0;
  let timer = null;
  let running = false;

  // Fetches everything, then renders it in one go (no half-drawn page).
  async function refresh() {
    if (running) return;
    running = true;
    clearTimeout(timer);
    try {
      const skipEvents = Date.now() < eventsMissingUntil;
      const [cluster, databases, aliases, gc, events] = await Promise.all([
        settle(api('/v1/cluster')),
        settle(api('/v1/databases')),
        settle(api('/v1/aliases')),
        settle(api('/v1/gc')),
        skipEvents ? null : settle(api('/v1/events?kind=error&limit=20&scope=cluster')),
      ]);
      const shards = {};
      if (databases.ok) {
        const list = databases.value.databases || [];
        const answers = await Promise.all(list.map((d) => settle(
          api(`/v1/cluster/shards?database=${encodeURIComponent(d.name)}`),
        )));
        list.forEach((d, i) => { shards[d.name] = answers[i]; });
      }

      const failures = [];
      let unauthorized = null;
      const check = (result) => {
        if (!result || result.ok) return;
        const e = result.error;
        if (e.status === 401 || e.status === 403) unauthorized = unauthorized || e;
        else failures.push(e);
      };
      if (events && !events.ok && events.error.status === 404) {
        eventsMissingUntil = Date.now() + EVENTS_RETRY_MS;
      } else {
        check(events);
      }
      [cluster, databases, aliases, gc].forEach(check);
      Object.values(shards).forEach(check);

      const liveMembers = cluster.ok
        ? (cluster.value.members || []).filter((m) => m.live).length
        : null;
      if (cluster.ok) renderCluster(cluster.value);
      if (databases.ok) renderDatabases(databases.value.databases || [], shards, liveMembers);
      if (aliases.ok) renderAliases(aliases.value.aliases || []);
      if (gc.ok) renderGc(gc.value);
      if (events === null || (events && !events.ok && events.error.status === 404)) {
        renderNoEvents();
      } else if (events.ok) {
        renderEvents(events.value.events || []);
      }

      if (unauthorized) {
        showTokenForm(memoryToken
          ? `The token was refused (${unauthorized.message}). Enter another.`
          : `The API asks for a token (${unauthorized.message}).`);
      }
      renderStatus(failures, unauthorized);
    } catch (e) {
      renderStatus([new ApiError('dashboard', 0, 'script', e.message)], null);
    } finally {
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      running = false;
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  function renderStatus(failures, unauthorized) {
    const banner = $('banner');
    if (failures.length === 0 && !unauthorized) {
      lastSuccess = Date.now();
      banner.hidden = true;
      banner.replaceChildren();
      setText('updated', `updated ${clock(lastSuccess)}`);
      return;
    }
    const problems = failures.map((e) => `${e.path}: ${e.message}`);
    if (unauthorized) problems.unshift(`${unauthorized.path}: ${unauthorized.message}`);
    banner.replaceChildren(
      el('strong', null, 'Refresh failed'),
      lastSuccess ? ` (showing data from ${clock(lastSuccess)}): ` : ': ',
      problems.join('; '),
    );
    banner.hidden = false;
    setText('updated', lastSuccess ? `updated ${clock(lastSuccess)} (stale)` : 'not loaded');
  }

  // ---- cluster: header, health, members, disks ---------------------------

  function renderCluster(cluster) {
    setText('node', cluster.node || '?');
    setText('cluster-id', cluster.cluster_id || '?');
    const health = $('health');
    health.textContent = cluster.health || '?';
    health.className = `badge ${cluster.health || ''}`;
    setText('primary', cluster.primary
      ? `primary ${cluster.primary.id} (term ${cluster.primary.term})`
      : 'no primary');

    const reasons = cluster.reasons || [];
    $('health-section').hidden = reasons.length === 0;
    $('reasons').replaceChildren(...reasons.map((r) => el('li', null, r)));

    const flagged = new Map((cluster.disagreements || []).map((d) => [d.node, d]));
    const primaryId = cluster.primary ? cluster.primary.id : null;
    const rows = (cluster.members || []).map((m) => memberRow(m, flagged.get(m.id), primaryId));
    $('members').tBodies[0].replaceChildren(...rows);
    renderDisks(cluster.members || []);
  }

  function memberRow(m, disagreement, primaryId) {
    const info = m.node || {};
    const load = m.load || {};
    const inventory = m.inventory || {};
    const classes = [m.live ? 'alive' : 'dead', disagreement ? 'disagree' : null, m.self ? 'self' : null];
    const registry = el('td', null, el('code', { title: m.registry ? m.registry.hash : '' },
      m.registry ? m.registry.hash.slice(0, 12) : '—'));
    if (disagreement) {
      registry.append(el('div', { class: 'flag', title: `its digest: ${disagreement.hash}` },
        `registry disagrees since ${when(disagreement.since_ms)} (${ago(disagreement.since_ms)})`));
    }
    return el('tr', { 'data-member': m.id, class: classes.filter(Boolean).join(' ') },
      el('td', null, el('strong', null, m.id),
        m.self ? el('span', { class: 'tag' }, 'this node') : null,
        m.id === primaryId ? el('span', { class: 'tag' }, 'primary') : null),
      el('td', null, el('span', { class: m.live ? 'live' : 'down' }, m.live ? 'live' : 'dead')),
      el('td', null, info.zone || '—'),
      el('td', null, el('code', null, info.http || '—')),
      el('td', null, info.version || '—'),
      el('td', { class: 'num' }, num(inventory.ready)),
      el('td', { class: 'num' }, bytes(inventory.bytes)),
      el('td', { class: 'num' }, num(load.inflight)),
      el('td', { class: 'num' }, typeof load.p99_ms === 'number' ? `${load.p99_ms} ms` : '—'),
      registry);
  }

  // A disk's bar: dram's own bytes, then what other programs use (the high
  // watermark counts both unless `max_bytes` gives dram a budget of its own),
  // and a line at the watermark.
  function renderDisks(members) {
    const cards = [];
    for (const m of members) {
      for (const [id, disk] of Object.entries(m.disks || {})) {
        const total = disk.total || 0;
        const budget = disk.capacity > 0 && disk.capacity < total;
        const scale = budget ? disk.capacity : total;
        const pctOf = (n) => (scale > 0 ? Math.min(100, (100 * n) / scale) : 0);
        const diskUsed = Math.max(0, total - (disk.free || 0));
        const dramPct = pctOf(disk.used || 0);
        // With a budget, other programs' files do not count against it.
        const otherPct = budget ? 0 : Math.max(0, pctOf(diskUsed) - dramPct);
        const watermark = typeof disk.watermark_permille === 'number' ? disk.watermark_permille / 10 : null;
        const usedText = budget
          ? `dram ${bytes(disk.used)} of its ${bytes(disk.capacity)} budget (${Math.round(dramPct)}%)`
          : `dram ${bytes(disk.used)} · disk ${Math.round(pctOf(diskUsed))}% of ${bytes(total)}`;
        cards.push(el('div', {
          class: disk.full ? 'disk full' : 'disk',
          'data-disk': `${m.id}/${id}`,
          'data-dram-pct': dramPct.toFixed(1),
          'data-used-pct': (dramPct + otherPct).toFixed(1),
          'data-watermark-pct': watermark === null ? '' : watermark.toFixed(1),
        },
          el('div', { class: 'label' },
            el('span', null, el('strong', null, m.id), ` / ${id}`, m.live ? null : ' (dead)'),
            el('span', null, usedText, disk.full ? ' — past its watermark' : null)),
          el('div', {
            class: 'bar',
            title: `dram ${bytes(disk.used)}; other files ${budget ? 'not counted (max_bytes)' : bytes(Math.max(0, diskUsed - (disk.used || 0)))}; `
              + `${bytes(disk.free)} free of ${bytes(total)}`
              + (watermark === null ? '' : `; high watermark ${Math.round(watermark)}%: past it the disk takes nothing new`),
          },
            el('div', { class: 'dram', style: `width: ${dramPct.toFixed(1)}%` }),
            el('div', { class: 'other', style: `width: ${otherPct.toFixed(1)}%` }),
            watermark === null ? null : el('div', { class: 'watermark', style: `left: ${watermark.toFixed(1)}%` }))));
      }
    }
    $('disks').replaceChildren(...(cards.length ? cards : [el('p', { class: 'muted' }, 'no disks reported')]));
  }

  // ---- databases ---------------------------------------------------------

  function wantedCopies(replicas, liveMembers) {
    if (replicas === 'all') return liveMembers;
    return typeof replicas === 'number' ? replicas : null;
  }

  function renderDatabases(databases, shards, liveMembers) {
    const sections = databases.map((d) => {
      const wanted = wantedCopies(d.replicas, liveMembers);
      const holders = shards[d.name];
      let cells;
      let total = null;
      if (!holders || !holders.ok) {
        const why = holders ? holders.error.message : 'not asked';
        cells = el('p', { class: 'error-text' }, `shard copies unknown: ${why}`);
      } else {
        const map = holders.value.shards || {};
        const ids = Object.keys(map).sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
        total = ids.length;
        cells = el('div', { class: 'shards' }, ids.map((id) => shardCell(id, map[id] || [], wanted)));
        if (ids.length === 0) cells = el('p', { class: 'muted' }, 'no live member holds a shard of it yet');
      }
      // state, shard_count and bytes are this node's own copy of the database.
      return el('div', { class: 'database', 'data-database': d.name },
        el('div', { class: 'head' },
          el('h3', null, d.name),
          el('span', { class: `state-${d.state}` }, d.state || '?', d.error ? `: ${d.error}` : null),
          el('span', null, `replicas ${d.replicas ?? '?'}`),
          total === null ? null : el('span', null, `${num(total)} shards`),
          el('span', { class: 'muted' }, `here: ${num(d.shard_count)} shards, ${bytes(d.bytes)}`),
          d.mode === 'lazy' ? el('span', { class: 'tag' }, 'lazy') : null,
          d.keep ? el('span', { class: 'tag' }, 'keep') : null),
        d.remedy ? el('p', { class: 'remedy' }, d.remedy) : null,
        cells);
    });
    $('databases').replaceChildren(...(sections.length ? sections : [el('p', { class: 'muted' }, 'no databases')]));
  }

  function shardCell(id, holders, wanted) {
    const ready = holders.filter((h) => h.state === 'ready').length;
    let state = null;
    if (ready === 0 || (wanted !== null && ready < wanted)) state = 'under';
    else if (wanted !== null && ready > wanted) state = 'over';
    const detail = holders.map((h) => (h.state === 'downloading' ? `${h.node} ${h.pct}%` : `${h.node} ${h.state}`));
    const title = `shard ${id}: ${ready} ready of ${wanted === null ? '?' : wanted} wanted`
      + (detail.length ? ` (${detail.join(', ')})` : '');
    return el('div', { class: state ? `shard ${state}` : 'shard', title },
      el('span', { class: 'id' }, id),
      el('span', { class: state ? `copies ${state}` : 'copies', 'data-shard': id }, String(ready)));
  }

  // ---- aliases, GC and trash, events -------------------------------------

  function renderAliases(aliases) {
    const rows = aliases.map((a) => el('tr', { 'data-alias': a.name },
      el('td', null, el('strong', null, a.name)),
      el('td', null, a.target || '—'),
      el('td', null, when(a.updated_ms))));
    if (rows.length === 0) rows.push(el('tr', null, el('td', { colspan: 3, class: 'muted' }, 'no aliases')));
    $('aliases').tBodies[0].replaceChildren(...rows);
  }

  function table(headings, rows) {
    return el('table', null,
      el('thead', null, el('tr', null, headings.map(([text, cls]) => el('th', { class: cls }, text)))),
      el('tbody', null, rows));
  }

  function renderGc(gc) {
    const parts = [];
    const fullDisks = gc.full_disks || [];
    parts.push(el('p', null,
      el('span', { class: gc.triggered ? 'badge red' : 'badge green' }, gc.triggered ? 'triggered' : 'not triggered'),
      fullDisks.length ? ` full disks: ${fullDisks.join(', ')}` : ' no disk past its high watermark'));
    const eligible = gc.eligible || [];
    if (eligible.length) {
      parts.push(el('p', { class: 'muted' }, 'Eligible, in the order collection deletes them:'));
      parts.push(table([['#'], ['database'], ['bytes', 'num'], ['last read'], ['holders']],
        eligible.map((e, i) => el('tr', null,
          el('td', null, String(i + 1)),
          el('td', null, e.database),
          el('td', { class: 'num' }, bytes(e.bytes)),
          el('td', null, e.last_read_ms ? when(e.last_read_ms) : 'never'),
          el('td', null, (e.holders || []).join(', '))))));
    } else {
      parts.push(el('p', { class: 'muted' }, 'No database is eligible (each has an alias or is kept).'));
    }
    if (Array.isArray(gc.trash)) {
      parts.push(el('h3', null, 'Trash'));
      if (gc.trash.length) {
        parts.push(table([['database'], ['part'], ['bytes', 'num'], ['trashed'], ['purged at']],
          gc.trash.map((t) => el('tr', null,
            el('td', null, t.database),
            el('td', null, t.part || 'all'),
            el('td', { class: 'num' }, bytes(t.bytes)),
            el('td', null, when(t.trashed_ms)),
            el('td', null, `${when(t.purge_at_ms)}`)))));
      } else {
        parts.push(el('p', { class: 'muted' }, 'empty'));
      }
    }
    $('gc').replaceChildren(...parts);
  }

  function renderNoEvents() {
    $('events').replaceChildren(el('p', { class: 'muted' }, 'no events endpoint on this node'));
  }

  function renderEvents(events) {
    if (events.length === 0) {
      $('events').replaceChildren(el('p', { class: 'muted' }, 'none'));
      return;
    }
    const where = (e) => [e.disk && `disk ${e.disk}`, e.database, e.part && `part ${e.part}`]
      .filter(Boolean).join(' · ');
    $('events').replaceChildren(table([['time'], ['node'], ['where'], ['error']],
      events.map((e) => {
        const error = e.error || {};
        return el('tr', null,
          el('td', null, when(e.ts_ms)),
          el('td', null, e.node || '—'),
          el('td', null, where(e) || '—'),
          el('td', null, el('code', null, error.class || e.kind || 'error'), ' ', error.message || ''));
      })));
  }

  // ---- wiring ------------------------------------------------------------

  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token-input').value.trim();
    storeToken(token);
    $('token-input').value = '';
    $('token-form').hidden = true;
    refresh();
  });
  $('token-forget').addEventListener('click', () => {
    storeToken('');
    $('token-input').value = '';
    setText('token-reason', 'No token is kept.');
    refresh();
  });
  $('token-toggle').addEventListener('click', () => {
    const form = $('token-form');
    if (form.hidden) {
      showTokenForm(memoryToken ? 'A token is kept in this browser.' : 'No token is kept.');
    } else {
      form.hidden = true;
    }
  });

  refresh();
})();
