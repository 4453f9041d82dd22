/* The static dashboard's page logic: controls, the side panel, the larger view, sortable
 * tables. The map itself is ArmbenchMap (map.js, inlined before this file). */
(function(){
const D = JSON.parse(document.getElementById('map-data').textContent);
const N = D.ids.length;
const $ = id => document.getElementById(id);
const colorSel = $('color-by'), clusterSel = $('cluster-filter'), sizeChk = $('size-by-loss');
const splitBoxes = Array.from(document.querySelectorAll('input.split-filter'));
const fmt = ArmbenchMap.format;
const nViews = D.view.reduce((a, b) => a + b, 0);
const WEBGL_ABOVE = 5000;

// ---------------------------------------------------------------- colour choices
function addGroup(label, names) {
  if (!names.length) return;
  const g = document.createElement('optgroup'); g.label = label;
  names.forEach(m => { const o = document.createElement('option'); o.value = m; o.textContent = m; g.appendChild(o); });
  colorSel.appendChild(g);
}
const cols = ArmbenchMap.columns(D);
addGroup('numeric', cols.filter(c => c.kind === 'numeric').map(c => c.name));
addGroup('categorical', cols.filter(c => c.kind === 'categorical').map(c => c.name));
if (D.metrics.loss) colorSel.value = 'loss';
D.clusters.forEach(c => { const o = document.createElement('option'); o.value = String(c);
  o.textContent = 'cluster ' + c + (D.insights[String(c)] ? ': ' + D.insights[String(c)].slice(0, 60) : ''); clusterSel.appendChild(o); });

function visible(i) {
  const cl = clusterSel.value;
  return splitBoxes.some(b => b.checked && Number(b.value) === D.split[i]) && (cl === 'all' || String(D.cluster[i]) === cl);
}
function visibleRows() { const out = []; for (let i = 0; i < N; i++) if (visible(i)) out.push(i); return out; }

// ---------------------------------------------------------------- side panel
const panel = $('panel');
let current = null;  // the row the panel shows
function panelText(text) { panel.textContent = ''; const p = document.createElement('p'); p.className = 'muted';
  p.textContent = text; panel.appendChild(p); current = null; }
function showPanel(i) {
  panel.textContent = ''; current = i;
  if (D.thumb[i]) { const img = document.createElement('img'); img.src = D.assets + 'thumbs/' + i + '.jpg'; img.alt = D.ids[i]; panel.appendChild(img); }
  const add = (k, v) => { const d = document.createElement('div'); const b = document.createElement('b'); b.textContent = k + ': ';
    d.appendChild(b); d.appendChild(document.createTextNode(fmt(v))); panel.appendChild(d); };
  add('sample', D.ids[i]); add('split', D.splits[D.split[i]]); add('cluster', D.cluster[i]);
  const cat = f => { const c = D.categories[f]; return c && c.codes[i] >= 0 ? c.levels[c.codes[i]] : null; };
  D.panel_fields.forEach(f => add(f, D.metrics[f] ? D.metrics[f][i] : (D.panel[f] ? D.panel[f][i] : cat(f))));
  const ins = D.insights[String(D.cluster[i])]; if (ins) add('cluster insight', ins);
  const b = document.createElement('button'); b.id = 'panel-view'; b.textContent = 'larger view';
  b.addEventListener('click', () => openViewer(i)); panel.appendChild(b);
}
function checkPanel() {
  if (current !== null && !visible(current)) panelText('The sample shown here is hidden by the filters now; hover over a point to see another.');
}

// ---------------------------------------------------------------- map
let map = null;
const countEl = $('visible-count');
function render() {
  if (map) { map.setFilter(visible); countEl.textContent = map.visible().length + ' of ' + N + ' samples shown'; }
  checkPanel();
}
if (typeof Plotly === 'undefined' || typeof ArmbenchMap === 'undefined') {
  $('map').textContent = 'The map needs assets/plotly.min.js beside this page (it was not found). Share the page together '
    + 'with its assets folder; the tables below work without it.';
  $('map').className = 'missing';
} else {
  // SVG below 5,000 points (crisp, exact hover), WebGL above (fluid at 44k)
  map = ArmbenchMap.render($('map'), D, {colorBy: colorSel.value, sizeBy: sizeChk.checked ? 'loss' : '', filter: visible,
    webgl: N > WEBGL_ABOVE,
    onHover: showPanel, onClick: i => { showPanel(i); openViewer(i); }});
  countEl.textContent = map.visible().length + ' of ' + N + ' samples shown';
}
function showDefinition() { $('color-def').textContent = D.definitions[colorSel.value] || ''; }
showDefinition();
colorSel.addEventListener('change', () => { showDefinition(); if (map) map.recolor(colorSel.value); });
sizeChk.addEventListener('change', () => { if (map) map.resize(sizeChk.checked ? 'loss' : ''); });
clusterSel.addEventListener('change', render);
splitBoxes.forEach(b => b.addEventListener('change', render));
document.querySelectorAll('#cluster-table tr.clickable').forEach(tr => tr.addEventListener('click', () => {
  clusterSel.value = tr.dataset.cluster; render(); $('map-section').scrollIntoView(); }));

// ---------------------------------------------------------------- larger view
const viewer = $('viewer');
let viewing = null;
function setLayers() { $('view-gt').hidden = !$('show-gt').checked; $('view-pred').hidden = !$('show-pred').checked; }
function openViewer(i) {
  viewing = i; viewer.hidden = false;
  $('viewer-title').textContent = D.ids[i] + ' (' + D.splits[D.split[i]] + ')';
  const info = $('viewer-info'); info.textContent = '';
  const imgs = ['view-image', 'view-gt', 'view-pred'];
  if (D.view[i]) {
    const base = D.assets + 'views/' + i;
    $('view-image').src = base + '.jpg'; $('view-gt').src = base + '_gt.png'; $('view-pred').src = base + '_pred.png';
    imgs.forEach(id => { $(id).style.display = ''; });
  } else {
    imgs.forEach(id => { $(id).removeAttribute('src'); $(id).style.display = 'none'; });
    info.textContent = 'This page embeds the larger view of ' + nViews + ' of ' + N + ' samples, not of this one. '
      + 'To see every sample, run "armbench serve ." in the folder that holds this page.';
  }
  const m = [];
  ['loss', 'f1', 'tp', 'fp', 'fn', 'over_segmented_count', 'under_segmented_count'].forEach(f => {
    if (D.metrics[f] && D.metrics[f][i] !== null) m.push(f + ' ' + fmt(D.metrics[f][i])); });
  if (m.length) { const d = document.createElement('div'); d.textContent = m.join(' \u00b7 '); info.appendChild(d); }
  setLayers();
}
function closeViewer() { viewer.hidden = true; viewing = null; }
function step(delta) {
  if (viewing === null) return;
  const rows = (map ? map.visible() : visibleRows()).filter(i => D.view[i]);
  if (!rows.length) return;
  const k = rows.indexOf(viewing);
  openViewer(rows[((k < 0 ? 0 : k + delta) % rows.length + rows.length) % rows.length]);
}
$('show-gt').addEventListener('change', setLayers); $('show-pred').addEventListener('change', setLayers);
$('viewer-close').addEventListener('click', closeViewer);
$('viewer-prev').addEventListener('click', () => step(-1)); $('viewer-next').addEventListener('click', () => step(1));
viewer.addEventListener('click', ev => { if (ev.target === viewer) closeViewer(); });
document.addEventListener('keydown', ev => {
  if (viewer.hidden) return;
  if (ev.key === 'Escape') closeViewer(); else if (ev.key === 'ArrowRight') step(1); else if (ev.key === 'ArrowLeft') step(-1);
});
document.querySelectorAll('#picks-table tr[data-row], .gallery figure[data-row]').forEach(el =>
  el.addEventListener('click', () => openViewer(Number(el.dataset.row))));

// ---------------------------------------------------------------- sortable tables
function cellKey(td) {
  const raw = td.dataset.v !== undefined ? td.dataset.v : td.textContent.trim();
  const num = parseFloat(raw);
  return {text: td.textContent.trim(), num: raw !== '' && isFinite(num) ? num : null, empty: raw === ''};
}
document.querySelectorAll('table.sortable').forEach(table => {
  table.querySelectorAll('thead th').forEach((th, col) => th.addEventListener('click', () => {
    const body = table.tBodies[0]; const rows = Array.from(body.rows);
    const asc = th.getAttribute('aria-sort') !== 'ascending';
    table.querySelectorAll('thead th').forEach(h => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    const keys = rows.map(r => cellKey(r.cells[col]));
    const numeric = keys.every(k => k.empty || k.num !== null);
    const order = rows.map((r, k) => k).sort((a, b) => {
      const x = keys[a], y = keys[b];
      if (x.empty !== y.empty) return x.empty ? 1 : -1;  // empty cells last either way
      const c = numeric ? x.num - y.num : x.text.localeCompare(y.text, undefined, {numeric: true});
      return (asc ? c : -c) || a - b;
    });
    order.forEach(k => body.appendChild(rows[k]));
  }));
});

window.armbenchDashboard = {render: render, visible: visibleRows, data: D, map: map, showPanel: showPanel,
  openViewer: openViewer, closeViewer: closeViewer, current: () => current};
})();
