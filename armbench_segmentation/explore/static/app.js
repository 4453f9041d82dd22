/* The explorer page: map (map.js), filters, sortable tables, the sample view, selections.
 * Every data string reaches the page through textContent (never innerHTML) or, in Plotly,
 * through ArmbenchMap.lit. Sample ids travel in query strings through URLSearchParams. */
(function () {
  'use strict';
  const $ = id => document.getElementById(id);
  const fmt = v => (v === null || v === undefined) ? '' :
    (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : String(v));
  const KIND_LABELS = {over_segmented: 'over-segmented GT', under_segmenting: 'under-segmenting prediction',
    duplicate: 'duplicate', false_positive: 'false positive', missed: 'missed GT'};
  const state = {meta: null, P: null, payload: null, map: null, columns: {}, order: [], selected: [], current: null,
    sort: {key: null, dir: 1}, selectionKeys: null, filterDesc: {}};
  window.armbenchExplorer = state;

  async function getJSON(url, opts) {
    const r = await fetch(url, opts);
    const body = await r.json().catch(() => ({error: r.statusText}));
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
  function option(sel, value, text) { const o = el('option', text); o.value = value; sel.appendChild(o); return o; }
  const keyOf = i => state.P.splits[state.P.split[i]] + '\u0000' + state.P.ids[i];

  async function column(name) {
    if (!name) return null;
    if (!state.columns[name]) {
      const c = await getJSON('api/column?' + new URLSearchParams({name: name}));
      state.columns[name] = c;
      // map.js reads numeric columns from payload.metrics, categorical ones from payload.categories
      // (split and cluster from the payload's own split/cluster codes)
      if (name !== 'split' && name !== 'cluster') {
        if (c.kind === 'numeric') state.payload.metrics[name] = c.values;
        else state.payload.categories[name] = {levels: c.categories, codes: c.codes};
      }
    }
    return state.columns[name];
  }

  // ------------------------------------------------------------------ filters
  function filterFn() {
    const P = state.P;
    const splits = new Set(Array.from(document.querySelectorAll('#split-filters input')).filter(b => b.checked).map(b => Number(b.value)));
    const cl = $('cluster-filter').value;
    const rc = $('range-column').value ? state.columns[$('range-column').value] : null;
    const lo = $('range-min').value === '' ? -Infinity : Number($('range-min').value);
    const hi = $('range-max').value === '' ? Infinity : Number($('range-max').value);
    const sel = state.selectionKeys;
    state.filterDesc = {splits: Array.from(splits).map(s => P.splits[s]), cluster: cl,
      range: rc ? {column: rc.name, min: $('range-min').value, max: $('range-max').value} : null,
      selection: $('selection-filter').value || null};
    return i => splits.has(P.split[i]) && (cl === 'all' || String(P.cluster[i]) === cl) &&
      (!rc || (rc.values[i] !== null && rc.values[i] >= lo && rc.values[i] <= hi)) && (!sel || sel.has(keyOf(i)));
  }
  async function applyFilter() {
    if ($('range-column').value) await column($('range-column').value);
    const fn = filterFn();
    await state.map.setFilter(fn);
    const n = state.map.visible().length;
    $('visible-count').textContent = n + ' of ' + state.P.ids.length + ' samples shown';
    renderTable();
    if (state.current !== null) $('sample-hidden-note').hidden = state.order.indexOf(state.current) >= 0;
  }

  // ------------------------------------------------------------------ sortable tables
  function sortRows(rows, key, dir, value) {
    return rows.slice().sort((a, b) => {
      const va = value(a, key), vb = value(b, key);
      if (va === vb) return 0; if (va === null || va === undefined || va === '') return 1; if (vb === null || vb === undefined || vb === '') return -1;
      return (va < vb ? -1 : 1) * dir;
    });
  }
  function header(table, keys, sort, onSort) {
    const thead = table.querySelector('thead'); thead.textContent = '';
    const tr = el('tr');
    keys.forEach(k => { const th = el('th', k); th.dataset.key = k;
      if (sort.key === k) th.className = sort.dir > 0 ? 'asc' : 'desc';
      th.addEventListener('click', () => { sort.dir = sort.key === k ? -sort.dir : 1; sort.key = k; onSort(); });
      tr.appendChild(th); });
    thead.appendChild(tr);
  }
  function cellValue(i, key) {
    const P = state.P;
    if (key === 'sample_id') return P.ids[i];
    if (key === 'split') return P.splits[P.split[i]];
    const c = state.columns[key];
    if (!c) return null;
    return c.kind === 'numeric' ? c.values[i] : (c.codes[i] >= 0 ? c.categories[c.codes[i]] : null);
  }
  const TABLE_ROWS = 100;
  function renderTable() {
    const keys = ['sample_id', 'split'].concat(state.meta.table_columns);
    let rows = state.map.visible();
    if (state.sort.key) rows = sortRows(rows, state.sort.key, state.sort.dir, cellValue);
    state.order = rows;
    const table = $('sample-table');
    header(table, keys, state.sort, renderTable);
    const tbody = table.querySelector('tbody'); tbody.textContent = '';
    rows.slice(0, TABLE_ROWS).forEach(i => {
      const tr = el('tr', undefined, 'clickable' + (i === state.current ? ' current' : '')); tr.dataset.index = i;
      keys.forEach(k => { const v = cellValue(i, k); tr.appendChild(el('td', fmt(v), typeof v === 'number' ? 'num' : '')); });
      tr.addEventListener('click', () => openSample(i));
      tbody.appendChild(tr);
    });
    $('table-count').textContent = '(' + Math.min(TABLE_ROWS, rows.length) + ' of ' + rows.length + ' in the current filter and order)';
  }
  const clusterSort = {key: null, dir: 1};
  function renderClusters() {
    const rows = state.meta.clusters;
    const table = $('cluster-table');
    if (!rows.length) { table.querySelector('tbody').appendChild(el('tr')).appendChild(el('td', 'no clusters')); return; }
    const keys = Object.keys(rows[0]);
    const draw = () => {
      header(table, keys, clusterSort, draw);
      const sorted = clusterSort.key ? sortRows(rows, clusterSort.key, clusterSort.dir, (r, k) => r[k]) : rows;
      const tbody = table.querySelector('tbody'); tbody.textContent = '';
      sorted.forEach(r => { const tr = el('tr', undefined, 'clickable');
        keys.forEach(k => tr.appendChild(el('td', fmt(r[k]), typeof r[k] === 'number' ? 'num' : '')));
        tr.addEventListener('click', () => { $('cluster-filter').value = String(r.cluster); applyFilter(); });
        tbody.appendChild(tr); });
    };
    draw();
  }

  // ------------------------------------------------------------------ sample view
  function sampleParams(i, extra) {
    return new URLSearchParams(Object.assign({split: state.P.splits[state.P.split[i]], id: state.P.ids[i]}, extra || {}));
  }
  function imageUrl() {
    const i = state.current; if (i === null) return '';
    const layers = ['gt', 'pred', 'heat'].filter(l => $('layer-' + l).checked).join(',');
    const kind = (document.querySelector('#error-kinds input:checked') || {}).value || '';
    $('layer-gt').disabled = $('layer-pred').disabled = !!kind;  // an error kind draws its own instances
    const extra = {side: $('image-side').value, layers: layers};
    if (kind) extra.error = kind;
    return 'api/image?' + sampleParams(i, extra);
  }
  function refreshImage() {
    const img = $('sample-img');
    if (!state.sample || !state.sample.image_available) { img.hidden = true; return; }
    $('image-note').hidden = true;
    img.hidden = false; img.alt = state.P.ids[state.current]; img.src = imageUrl();
  }
  // an image the server cannot draw (file gone, dataset changed): show its one-line reason
  $('sample-img').addEventListener('error', async () => {
    const img = $('sample-img'); const src = img.src;
    const body = await fetch(src).then(r => r.json()).catch(() => ({}));
    if (img.src !== src) return;
    img.hidden = true; $('image-note').hidden = false; $('image-note').textContent = body.error || 'image unavailable';
  });
  async function openSample(i) {
    state.current = i;
    const data = await getJSON('api/sample?' + sampleParams(i));
    if (state.current !== i) return;
    state.sample = data;
    $('sample-view').hidden = false;
    $('sample-title').textContent = data.sample_id + ' (' + data.split + ')';
    const pos = state.order.indexOf(i);
    $('sample-position').textContent = pos >= 0 ? (pos + 1) + ' of ' + state.order.length : 'not in the current filter';
    $('sample-hidden-note').hidden = pos >= 0;
    $('sample-prev').disabled = pos <= 0; $('sample-next').disabled = pos < 0 || pos >= state.order.length - 1;
    const note = $('image-note'); note.hidden = data.image_available; note.textContent = data.image_note || '';
    // error kinds: one at a time (or none), each with its stored count
    const box = $('error-kinds'); const was = (box.querySelector('input:checked') || {}).value || '';
    box.textContent = '';
    const radio = (value, text) => { const l = el('label'); const r = el('input'); r.type = 'radio'; r.name = 'error-kind';
      r.value = value; r.id = 'err-' + (value || 'none'); r.checked = value === was; r.addEventListener('change', refreshImage);
      l.appendChild(r); l.appendChild(document.createTextNode(' ' + text)); box.appendChild(l); };
    radio('', 'all instances');
    Object.entries(data.errors).forEach(([k, e]) => radio(k, (KIND_LABELS[k] || k) + ' (' + e.counted + ')'));
    if (!box.querySelector('input:checked')) box.querySelector('input').checked = true;
    refreshImage();
    renderInstances(data);
    const rows = $('sample-row').querySelector('tbody'); rows.textContent = '';
    Object.entries(data.row).forEach(([k, v]) => { const tr = el('tr'); const th = el('th', k);
      const def = (state.meta.columns.find(c => c.name === k) || {}).definition; if (def) th.title = def;
      tr.appendChild(th); tr.appendChild(el('td', fmt(v), typeof v === 'number' ? 'num' : '')); rows.appendChild(tr); });
    document.querySelectorAll('#sample-table tr.current').forEach(tr => tr.classList.remove('current'));
    const tr = document.querySelector('#sample-table tr[data-index="' + i + '"]'); if (tr) tr.classList.add('current');
  }
  const instanceSort = {key: null, dir: 1};
  const INSTANCE_KEYS = ['kind', 'index', 'class', 'score', 'iou', 'best_iou', 'error_kind', 'area', 'annotation_id', 'matched_index'];
  function renderInstances(data) {
    const table = $('instance-table');
    const draw = () => {
      header(table, INSTANCE_KEYS, instanceSort, draw);
      const rows = instanceSort.key ? sortRows(data.instances, instanceSort.key, instanceSort.dir, (r, k) => r[k]) : data.instances;
      const tbody = table.querySelector('tbody'); tbody.textContent = '';
      rows.forEach(r => { const tr = el('tr'); INSTANCE_KEYS.forEach(k => tr.appendChild(el('td', fmt(r[k]), typeof r[k] === 'number' ? 'num' : '')));
        tbody.appendChild(tr); });
    };
    draw();
    const parts = Object.entries(data.errors).map(([k, e]) => (KIND_LABELS[k] || k) + ': ' + e.counted + ' (' + e.count_column + ' = ' + fmt(e.stored_count) + ')');
    $('truth').textContent = data.instances.length + ' instances. ' + (parts.length ? parts.join('; ') : 'unlabeled: no errors');
  }
  function step(d) {
    const pos = state.order.indexOf(state.current);
    if (pos >= 0 && state.order[pos + d] !== undefined) openSample(state.order[pos + d]);
  }

  // ------------------------------------------------------------------ selections
  function onSelect(indices) {
    indices = Array.from(new Set(indices.filter(Number.isInteger))).sort((a, b) => a - b);
    state.selected = indices;
    $('sel-count').textContent = indices.length + ' selected';
    $('sel-save').disabled = !indices.length;
  }
  async function saveSelection() {
    const name = $('sel-name').value.trim();
    const samples = state.selected.map(i => [state.P.splits[state.P.split[i]], state.P.ids[i]]);
    try {
      const r = await getJSON('api/selections', {method: 'POST', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({name: name, samples: samples, filter: Object.assign({color: $('color-by').value}, state.filterDesc)})});
      $('sel-status').textContent = 'saved "' + r.name + '" (' + r.count + ' samples)';
      await refreshSelections();
    } catch (e) { $('sel-status').textContent = e.message; }
  }
  async function refreshSelections() {
    const r = await getJSON('api/selections');
    const tbody = $('sel-list').querySelector('tbody'); tbody.textContent = '';
    const filterSel = $('selection-filter'); const was = filterSel.value;
    filterSel.textContent = ''; option(filterSel, '', '(all samples)');
    r.selections.forEach(name => {
      option(filterSel, name, name);
      const tr = el('tr'); tr.appendChild(el('td', name));
      const td = el('td'); const b = el('button', 'export'); b.type = 'button'; b.dataset.name = name;
      b.addEventListener('click', () => exportSelection(name)); td.appendChild(b); tr.appendChild(td); tbody.appendChild(tr);
    });
    if (r.selections.includes(was)) filterSel.value = was;
  }
  async function exportSelection(name) {
    const status = $('export-status'); status.textContent = 'exporting…';
    try {
      const r = await getJSON('api/selections/' + encodeURIComponent(name) + '/export',
        {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'});
      status.textContent = ''; status.appendChild(el('div', 'written into the run folder:'));
      const links = el('div', undefined, 'export-links');
      Object.entries(r.files).forEach(([kind, rel]) => { const a = el('a', rel); a.dataset.kind = kind;
        a.href = 'api/selections/' + encodeURIComponent(name) + '/download/' + encodeURIComponent(kind); links.appendChild(a); });
      status.appendChild(links);
    } catch (e) { status.textContent = e.message; }
  }
  async function useSelection() {
    const name = $('selection-filter').value;
    if (!name) { state.selectionKeys = null; return applyFilter(); }
    const r = await getJSON('api/selections/' + encodeURIComponent(name));
    state.selectionKeys = new Set(r.samples.map(s => s.split + '\u0000' + s.sample_id));
    return applyFilter();
  }

  // ------------------------------------------------------------------ start
  async function start() {
    const [meta, P] = await Promise.all([getJSON('api/meta'), getJSON('api/points')]);
    state.meta = meta; state.P = P;
    const counts = Object.entries(meta.counts).map(([k, v]) => v + ' ' + k).join(', ');
    $('run-summary').textContent = meta.n_samples + ' samples (' + counts + ') · run ' + meta.run_key + ' · model ' + meta.model;
    if (meta.dataset_note) { $('dataset-note').hidden = false; $('dataset-note').textContent = meta.dataset_note; }
    const colorSel = $('color-by'), sizeSel = $('size-by'), rangeSel = $('range-column');
    meta.columns.forEach(c => {
      option(colorSel, c.name, c.name + (c.kind === 'categorical' ? ' (categories)' : ''));
      if (c.kind === 'numeric') { option(sizeSel, c.name, c.name); option(rangeSel, c.name, c.name); }
    });
    if (meta.default_color) colorSel.value = meta.default_color;
    const defs = Object.fromEntries(meta.columns.map(c => [c.name, c.definition]));
    const showDefs = () => { $('color-def').textContent = defs[colorSel.value] || ''; $('size-def').textContent = defs[sizeSel.value] || ''; };
    showDefs();
    const box = $('split-filters');
    P.splits.forEach((s, k) => { const l = el('label'); const c = el('input'); c.type = 'checkbox'; c.checked = true; c.value = k;
      c.id = 'split-' + k; c.addEventListener('change', applyFilter); l.appendChild(c); l.appendChild(document.createTextNode(' ' + s)); box.appendChild(l); });
    P.clusters.forEach(c => { const ins = (meta.clusters.find(r => r.cluster === c) || {}).insight;
      option($('cluster-filter'), String(c), 'cluster ' + c + (ins ? ': ' + String(ins).slice(0, 50) : '')); });
    state.payload = Object.assign({}, P, {metrics: {}, categories: {}, definitions: defs});
    const first = await column(colorSel.value);
    performance.mark('armbench-data-loaded');
    state.map = ArmbenchMap.render($('map'), state.payload, {colorBy: first ? first.name : '', filter: filterFn(),
      onClick: openSample, onSelect: onSelect});
    await state.map.ready;
    performance.mark('armbench-map-drawn');
    state.ready = true;
    $('visible-count').textContent = state.map.visible().length + ' of ' + P.ids.length + ' samples shown';
    state.recolor = async name => { await column(name); colorSel.value = name; showDefs(); return state.map.recolor(name); };
    colorSel.addEventListener('change', () => state.recolor(colorSel.value));
    sizeSel.addEventListener('change', async () => { await column(sizeSel.value); showDefs(); state.map.resize(sizeSel.value); });
    $('cluster-filter').addEventListener('change', applyFilter);
    ['range-column', 'range-min', 'range-max'].forEach(id => $(id).addEventListener('change', applyFilter));
    $('selection-filter').addEventListener('change', useSelection);
    $('sel-save').addEventListener('click', saveSelection);
    $('sample-prev').addEventListener('click', () => step(-1));
    $('sample-next').addEventListener('click', () => step(1));
    $('sample-close').addEventListener('click', () => { $('sample-view').hidden = true; state.current = null; });
    ['layer-gt', 'layer-pred', 'layer-heat', 'image-side'].forEach(id => $(id).addEventListener('change', refreshImage));
    renderClusters();
    await Promise.all(meta.table_columns.map(column));
    renderTable();
    await refreshSelections();
    state.tablesReady = true;
  }
  start().catch(e => { $('run-summary').textContent = 'could not load the run: ' + e.message; console.error(e); });
})();
