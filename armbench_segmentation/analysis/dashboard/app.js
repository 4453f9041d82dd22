(function(){
const D = JSON.parse(document.getElementById('map-data').textContent);
const N = D.ids.length;
const colorSel = document.getElementById('color-by');
const clusterSel = document.getElementById('cluster-filter');
const sizeChk = document.getElementById('size-by-loss');
const splitBoxes = Array.from(document.querySelectorAll('input.split-filter'));
const countEl = document.getElementById('visible-count');
const metricNames = Object.keys(D.metrics);
metricNames.forEach(m => { const o = document.createElement('option'); o.value = m; o.textContent = m; colorSel.appendChild(o); });
if (metricNames.includes('loss')) colorSel.value = 'loss';
D.clusters.forEach(c => { const o = document.createElement('option'); o.value = String(c);
  o.textContent = 'cluster ' + c + (D.insights[String(c)] ? ': ' + D.insights[String(c)].slice(0, 60) : ''); clusterSel.appendChild(o); });
const symbols = ['circle', 'diamond', 'square', 'triangle-up', 'x'];
function range(vals){ let lo = Infinity, hi = -Infinity; for (const v of vals) if (v !== null) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return lo === Infinity ? [0, 1] : (lo === hi ? [lo - 0.5, hi + 0.5] : [lo, hi]); }
// plotly reads <b>, <br>, &amp;... in hover text, trace names and titles: show data literally
function lit(v){ return String(v).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
function fmt(v){ return (v === null || v === undefined) ? '–' : (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(3)) : String(v)); }
function visible(){
  const splits = new Set(splitBoxes.filter(b => b.checked).map(b => Number(b.value)));
  const cl = clusterSel.value; const out = [];
  for (let i = 0; i < N; i++) if (splits.has(D.split[i]) && (cl === 'all' || String(D.cluster[i]) === cl)) out.push(i);
  return out;
}
function render(){
  const metric = colorSel.value; const vals = metric ? D.metrics[metric] : null;
  const [cmin, cmax] = vals ? range(vals) : [0, 1];
  const loss = D.metrics.loss; const [lmin, lmax] = loss ? range(loss) : [0, 1];
  const idx = visible(); const traces = []; const under = []; let scale = true;  // gray (no value) drawn first, below
  const gl = N > 5000;
  D.splits.forEach((name, s) => {
    const inSplit = idx.filter(i => D.split[i] === s);
    const colored = vals ? inSplit.filter(i => vals[i] !== null) : inSplit;
    const gray = vals ? inSplit.filter(i => vals[i] === null) : [];
    const mk = (ids, withColor, label) => {
      if (!ids.length) return;
      const size = ids.map(i => (sizeChk.checked && loss && loss[i] !== null) ? 5 + 12 * (loss[i] - lmin) / ((lmax - lmin) || 1) : 6);
      const marker = {size: size, symbol: symbols[s % symbols.length], line: {width: 0}, opacity: 0.8};
      if (withColor) Object.assign(marker, {color: ids.map(i => vals[i]), colorscale: 'Viridis', cmin: cmin, cmax: cmax,
        showscale: scale, colorbar: {title: {text: lit(metric)}, len: 0.8}});
      else marker.color = '#b0b0b0';
      if (withColor) scale = false;
      (withColor ? traces : under).push({type: gl ? 'scattergl' : 'scatter', mode: 'markers', name: lit(label), x: ids.map(i => D.x[i]),
        y: ids.map(i => D.y[i]), customdata: ids, marker: marker,
        hovertemplate: '%{text}<extra></extra>', text: ids.map(i => lit(D.ids[i]) + (vals ? '<br>' + lit(metric) + ': ' + lit(fmt(vals[i])) : ''))});
    };
    mk(colored, !!vals, name);
    mk(gray, false, name + ' (no ' + metric + ')');
  });
  countEl.textContent = idx.length + ' of ' + N + ' samples shown';
  Plotly.react('map', under.concat(traces), {margin: {l: 40, r: 10, t: 10, b: 40}, legend: {orientation: 'h', y: -0.08},
    xaxis: {title: {text: 'map x'}, zeroline: false}, yaxis: {title: {text: 'map y'}, zeroline: false},
    hovermode: 'closest', uirevision: 'keep'}, {responsive: true, displaylogo: false});
}
function showPanel(i){
  const p = document.getElementById('panel'); p.textContent = '';
  const uri = D.thumbs[D.ids[i]];
  if (uri) { const img = document.createElement('img'); img.src = uri; img.alt = D.ids[i]; p.appendChild(img); }
  const add = (k, v) => { const d = document.createElement('div'); const b = document.createElement('b'); b.textContent = k + ': ';
    d.appendChild(b); d.appendChild(document.createTextNode(fmt(v))); p.appendChild(d); };
  add('sample', D.ids[i]); add('split', D.splits[D.split[i]]); add('cluster', D.cluster[i]);
  D.panel_fields.forEach(f => add(f, D.metrics[f] ? D.metrics[f][i] : (D.panel[f] ? D.panel[f][i] : null)));
  const ins = D.insights[String(D.cluster[i])]; if (ins) add('cluster insight', ins);
}
function showDefinition(){ document.getElementById('color-def').textContent = D.definitions[colorSel.value] || ''; }
showDefinition();
colorSel.addEventListener('change', showDefinition);
colorSel.addEventListener('change', render); clusterSel.addEventListener('change', render);
sizeChk.addEventListener('change', render); splitBoxes.forEach(b => b.addEventListener('change', render));
document.querySelectorAll('#cluster-table tr.clickable').forEach(tr => tr.addEventListener('click', () => {
  clusterSel.value = tr.dataset.cluster; render(); document.getElementById('map-section').scrollIntoView(); }));
render();
const mapDiv = document.getElementById('map');
mapDiv.on('plotly_hover', ev => { if (ev.points && ev.points.length) showPanel(ev.points[0].customdata); });
mapDiv.on('plotly_click', ev => { if (ev.points && ev.points.length) showPanel(ev.points[0].customdata); });
window.armbenchDashboard = {render: render, visible: visible, data: D};
})();
