/* ArmbenchMap: the population map, shared by the static dashboard (analysis/report.py) and
 * the local app (`armbench serve`). A plain script, no build step; needs Plotly (plotly.js,
 * loaded before this file) and draws one WebGL `scattergl` map.
 *
 *   const map = ArmbenchMap.render(el, payload, options);
 *
 * payload (the columns dict report._map_payload builds; row i of every array is sample i):
 *   ids:        [string]            sample ids (shown as text, never as markup)
 *   x, y:       [number]            map coordinates
 *   split:      [int]               split code per row; splits: [string] code -> name
 *   cluster:    [int]               cluster per row (-1 = none); clusters: [int] the ids present
 *   metrics:    {column: [number|null]}                      numeric columns (null = no value)
 *   categories: {column: {levels: [string], codes: [int]}}  categorical columns (code -1 = missing),
 *                                                            e.g. meta_tote_color
 *   definitions:{column: string}    what a column means (shown by the pages, not by map.js)
 *   Other keys (thumbs, panel, insights, ...) are ignored here.
 *
 * options (all optional):
 *   colorBy:  a metrics or categories column, "split", "cluster", or "" (one colour). Numeric ->
 *             Viridis colour scale (rows without a value grey, drawn below); categorical -> one
 *             trace per level with a legend entry.
 *   sizeBy:   a metrics column (marker size 5..17 px by its range) or "" (6 px).
 *   filter:   (i) -> bool, rows to draw (default all).
 *   onClick:  (i) -> void, a point clicked;  onHover: (i) -> void, a point hovered.
 *   onSelect: (indices) -> void, lasso / box selection done ([] when cleared).
 *   dragmode: plotly's initial drag mode ("zoom", "lasso", "select", "pan"); default "zoom".
 *   webgl:    true (default): `scattergl` (WebGL, fluid at 44k+ points); false: SVG `scatter`
 *             (crisper for a few thousand points, and Plotly.Fx.hover by point number works).
 *   height:   CSS height of el when it has none.
 *
 * returns a handle:
 *   recolor(column), resize(column), setFilter(fn): redraw with the new setting (zoom is kept);
 *   visible() -> [int] rows drawn now; options() -> the current options; el: the plot element.
 *
 * Also: ArmbenchMap.columns(payload) -> [{name, kind: "numeric" | "categorical"}] the columns
 * a page can offer for colour; ArmbenchMap.literal(text) (alias .lit) escapes text for plotly's
 * hover/legend (plotly reads <b>, <br>, &amp; in them); ArmbenchMap.format(value) the number format.
 */
