// charnn surprisal page: decodes the compressed per-character data, then turns each chunk of
// text into shaded character spans only while it is near the viewport (a 1 MB text stays fast).
(async function () {
  'use strict';
  const meta = JSON.parse(document.getElementById('meta').textContent);
  const status = document.getElementById('status');
  const box = document.getElementById('text');
  const info = document.getElementById('info');

  async function inflate() {
    const b64 = document.getElementById('data').textContent.trim();
    const bin = atob(b64);
    const raw = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) raw[i] = bin.charCodeAt(i);
    const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream('deflate'));
    return new Response(stream).arrayBuffer();
  }
  let buf;
  try {
    buf = await inflate();
  } catch (e) {
    status.textContent = 'This page needs a browser with DecompressionStream (Chrome 80+, Firefox 113+, ' +
      'Safari 16.4+) and JavaScript: ' + e;
    return;
  }
  const TYPES = { u8: Uint8Array, u16: Uint16Array, u32: Uint32Array };
  function sec(name) {
    const s = meta.sections[name];
    return s ? new TYPES[s[2]](buf, s[0], s[1]) : null;
  }
  const chars = Array.from(new TextDecoder().decode(sec('text')));
  const lineStarts = sec('lines');
  const models = meta.models.map(function (m, j) {
    return { name: m.name, vocab: m.vocab, k: m.k, n: m.tokens, bh: sec('bh' + j), bl: sec('bl' + j),
      lbpc: sec('lbpc' + j), tok: sec('tok' + j), ids: sec('ids' + j), p: sec('p' + j) };
  });
  const compare = models.length === 2;
  const N = chars.length;
  let current = 0;  // the character that has keyboard focus (roving tabindex)

  // Control and bidirectional-formatting characters are drawn as visible marks (as charnn's
  // report.visible does): raw, they would vanish or reorder the text around them.
  const HIDDEN = /[\u0000-\u0008\u000B-\u001F\u007F-\u009F\u061C\u200E\u200F\u2028\u2029\u202A-\u202E\u2066-\u2069]/g;
  function mark(c) {
    const n = c.codePointAt(0);
    if (n < 0x20) return String.fromCharCode(0x2400 + n);
    if (n === 0x7f) return '\u2421';
    return '[U+' + n.toString(16).toUpperCase().padStart(4, '0') + ']';
  }
  const vis = (t) => t.replace(HIDDEN, mark);
  function show(t) {
    if (t === '\n') return '\u21B5';
    if (t === ' ') return '\u2423';
    if (t === '\t') return '\u21E5';
    return vis(t.replace(/\n/g, '\u21B5').replace(/ /g, '\u2423'));
  }
  const bitsOf = (m, i) => ((m.bh[i] << 8) | m.bl[i]) / meta.scale.bits;
  function bucket(v, th) {
    let b = 0;
    while (b < th.length && v >= th[b]) b++;
    return b;
  }
  function shadeClass(i) {
    if (compare) return 'd' + bucket(bitsOf(models[1], i) - bitsOf(models[0], i), meta.thresholds.d);
    return 's' + bucket(bitsOf(models[0], i), meta.thresholds.s);
  }
  function preds(m, i) {  // [[token text, probability], ...] of the token that covers character i
    const t = m.tok ? m.tok[i] : i;
    const out = [];
    for (let j = 0; j < m.k; j++) {
      const q = m.p[j * m.n + t];
      if (q) out.push([m.vocab[m.ids[j * m.n + t]], q / meta.scale.prob]);
    }
    return out;
  }
  const pct = (q) => Math.round(q * 100) + '%';
  function title(i) {
    const ch = show(chars[i]);
    if (compare) {
      const a = bitsOf(models[0], i), b = bitsOf(models[1], i);
      return "'" + ch + "' A " + a.toFixed(2) + ' bits, B ' + b.toFixed(2) + ' bits, B\u2212A ' +
        (b - a >= 0 ? '+' : '') + (b - a).toFixed(2);
    }
    const top = preds(models[0], i).map((x) => show(x[0]) + ' ' + pct(x[1])).join(', ');
    return "'" + ch + "' " + bitsOf(models[0], i).toFixed(2) + ' bits; expected ' + top;
  }
  function lineOf(i) {  // index of the line holding character i (binary search)
    let lo = 0, hi = lineStarts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (lineStarts[mid] <= i) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  // ---- chunks: plain text until near the viewport, then one span per character
  const bounds = meta.bounds;
  const chunkDivs = [];
  const frag = document.createDocumentFragment();
  for (let c = 0; c + 1 < bounds.length; c++) {
    const d = document.createElement('div');
    d.className = 'chunk';
    d.dataset.c = c;
    d.textContent = chars.slice(bounds[c], bounds[c + 1]).map(vis).join('');
    chunkDivs.push(d);
    frag.appendChild(d);
  }
  box.textContent = '';
  box.appendChild(frag);

  function gutter(line) {
    const g = document.createElement('span');
    g.className = 'g';
    g.setAttribute('aria-hidden', 'true');
    g.dataset.b = models.map((m) => (m.lbpc[line] / 1000).toFixed(2)).join('/');
    return g;
  }
  function render(c) {
    const d = chunkDivs[c];
    if (d.dataset.r) return;
    d.dataset.r = '1';
    const f = document.createDocumentFragment();
    let line = lineOf(bounds[c]);
    if (lineStarts[line] !== bounds[c]) line++;
    for (let i = bounds[c]; i < bounds[c + 1]; i++) {
      if (line < lineStarts.length && lineStarts[line] === i) f.appendChild(gutter(line++));
      const s = document.createElement('span');
      s.id = 'c' + i;
      s.className = shadeClass(i) + (chars[i] === '\n' ? ' nl' : '');
      s.textContent = vis(chars[i]);
      s.title = title(i);
      s.tabIndex = i === current ? 0 : -1;
      f.appendChild(s);
    }
    d.textContent = '';
    d.appendChild(f);
  }
  function unrender(c) {
    const d = chunkDivs[c];
    if (!d.dataset.r || d.contains(document.activeElement)) return;
    delete d.dataset.r;
    d.textContent = chars.slice(bounds[c], bounds[c + 1]).map(vis).join('');
  }
  function chunkOf(i) {
    let lo = 0, hi = bounds.length - 2;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (bounds[mid] <= i) lo = mid; else hi = mid - 1;
    }
    return lo;
  }
  const renderAll = location.hash === '#render-all';
  if (renderAll || !('IntersectionObserver' in window)) {
    for (let c = 0; c < chunkDivs.length; c++) render(c);
  } else {
    const io = new IntersectionObserver(function (entries) {
      for (const e of entries) (e.isIntersecting ? render : unrender)(+e.target.dataset.c);
    }, { rootMargin: '1500px 0px' });
    chunkDivs.forEach((d) => io.observe(d));
  }

  // ---- details on hover and keyboard focus
  function esc(s) {
    return s.replace(/[&<>"']/g, (c) => '&#' + c.charCodeAt(0) + ';');
  }
  function details(i) {
    const line = lineOf(i);
    const cp = chars[i].codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
    let h = '<div><b>' + esc(show(chars[i])) + '</b> U+' + cp + ' \u00b7 line ' + (line + 1) + ', column ' +
      (i - lineStarts[line] + 1) + ' \u00b7 character ' + (i + 1) + ' of ' + N + '</div>';
    models.forEach(function (m, j) {
      const b = bitsOf(m, i);
      h += '<div' + (compare ? '' : ' class="sur"') + '>' + (compare ? '<b>' + 'AB'[j] + '</b> ' : '') +
        'surprisal <b class="num" data-bits="' + b + '">' + b.toFixed(2) + ' bits</b> (p = ' +
        Math.pow(2, -b).toPrecision(3) + '); line ' + (m.lbpc[line] / 1000).toFixed(2) + ' bpc</div><table>';
      for (const [t, q] of preds(m, i)) {
        const hit = t === chars[i] ? ' class="hit"' : '';
        h += '<tr' + hit + '><td><code>' + esc(show(t)) + '</code></td><td class="num">' +
          pct(q) + '</td><td><span class="bar" style="width:' + Math.round(q * 120) +
          'px"></span></td></tr>';
      }
      h += '</table>';
    });
    if (compare) {
      const d = bitsOf(models[1], i) - bitsOf(models[0], i);
      h += '<div>B \u2212 A: <b class="num">' + (d >= 0 ? '+' : '') + d.toFixed(2) + ' bits</b> (' +
        (d < 0 ? 'B finds it less surprising' : d > 0 ? 'B finds it more surprising' : 'equal') + ')</div>';
    }
    info.innerHTML = h;
  }
  box.addEventListener('mouseover', function (e) {
    const t = e.target;
    if (t.id && t.id[0] === 'c') details(+t.id.slice(1));
  });
  box.addEventListener('focusin', function (e) {
    const t = e.target;
    if (t.id && t.id[0] === 'c') {
      current = +t.id.slice(1);
      details(current);
    }
  });
  function focusChar(i, scroll) {
    i = Math.max(0, Math.min(N - 1, i));
    render(chunkOf(i));
    const old = document.getElementById('c' + current);
    if (old) old.tabIndex = -1;
    const s = document.getElementById('c' + i);
    current = i;
    s.tabIndex = 0;
    s.focus({ preventScroll: !scroll });
    if (scroll) s.scrollIntoView({ block: 'center' });
  }
  box.addEventListener('focus', function (e) {
    if (!box.contains(e.relatedTarget)) focusChar(current, false);
  });
  box.addEventListener('keydown', function (e) {
    const line = lineOf(current), col = current - lineStarts[line];
    const lineEnd = (l) => (l + 1 < lineStarts.length ? lineStarts[l + 1] - 1 : N - 1);
    let to = null;
    if (e.key === 'ArrowRight') to = current + 1;
    else if (e.key === 'ArrowLeft') to = current - 1;
    else if (e.key === 'ArrowDown' && line + 1 < lineStarts.length) to = Math.min(lineStarts[line + 1] + col, lineEnd(line + 1));
    else if (e.key === 'ArrowUp' && line > 0) to = Math.min(lineStarts[line - 1] + col, lineEnd(line - 1));
    else if (e.key === 'Home') to = lineStarts[line];
    else if (e.key === 'End') to = lineEnd(line);
    if (to === null) return;
    e.preventDefault();
    focusChar(to, false);
    document.getElementById('c' + current).scrollIntoView({ block: 'nearest' });
  });
  function fromHash() {
    const m = /^#c(\d+)$/.exec(location.hash);
    if (m) focusChar(+m[1], true);
  }
  window.addEventListener('hashchange', fromHash);
  fromHash();
  status.textContent = '';
  document.body.dataset.readyMs = String(Math.round(performance.now()));  // load to interactive
})();
