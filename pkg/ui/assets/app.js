// The replicator status page: polls the sidecar's HTTP API and renders it.
// Everything from the API is inserted as text (textContent), never as HTML.
'use strict';

(function () {
  const POLL_MS = 1500;
  const TOKEN_KEY = 'replicator.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  // takeToken moves a token given in the URL (#token=T or ?token=T) into
  // sessionStorage and off the address bar, and returns the stored token.
  function takeToken() {
    const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
    const query = new URLSearchParams(location.search);
    const given = hash.get('token') ?? query.get('token');
    if (given !== null) {
      sessionStorage.setItem(TOKEN_KEY, given);
      hash.delete('token');
      query.delete('token');
      const q = query.toString();
      const h = hash.toString();
      history.replaceState(null, '', location.pathname + (q ? '?' + q : '') + (h ? '#' + h : ''));
    }
    return sessionStorage.getItem(TOKEN_KEY) || '';
  }

  class APIError extends Error {
    constructor(path, status, message) {
      super(message);
      this.path = path;
      this.status = status;
    }
  }

  // parseJSON keeps HLC timestamps exact: they exceed 2^53, so they become
  // BigInts, from the source text where the browser offers it.
  function parseJSON(text) {
    return JSON.parse(text, function (key, value, ctx) {
      if (key === 'hlc' || key === 'detected_hlc' || key === 'resolved_hlc') {
        if (ctx && typeof ctx.source === 'string') return BigInt(ctx.source);
        return BigInt(Math.round(value));
      }
      return value;
    });
  }

  async function get(path) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    let resp;
    try {
      resp = await fetch(path, { headers, cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      throw new APIError(path, 0, 'the sidecar did not answer (' + e.message + ')');
    }
    const text = await resp.text();
    let body = null;
    try {
      body = parseJSON(text);
    } catch (e) {
      if (resp.ok) throw new APIError(path, resp.status, 'the answer is not JSON: ' + e.message);
    }
    if (!resp.ok) {
      const msg = body && body.error ? body.error : text.slice(0, 200);
      throw new APIError(path, resp.status, msg);
    }
    return body;
  }

  // el builds an element with attributes and text or child nodes.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
    for (const c of children) {
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function hlcString(ts) {
    if (typeof ts !== 'bigint' || ts === 0n) return '';
    const ms = Number(ts >> 16n);
    const logical = Number(ts & 0xffffn);
    return new Date(ms).toISOString() + '/' + logical;
  }

  function goTime(s) {
    if (!s || s.startsWith('0001-01-01')) return 'never';
    const d = new Date(s);
    return isNaN(d) ? s : d.toISOString();
  }

  // valueText shows a value as text when it is printable UTF-8, else as
  // base64 (the form the API sends it in).
  function valueText(b64) {
    if (b64 === null || b64 === undefined) return { text: '(empty)', kind: 'text' };
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    try {
      const s = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
      if (!/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(s)) return { text: s, kind: 'text' };
    } catch (e) { /* not UTF-8 */ }
    return { text: 'base64:' + b64, kind: 'base64' };
  }

  function versionList(versions, testid) {
    const ul = el('ul', { class: 'versions', 'data-testid': testid });
    for (const v of versions || []) {
      const val = v.deleted ? { text: '(deleted)', kind: 'deleted' } : valueText(v.value);
      ul.append(el('li', {},
        el('span', { class: 'value ' + val.kind, 'data-testid': 'value' }, val.text), ' ',
        el('span', { class: 'dim' }, 'dot ' + v.dot + ' · origin ' + v.origin + ' · hlc '),
        el('span', { class: 'dim', title: String(v.hlc) }, hlcString(v.hlc))));
    }
    return ul;
  }

  // edgesOf returns the topology's links (status.edges; an older sidecar
  // without it gives only the links into itself), plus any link this DC
  // runs outside the plan, such as one opened to heal around a lost DC.
  function edgesOf(st) {
    const ups = (st.bridge && st.bridge.Upstreams) || [];
    const edges = Array.isArray(st.edges) ? st.edges.slice() : ups.map((u) => ({ upstream: u, dc: st.dc }));
    for (const l of (st.bridge && st.bridge.Links) || []) {
      if (!edges.some((e) => e.upstream === l.Upstream && e.dc === st.dc)) {
        edges.push({ upstream: l.Upstream, dc: st.dc, extra: true });
      }
    }
    return edges;
  }

  function renderTopology(st) {
    const root = $('topology-svg');
    const dcs = st.dcs || [];
    const links = {};
    for (const l of (st.bridge && st.bridge.Links) || []) links[l.Upstream] = l;
    const R = 30, ring = 150, margin = R + 50;
    const pos = {};
    dcs.forEach((dc, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / dcs.length;
      pos[dc] = { x: ring * Math.cos(a), y: ring * Math.sin(a) };
    });
    // Fit the drawing: the view box spans the DCs plus room for labels.
    const xs = dcs.map((d) => pos[d].x), ys = dcs.map((d) => pos[d].y);
    if (dcs.length > 0) {
      const x0 = Math.min(...xs) - margin - 40, y0 = Math.min(...ys) - margin;
      const w = Math.max(...xs) - Math.min(...xs) + 2 * (margin + 40), h = Math.max(...ys) - Math.min(...ys) + 2 * margin;
      root.setAttribute('viewBox', [x0, y0, w, h].map((v) => v.toFixed(0)).join(' '));
    }
    const nodes = [];
    const defs = svg('defs');
    const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: '9', refY: '5', markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse' });
    marker.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }));
    defs.append(marker);
    nodes.push(defs);
    for (const e of edgesOf(st)) {
      const a = pos[e.upstream], b = pos[e.dc];
      if (!a || !b) continue;
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
      const ux = dx / len, uy = dy / len, nx = -uy, ny = ux, off = 7;
      const x1 = a.x + ux * R + nx * off, y1 = a.y + uy * R + ny * off;
      const x2 = b.x - ux * (R + 2) + nx * off, y2 = b.y - uy * (R + 2) + ny * off;
      const ls = e.dc === st.dc ? links[e.upstream] : undefined;
      let label = 'lag ?', cls = 'link unknown';
      if (ls) {
        label = ls.LagEvents + ' ev · ' + Number(ls.LagSeconds).toFixed(1) + ' s';
        cls = 'link known' + (ls.Connected ? '' : ' down') + (e.extra ? ' extra' : '');
      }
      const id = e.upstream + '-' + e.dc;
      const g = svg('g', { class: cls, 'data-testid': 'link-' + id, 'data-upstream': e.upstream, 'data-dc': e.dc });
      g.append(svg('line', { x1, y1, x2, y2, 'marker-end': 'url(#arrow)' }));
      const t = (x1 + x2) / 2 + nx * 18, u = (y1 + y2) / 2 + ny * 18;
      const text = svg('text', { x: t, y: u, 'text-anchor': 'middle', 'dominant-baseline': 'middle', 'data-testid': 'link-lag-' + id }, label);
      text.append(svg('title', {}, ls ? e.upstream + ' → ' + e.dc + ': measured by this DC' : e.upstream + ' → ' + e.dc + ': measured only by ' + e.dc));
      g.append(text);
      nodes.push(g);
    }
    for (const dc of dcs) {
      const p = pos[dc];
      const g = svg('g', { class: 'dc' + (dc === st.dc ? ' self' : ''), 'data-testid': 'dc-node-' + dc, 'data-dc': dc });
      g.append(svg('circle', { cx: p.x, cy: p.y, r: R }));
      g.append(svg('text', { x: p.x, y: p.y, 'text-anchor': 'middle', 'dominant-baseline': 'central' }, dc));
      nodes.push(g);
    }
    root.replaceChildren(...nodes);
  }

  function renderLinks(st) {
    const rows = [];
    for (const l of (st.bridge && st.bridge.Links) || []) {
      rows.push(el('tr', { 'data-testid': 'link-row-' + l.Upstream },
        el('td', {}, l.Upstream),
        el('td', { class: l.Connected ? 'ok' : 'bad' }, l.Connected ? 'yes' : 'no'),
        el('td', { class: 'num', 'data-testid': 'lag-events-' + l.Upstream }, l.LagEvents),
        el('td', { class: 'num', 'data-testid': 'lag-seconds-' + l.Upstream }, Number(l.LagSeconds).toFixed(3)),
        el('td', { class: 'num' }, l.Received),
        el('td', { class: 'num' }, l.Applied),
        el('td', { class: 'num' }, l.DeadLetters),
        el('td', {}, goTime(l.LastApplied)),
        el('td', { class: l.LastError ? 'bad' : '' }, l.LastError || '')));
    }
    if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: 9, class: 'dim' }, 'no upstream links (replication is off or this DC consumes nobody)')));
    $('links').replaceChildren(...rows);
  }

  function sumRow(row) {
    let n = 0;
    for (const v of row || []) n += Number(v);
    return n;
  }

  function renderApplied(st) {
    const b = st.bridge || {};
    const dcs = st.dcs || [];
    $('applied-head').replaceChildren(el('tr', {}, el('th', {}, 'DC \\ origin'), ...dcs.map((d) => el('th', {}, d))));
    const vectors = [[st.dc, b.Applied, 'live']];
    for (const dc of dcs) {
      if (dc === st.dc) continue;
      const v = b.PeerApplied ? b.PeerApplied[dc] : undefined;
      vectors.push([dc, v, v ? 'reported' : 'not reported']);
    }
    const rows = vectors.map(([dc, vec, how]) => {
      const cells = dcs.map((origin) => {
        if (!vec) return el('td', { class: 'dim' }, '?');
        const row = vec[origin];
        return el('td', { class: 'num', title: 'per partition: [' + (row || []).join(', ') + ']', 'data-testid': 'applied-' + dc + '-' + origin }, sumRow(row));
      });
      return el('tr', { 'data-testid': 'applied-row-' + dc }, el('th', {}, dc + ' ', el('span', { class: 'dim' }, '(' + how + ')')), ...cells);
    });
    $('applied').replaceChildren(...rows);
  }

  function renderConflicts(list) {
    const sorted = (list || []).slice().sort((a, b) => (a.detected_hlc < b.detected_hlc ? 1 : a.detected_hlc > b.detected_hlc ? -1 : 0));
    const rows = sorted.map((c) => el('tr', { 'data-testid': 'conflict-row', 'data-key': c.key },
      el('td', { class: 'key' }, c.key),
      el('td', {}, c.resolver),
      el('td', {}, c.status),
      el('td', {}, versionList(c.kept, 'kept')),
      el('td', {}, versionList(c.discarded, 'discarded')),
      el('td', { title: String(c.detected_hlc) }, hlcString(c.detected_hlc))));
    if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: 6, class: 'dim' }, 'no conflicts logged')));
    $('conflicts').replaceChildren(...rows);
  }

  function renderDeadLetters(d) {
    $('dlq-total').textContent = d.total;
    const rows = (d.dead_letters || []).map((m) => el('tr', { 'data-testid': 'deadletter-row' },
      el('td', { class: 'num' }, m.seq),
      el('td', {}, goTime(m.time)),
      el('td', { class: 'reason', 'data-testid': 'deadletter-reason' }, m.reason),
      el('td', {}, m.upstream),
      el('td', {}, m.subject),
      el('td', { class: 'num' }, m.stream_seq),
      el('td', {}, m.msg_id),
      el('td', { class: 'num' }, m.size)));
    if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: 8, class: 'dim' }, 'no dead letters')));
    $('deadletters').replaceChildren(...rows);
  }

  function renderNoDeadLetters(msg) {
    $('dlq-total').textContent = 'n/a';
    $('deadletters').replaceChildren(el('tr', {}, el('td', { colspan: 8, class: 'dim' }, msg)));
  }

  function renderStatus(st) {
    const b = st.bridge || {};
    $('dc').textContent = st.dc;
    $('topology').textContent = st.topology + ' (' + (st.dcs || []).join(', ') + ')';
    $('running').textContent = st.bridge ? (b.Running ? 'yes' : 'no') : 'no replication';
    $('outbox').textContent = st.bridge ? b.OutboxDepth + ' pending' : 'n/a';
    document.title = 'replicator ' + st.dc;
    renderTopology(st);
    renderLinks(st);
    renderApplied(st);
  }

  let lastUpdated = null;

  function showErrors(errors) {
    const banner = $('error');
    if (errors.length === 0) {
      banner.hidden = true;
      banner.replaceChildren();
      $('token-form').hidden = true;
      return;
    }
    const items = errors.map((e) => el('li', {}, 'GET ' + e.path + ': ' + (e.status ? e.status + ' ' : '') + e.message));
    const stale = lastUpdated ? 'The figures below are from ' + lastUpdated.toLocaleTimeString() + '.' : 'Nothing loaded yet.';
    const unauthorized = errors.some((e) => e.status === 401);
    const hint = unauthorized ? ' The sidecar wants its bearer token: open /ui#token=<token>, or type it below.' : '';
    banner.replaceChildren(el('strong', {}, 'The API failed. '), stale + hint, el('ul', {}, ...items));
    banner.hidden = false;
    $('token-form').hidden = !unauthorized;
  }

  async function poll() {
    const [st, cs, dl] = await Promise.allSettled([
      get('/v1/status'),
      get('/v1/conflicts?limit=20'),
      get('/v1/deadletters?limit=20'),
    ]);
    const errors = [];
    if (st.status === 'fulfilled') renderStatus(st.value); else errors.push(st.reason);
    if (cs.status === 'fulfilled') renderConflicts(cs.value); else errors.push(cs.reason);
    if (dl.status === 'fulfilled') {
      renderDeadLetters(dl.value);
    } else if (dl.reason.status === 404) {
      renderNoDeadLetters(dl.reason.message);
    } else {
      errors.push(dl.reason);
    }
    if (errors.length === 0) {
      lastUpdated = new Date();
      const t = $('updated');
      t.textContent = lastUpdated.toLocaleTimeString();
      t.setAttribute('datetime', lastUpdated.toISOString());
    }
    showErrors(errors.map((e) => (e instanceof APIError ? e : new APIError('?', 0, String(e)))));
  }

  async function loop() {
    try {
      await poll();
    } catch (e) {
      showErrors([new APIError('?', 0, 'the page failed to render: ' + e)]);
    }
    setTimeout(loop, POLL_MS);
  }

  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token-input').value.trim());
    $('token-input').value = '';
    poll();
  });

  takeToken();
  loop();
})();