(function (global) {
  'use strict';
  const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
    '#bcbd22', '#17becf', '#aec7e8', '#ffbb78', '#98df8a', '#ff9896', '#c5b0d5', '#c49c94', '#f7b6d2',
    '#dbdb8d', '#9edae5', '#393b79'];
  const MISSING = '#b0b0b0';
  const SYMBOLS = ['circle', 'diamond', 'square', 'triangle-up', 'x'];

  function literal(v) { return String(v).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  function fmt(v) {
    if (v === null || v === undefined) return '\u2013';
    return typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(3)) : String(v);
  }
  function range(vals) {
    let lo = Infinity, hi = -Infinity;
    for (const v of vals) if (v !== null && v !== undefined) { if (v < lo) lo = v; if (v > hi) hi = v; }
    return lo === Infinity ? [0, 1] : (lo === hi ? [lo - 0.5, hi + 0.5] : [lo, hi]);
  }

  /* A categorical view of a column: {levels, codes} or null when the column is not categorical. */
  function categorical(P, column) {
    if (column === 'split') return {levels: P.splits, codes: P.split};
    if (column === 'cluster') {
      const levels = (P.clusters || []).map(c => 'cluster ' + c);
      const pos = new Map((P.clusters || []).map((c, k) => [c, k]));
      return {levels: levels, codes: P.cluster.map(c => (pos.has(c) ? pos.get(c) : -1))};
    }
    return (P.categories && P.categories[column]) || null;
  }

  function columns(P) {
    const out = [];
    Object.keys(P.metrics || {}).forEach(name => out.push({name: name, kind: 'numeric'}));
    if (P.cluster) out.push({name: 'cluster', kind: 'categorical'});
    if (P.split) out.push({name: 'split', kind: 'categorical'});
    Object.keys(P.categories || {}).forEach(name => out.push({name: name, kind: 'categorical'}));
    return out;
  }

  function render(el, P, options) {
    const opts = Object.assign({colorBy: '', sizeBy: '', filter: null, dragmode: 'zoom', webgl: true}, options || {});
    const N = P.ids.length;
    if (!el.style.height && opts.height) el.style.height = opts.height;
    let drawn = [];

    function sizes(ids) {
      const vals = opts.sizeBy && P.metrics[opts.sizeBy];
      if (!vals) return 6;
      const [lo, hi] = range(vals);
      return ids.map(i => (vals[i] === null ? 6 : 5 + 12 * (vals[i] - lo) / ((hi - lo) || 1)));
    }
    function trace(ids, name, marker, valueText) {
      marker.size = sizes(ids);
      marker.symbol = ids.map(i => SYMBOLS[P.split[i] % SYMBOLS.length]);
      marker.line = {width: 0};
      marker.opacity = 0.8;
      return {type: opts.webgl ? 'scattergl' : 'scatter', mode: 'markers', name: literal(name), x: ids.map(i => P.x[i]),
        y: ids.map(i => P.y[i]), customdata: ids, marker: marker, hovertemplate: '%{text}<extra></extra>',
        text: ids.map(i => literal(P.ids[i]) + (valueText ? '<br>' + literal(valueText(i)) : ''))};
    }
    function traces(idx) {
      const col = opts.colorBy;
      const cat = col ? categorical(P, col) : null;
      if (cat) {
        const groups = cat.levels.map(() => []); const missing = [];
        for (const i of idx) { const c = cat.codes[i]; (c >= 0 && c < groups.length ? groups[c] : missing).push(i); }
        const label = i => col + ': ' + (cat.codes[i] >= 0 ? cat.levels[cat.codes[i]] : '\u2013');
        const out = [];
        if (missing.length) out.push(trace(missing, '(no ' + col + ')', {color: MISSING}, label));
        groups.forEach((ids, k) => { if (ids.length) out.push(trace(ids, cat.levels[k], {color: PALETTE[k % PALETTE.length]}, label)); });
        return out;
      }
      const vals = col ? P.metrics[col] : null;
      if (!vals) return [trace(idx, 'samples', {color: PALETTE[0]}, null)];
      const [cmin, cmax] = range(vals);
      const gray = idx.filter(i => vals[i] === null); const colored = idx.filter(i => vals[i] !== null);
      const label = i => col + ': ' + fmt(vals[i]);
      const out = [];
      if (gray.length) out.push(trace(gray, '(no ' + col + ')', {color: MISSING}, label));
      if (colored.length) {
        out.push(trace(colored, col, {color: colored.map(i => vals[i]), colorscale: 'Viridis', cmin: cmin, cmax: cmax,
          showscale: true, colorbar: {title: {text: literal(col)}, len: 0.8}}, label));
      }
      return out;
    }
    function draw() {
      const idx = [];
      for (let i = 0; i < N; i++) if (!opts.filter || opts.filter(i)) idx.push(i);
      drawn = idx;
      return Plotly.react(el, traces(idx), {
        margin: {l: 40, r: 10, t: 10, b: 40}, legend: {orientation: 'h', y: -0.08},
        xaxis: {title: {text: 'map x'}, zeroline: false}, yaxis: {title: {text: 'map y'}, zeroline: false},
        hovermode: 'closest', uirevision: 'keep', dragmode: opts.dragmode,
      }, {responsive: true, displaylogo: false});
    }
    const ready = draw();
    const point = ev => (ev && ev.points && ev.points.length ? ev.points[0].customdata : null);
    // render() again on the same element replaces the earlier map's handlers instead of adding to them
    ['plotly_click', 'plotly_hover', 'plotly_selected', 'plotly_deselect'].forEach(name => {
      if (el.removeAllListeners) el.removeAllListeners(name);
    });
    el.on('plotly_click', ev => { const i = point(ev); if (i !== null && opts.onClick) opts.onClick(i); });
    el.on('plotly_hover', ev => { const i = point(ev); if (i !== null && opts.onHover) opts.onHover(i); });
    el.on('plotly_selected', ev => { if (opts.onSelect) opts.onSelect(ev && ev.points ? ev.points.map(p => p.customdata) : []); });
    el.on('plotly_deselect', () => { if (opts.onSelect) opts.onSelect([]); });
    return {
      el: el, ready: ready,
      recolor: column => { opts.colorBy = column || ''; return draw(); },
      resize: column => { opts.sizeBy = column || ''; return draw(); },
      setFilter: fn => { opts.filter = fn || null; return draw(); },
      visible: () => drawn.slice(),
      options: () => Object.assign({}, opts),
    };
  }

  global.ArmbenchMap = {render: render, columns: columns, literal: literal, lit: literal, format: fmt, palette: PALETTE};
})(window);
