/* diffusionlab: the live page. Plain JS, no build step; every request goes to this server. */
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const TOKEN = new URLSearchParams(location.search).get('token');

  const state = {
    checkpoints: [], ckpt: null, samplers: [], limits: {}, digits: [], view: 'generate',
    busy: false, current: null, lastRun: null, scrub: null, playTimer: null, errSource: null,
    models: {}, tokensTimer: null, tokensSeq: 0,
    fwd: { image: { digit: 0 }, seq: 0, timer: null },
    edit: { image: { digit: 0 }, preview: null, rect: null, drag: null, maskPng: null, maskImg: null },
  };
  // What the browser tests read: the step counter of each step event shown, in order.
  window.__dl = { steps: [], log: [], runs: 0, errors: 0 };

  // ------------------------------------------------------------------ helpers

  function withToken(url) {
    if (!TOKEN || !url) return url;
    return url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(TOKEN);
  }

  /** One request to the server: JSON in and out; a non-2xx answer throws an Error carrying
   *  the server's message, its status and Retry-After. */
  async function api(path, opts = {}) {
    const init = { method: opts.method || (opts.body === undefined ? 'GET' : 'POST'), headers: {} };
    if (opts.body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    let r;
    try {
      r = await fetch(withToken(path), init);
    } catch (e) {
      throw new Error('the server cannot be reached (' + e.message + ')');
    }
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (!r.ok) {
      const err = new Error((data && data.error) || (r.status + ' ' + r.statusText));
      err.status = r.status;
      err.retryAfter = r.headers.get('Retry-After');
      throw err;
    }
    return data;
  }

  function showError(e, source) {
    const box = $('error-message');
    let msg = typeof e === 'string' ? e : e.message;
    if (e && e.status === 503) msg = 'queue full, retry in ' + (e.retryAfter || '?') + ' s (' + msg + ')';
    box.textContent = msg;
    box.hidden = false;
    state.errSource = source || 'action';
    window.__dl.errors += 1;
  }

  /** Clear the error box: any error for a user action, only its own for a background update. */
  function clearError(source) {
    if (source && state.errSource !== source) return;
    $('error-message').hidden = true;
    $('error-message').textContent = '';
    state.errSource = null;
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }

  function fmt(v) {
    if (v === 'inf' || v === Infinity) return '\u221e';
    if (v === null || v === undefined || v === '') return '-';
    const n = Number(v);
    if (n === 0) return '0';
    if (Math.abs(n) >= 1000 || Math.abs(n) < 0.01) return n.toExponential(2);
    return String(Number(n.toPrecision(3)));
  }

  function numField(id, name, integer) {
    const raw = $(id).value.trim();
    if (raw === '') return null;
    const n = Number(raw);
    if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) {
      throw new Error(name + ': "' + raw + '" is not ' + (integer ? 'an integer' : 'a number'));
    }
    return n;
  }

  function show(node, on) { node.hidden = !on; }

  function readUpload(input) {
    const f = input.files && input.files[0];
    if (!f) return Promise.resolve(null);
    const limit = state.limits.upload_bytes || 2 * 1024 * 1024;
    if (f.size > limit) {
      input.value = '';
      return Promise.reject(new Error(f.name + ' is ' + f.size.toLocaleString() + ' bytes: uploads are at most ' +
        limit.toLocaleString() + ' bytes (2 MB)'));
    }
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new Error('could not read ' + f.name));
      reader.readAsDataURL(f);
    });
  }

  // ------------------------------------------------------------------ checkpoints and the shared form

  const isCond = (c) => c && (c.kind === 'text' || c.kind === 'class');

  function describeCheckpoint(c) {
    const parts = [
      c.kind + ' model', c.process + (c.objective ? ' (' + c.objective + ' objective)' : ''), c.backbone,
      (c.steps_trained ?? '?') + ' steps trained', (c.image_shape || []).join('x'),
    ];
    if (c.encoder) parts.push('encoder ' + c.encoder);
    parts.push('defaults: ' + (c.sampler || 'auto') + ', ' + (c.steps ?? '?') + ' steps' +
      (isCond(c) ? ', guidance ' + (c.guidance ?? '?') : ''));
    parts.push(c.has_guide ? 'guide snapshot (autoguidance)' : 'no guide snapshot');
    const ads = c.adapters || [];
    if (ads.length) parts.push(ads.length + ' LoRA adapter' + (ads.length > 1 ? 's' : ''));
    if (c.report) {
      const r = c.report;
      const bits = [];
      if (r.accuracy != null) bits.push('accuracy ' + fmt(r.accuracy));
      if (r.confident != null) bits.push('confident ' + fmt(r.confident));
      if (r.fd_over_floor != null) bits.push('FD / floor ' + fmt(r.fd_over_floor));
      parts.push('report: ' + bits.join(', '));
    }
    return parts.join(' \u00b7 ');
  }

  function fillSelect(sel, options, first) {
    sel.replaceChildren();
    if (first) sel.append(new Option(first[1], first[0]));
    for (const [value, label] of options) sel.append(new Option(label, value));
  }

  function loraLabel(a) {
    const bits = ['rank ' + a.rank, a.step + ' steps'];
    if (a.digits && a.digits.length) bits.push('digits ' + a.digits.join(','));
    if (a.base_matches === false) bits.push('base changed since');
    return a.id + ' (' + bits.join(', ') + ')';
  }

  /** The LoRA controls of checkpoint `c`: its adapters (hidden when it has none), scale 1. */
  function fillLora(c) {
    const ads = c.adapters || [];
    fillSelect($('lora-select'), ads.map((a) => [a.id, loraLabel(a)]), ['', 'none']);
    [...$('lora-select').options].forEach((o, i) => {
      const a = ads[i - 1];
      if (a) o.title = 'fine-tuned on ' + (a.data || '?') + (a.digits ? ' digits ' + a.digits.join(',') : '') +
        ', targets ' + a.targets + ', alpha ' + a.alpha;
    });
    $('lora-row').hidden = !ads.length;
    setLoraScale(1);
    loraControls();
  }

  function loraControls() {
    const off = !$('lora-select').value;
    $('lora-scale').disabled = off;
    $('lora-scale-range').disabled = off;
  }

  function setLoraScale(v) {
    $('lora-scale').value = String(v);
    $('lora-scale-range').value = String(v);
  }

  function selectCheckpoint(id) {
    const c = state.checkpoints.find((x) => x.id === id);
    if (!c) return;
    state.ckpt = c;
    $('checkpoint-info').textContent = describeCheckpoint(c);
    document.querySelectorAll('.only-text').forEach((n) => show(n, c.kind === 'text'));
    document.querySelectorAll('.only-class').forEach((n) => show(n, c.kind === 'class'));
    document.querySelectorAll('.only-cond').forEach((n) => show(n, isCond(c)));
    const classes = (c.classes || []).map((name, i) => [String(i), String(name)]);
    fillSelect($('class'), classes, ['', 'none']);
    fillSelect($('negative-class'), classes, ['', 'none']);
    $('guidance').placeholder = 'default ' + (c.guidance ?? '?');
    $('steps').placeholder = 'default ' + (c.steps ?? '?');
    $('sampler').options[0].textContent = 'auto (checkpoint default: ' + (c.sampler || '?') + ')';
    $('autoguidance').disabled = !c.has_guide;
    $('autoguidance').placeholder = c.has_guide ? 'off (e.g. 2)' : 'needs a guide snapshot';
    fillLora(c);
    const what = [];
    if (c.kind === 'text') what.push(['prompt', 'prompt']);
    if (c.kind === 'class') what.push(['class', 'class']);
    if (isCond(c)) what.push(['guidance', 'guidance scale']);
    what.push(['sampler', 'sampler']);
    fillSelect($('compare-what'), what);
    compareHints();
    $('compare-out').hidden = true;           // a comparison belongs to the model it ran on
    $('compare-status').textContent = '';
    const [, h, w] = c.image_shape || [1, 32, 32];
    $('mask-canvas').width = w;
    $('mask-canvas').height = h;
    state.edit.rect = null;
    drawMask();
    if (state.view === 'model') refreshModelView();
  }

  async function loadCheckpoints() {
    const list = await api('api/checkpoints');
    state.checkpoints = list;
    const sel = $('checkpoint-select');
    fillSelect(sel, list.map((c) => [c.id, c.id + ' (' + c.kind + ')']));
    if (!list.length) {
      $('checkpoint-info').textContent = 'No checkpoints under this server\'s runs folder. Make one with ' +
        '`make demo`, or train one with `diffusionlab train ... --out runs/NAME`, then reload this page.';
      $('checkpoint-info').classList.add('warn');
      ['generate-button', 'edit-button', 'compare-button'].forEach((id) => { $(id).disabled = true; });
      return;
    }
    const wanted = new URLSearchParams(location.search).get('checkpoint');
    if (wanted && list.some((c) => c.id === wanted)) sel.value = wanted;
    selectCheckpoint(sel.value);
  }

  async function loadSamplers() {
    const d = await api('api/samplers');
    state.samplers = d.samplers;
    state.limits = d.limits || {};
    fillSelect($('sampler'), d.samplers.map((s) => [s.name, s.name + ' (' + s.nfe_per_step + ' NFE/step' +
      (s.stochastic ? ', stochastic' : '') + ')']), ['', 'auto (checkpoint default)']);
    [...$('sampler').options].forEach((o, i) => { if (i > 0) o.title = d.samplers[i - 1].description || ''; });
    fillSelect($('forward-schedule'), d.schedules.map((s) => [s, s]));
    if (d.limits && d.limits.batch) $('batch').max = d.limits.batch;
  }

  function newSeed() { $('seed').value = String(Math.floor(Math.random() * 2147483647)); }

  /** The generation keys of the shared form, only those that apply to this model kind. */
  function settingsBody() {
    const c = state.ckpt;
    if (!c) throw new Error('no checkpoint to run: make one with `make demo` first');
    const b = { checkpoint: c.id };
    if (c.kind === 'text') {
      if ($('prompt').value.trim()) b.prompt = $('prompt').value;
      if ($('negative-prompt').value.trim()) b.negative_prompt = $('negative-prompt').value;
    }
    if (c.kind === 'class') {
      if ($('class').value !== '') b.class = Number($('class').value);
      if ($('negative-class').value !== '') b.negative_class = Number($('negative-class').value);
    }
    if (isCond(c)) {
      const g = numField('guidance', 'guidance');
      if (g !== null) b.guidance = g;
      const r = numField('rescale', 'rescale');
      if (r !== null) b.guidance_rescale = r;
      const lo = numField('interval-lo', 'interval from');
      const hi = numField('interval-hi', 'interval to');
      if (lo !== null || hi !== null) b.guidance_interval = [lo ?? 0, hi ?? 1e30];
      const w = c.has_guide ? numField('autoguidance', 'autoguidance') : null;
      if (w !== null) b.autoguidance = w;
    }
    if ($('lora-select').value && !$('lora-row').hidden) {
      b.lora = [{ id: $('lora-select').value, scale: numField('lora-scale', 'LoRA scale') ?? 1 }];
    }
    if ($('sampler').value) b.sampler = $('sampler').value;
    const steps = numField('steps', 'steps', true);
    if (steps !== null) b.steps = steps;
    b.seed = numField('seed', 'seed', true) ?? 0;
    b.batch = numField('batch', 'batch', true) ?? 1;
    return b;
  }

  function prepareSeed() { if (!$('same-seed').checked || $('seed').value.trim() === '') newSeed(); }

  function setBusy(on) {
    state.busy = on;
    const none = !state.ckpt;
    ['generate-button', 'edit-button', 'compare-button'].forEach((id) => { $(id).disabled = on || none; });
    $('cancel-button').disabled = !on;
  }

  // ------------------------------------------------------------------ jobs

  /** Submit a job and follow its events; resolves with the job (its steps and done data). */
  async function runJob(path, body, hooks = {}) {
    const sub = await api(path, { body });
    if (hooks.onSubmit) hooks.onSubmit(sub);
    return new Promise((resolve, reject) => {
      const es = new EventSource(withToken(sub.events));
      const job = { id: sub.job, sub, body, steps: [], start: null, done: null, checkpoint: body.checkpoint };
      let over = false;
      const finish = (fn, v) => { over = true; es.close(); if (state.current === job) state.current = null; fn(v); };
      const data = (e) => JSON.parse(e.data);
      job.cancel = () => {
        if (over) return;
        finish(reject, Object.assign(new Error('cancelled'), { cancelled: true }));
        api('api/jobs/' + encodeURIComponent(job.id), { method: 'DELETE' }).catch(() => {});
      };
      state.current = job;
      es.addEventListener('queued', (e) => hooks.onQueued && hooks.onQueued(data(e).position, job));
      es.addEventListener('start', (e) => { job.start = data(e); if (hooks.onStart) hooks.onStart(job.start, job); });
      es.addEventListener('step', (e) => { const d = data(e); job.steps.push(d); if (hooks.onStep) hooks.onStep(d, job); });
      es.addEventListener('done', (e) => { job.done = data(e); finish(resolve, job); });
      es.addEventListener('cancelled', (e) => finish(reject, Object.assign(
        new Error('the job was cancelled: ' + data(e).reason), { cancelled: true })));
      es.addEventListener('error', (e) => {
        if (over) return;
        if (e.data) finish(reject, new Error(data(e).error));
        else finish(reject, new Error('lost the connection to the server while the job ran'));
      });
    });
  }

  function queueText(pos) { return 'position ' + pos + ' in queue' + (pos === 0 ? ' (runs next)' : ''); }

  /** Hooks that stream a job into a live panel (ids prefixed by `p`). */
  function liveHooks(p, total) {
    const badge = $(p + 'queue-position');
    const counter = $(p + 'step-counter');
    return {
      onSubmit: (sub) => {
        clearError();
        badge.hidden = false;
        badge.textContent = queueText(sub.position);
        counter.textContent = 'queued: ' + sub.sampler + ', ' + sub.steps + ' steps' +
          (sub.nfe_planned != null ? ', ' + sub.nfe_planned + ' NFE planned' : '');
      },
      onQueued: (pos) => { if (badge.textContent !== 'running') badge.textContent = queueText(pos); },
      onStart: (st) => { badge.textContent = 'running'; counter.textContent = 'started: ' + st.sampler + ', ' + st.steps + ' steps'; },
      onStep: (d, job) => {
        $(p + 'live-xt').src = d.x_t;
        $(p + 'live-x0').src = d.x0;
        const of = total ? ' / ' + job.start.steps : '';
        counter.textContent = 'step ' + (d.i + 1) + of + ' \u00b7 sigma ' + fmt(d.sigma) + ' \u00b7 ' + d.nfe + ' NFE';
        if (p === '') { window.__dl.steps.push(counter.textContent); window.__dl.log.push('step'); }
      },
    };
  }

  function endLive(p, job, err) {
    $(p + 'queue-position').hidden = true;
    if (job) {
      const d = job.done;
      $(p + 'step-counter').textContent = 'done: ' + d.steps_run + ' steps \u00b7 ' + d.nfe + ' NFE \u00b7 ' + d.seconds + ' s';
    } else {
      $(p + 'step-counter').textContent = err && err.cancelled ? 'cancelled' : 'failed';
    }
  }

  function timingText(d) {
    return d.steps_run + ' steps, ' + d.nfe + ' network evaluations, ' + d.seconds + ' s' +
      (d.first_step_seconds != null ? ' (first step after ' + d.first_step_seconds + ' s)' : '');
  }

  // ------------------------------------------------------------------ generate

  async function onGenerate() {
    if (state.busy) return;
    let body;
    try { prepareSeed(); body = settingsBody(); } catch (e) { showError(e); return; }
    setBusy(true);
    stopPlay();
    window.__dl.steps = [];
    window.__dl.log.push('submit');
    try {
      const job = await runJob('api/generate', body, liveHooks('', true));
      window.__dl.log.push('done');
      window.__dl.runs += 1;
      endLive('', job);
      showResult(job);
      state.lastRun = job;
      setupScrubber(job);
      $('guidance-button').disabled = false;
      $('guidance-status').textContent = 'computes CFG at the scrubber\'s step of this run';
      $('guidance-out').hidden = true;
    } catch (e) {
      endLive('', null, e);
      if (!e.cancelled || !/^cancelled$/.test(e.message)) showError(e);
    } finally {
      setBusy(false);
    }
  }

  function showResult(job) {
    const d = job.done;
    $('final-image').src = d.image;
    $('download-png').href = withToken(d.png);
    $('download-png').setAttribute('download', 'diffusionlab-' + job.id + '.png');
    $('download-gif').href = withToken(d.gif);
    $('download-gif').setAttribute('download', 'denoising-' + job.id + '.gif');
    $('command-line').textContent = d.command;
    $('timings').textContent = timingText(d);
    $('result').hidden = false;
  }

  // ------------------------------------------------------------------ scrub and replay

  function setupScrubber(job) {
    const n = job.steps.length;
    if (!n) { $('scrubber').hidden = true; return; }
    state.scrub = { job, k: n - 1 };
    const slider = $('scrub-slider');
    slider.max = String(n - 1);
    $('scrubber').hidden = false;
    drawSigmaPlot(job.start ? job.start.sigmas : job.steps.map((s) => s.sigma).concat([job.steps[n - 1].sigma_next]));
    scrubTo(n - 1);
  }

  function scrubTo(k) {
    const s = state.scrub;
    if (!s) return;
    const n = s.job.steps.length;
    k = Math.max(0, Math.min(n - 1, k | 0));
    s.k = k;
    const d = s.job.steps[k];
    $('scrub-slider').value = String(k);
    $('scrub-xt').src = d.x_t;
    $('scrub-x0').src = d.x0;
    $('scrub-sigma').textContent = 'step ' + (k + 1) + ' / ' + n + ' \u00b7 sigma ' + fmt(d.sigma) + ' \u2192 ' +
      fmt(d.sigma_next) + ' \u00b7 ' + d.nfe + ' NFE';
    moveSigmaMarker(k);
  }

  function stopPlay() {
    if (state.playTimer) clearInterval(state.playTimer);
    state.playTimer = null;
    $('play-button').classList.remove('on');
  }

  function play() {
    const s = state.scrub;
    if (!s) return;
    stopPlay();
    if (s.k >= s.job.steps.length - 1) scrubTo(0);
    $('play-button').classList.add('on');
    state.playTimer = setInterval(() => {
      if (s.k >= s.job.steps.length - 1) { stopPlay(); return; }
      scrubTo(s.k + 1);
    }, 180);
  }

  const PLOT = { w: 320, h: 180, l: 52, r: 10, t: 12, b: 24 };

  /** log10(sigma) against the step; "inf" on the top edge, 0 on the bottom edge. */
  function drawSigmaPlot(sigmas) {
    const box = $('sigma-plot');
    box.replaceChildren();
    const vals = sigmas.map((v) => (v === 'inf' ? Infinity : Number(v)));
    const finite = vals.filter((v) => Number.isFinite(v) && v > 0).map(Math.log10);
    const lo = finite.length ? Math.min(...finite) : -2;
    const hi = finite.length ? Math.max(...finite) : 2;
    const span = hi - lo || 1;
    const { w, h, l, r, t, b } = PLOT;
    const x = (i) => l + (vals.length > 1 ? i / (vals.length - 1) : 0) * (w - l - r);
    const y = (v) => {
      if (v === Infinity) return t;
      if (!(v > 0)) return h - b;
      return t + 6 + (1 - (Math.log10(v) - lo) / span) * (h - t - b - 12);
    };
    const s = svg('svg', { viewBox: '0 0 ' + w + ' ' + h, width: w, height: h, class: 'chart' });
    s.append(svg('line', { x1: l, y1: t, x2: l, y2: h - b, class: 'axis' }));
    s.append(svg('line', { x1: l, y1: h - b, x2: w - r, y2: h - b, class: 'axis' }));
    s.append(svg('text', { x: l - 4, y: t + 10, class: 'tick', 'text-anchor': 'end' }, vals.includes(Infinity) ? '\u221e' : fmt(10 ** hi)));
    s.append(svg('text', { x: l - 4, y: h - b, class: 'tick', 'text-anchor': 'end' }, vals.some((v) => v === 0) ? '0' : fmt(10 ** lo)));
    s.append(svg('text', { x: (l + w - r) / 2, y: h - 6, class: 'tick', 'text-anchor': 'middle' }, 'step'));
    s.append(svg('polyline', { points: vals.map((v, i) => x(i) + ',' + y(v)).join(' '), class: 'line-sigma' }));
    vals.forEach((v, i) => s.append(svg('circle', { cx: x(i), cy: y(v), r: 2, class: 'dot' })));
    s.append(svg('line', { x1: x(0), y1: t, x2: x(0), y2: h - b, class: 'cursor', id: 'sigma-cursor' }));
    s.append(svg('circle', { cx: x(0), cy: y(vals[0]), r: 5, class: 'marker', id: 'sigma-marker', 'data-testid': 'sigma-marker' }));
    box.append(s);
    state.sigmaPlot = { x, y, vals };
  }

  function moveSigmaMarker(k) {
    const p = state.sigmaPlot;
    const m = document.getElementById('sigma-marker');
    if (!p || !m) return;
    m.setAttribute('cx', p.x(k));
    m.setAttribute('cy', p.y(p.vals[k]));
    m.setAttribute('data-step', String(k));
    const c = document.getElementById('sigma-cursor');
    c.setAttribute('x1', p.x(k));
    c.setAttribute('x2', p.x(k));
  }

  // ------------------------------------------------------------------ guidance view

  async function onGuidance() {
    const run = state.lastRun;
    if (!run || !state.scrub) { showError('generate first: the guidance view looks inside a finished run'); return; }
    const k = state.scrub.k;
    $('guidance-status').textContent = 'computing the guidance at step ' + (k + 1) + '\u2026';
    try {
      const g = await api('api/guidance', { body: { job: run.id, step: k } });
      clearError();
      $('guidance-uncond').src = g.uncond;
      $('guidance-cond').src = g.cond;
      $('guidance-diff').src = g.difference;
      $('guidance-guided').src = g.guided;
      $('guidance-x0').src = g.x0_guided;
      $('guidance-diff-caption').textContent = 'eps(c) - eps(c_neg), scaled by 1 / ' + fmt(g.difference_max);
      const applied = g.applied || {};
      $('guidance-meta').textContent = 'step ' + (g.step + 1) + ' \u00b7 sigma ' + fmt(g.sigma) + ' \u00b7 scale s = ' +
        fmt(g.scale) + ' \u00b7 c_neg: ' + g.negative + ' \u00b7 rescale ' + fmt(applied.rescale) +
        (applied.interval ? ' \u00b7 interval ' + applied.interval.map(fmt).join('..') : '') +
        ' \u00b7 noise shown over [-' + g.eps_range + ', ' + g.eps_range + ']';
      $('guidance-formula').textContent = g.formula;
      $('guidance-out').hidden = false;
      $('guidance-status').textContent = 'step ' + (g.step + 1) + ' of run ' + run.id;
    } catch (e) {
      $('guidance-status').textContent = e.message;
      $('guidance-out').hidden = true;
      showError(e);
    }
  }

  // ------------------------------------------------------------------ comparison

  function compareHints() {
    const what = $('compare-what').value;
    const list = $('compare-list');
    const c = state.ckpt || {};
    let opts = [];
    if (what === 'sampler') opts = ['auto'].concat(state.samplers.map((s) => s.name));
    if (what === 'class') opts = (c.classes || []).map(String);
    if (what === 'guidance') opts = ['0', '1', '2', '4', '7.5'];
    list.replaceChildren(...opts.map((v) => new Option(v, v)));
    $('compare-value').placeholder = { prompt: 'another prompt', class: 'another class', guidance: 'e.g. 4',
      sampler: 'e.g. euler' }[what] || '';
  }

  function classValue(v) {
    const names = (state.ckpt.classes || []).map(String);
    if (names.includes(v)) return names.indexOf(v);
    if (/^\d+$/.test(v)) return Number(v);
    return v;
  }

  function labelFor(what, b) {
    const c = state.ckpt;
    if (what === 'prompt') return 'prompt "' + (b.prompt || '') + '"';
    if (what === 'class') return 'class ' + (b.class == null ? 'none' : (c.classes || [])[b.class] ?? b.class);
    if (what === 'guidance') return 'guidance ' + (b.guidance ?? c.guidance + ' (default)');
    return 'sampler ' + (b.sampler || 'auto (' + c.sampler + ')');
  }

  async function onCompare() {
    if (state.busy) return;
    const what = $('compare-what').value;
    const value = $('compare-value').value.trim();
    let left;
    const right = {};
    try {
      if (!value) throw new Error('compare: type the second value (right-hand image) first');
      prepareSeed();
      left = settingsBody();
      Object.assign(right, left);
      if (what === 'prompt') right.prompt = value;
      else if (what === 'class') right.class = classValue(value);
      else if (what === 'guidance') {
        right.guidance = Number(value);
        if (!Number.isFinite(right.guidance)) throw new Error('compare: "' + value + '" is not a guidance scale');
      } else if (value === 'auto') delete right.sampler;
      else right.sampler = value;
    } catch (e) { showError(e); return; }
    setBusy(true);
    const status = $('compare-status');
    $('compare-out').hidden = true;
    try {
      const results = [];
      for (const [side, body] of [['left', left], ['right', right]]) {
        const job = await runJob('api/generate', body, {
          onSubmit: () => { clearError(); status.textContent = side + ': queued'; },
          onStep: (d, j) => { status.textContent = side + ': step ' + (d.i + 1) + ' / ' + j.start.steps; },
        });
        results.push(job);
      }
      results.forEach((job, i) => {
        const side = i ? 'right' : 'left';
        $('compare-' + side).src = job.done.image;
        $('compare-' + side + '-label').textContent = labelFor(what, job.body) + ' \u00b7 seed ' + job.body.seed;
        $('compare-' + side + '-command').textContent = job.done.command;
      });
      $('compare-out').hidden = false;
      status.textContent = 'same seed ' + left.seed + '; only the ' + what + ' differs';
    } catch (e) {
      status.textContent = 'failed';
      showError(e);
    } finally {
      setBusy(false);
    }
  }

  // ------------------------------------------------------------------ forward process

  function scheduleForward() {
    clearTimeout(state.fwd.timer);
    state.fwd.timer = setTimeout(requestForward, 80);
  }

  async function requestForward() {
    const seq = ++state.fwd.seq;
    let body;
    try {
      const T = numField('forward-timesteps', 'timesteps', true) ?? 1000;
      body = { image: state.fwd.image, schedule: $('forward-schedule').value || 'linear', timesteps: T,
        t: Number($('forward-t').value), seed: 0 };
    } catch (e) { showError(e); return; }
    try {
      const d = await api('api/forward', { body });
      if (seq !== state.fwd.seq) return;   // a newer request was sent: the latest wins
      clearError();
      $('forward-x0').src = d.x0;
      $('forward-noise').src = d.noise;
      $('forward-xt').src = d.x_t;
      const logsnr = d.snr === 'inf' ? '\u221e' : fmt(Math.log10(d.snr));
      $('forward-stats').textContent = 't = ' + d.t + ' / ' + d.timesteps + ' (' + d.schedule + ') \u00b7 abar = ' +
        fmt(d.abar) + ' \u00b7 SNR = ' + fmt(d.snr) + ' (log10 ' + logsnr + ') \u00b7 sigma = ' + fmt(d.sigma);
      $('forward-formula').textContent = d.formula;
      drawForwardPlot(d);
    } catch (e) {
      if (seq === state.fwd.seq) showError(e);
    }
  }

  function drawForwardPlot(d) {
    const w = 600; const h = 230; const l = 46; const r = 46; const t = 14; const b = 30;
    const T = d.timesteps;
    const c = d.curve;
    const snr = c.log10_snr.filter((v) => v !== null);
    const slo = Math.max(-6, Math.min(...snr, -1));
    const shi = Math.min(6, Math.max(...snr, 1));
    const x = (tt) => l + (tt / T) * (w - l - r);
    const ya = (a) => t + (1 - a) * (h - t - b);
    const ys = (v) => t + (1 - (Math.max(slo, Math.min(shi, v)) - slo) / (shi - slo)) * (h - t - b);
    const s = svg('svg', { viewBox: '0 0 ' + w + ' ' + h, width: w, height: h, class: 'chart' });
    s.append(svg('line', { x1: l, y1: h - b, x2: w - r, y2: h - b, class: 'axis' }));
    s.append(svg('line', { x1: l, y1: t, x2: l, y2: h - b, class: 'axis abar' }));
    s.append(svg('line', { x1: w - r, y1: t, x2: w - r, y2: h - b, class: 'axis snr' }));
    s.append(svg('line', { x1: l, y1: ys(0), x2: w - r, y2: ys(0), class: 'grid' }));
    const tick = (xx, yy, txt, anchor, cls) => s.append(svg('text', { x: xx, y: yy, class: 'tick ' + (cls || ''), 'text-anchor': anchor }, txt));
    tick(l - 4, t + 8, '1', 'end', 'abar');
    tick(l - 4, h - b, '0', 'end', 'abar');
    tick(w - r + 4, t + 8, fmt(shi), 'start', 'snr');
    tick(w - r + 4, h - b, fmt(slo), 'start', 'snr');
    tick(w - r + 4, ys(0) + 4, '0', 'start', 'snr');
    tick(l, h - 10, '0', 'middle');
    tick(w - r, h - 10, String(T), 'middle');
    tick((l + w - r) / 2, h - 10, 't', 'middle');
    const pts = (ys2, vals) => c.t.map((tt, i) => (vals[i] === null ? null : x(tt) + ',' + ys2(vals[i]))).filter(Boolean).join(' ');
    s.append(svg('polyline', { points: x(0) + ',' + ya(1) + ' ' + pts(ya, c.abar), class: 'line-abar' }));
    s.append(svg('polyline', { points: pts(ys, c.log10_snr), class: 'line-snr' }));
    const logSigma = c.sigma.map((v) => (v === null || !(v > 0) ? null : Math.log10(v)));
    s.append(svg('polyline', { points: pts(ys, logSigma), class: 'line-fsigma' }));
    s.append(svg('text', { x: l + 10, y: h - b - 38, class: 'legend abar' }, 'abar (left axis)'));
    s.append(svg('text', { x: l + 10, y: h - b - 24, class: 'legend snr' }, 'log10 SNR (right axis)'));
    s.append(svg('text', { x: l + 10, y: h - b - 10, class: 'legend fsigma' }, 'log10 sigma = -log10 SNR / 2 (right axis)'));
    const g = svg('g', { 'data-testid': 'forward-marker', 'data-t': String(d.t) });
    g.append(svg('line', { x1: x(d.t), y1: t, x2: x(d.t), y2: h - b, class: 'cursor' }));
    g.append(svg('circle', { cx: x(d.t), cy: ya(d.abar), r: 4, class: 'marker abar' }));
    if (d.snr !== 'inf') g.append(svg('circle', { cx: x(d.t), cy: ys(Math.log10(d.snr)), r: 4, class: 'marker snr' }));
    s.append(g);
    $('forward-plot').replaceChildren(s);
  }

  function pickForwardDigit(i) {
    state.fwd.image = { digit: i };
    $('forward-digit').value = String(i);
    $('forward-upload').value = '';
    document.querySelectorAll('#forward-digits button').forEach((bt, j) => bt.classList.toggle('on', j === i));
    scheduleForward();
  }

  // ------------------------------------------------------------------ img2img and inpainting

  function editMode() { return $('edit-mode').value; }

  function updateEditControls() {
    const inpaint = editMode() === 'inpaint';
    document.querySelectorAll('.only-img2img').forEach((n) => show(n, !inpaint));
    document.querySelectorAll('.only-inpaint').forEach((n) => show(n, inpaint));
    document.querySelectorAll('.only-mask-upload').forEach((n) => show(n, inpaint && $('mask-mode').value === 'upload'));
    $('mask-canvas').hidden = !inpaint;
    drawMask();
  }

  function maskSpec() {
    const m = $('mask-mode').value;
    if (m === 'rect') {
      if (!state.edit.rect) throw new Error('mask: drag a rectangle on the image first');
      return { rect: state.edit.rect.slice() };
    }
    if (m === 'upload') {
      if (!state.edit.maskPng) throw new Error('mask: choose a mask image first (white = fill)');
      return { png: state.edit.maskPng };
    }
    return m;
  }

  function drawMask() {
    const cv = $('mask-canvas');
    const ctx = cv.getContext('2d');
    const W = cv.width; const H = cv.height;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = 'rgba(255, 72, 72, 0.5)';
    const m = $('mask-mode').value;
    let info = '';
    if (m === 'left') ctx.fillRect(0, 0, W / 2, H);
    if (m === 'right') ctx.fillRect(W / 2, 0, W - W / 2, H);
    if (m === 'top') ctx.fillRect(0, 0, W, H / 2);
    if (m === 'bottom') ctx.fillRect(0, H / 2, W, H - H / 2);
    if (['left', 'right', 'top', 'bottom'].includes(m)) info = 'fills the ' + m + ' half';
    const r = state.edit.drag ? state.edit.drag.rect : state.edit.rect;
    if (m === 'rect') {
      if (r) { ctx.fillRect(r[0], r[1], r[2] - r[0], r[3] - r[1]); info = 'fills the rectangle [' + r.join(', ') + '] (model pixels, x = column)'; }
      else info = 'drag on the image to draw the rectangle to fill';
    }
    if (m === 'upload') {
      if (state.edit.maskImg) {
        ctx.drawImage(state.edit.maskImg, 0, 0, W, H);
        const px = ctx.getImageData(0, 0, W, H);
        for (let i = 0; i < px.data.length; i += 4) {
          const white = (px.data[i] + px.data[i + 1] + px.data[i + 2]) / 3 > 127;
          px.data.set(white ? [255, 72, 72, 128] : [0, 0, 0, 0], i);
        }
        ctx.putImageData(px, 0, 0);
        info = 'fills the white part of the uploaded mask';
      } else info = 'choose a mask image (white = fill)';
    }
    $('mask-info').textContent = editMode() === 'inpaint' ? info : 'img2img: noise the whole image to the strength, then denoise';
  }

  function canvasPixel(e) {
    const cv = $('mask-canvas');
    const b = cv.getBoundingClientRect();
    const px = Math.floor(((e.clientX - b.left) / b.width) * cv.width);
    const py = Math.floor(((e.clientY - b.top) / b.height) * cv.height);
    return [Math.max(0, Math.min(cv.width - 1, px)), Math.max(0, Math.min(cv.height - 1, py))];
  }

  function dragRect(a, c) {
    return [Math.min(a[0], c[0]), Math.min(a[1], c[1]), Math.max(a[0], c[0]) + 1, Math.max(a[1], c[1]) + 1];
  }

  function bindMaskCanvas() {
    const cv = $('mask-canvas');
    cv.addEventListener('mousedown', (e) => {
      e.preventDefault();
      if ($('mask-mode').value !== 'rect') $('mask-mode').value = 'rect';
      updateEditControls();
      const p = canvasPixel(e);
      state.edit.drag = { start: p, rect: dragRect(p, p) };
      drawMask();
    });
    window.addEventListener('mousemove', (e) => {
      if (!state.edit.drag) return;
      state.edit.drag.rect = dragRect(state.edit.drag.start, canvasPixel(e));
      drawMask();
    });
    window.addEventListener('mouseup', (e) => {
      if (!state.edit.drag) return;
      state.edit.rect = dragRect(state.edit.drag.start, canvasPixel(e));
      state.edit.drag = null;
      drawMask();
    });
  }

  function pickEditDigit(i) {
    state.edit.image = { digit: i };
    $('edit-upload').value = '';
    $('edit-input').src = state.digits[i] || '';
  }

  async function onEdit() {
    if (state.busy) return;
    const mode = editMode();
    let body;
    try {
      prepareSeed();
      body = settingsBody();
      body.image = state.edit.image;
      if (mode === 'img2img') body.strength = Number($('edit-strength').value);
      else body.mask = maskSpec();
    } catch (e) { showError(e); return; }
    setBusy(true);
    $('edit-out').hidden = true;
    try {
      const job = await runJob('api/' + mode, body, liveHooks('edit-', false));
      endLive('edit-', job);
      const d = job.done;
      $('edit-result').src = d.image;
      $('edit-command').textContent = d.command;
      $('edit-timings').textContent = timingText(d);
      $('edit-download-png').href = withToken(d.png);
      $('edit-download-gif').href = withToken(d.gif);
      $('edit-out').hidden = false;
    } catch (e) {
      endLive('edit-', null, e);
      if (!e.cancelled || !/^cancelled$/.test(e.message)) showError(e);
    } finally {
      setBusy(false);
    }
  }

  // ------------------------------------------------------------------ inside the model

  function scheduleTokens() {
    clearTimeout(state.tokensTimer);
    state.tokensTimer = setTimeout(refreshTokens, 200);
  }

  async function refreshTokens() {
    const c = state.ckpt;
    const view = $('tokens-view');
    if (!c) return;
    const seq = ++state.tokensSeq;
    if (c.kind !== 'text') {
      view.replaceChildren(el('span', { class: 'muted', 'data-testid': 'tokens-none',
        text: 'this is a ' + c.kind + ' model: it takes no prompt, so there are no tokens to show' }));
      $('tokens-info').textContent = '';
      return;
    }
    try {
      const d = await api('api/tokens', { body: { checkpoint: c.id, prompt: $('prompt').value } });
      if (seq !== state.tokensSeq) return;
      clearError('tokens');
      const chip = (tok, dropped) => el('span', { class: 'chip' + (dropped ? ' dropped' : '') + (/^<.*>$|^\[.*\]$/.test(tok) ? ' special' : ''),
        'data-testid': dropped ? 'token-dropped' : 'token', title: dropped ? 'cut by truncation' : 'kept' },
        tok === ' ' ? '\u2423' : tok);
      // in the prompt's order: truncation cuts the middle, the end marker stays last
      const kept = d.tokens.map((tk) => chip(tk, false));
      const cut = d.dropped.map((tk) => chip(tk, true));
      view.replaceChildren(...(cut.length ? kept.slice(0, -1).concat(cut, kept.slice(-1)) : kept));
      $('tokens-info').textContent = d.count + ' tokens (' + d.encoder + ' encoder, at most ' + d.max_tokens + ' kept)' +
        (d.truncated ? ' \u00b7 ' + d.dropped.length + ' cut by truncation (struck out), the end marker kept' : '') + (d.note ? ' \u00b7 ' + d.note : '');
    } catch (e) {
      if (seq === state.tokensSeq) { $('tokens-info').textContent = e.message; showError(e, 'tokens'); }
    }
  }

  async function refreshModelView() {
    refreshTokens();
    const c = state.ckpt;
    if (!c) return;
    try {
      if (!state.models[c.id]) state.models[c.id] = await api('api/model?checkpoint=' + encodeURIComponent(c.id));
      if (state.ckpt !== c) return;
      renderArch(state.models[c.id]);
    } catch (e) {
      showError(e);
    }
  }

  const shape = (s) => (s ? '[' + s.join(', ') + ']' : '-');

  function renderArch(m) {
    $('arch-total').textContent = '\u00b7 ' + m.total_params.toLocaleString() + ' parameters';
    const stages = $('arch-stages');
    stages.replaceChildren();
    m.stages.forEach((st, i) => {
      if (i) stages.append(el('span', { class: 'arrow', 'aria-hidden': 'true' }, '\u2192'));
      stages.append(el('div', { class: 'stage', 'data-testid': 'arch-stage' },
        el('strong', { text: st.name }), el('span', { text: st.detail })));
    });
    const spatial = (b) => (b.out_shape && b.out_shape.length === 4 ? b.out_shape[2] : 0);
    const maxS = Math.max(1, ...m.blocks.map(spatial));
    const blocks = $('arch-blocks');
    blocks.replaceChildren();
    m.blocks.forEach((b) => {
      const kind = b.cross_attention ? ' xattn' : b.attention ? ' attn' : '';
      const box = el('div', { class: 'block' + kind, 'data-testid': 'arch-block', 'data-name': b.name },
        el('strong', { text: b.name }), el('span', { text: b.type.split(' + ')[0] }),
        b.attention ? el('em', { text: 'attn' }) : null, b.cross_attention ? el('em', { text: 'x-attn' }) : null);
      box.style.height = (spatial(b) ? 64 + (spatial(b) / maxS) * 80 : 52) + 'px';
      box.addEventListener('mouseenter', () => showTooltip(box, b));
      box.addEventListener('mouseleave', () => { $('arch-tooltip').hidden = true; });
      blocks.append(box);
    });
  }

  function showTooltip(box, b) {
    const tip = $('arch-tooltip');
    const flags = [b.attention ? 'self-attention' : '', b.cross_attention ? 'cross-attention on the prompt' : ''].filter(Boolean);
    const lines = [el('strong', { text: b.name }), el('div', { text: b.type }),
      el('div', { text: 'in ' + shape(b.in_shape) + ' \u2192 out ' + shape(b.out_shape) }),
      el('div', { text: b.params.toLocaleString() + ' parameters' })];
    if (flags.length) lines.push(el('div', { text: flags.join(', ') }));
    tip.replaceChildren(...lines);
    tip.hidden = false;
    const view = $('arch-view');
    const left = Math.min(box.offsetLeft, view.clientWidth - tip.offsetWidth - 4);
    tip.style.left = Math.max(0, left) + 'px';
    tip.style.top = (box.offsetTop + box.offsetHeight + 6) + 'px';
  }

  // ------------------------------------------------------------------ views and wiring

  function showView(name) {
    state.view = name;
    document.querySelectorAll('.tabs button').forEach((b) => b.setAttribute('aria-selected', String(b.dataset.view === name)));
    document.querySelectorAll('main > .view').forEach((s) => { s.hidden = s.id !== 'view-' + name; });
    const slot = document.querySelector('#view-' + name + ' .shared-slot');
    if (slot) slot.append($('shared'));
    $('shared').hidden = !slot;
    if (name === 'model') refreshModelView();
    if (name === 'forward' && !$('forward-xt').getAttribute('src')) scheduleForward();
    if (history.replaceState) history.replaceState(null, '', location.pathname + location.search + '#' + name);
  }

  function bind() {
    document.querySelectorAll('.tabs button').forEach((b) => b.addEventListener('click', () => showView(b.dataset.view)));
    $('checkpoint-select').addEventListener('change', (e) => selectCheckpoint(e.target.value));
    $('new-seed').addEventListener('click', newSeed);
    $('generate-button').addEventListener('click', onGenerate);
    $('cancel-button').addEventListener('click', () => { if (state.current) state.current.cancel(); });
    $('prompt').addEventListener('input', () => { if (state.view === 'model') scheduleTokens(); });
    $('lora-select').addEventListener('change', loraControls);
    $('lora-scale-range').addEventListener('input', () => { $('lora-scale').value = $('lora-scale-range').value; });
    $('lora-scale').addEventListener('input', () => {
      const v = Number($('lora-scale').value);
      if ($('lora-scale').value.trim() !== '' && Number.isFinite(v)) $('lora-scale-range').value = String(v);
    });
    // scrubber
    $('scrub-slider').addEventListener('input', (e) => { stopPlay(); scrubTo(Number(e.target.value)); });
    $('play-button').addEventListener('click', play);
    $('pause-button').addEventListener('click', stopPlay);
    $('step-back').addEventListener('click', () => { stopPlay(); if (state.scrub) scrubTo(state.scrub.k - 1); });
    $('step-forward').addEventListener('click', () => { stopPlay(); if (state.scrub) scrubTo(state.scrub.k + 1); });
    $('guidance-button').addEventListener('click', onGuidance);
    $('compare-what').addEventListener('change', compareHints);
    $('compare-button').addEventListener('click', onCompare);
    // forward process
    $('forward-digit').addEventListener('change', (e) => pickForwardDigit(Number(e.target.value)));
    $('forward-schedule').addEventListener('change', scheduleForward);
    $('forward-timesteps').addEventListener('change', () => {
      const T = Math.max(2, Math.min(4000, Number($('forward-timesteps').value) || 1000));
      $('forward-t').max = String(T);
      if (Number($('forward-t').value) > T) $('forward-t').value = String(T);
      $('forward-t-value').textContent = $('forward-t').value;
      scheduleForward();
    });
    $('forward-t').addEventListener('input', () => { $('forward-t-value').textContent = $('forward-t').value; scheduleForward(); });
    $('forward-upload').addEventListener('change', async (e) => {
      try {
        const url = await readUpload(e.target);
        if (!url) return;
        state.fwd.image = { png: url };
        document.querySelectorAll('#forward-digits button').forEach((bt) => bt.classList.remove('on'));
        scheduleForward();
      } catch (err) { showError(err); }
    });
    // edit
    $('edit-mode').addEventListener('change', updateEditControls);
    $('mask-mode').addEventListener('change', updateEditControls);
    $('edit-digit').addEventListener('change', (e) => pickEditDigit(Number(e.target.value)));
    $('edit-strength').addEventListener('input', () => { $('edit-strength-value').textContent = $('edit-strength').value; });
    $('edit-upload').addEventListener('change', async (e) => {
      try {
        const url = await readUpload(e.target);
        if (!url) return;
        state.edit.image = { png: url };
        $('edit-input').src = url;
      } catch (err) { showError(err); }
    });
    $('mask-upload').addEventListener('change', async (e) => {
      try {
        const url = await readUpload(e.target);
        if (!url) return;
        state.edit.maskPng = url;
        const img = new Image();
        img.onload = () => { state.edit.maskImg = img; drawMask(); };
        img.src = url;
      } catch (err) { showError(err); }
    });
    $('edit-button').addEventListener('click', onEdit);
    bindMaskCanvas();
  }

  async function loadDigits() {
    const d = await api('api/digits');
    state.digits = d.digits;
    const box = $('forward-digits');
    box.replaceChildren(...d.digits.map((src, i) => {
      const b = el('button', { type: 'button', class: 'thumb' + (i === 0 ? ' on' : ''), 'data-testid': 'forward-digit-' + i,
        title: 'held-out digit ' + i }, el('img', { src, alt: 'digit ' + i }));
      b.addEventListener('click', () => pickForwardDigit(i));
      return b;
    }));
    const opts = d.digits.map((_, i) => [String(i), 'held-out image #' + i]);
    fillSelect($('forward-digit'), opts);
    fillSelect($('edit-digit'), opts);
    pickEditDigit(0);
  }

  async function init() {
    bind();
    updateEditControls();
    const start = (location.hash || '#generate').slice(1);
    showView(['generate', 'forward', 'edit', 'model'].includes(start) ? start : 'generate');
    try {
      await loadSamplers();
      await loadCheckpoints();
      await loadDigits();
      setBusy(false);
      if (state.view === 'model') refreshModelView();
      if (state.view === 'forward') scheduleForward();
      document.body.dataset.ready = 'true';
    } catch (e) {
      showError(e);
      document.body.dataset.ready = 'error';
    }
  }

  document.addEventListener('DOMContentLoaded', init);
})();
