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

  // hlcString shows an HLC as its wall-clock time (UTC, to the
  // millisecond) and logical counter: "2026-12-02 10:11:12.345 UTC /0".
  function hlcString(ts) {
    if (typeof ts !== 'bigint' || ts === 0n) return '';
    const ms = Number(ts >> 16n);
    const logical = Number(ts & 0xffffn);
    return new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC') + ' /' + logical;
  }

  // hlcCell shows an HLC as wall-clock time next to the raw number.
  function hlcCell(ts, testid) {
    if (typeof ts !== 'bigint' || ts === 0n) return el('span', { class: 'dim' }, '');
    return el('span', { 'data-testid': testid, title: 'HLC ' + String(ts) },
      el('span', { class: 'wall' }, hlcString(ts)), ' ', el('span', { class: 'dim raw' }, 'hlc ' + String(ts)));
  }

  function ageString(seconds) {
    const s = Number(seconds);
    if (s < 60) return s.toFixed(1) + ' s ago';
    if (s < 3600) return (s / 60).toFixed(1) + ' min ago';
    return (s / 3600).toFixed(1) + ' h ago';
  }

  function goTime(s) {
    if (!s || s.startsWith('0001-01-01')) return 'never';
    const d = new Date(s);
    return isNaN(d) ? s : d.toISOString();
  }

  // valueText shows a value as text when it is printable UTF-8, else as
  // base64 (the form the API sends it in).
  function valueText(b64, given) {
    if (typeof given === 'string') return { text: given, kind: 'text' };
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
      const val = v.deleted ? { text: '(deleted)', kind: 'deleted' } : valueText(v.value, v.value_typed ? JSON.stringify(v.value_typed) : v.value_text);
      ul.append(el('li', {},
        el('span', { class: 'value ' + val.kind, 'data-testid': 'value' }, val.text), ' ',
        el('span', { class: 'dim' }, 'dot ' + v.dot + ' · origin ' + v.origin + ' · '),
        el('span', { class: 'dim' }, hlcCell(v.hlc, 'version-hlc'))));
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

  // peerStates maps each other DC to its liveness as this DC sees it.
  function peerStates(st) {
    const out = {};
    for (const p of (st.bridge && st.bridge.Peers) || []) out[p.DC] = p;
    return out;
  }

  // Label geometry: the status page's font is 11px; a character is at
  // most about 6.6px wide there.
  const CHAR_W = 6.6, LABEL_H = 15;

  function overlaps(a, b) {
    return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
  }

  // placeLabels puts each edge's label on its own side of the edge, at
  // the first spot along it where the label's box meets no other label
  // and no DC circle (the least crowded spot if none is free).
  function placeLabels(items, circles) {
    const placed = [];
    const ts = [0.5, 0.4, 0.6, 0.32, 0.68, 0.25, 0.75];
    for (const it of items) {
      const w = it.label.length * CHAR_W + 6, h = LABEL_H;
      let best = null, bestHits = Infinity;
      for (const t of ts) {
        for (const off of [16, 26]) {
          const cx = it.x1 + (it.x2 - it.x1) * t + it.nx * off, cy = it.y1 + (it.y2 - it.y1) * t + it.ny * off;
          const box = { x: cx - w / 2, y: cy - h / 2, w, h, cx, cy };
          let hits = 0;
          for (const p of placed) if (overlaps(box, p)) hits++;
          for (const c of circles) if (overlaps(box, c)) hits++;
          if (hits < bestHits) { best = box; bestHits = hits; }
          if (hits === 0) break;
        }
        if (bestHits === 0) break;
      }
      placed.push(best);
      it.box = best;
    }
  }

  function renderTopology(st) {
    const root = $('topology-svg');
    const dcs = st.dcs || [];
    const links = {};
    for (const l of (st.bridge && st.bridge.Links) || []) links[l.Upstream] = l;
    const peers = peerStates(st);
    // The drawing takes the card's width: DCs sit on an ellipse as wide
    // as the card allows and at most 380px tall, in user units of one
    // CSS pixel, so labels keep their size whatever the width.
    const width = Math.max(320, Math.round(root.parentElement ? root.parentElement.clientWidth - 28 : 640));
    const R = 26, height = Math.min(380, Math.max(240, 90 * dcs.length));
    const ry = height / 2 - R - 24, rx = Math.max(60, Math.min(width / 2 - R - 70, 2.6 * ry));
    root.setAttribute('viewBox', [-width / 2, -height / 2, width, height].map((v) => v.toFixed(0)).join(' '));
    root.setAttribute('width', String(width));
    root.setAttribute('height', String(height));
    const pos = {};
    // The first DC on top; two DCs side by side.
    const first = dcs.length === 2 ? Math.PI : -Math.PI / 2;
    dcs.forEach((dc, i) => {
      const a = first + (2 * Math.PI * i) / dcs.length;
      pos[dc] = { x: rx * Math.cos(a), y: ry * Math.sin(a) };
    });
    const nodes = [];
    const defs = svg('defs');
    const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: '9', refY: '5', markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse' });
    marker.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }));
    defs.append(marker);
    nodes.push(defs);
    const items = [];
    for (const e of edgesOf(st)) {
      const a = pos[e.upstream], b = pos[e.dc];
      if (!a || !b) continue;
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
      const ux = dx / len, uy = dy / len, nx = -uy, ny = ux, off = 6;
      const x1 = a.x + ux * R + nx * off, y1 = a.y + uy * R + ny * off;
      const x2 = b.x - ux * (R + 2) + nx * off, y2 = b.y - uy * (R + 2) + ny * off;
      const ls = e.dc === st.dc ? links[e.upstream] : undefined;
      let label = 'lag ?', cls = 'link unknown';
      if (ls) {
        label = ls.LagEvents + ' ev · ' + Number(ls.LagSeconds).toFixed(1) + ' s';
        cls = 'link known' + (ls.Connected ? '' : ' down') + (e.extra ? ' extra' : '');
      }
      items.push({ e, ls, label, cls, x1, y1, x2, y2, nx, ny });
    }
    const circles = dcs.map((d) => ({ x: pos[d].x - R - 2, y: pos[d].y - R - 2, w: 2 * R + 4, h: 2 * R + 4 }));
    // Measured labels first: they matter more than the "?" ones.
    items.sort((p, q) => (q.ls ? 1 : 0) - (p.ls ? 1 : 0));
    placeLabels(items, circles);
    const labels = [];
    for (const it of items) {
      const id = it.e.upstream + '-' + it.e.dc;
      const g = svg('g', { class: it.cls, 'data-testid': 'link-' + id, 'data-upstream': it.e.upstream, 'data-dc': it.e.dc });
      g.append(svg('line', { x1: it.x1, y1: it.y1, x2: it.x2, y2: it.y2, 'marker-end': 'url(#arrow)' }));
      nodes.push(g);
      const b = it.box;
      const lg = svg('g', { class: it.cls + ' label' });
      lg.append(svg('rect', { x: b.x, y: b.y, width: b.w, height: b.h, rx: 3, class: 'label-bg' }));
      const text = svg('text', { x: b.cx, y: b.cy, 'text-anchor': 'middle', 'dominant-baseline': 'central', 'data-testid': 'link-lag-' + id,
        'data-box': [b.x, b.y, b.w, b.h].map((v) => v.toFixed(1)).join(' ') }, it.label);
      text.append(svg('title', {}, it.ls ? it.e.upstream + ' → ' + it.e.dc + ': measured by this DC' : it.e.upstream + ' → ' + it.e.dc + ': measured only by ' + it.e.dc));
      lg.append(text);
      labels.push(lg);
    }
    for (const dc of dcs) {
      const p = pos[dc];
      const ps = peers[dc];
      const state = dc === st.dc ? 'self' : (ps ? ps.State.replace(' ', '-') : 'unknown');
      const g = svg('g', { class: 'dc ' + state, 'data-testid': 'dc-node-' + dc, 'data-dc': dc, 'data-state': state });
      g.append(svg('circle', { cx: p.x, cy: p.y, r: R }));
      g.append(svg('text', { x: p.x, y: p.y, 'text-anchor': 'middle', 'dominant-baseline': 'central' }, dc));
      g.append(svg('title', {}, dc === st.dc ? dc + ': this DC' : dc + ': ' + (ps ? ps.State + ', last report ' + ageString(ps.ReportAgeSeconds) : 'no report')));
      nodes.push(g);
    }
    // Labels last, over the lines and circles.
    root.replaceChildren(...nodes, ...labels);
  }

  function renderPeers(st) {
    const rows = ((st.bridge && st.bridge.Peers) || []).map((p) => el('tr', { 'data-testid': 'peer-row-' + p.DC },
      el('td', {}, p.DC),
      el('td', { class: 'state ' + p.State.replace(' ', '-'), 'data-testid': 'peer-state-' + p.DC }, p.State),
      el('td', { class: 'num', 'data-testid': 'peer-age-' + p.DC }, p.LastReport ? ageString(p.ReportAgeSeconds) : 'none for ' + Number(p.ReportAgeSeconds).toFixed(1) + ' s'),
      el('td', {}, p.LastReport ? goTime(p.LastReport) : 'never since this DC started')));
    if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: 4, class: 'dim' }, 'no peers (replication is off or this is the only DC)')));
    $('peers').replaceChildren(...rows);
  }

  function renderDigests(d) {
    const rows = (d.dcs || []).map((x) => el('tr', { 'data-testid': 'digest-row-' + x.dc },
      el('td', {}, x.dc + (x.self ? ' (this DC)' : '')),
      el('td', { class: 'key', 'data-testid': 'digest-' + x.dc, title: x.digest || '' }, x.digest ? x.digest.slice(0, 16) + '…' : '—'),
      el('td', { class: 'num' }, x.digest ? x.keys : ''),
      el('td', { class: 'num' }, x.ms + ' ms'),
      el('td', { class: x.error ? 'bad' : '' }, x.error || '')));
    $('digests').replaceChildren(...rows);
    const v = $('digest-verdict');
    v.textContent = d.agree ? '— all DCs agree' : '— DCs differ';
    v.className = 'count ' + (d.agree ? 'ok' : 'bad');
    $('digest-when').textContent = ' last compared ' + new Date().toLocaleTimeString();
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

  // resolvedCell shows what a resolved record's key was resolved to, by
  // which DC, how and when.
  function resolvedCell(c) {
    if (c.status !== 'resolved') return el('span', { class: 'dim' }, c.status === 'open' ? 'open: waiting for a resolution' : '');
    const by = c.resolved_by ? 'by ' + c.resolved_by : 'by a merge';
    return el('div', {}, versionList(c.resolved_to, 'resolved-to'),
      el('span', { class: 'dim', 'data-testid': 'resolved-by' }, by + (c.resolved_via ? ' via ' + c.resolved_via : '') + ' · '),
      hlcCell(c.resolved_hlc, 'resolved-at'));
  }

  function renderConflicts(list) {
    const sorted = (list || []).slice().sort((a, b) => (a.detected_hlc < b.detected_hlc ? 1 : a.detected_hlc > b.detected_hlc ? -1 : 0));
    const rows = sorted.map((c) => el('tr', { 'data-testid': 'conflict-row', 'data-key': c.key },
      el('td', { class: 'key' }, c.key),
      el('td', {}, c.resolver),
      el('td', {}, c.status),
      el('td', {}, versionList(c.kept, 'kept')),
      el('td', {}, versionList(c.discarded, 'discarded')),
      el('td', { 'data-testid': 'resolved' }, resolvedCell(c)),
      el('td', {}, hlcCell(c.detected_hlc, 'detected'))));
    if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: 7, class: 'dim' }, 'no conflicts logged')));
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
    $('ready').textContent = st.bridge ? (b.Ready ? 'yes' : 'catching up (see /readyz)') : 'n/a';
    $('outbox').textContent = st.bridge ? b.OutboxDepth + ' pending' : 'n/a';
    document.title = 'replicator ' + st.dc;
    renderTopology(st);
    renderPeers(st);
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

  const DIGEST_MS = 30000;
  let digestsAt = 0;

  // pollDigests asks for every DC's digest every DIGEST_MS while the page
  // is shown, or at once when forced.
  async function pollDigests(force) {
    if (!force && (document.visibilityState === 'hidden' || Date.now() - digestsAt < DIGEST_MS)) return;
    digestsAt = Date.now();
    try {
      renderDigests(await get('/v1/digests'));
    } catch (e) {
      $('digests').replaceChildren(el('tr', {}, el('td', { colspan: 5, class: e.status === 404 ? 'dim' : 'bad' }, 'GET /v1/digests: ' + e.message)));
    }
  }

  $('digest-refresh').addEventListener('click', () => pollDigests(true));

  async function loop() {
    try {
      await Promise.all([poll(), pollDigests(false)]);
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
