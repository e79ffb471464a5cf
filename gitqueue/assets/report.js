for (const [id, fig] of Object.entries(PLOTS)) {
  const div = document.getElementById(id);
  const fail = (why) => { const p = document.createElement('p'); p.className = 'plot-error';
    p.textContent = 'This browser could not draw this plot: ' + why; div.replaceWith(p); };
  try {
    Plotly.newPlot(div, fig.data, fig.layout, {displaylogo: false, responsive: true})
      .then(() => { div.dataset.drawn = 'yes'; }, (e) => fail(String(e)));
  } catch (e) { fail(String(e)); }
}
(function () {
  const cols = TABLE.columns, all = TABLE.rows, numeric = cols.map((_, i) => all.some(r => typeof r[i] === 'number'));
  let sortCol = -1, sortDir = 1, page = 0, view = all;
  const head = document.querySelector('#results thead'), body = document.querySelector('#results tbody');
  const filter = document.getElementById('filter'), state = document.getElementById('state');
  const tr = document.createElement('tr');
  cols.forEach((c, i) => { const th = document.createElement('th'); th.textContent = c;
    th.onclick = () => { sortDir = sortCol === i ? -sortDir : 1; sortCol = i; update(); }; tr.appendChild(th); });
  head.appendChild(tr);
  const text = (v) => v === null || v === undefined ? '' : String(v);
  function matches(row, terms) {
    return terms.every(t => { const eq = t.indexOf('=');
      if (eq > 0) { const i = cols.indexOf(t.slice(0, eq)); if (i >= 0) return text(row[i]).toLowerCase() === t.slice(eq + 1); }
      return row.some(v => text(v).toLowerCase().includes(t)); });
  }
  function compare(a, b) {
    if (a === b) return 0; if (a === null || a === undefined) return 1; if (b === null || b === undefined) return -1;
    if (typeof a === 'number' && typeof b === 'number') return (a - b) * sortDir;
    return String(a).localeCompare(String(b), undefined, {numeric: true}) * sortDir;
  }
  function update() {
    const terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean), st = state.value;
    view = all.filter(r => (!st || r[1] === st) && matches(r, terms));
    if (sortCol >= 0) view = view.slice().sort((a, b) => compare(a[sortCol], b[sortCol]));
    head.querySelectorAll('th').forEach((th, i) => { th.className = i === sortCol ? (sortDir > 0 ? 'sorted-asc' : 'sorted-desc') : ''; });
    page = 0; draw();
  }
  function draw() {
    const pages = Math.max(1, Math.ceil(view.length / TABLE.page)); page = Math.min(Math.max(page, 0), pages - 1);
    const rows = view.slice(page * TABLE.page, (page + 1) * TABLE.page), frag = document.createDocumentFragment();
    for (const r of rows) { const tr = document.createElement('tr'); tr.className = r[1];
      r.forEach((v, i) => { const td = document.createElement('td');
        td.textContent = typeof v === 'number' && !Number.isInteger(v) ? String(Number(v.toPrecision(6))) : text(v);
        if (typeof v === 'number') td.title = String(v);
        if (numeric[i]) td.className = 'num'; tr.appendChild(td); }); frag.appendChild(tr); }
    body.replaceChildren(frag);
    const first = view.length ? page * TABLE.page + 1 : 0;
    document.getElementById('shown').textContent = `${first}-${page * TABLE.page + rows.length} of ${view.length} tasks` +
      (view.length === all.length ? '' : ` (${all.length} in the report)`);
  }
  filter.oninput = update; state.onchange = update;
  document.getElementById('prev').onclick = () => { page -= 1; draw(); };
  document.getElementById('next').onclick = () => { page += 1; draw(); };
  update();
})();
