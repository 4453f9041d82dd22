/* The population map: a Plotly scattergl (WebGL) plot of every sample, coloured and sized by
 * any column. A plain script (no build step) defining
 *
 *   window.ArmbenchMap.render(el, payload, options) -> {recolor(name), resize(name), setFilter(fn),
 *                                                        visible(), redraw()}   (each returns a Promise)
 *
 * payload: {ids: [str], x: [num|null], y: [num|null], split: [int], splits: [str],
 *           columns: {name: {kind: 'numeric', values: [num|null], definition}
 *                          | {kind: 'categorical', codes: [int, -1 = none], categories: [str], definition}},
 *           metrics: {name: [num|null]}   (optional: numeric columns as the static dashboard embeds them)}
 * options:  colorBy, sizeBy (column names or null), filter(i) -> bool, onClick(i), onSelect([i])
 *
 * Samples are indices into payload.ids everywhere (a point's customdata). Every data string
 * shown by Plotly (ids, column names, categories) goes through lit(): Plotly reads <b>, <br>
 * and entities in hover text and legend names.
 */
(function () {
  'use strict';
  const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
    '#bcbd22', '#17becf', '#393b79', '#ad494a', '#637939', '#8c6d31', '#843c39', '#7b4173', '#3182bd', '#e6550d',
    '#31a354', '#756bb1'];
  const SYMBOLS = ['circle', 'diamond', 'square', 'triangle-up', 'x'];
  const GRAY = '#c0c0c0';
  const MAX_LEGEND = 20;

  function lit(v) { return String(v).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  function fmt(v) {
    if (v === null || v === undefined) return '–';
    return typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(3)) : String(v);
  }
  function columnOf(payload, name) {
    if (!name) return null;
    if (payload.columns && payload.columns[name]) return payload.columns[name];
    if (payload.metrics && payload.metrics[name]) return {kind: 'numeric', values: payload.metrics[name]};
    return null;
  }
  function range(values) {
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < values.length; i++) { const v = values[i]; if (v !== null) { if (v < lo) lo = v; if (v > hi) hi = v; } }
    if (lo === Infinity) return [0, 1];
    return lo === hi ? [lo - 0.5, hi + 0.5] : [lo, hi];
  }

  function render(el, payload, options) {
    options = options || {};
    const N = payload.ids.length;
    let colorBy = options.colorBy || null, sizeBy = options.sizeBy || null, filter = options.filter || null;
    let shown = [];

    function visible() {
      const out = [];
      for (let i = 0; i < N; i++) if (payload.x[i] !== null && payload.y[i] !== null && (!filter || filter(i))) out.push(i);
      return out;
    }
    function sizes(idx) {
      const col = columnOf(payload, sizeBy);
      if (!col || col.kind !== 'numeric') return 7;
      const [lo, hi] = range(col.values);
      return idx.map(i => col.values[i] === null ? 4 : 4 + 12 * (col.values[i] - lo) / ((hi - lo) || 1));
    }
    function trace(idx, marker, name, text) {
      return {type: 'scattergl', mode: 'markers', name: name, x: idx.map(i => payload.x[i]), y: idx.map(i => payload.y[i]),
        customdata: idx, marker: marker, text: text, hovertemplate: '%{text}<extra></extra>', showlegend: false};
    }
    function build() {
      const idx = visible(); shown = idx;
      const col = columnOf(payload, colorBy);
      const label = i => lit(payload.ids[i]) + '<br>' + lit(payload.splits[payload.split[i]]);
      const has = col ? (col.kind === 'numeric' ? i => col.values[i] !== null : i => col.codes[i] >= 0) : () => true;
      const colored = idx.filter(has), gray = idx.filter(i => !has(i));
      const size = sizes(idx), sizeOf = new Map();
      if (Array.isArray(size)) idx.forEach((i, k) => sizeOf.set(i, size[k]));
      const markerSize = ids => Array.isArray(size) ? ids.map(i => sizeOf.get(i)) : size;
      const symbols = ids => ids.map(i => SYMBOLS[payload.split[i] % SYMBOLS.length]);
      const traces = [];
      const grayText = gray.map(i => label(i) + (col ? '<br>' + lit(colorBy) + ': –' : ''));
      traces.push(trace(gray, {color: GRAY, size: markerSize(gray), symbol: symbols(gray), opacity: 0.6, line: {width: 0}},
        'no value', grayText));
      let marker, text;
      if (col && col.kind === 'numeric') {
        const [lo, hi] = range(col.values);
        marker = {color: colored.map(i => col.values[i]), colorscale: 'Viridis', cmin: lo, cmax: hi, showscale: true,
          colorbar: {title: {text: lit(colorBy)}, len: 0.8}};
        text = colored.map(i => label(i) + '<br>' + lit(colorBy) + ': ' + lit(fmt(col.values[i])));
      } else if (col) {
        marker = {color: colored.map(i => PALETTE[col.codes[i] % PALETTE.length])};
        text = colored.map(i => label(i) + '<br>' + lit(colorBy) + ': ' + lit(col.categories[col.codes[i]]));
      } else {
        marker = {color: '#1f77b4'};
        text = colored.map(label);
      }
      Object.assign(marker, {size: markerSize(colored), symbol: symbols(colored), opacity: 0.85, line: {width: 0}});
      traces.push(trace(colored, marker, 'samples', text));
      // legend-only traces (no points): split symbols, categories
      payload.splits.forEach((s, k) => traces.push({type: 'scattergl', mode: 'markers', x: [null], y: [null],
        name: lit(s), marker: {symbol: SYMBOLS[k % SYMBOLS.length], color: '#555'}, hoverinfo: 'skip', showlegend: true}));
      if (col && col.kind === 'categorical') {
        col.categories.slice(0, MAX_LEGEND).forEach((c, k) => traces.push({type: 'scattergl', mode: 'markers',
          x: [null], y: [null], name: lit(colorBy + ' ' + c), marker: {color: PALETTE[k % PALETTE.length]},
          hoverinfo: 'skip', showlegend: true}));
      }
      const layout = {margin: {l: 40, r: 10, t: 10, b: 40}, hovermode: 'closest', dragmode: el._armbenchDragmode || 'zoom',
        xaxis: {title: {text: 'map x'}, zeroline: false}, yaxis: {title: {text: 'map y'}, zeroline: false},
        legend: {orientation: 'h', y: -0.1}, uirevision: 'keep'};
      return Plotly.react(el, traces, layout, {responsive: true, displaylogo: false});
    }
    function pointIndex(p) {
      if (p.customdata !== undefined && p.customdata !== null) return p.customdata;
      const t = el.data[p.curveNumber];
      return t && t.customdata ? t.customdata[p.pointIndex !== undefined ? p.pointIndex : p.pointNumber] : undefined;
    }
    const first = build().then(() => {
      el.on('plotly_click', ev => {
        if (!ev || !ev.points || !ev.points.length || !options.onClick) return;
        const i = pointIndex(ev.points[0]);
        if (i !== undefined) options.onClick(i);
      });
      el.on('plotly_selected', ev => {
        if (!options.onSelect) return;
        const out = new Set();
        ((ev && ev.points) || []).forEach(p => { if (p.curveNumber <= 1) { const i = pointIndex(p); if (i !== undefined) out.add(i); } });
        options.onSelect(Array.from(out).sort((a, b) => a - b));
      });
      el.on('plotly_deselect', () => { if (options.onSelect) options.onSelect([]); });
      el.on('plotly_relayout', ev => { if (ev && ev.dragmode) el._armbenchDragmode = ev.dragmode; });
    });
    return {
      ready: first,
      recolor(name) { colorBy = name || null; return build(); },
      resize(name) { sizeBy = name || null; return build(); },
      setFilter(fn) { filter = fn || null; return build(); },
      visible() { return shown.slice(); },
      redraw: build,
    };
  }

  window.ArmbenchMap = window.ArmbenchMap || {render: render, lit: lit, fmt: fmt};
})();
