// Riffle console. Plain JavaScript, no build step, no dependencies.
//
// Every request goes through api(), which sends the token from
// sessionStorage as a bearer token; the token never goes in a URL. Pages
// are built with el() from text nodes, never innerHTML, so job names, logs
// and events cannot become markup.
'use strict';

const TOKEN_KEY = 'riffle.token';
const PROJECT_KEY = 'riffle.project';
const RANK = { viewer: 1, editor: 2, admin: 3 };
const TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);
const JOB_STATES = ['QUEUED', 'SCHEDULED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLATION_IN_PROGRESS', 'CANCELLED', 'DELETION_IN_PROGRESS'];

const S = { who: null, project: '', locations: {}, stop: [] };

// ---------- helpers ----------

function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
    else if (k === 'text') n.textContent = v;
    else n.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    n.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return n;
}

const svgNS = 'http://www.w3.org/2000/svg';
function sv(tag, attrs, ...kids) {
  const n = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
  for (const k of kids.flat()) n.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return n;
}

class APIError extends Error {
  constructor(status, body, text) {
    super((body && body.error && body.error.message) || text || ('HTTP ' + status));
    this.status = status;
    this.body = body;
  }
  // violations are the google.rpc.BadRequest field violations of the error.
  violations() {
    const out = [];
    for (const d of (this.body && this.body.error && this.body.error.details) || []) {
      for (const v of d.fieldViolations || []) out.push(v);
    }
    return out;
  }
}

function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {}, { Authorization: 'Bearer ' + (sessionStorage.getItem(TOKEN_KEY) || '') });
  return fetch(path, Object.assign({ cache: 'no-store' }, opts, { headers }));
}

async function apiJSON(path, opts) {
  const r = await api(path, opts);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : {}; } catch (e) { /* not JSON */ }
  if (!r.ok) throw new APIError(r.status, body, text);
  return body;
}

function roleIn(project) {
  let best = 0;
  for (const b of (S.who && S.who.bindings) || []) {
    if (b.project === project || b.project === '*') best = Math.max(best, RANK[b.role] || 0);
  }
  return best;
}
const canEdit = () => roleIn(S.project) >= RANK.editor;
// everyProject: the token is bound to every project, which the registry's
// catalog and the node's disk use need (they span projects). Others are not
// sent there, so using the console never shows up as refused requests.
const everyProject = () => ((S.who && S.who.bindings) || []).some((b) => b.project === '*');

async function loc() {
  if (!S.locations[S.project]) {
    const r = await apiJSON(`/v1/projects/${encodeURIComponent(S.project)}/locations`);
    const l = (r.locations || [])[0];
    if (!l) throw new Error('the server serves no location');
    S.locations[S.project] = l.locationId;
  }
  return S.locations[S.project];
}
async function parent() { return `projects/${S.project}/locations/${await loc()}`; }

function age(ts) {
  if (!ts) return '';
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  if (s < 90) return Math.round(s) + 's';
  if (s < 5400) return Math.round(s / 60) + 'm';
  if (s < 172800) return Math.round(s / 3600) + 'h';
  return Math.round(s / 86400) + 'd';
}
const shortName = (name) => name.split('/').pop();
function bytes(n) {
  if (n === null || n === undefined) return '';
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + ' GiB';
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + ' MiB';
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + ' KiB';
  return n + ' B';
}
function errorBox(e) { return el('p', { class: 'err', role: 'alert' }, String(e.message || e)); }
function stateSpan(st) { return el('span', { class: 'state state-' + st }, st || ''); }

// ---------- image arrival ----------

// arrivals fetches how each task's images arrived: GET /riffle/v1/arrival/JOB
// returns the numbers of the tasks' IMAGE_* events, structured by the
// scheduler that words them. The result maps a task name to its first
// container's arrival (or an empty one).
async function arrivals(jobName) {
  const r = await apiJSON(`/riffle/v1/arrival/${jobName}`);
  const out = {};
  for (const t of r.tasks || []) out[t.task] = (t.arrivals || [])[0] || null;
  return out;
}

function containerImage(job) {
  for (const g of job.taskGroups || []) {
    for (const r of (g.taskSpec && g.taskSpec.runnables) || []) {
      if (r.container && r.container.imageUri) return r.container.imageUri;
    }
  }
  return '';
}

async function listTasks(job) {
  const out = [];
  for (const g of job.taskGroups || []) {
    let token = '';
    do {
      const r = await apiJSON(`/v1/${g.name}/tasks?pageSize=1000` + (token ? '&pageToken=' + encodeURIComponent(token) : ''));
      out.push(...(r.tasks || []));
      token = r.nextPageToken || '';
    } while (token);
  }
  out.sort((a, b) => Number(shortName(a.name)) - Number(shortName(b.name)));
  return out;
}

async function listJobs(filter) {
  const out = [];
  let token = '';
  do {
    let q = '?pageSize=1000';
    if (filter) q += '&filter=' + encodeURIComponent(filter);
    if (token) q += '&pageToken=' + encodeURIComponent(token);
    const r = await apiJSON(`/v1/${await parent()}/jobs${q}`);
    out.push(...(r.jobs || []));
    token = r.nextPageToken || '';
  } while (token);
  out.sort((a, b) => Date.parse(b.createTime || 0) - Date.parse(a.createTime || 0));
  return out;
}

// arrivalChart draws time to container start per task, oldest job first,
// across the project's jobs of one image: one circle (class "pt") a task.
function arrivalChart(points) {
  const W = 640, H = 250, L = 48, B = 34, T = 12, R = 12;
  const max = Math.max(0.001, ...points.map((p) => p.started));
  const svg = sv('svg', { class: 'chart', id: 'arrival-chart', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'time to container start per task' });
  svg.append(sv('line', { x1: L, y1: H - B, x2: W - R, y2: H - B }), sv('line', { x1: L, y1: T, x2: L, y2: H - B }));
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4, y = H - B - ((H - B - T) * i) / 4;
    svg.append(sv('text', { x: 4, y: y + 4 }, v < 1 ? (v * 1000).toFixed(0) + 'ms' : v.toFixed(2) + 's'));
  }
  svg.append(sv('text', { x: W - R - 150, y: H - 4 }, 'tasks, oldest job first →'));
  const step = points.length > 1 ? (W - L - R - 20) / (points.length - 1) : 0;
  points.forEach((p, i) => {
    const x = L + 10 + i * step, y = H - B - ((H - B - T) * p.started) / max;
    if (i === 0 || points[i - 1].job !== p.job) {
      // Each job's tasks start at a tick named after the job.
      svg.append(sv('line', { x1: x.toFixed(1), y1: H - B, x2: x.toFixed(1), y2: H - B + 5 }),
        sv('text', { class: 'job-label', x: x.toFixed(1), y: H - B + 16 }, p.job));
    }
    const c = sv('circle', { class: 'pt pt-' + (p.method || 'unknown'), cx: x.toFixed(1), cy: y.toFixed(1), r: 5, 'data-job': p.job, 'data-task': p.task, 'data-method': p.method });
    c.append(sv('title', {}, `${p.job} task ${p.task}: ${p.method}, started after ${p.started.toFixed(3)}s, image ready after ${p.ready.toFixed(3)}s`));
    svg.append(c);
  });
  return el('div', {},
    svg,
    el('div', { class: 'legend' }, ['streamed', 'pulled', 'settled'].map((m) => el('span', {}, el('i', { class: m }), m))));
}

// imageHistory collects arrival points of every task of the project's jobs
// that run image (the 20 newest such jobs).
async function imageHistory(image) {
  const jobs = (await listJobs('')).filter((j) => containerImage(j) === image).slice(0, 20).reverse();
  const pts = [];
  for (const j of jobs) {
    const arr = await arrivals(j.name);
    const names = Object.keys(arr).sort((a, b) => Number(shortName(a)) - Number(shortName(b)));
    for (const n of names) {
      const a = arr[n];
      if (a) pts.push({ job: shortName(j.name), task: shortName(n), method: a.method, started: a.startedSeconds, ready: a.readySeconds });
    }
  }
  return pts;
}

// ---------- YAML (the subset job specs use) ----------

function yamlScalar(s) {
  s = s.trim();
  if (s === '' || s === '~' || s === 'null') return null;
  if (s[0] === '"') return JSON.parse(s);
  if (s[0] === "'") return s.slice(1, -1).replace(/''/g, "'");
  if (s[0] === '[' || s[0] === '{') {
    try { return JSON.parse(s); } catch (e) { throw new Error('flow collections must be written as JSON: ' + s); }
  }
  if (s === 'true') return true;
  if (s === 'false') return false;
  if (/^-?\d+(\.\d+)?$/.test(s)) return Number(s);
  return s.replace(/\s+#.*$/, '');
}

function parseYAML(text) {
  const raw = text.split(/\r?\n/);
  const lines = raw.map((r, n) => ({ ind: r.match(/^ */)[0].length, s: r.trim(), n: n + 1, raw: r }));
  let i = 0;
  const skip = () => { while (i < lines.length && (lines[i].s === '' || lines[i].s[0] === '#' || lines[i].s === '---')) i++; };
  const isItem = (l) => l.s === '-' || l.s.startsWith('- ');
  function block(ind) { skip(); return isItem(lines[i]) ? list(ind) : map(ind); }
  function literal(ind, fold) {
    const body = [];
    while (i < lines.length && (lines[i].s === '' || lines[i].ind > ind)) body.push(lines[i++].raw);
    while (body.length && body[body.length - 1].trim() === '') body.pop();
    const cut = Math.min(...body.filter((b) => b.trim()).map((b) => b.match(/^ */)[0].length));
    const out = body.map((b) => b.slice(cut));
    return (fold ? out.join(' ') : out.join('\n')) + '\n';
  }
  function value(rest, ind) {
    if (rest === '|' || rest === '|-' || rest === '>' || rest === '>-') return literal(ind, rest[0] === '>');
    if (rest !== '') return yamlScalar(rest);
    skip();
    if (i < lines.length && (lines[i].ind > ind || (lines[i].ind === ind && isItem(lines[i])))) return block(lines[i].ind);
    return null;
  }
  function list(ind) {
    const out = [];
    for (skip(); i < lines.length && lines[i].ind === ind && isItem(lines[i]); skip()) {
      const rest = lines[i].s.slice(1).trim();
      if (/^("[^"]*"|[A-Za-z0-9_.\-]+):( |$)/.test(rest)) {
        lines[i] = { ind: ind + 2, s: rest, n: lines[i].n, raw: ' '.repeat(ind + 2) + rest };
        out.push(map(ind + 2));
      } else {
        i++;
        out.push(value(rest, ind));
      }
    }
    return out;
  }
  function map(ind) {
    const out = {};
    for (skip(); i < lines.length && lines[i].ind === ind && !isItem(lines[i]); skip()) {
      const m = lines[i].s.match(/^("[^"]*"|[^:]+):(?:\s+(.*))?$/);
      if (!m) throw new Error(`YAML line ${lines[i].n}: expected "key: value"`);
      const key = m[1][0] === '"' ? JSON.parse(m[1]) : m[1].trim();
      i++;
      out[key] = value((m[2] || '').trim(), ind);
    }
    return out;
  }
  skip();
  if (i >= lines.length) return {};
  const v = block(lines[i].ind);
  skip();
  if (i < lines.length) throw new Error(`YAML line ${lines[i].n}: unexpected indentation`);
  return v;
}

// ---------- pages ----------

const main = () => document.getElementById('main');
function page(...kids) {
  for (const f of S.stop.splice(0)) f();
  main().replaceChildren(...kids);
}

function loginPage(msg) {
  document.getElementById('nav').hidden = true;
  const input = el('input', { id: 'token', type: 'password', autocomplete: 'off', size: 48, placeholder: 'token' });
  const form = el('form', { id: 'login' },
    el('h2', {}, 'Log in'),
    el('p', {}, 'Paste a Riffle token (`riffle auth tokens create`, or the admin.token in the server\'s data directory). It is kept in this tab only.'),
    input, ' ', el('button', { type: 'submit' }, 'Log in'),
    msg ? errorBox(msg) : null);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    await start();
  });
  page(form);
}

async function jobsPage() {
  const editor = canEdit();
  const stateSel = el('select', { id: 'filter-state' }, el('option', { value: '' }, 'any state'), JOB_STATES.map((s) => el('option', { value: s }, s)));
  const labelIn = el('input', { id: 'filter-label', placeholder: 'label: key=value' });
  const table = el('div', { id: 'jobs' });
  const load = async () => {
    const parts = [];
    if (stateSel.value) parts.push(`status.state=${stateSel.value}`);
    const lv = labelIn.value.trim();
    if (lv) {
      const [k, ...v] = lv.split('=');
      parts.push(v.length ? `labels.${k.trim()}="${v.join('=').trim().replace(/"/g, '\\"')}"` : `labels.${k.trim()}:*`);
    }
    try {
      table.replaceChildren(jobsTable(await listJobs(parts.join(' AND ')), editor, load));
    } catch (e) { table.replaceChildren(errorBox(e)); }
  };
  const filter = el('form', { id: 'filter' }, 'Filter: ', stateSel, ' ', labelIn, ' ', el('button', { type: 'submit' }, 'Apply'));
  filter.addEventListener('submit', (ev) => { ev.preventDefault(); load(); });
  page(el('h2', {}, `Jobs in ${S.project}`), filter, table, editor ? submitForm(load) : el('p', { class: 'muted', id: 'read-only' }, 'Your role in this project is viewer: you can look, not act.'));
  await load();
  const t = setInterval(load, 3000);
  S.stop.push(() => clearInterval(t));
}

function counts(job) {
  const c = {};
  for (const g of Object.values((job.status && job.status.taskGroups) || {})) {
    for (const [k, v] of Object.entries(g.counts || {})) c[k] = (c[k] || 0) + Number(v);
  }
  return Object.entries(c).map(([k, v]) => `${k} ${v}`).join(', ');
}

function actions(job, after) {
  const st = job.status && job.status.state;
  const act = async (what) => {
    try {
      if (what === 'cancel') await apiJSON(`/v1/${job.name}:cancel`, { method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } });
      else await apiJSON(`/v1/${job.name}`, { method: 'DELETE' });
      await after();
    } catch (e) { alert(e.message); }
  };
  return el('span', { class: 'actions' },
    TERMINAL.has(st) ? null : el('button', { type: 'button', class: 'cancel', onclick: () => act('cancel') }, 'Cancel'), ' ',
    el('button', { type: 'button', class: 'delete', onclick: () => { if (confirm(`Delete ${shortName(job.name)}?`)) act('delete'); } }, 'Delete'));
}

function jobsTable(jobs, editor, reload) {
  if (!jobs.length) return el('p', { class: 'muted' }, 'No jobs.');
  return el('table', {},
    el('tr', {}, el('th', {}, 'Job'), el('th', {}, 'State'), el('th', {}, 'Tasks'), el('th', {}, 'Age'), el('th', {}, 'Labels'), editor ? el('th', {}, '') : null),
    jobs.map((j) => el('tr', { 'data-job': shortName(j.name) },
      el('td', {}, el('a', { href: '#/job/' + encodeURIComponent(shortName(j.name)) }, shortName(j.name))),
      el('td', {}, stateSpan(j.status && j.status.state)),
      el('td', {}, counts(j)),
      el('td', {}, age(j.createTime)),
      el('td', {}, Object.entries(j.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ')),
      editor ? el('td', {}, actions(j, reload)) : null)));
}

const EXAMPLE = `taskGroups:
- taskCount: 2
  taskSpec:
    runnables:
    - container:
        imageUri: HOST/PROJECT/images/busybox:v1
        enableImageStreaming: true
        commands: ["sh", "-c", "echo hello from task $BATCH_TASK_INDEX"]
`;

function submitForm(reload) {
  const id = el('input', { id: 'job-id', placeholder: 'job ID', size: 30 });
  const idErr = el('span', { id: 'err-jobId', class: 'field-error' });
  const spec = el('textarea', { id: 'job-spec', spellcheck: 'false', placeholder: EXAMPLE.replace('HOST', location.host).replace('PROJECT', S.project) });
  const specErr = el('div', { id: 'err-job', class: 'field-error' });
  const result = el('div', { id: 'submit-result' });
  const form = el('form', { id: 'submit' },
    el('h3', {}, 'Submit a job'),
    el('label', {}, 'Job ID ', id), idErr,
    el('p', {}, 'The job, as JSON or YAML (the Batch API\'s Job):'), spec, specErr,
    el('button', { type: 'submit' }, 'Submit'), result);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    idErr.textContent = ''; specErr.replaceChildren(); result.replaceChildren();
    let body = spec.value;
    if (!/^\s*\{/.test(body)) {
      try { body = JSON.stringify(parseYAML(body)); } catch (e) { specErr.textContent = e.message; return; }
    }
    try {
      const job = await apiJSON(`/v1/${await parent()}/jobs?jobId=${encodeURIComponent(id.value.trim())}`, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } });
      result.append(el('p', {}, 'Submitted ', el('a', { href: '#/job/' + encodeURIComponent(shortName(job.name)) }, shortName(job.name))));
      reload();
    } catch (e) {
      const vs = e.violations ? e.violations() : [];
      for (const v of vs) {
        if (v.field === 'jobId') idErr.textContent = v.description;
        else specErr.append(el('div', { class: 'violation', 'data-field': v.field }, el('code', {}, v.field), ': ', v.description));
      }
      if (!vs.length) specErr.append(errorBox(e));
    }
  });
  return form;
}

async function jobPage(id) {
  const name = `${await parent()}/jobs/${id}`;
  const head = el('div', { id: 'job-head' });
  const groups = el('section', { id: 'groups' });
  const tasks = el('section', { id: 'tasks' });
  const arr = el('section', { id: 'arrival' });
  const timeline = el('section', { id: 'timeline' });
  const logs = el('section', { id: 'logs' });
  const config = el('section', { id: 'config' });
  page(el('p', {}, el('a', { href: '#/jobs' }, '← jobs')), head, groups, tasks, arr, logs, timeline, config);
  // The chart reads every task of up to 20 jobs: redraw it only when one
  // more task of this job has started, not on every refresh.
  let chartKey = '', logsShown = false;
  const load = async () => {
    let job, ts, arv;
    try {
      job = await apiJSON(`/v1/${name}`);
      ts = await listTasks(job);
      arv = await arrivals(name);
    } catch (e) { head.replaceChildren(errorBox(e)); return true; }
    const st = job.status && job.status.state;
    head.replaceChildren(el('h2', {}, shortName(job.name), ' ', stateSpan(st)),
      el('p', {}, `Created ${age(job.createTime)} ago · ${counts(job)}`),
      canEdit() ? actions(job, async () => { location.hash = '#/jobs'; }) : null);
    groups.replaceChildren(el('h3', {}, 'Task groups'), el('table', {},
      el('tr', {}, el('th', {}, 'Group'), el('th', {}, 'Tasks'), el('th', {}, 'Parallelism'), el('th', {}, 'Counts')),
      (job.taskGroups || []).map((g) => el('tr', {}, el('td', {}, shortName(g.name || '')), el('td', {}, g.taskCount || '1'), el('td', {}, g.parallelism || ''),
        el('td', {}, Object.entries(((job.status.taskGroups || {})[shortName(g.name || '')] || {}).counts || {}).map(([k, v]) => `${k} ${v}`).join(', '))))));
    tasks.replaceChildren(el('h3', {}, 'Tasks'), el('table', { id: 'task-table' },
      el('tr', {}, el('th', {}, 'Task'), el('th', {}, 'State'), el('th', {}, 'Attempts'), el('th', {}, 'Image'), el('th', {}, 'Ready'), el('th', {}, 'Started'), el('th', {}, 'Over the wire'), el('th', {}, 'Fallback')),
      ts.map((t) => {
        const a = arv[t.name] || {};
        const attempts = ((t.status && t.status.statusEvents) || []).filter((e) => / to RUNNING\b/.test(e.description || '')).length;
        return el('tr', { 'data-task': shortName(t.name) },
          el('td', {}, el('a', { href: '#', class: 'task-logs', onclick: (ev) => { ev.preventDefault(); showLogs(job, shortName(t.name)); } }, shortName(t.name))),
          el('td', { class: 'task-state' }, stateSpan(t.status && t.status.state)),
          el('td', {}, attempts),
          el('td', { class: 'method' }, a.method || ''),
          el('td', {}, a.method ? a.readySeconds.toFixed(3) + 's' : ''),
          el('td', {}, a.method ? a.startedSeconds.toFixed(3) + 's' : ''),
          el('td', {}, a.method ? bytes(a.wireBytes) + (a.runWireBytes ? ` (+${bytes(a.runWireBytes)} while running)` : '') : ''),
          el('td', {}, a.fallback || ''));
      })));
    const evs = [];
    for (const e of (job.status && job.status.statusEvents) || []) evs.push({ who: 'job', e });
    for (const t of ts) for (const e of (t.status && t.status.statusEvents) || []) evs.push({ who: 'task ' + shortName(t.name), e });
    evs.sort((a, b) => Date.parse(a.e.eventTime || 0) - Date.parse(b.e.eventTime || 0));
    const t0 = evs.length ? Date.parse(evs[0].e.eventTime) : 0;
    timeline.replaceChildren(el('h3', {}, 'Timeline'), el('table', { id: 'events' },
      el('tr', {}, el('th', {}, '+s'), el('th', {}, 'Of'), el('th', {}, 'Type'), el('th', {}, 'Description')),
      evs.map(({ who, e }) => el('tr', {}, el('td', {}, ((Date.parse(e.eventTime) - t0) / 1000).toFixed(3)), el('td', {}, who), el('td', {}, e.type || ''), el('td', {}, e.description || '')))));
    config.replaceChildren(el('h3', {}, 'Config'), el('pre', { id: 'job-config' }, JSON.stringify({ taskGroups: job.taskGroups, allocationPolicy: job.allocationPolicy, labels: job.labels, logsPolicy: job.logsPolicy }, null, 2)));
    if (!logsShown && ts.length) { logsShown = true; showLogs(job, shortName(ts[0].name)); }
    const image = containerImage(job);
    const done = TERMINAL.has(st);
    const key = image + ' ' + Object.values(arv).filter((a) => a).length;
    if (image && key !== chartKey) {
      chartKey = key;
      try {
        const pts = await imageHistory(image);
        arr.replaceChildren(el('h3', {}, 'Image arrival'),
          el('p', {}, `Time to container start per task, across this project's jobs of ${image}: first run, learned profile, warm, settled.`),
          pts.length ? arrivalChart(pts) : el('p', { class: 'muted' }, 'No task has started yet.'));
      } catch (e) { arr.replaceChildren(errorBox(e)); }
    }
    return done;
  };
  const tick = async () => {
    if (!(await load())) timer = setTimeout(tick, 1000);
  };
  let timer = null;
  S.stop.push(() => clearTimeout(timer));
  await tick();
}

// showLogs follows one task's logs into the logs section until the task
// ends or the page changes.
function showLogs(job, task) {
  const sec = document.getElementById('logs');
  if (!sec) return;
  if (S.logAbort) S.logAbort.abort();
  const ctl = new AbortController();
  S.logAbort = ctl;
  S.stop.push(() => ctl.abort());
  const pre = el('pre', { id: 'log-text', 'data-task': task });
  sec.replaceChildren(el('h3', {}, `Logs of task ${task} (live)`), pre);
  (async () => {
    try {
      const r = await api(`/riffle/v1/logs/${job.name}?task=${encodeURIComponent(task)}&follow=true`, { signal: ctl.signal });
      if (!r.ok) { pre.textContent = await r.text(); return; }
      const rd = r.body.getReader(), dec = new TextDecoder();
      for (;;) {
        const { value, done } = await rd.read();
        if (done) break;
        pre.append(dec.decode(value, { stream: true }));
      }
      pre.dataset.done = 'true';
    } catch (e) {
      if (e.name !== 'AbortError') pre.append('\n' + e.message);
    }
  })();
}

async function imagesPage() {
  const out = el('div', { id: 'images' }, el('p', { class: 'muted' }, 'Loading…'));
  page(el('h2', {}, `Images of ${S.project} in the embedded registry`), out);
  let repos = [];
  if (everyProject()) {
    try {
      repos = (await apiJSON('/v2/_catalog?n=10000')).repositories || [];
    } catch (e) { out.replaceChildren(errorBox(e)); return; }
  } else {
    // The catalog needs a role in every project: find the project's
    // repositories through its jobs instead.
    for (const j of await listJobs('')) {
      const u = containerImage(j);
      if (!u.startsWith(location.host + '/')) continue;
      repos.push(u.slice(location.host.length + 1).replace(/@.*$/, '').replace(/:[^/]*$/, ''));
    }
  }
  repos = [...new Set(repos)].filter((r) => r.split('/')[0] === S.project).sort();
  if (!repos.length) { out.replaceChildren(el('p', { class: 'muted' }, 'No images.')); return; }
  const rows = [];
  for (const repo of repos) {
    let tags = [];
    try { tags = (await apiJSON(`/v2/${repo}/tags/list`)).tags || []; } catch (e) { rows.push(el('tr', {}, el('td', {}, repo), el('td', { colspan: 4 }, errorBox(e)))); continue; }
    for (const tag of tags.sort()) rows.push(await imageRow(repo, tag));
  }
  out.replaceChildren(el('table', {},
    el('tr', {}, el('th', {}, 'Repository'), el('th', {}, 'Tag'), el('th', {}, 'Size'), el('th', {}, 'Layers: indexed (streamable) · startup profile')), rows));
}

const ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json';

async function imageRow(repo, tag) {
  try {
    let m = await apiJSON(`/v2/${repo}/manifests/${encodeURIComponent(tag)}`, { headers: { Accept: ACCEPT } });
    if (m.manifests) {
      const pick = m.manifests.find((d) => d.platform && d.platform.os === 'linux' && d.platform.architecture === 'amd64') || m.manifests[0];
      m = await apiJSON(`/v2/${repo}/manifests/${pick.digest}`, { headers: { Accept: ACCEPT } });
    }
    const layers = m.layers || [];
    const size = layers.reduce((s, l) => s + (l.size || 0), 0) + ((m.config && m.config.size) || 0);
    const cells = [];
    for (const l of layers) {
      const idx = await api(`/index/v1/layers/${l.digest}?windows=detached`, { method: 'HEAD' });
      let why = '';
      if (idx.status === 404) why = 'not indexed yet (the index service indexes pushed images; a layer it cannot index streams no data and is pulled)';
      else if (!idx.ok) why = 'index service: HTTP ' + idx.status;
      const prof = await api(`/index/v1/profiles/${l.digest}`, { method: 'HEAD' });
      cells.push(el('li', { class: 'layer', 'data-digest': l.digest },
        el('code', {}, l.digest.slice(0, 19)), ` ${bytes(l.size)} · `,
        idx.ok ? el('span', { class: 'indexed' }, 'indexed, streamable') : el('span', { class: 'not-indexed' }, why),
        ' · ', prof.ok ? 'profile present' : 'no profile'));
    }
    return el('tr', { 'data-image': `${repo}:${tag}` }, el('td', {}, repo), el('td', {}, tag), el('td', {}, bytes(size)), el('td', {}, el('ul', {}, cells)));
  } catch (e) {
    return el('tr', {}, el('td', {}, repo), el('td', {}, tag), el('td', { colspan: 2 }, errorBox(e)));
  }
}

// parseMetrics reads the Prometheus text format: name{labels} value.
function parseMetrics(text) {
  const help = {}, rows = [];
  for (const line of text.split('\n')) {
    let m = line.match(/^# HELP (\S+) (.*)$/);
    if (m) { help[m[1]] = m[2]; continue; }
    if (!line || line[0] === '#') continue;
    m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)/);
    if (m) rows.push({ name: m[1], labels: m[2] || '', value: Number(m[3]) });
  }
  return { help, rows };
}

async function nodePage() {
  const out = el('div', { id: 'node' });
  page(el('h2', {}, 'Node'), out);
  const load = async () => {
    const kids = [];
    try {
      const jobs = await listJobs('status.state=RUNNING');
      const running = [];
      for (const j of jobs) for (const t of await listTasks(j)) if (t.status && t.status.state === 'RUNNING') running.push(t);
      kids.push(el('h3', {}, `Running tasks in ${S.project}`), running.length
        ? el('ul', { id: 'running' }, running.map((t) => el('li', {}, t.name.split('/jobs/')[1])))
        : el('p', { class: 'muted' }, 'None.'));
    } catch (e) { kids.push(errorBox(e)); }
    kids.push(...await diskUse());
    try {
      const r = await api('/metrics');
      if (!r.ok) throw new APIError(r.status, null, (await r.text()) || 'the node\'s metrics need a role in every project (or a loopback client)');
      const { help, rows } = parseMetrics(await r.text());
      const groups = [['Cache (usage and limits)', 'riffle_cache_'], ['Images and mounts', 'riffle_node_'], ['Index service', 'riffle_index_'], ['Tasks', 'riffle_batch_'], ['Access control', 'riffle_auth_']];
      for (const [title, prefix] of groups) {
        const rs = rows.filter((x) => x.name.startsWith(prefix) && !/_bucket$/.test(x.name));
        if (!rs.length) continue;
        kids.push(el('h3', {}, title), el('table', { class: 'metrics' },
          el('tr', {}, el('th', {}, 'Metric'), el('th', {}, 'Labels'), el('th', {}, 'Value'), el('th', {}, 'Meaning')),
          rs.map((x) => el('tr', { 'data-metric': x.name }, el('td', {}, el('code', {}, x.name)), el('td', {}, x.labels), el('td', {}, /bytes/.test(x.name) ? bytes(x.value) : x.value),
            el('td', { class: 'muted' }, help[x.name.replace(/_(sum|count)$/, '')] || '')))));
      }
    } catch (e) { kids.push(errorBox(e)); }
    out.replaceChildren(...kids);
  };
  await load();
  const t = setInterval(load, 5000);
  S.stop.push(() => clearInterval(t));
}

// diskUse shows GET /riffle/v1/system/df (what riffle system df shows):
// usage against limits and the stream mounts. It names images and jobs of
// every project, so the server gives it only to a role in every project.
async function diskUse() {
  if (!everyProject()) return [el('h3', {}, 'Disk use and mounts'), el('p', { class: 'muted', id: 'df-denied' }, 'Disk use and mounts name images and jobs of every project: they need a role in every project.')];
  let u;
  try {
    u = await apiJSON('/riffle/v1/system/df');
  } catch (e) { return [errorBox(e)]; }
  const of = (n, max) => bytes(n || 0) + (max ? ` of ${bytes(max)}` : ' (no limit)');
  const node = u.node || {};
  return [
    el('h3', {}, 'Disk use'),
    el('table', { id: 'df' },
      el('tr', {}, el('th', {}, 'Node cache (streamed spans, indexes)'), el('td', {}, of(u.cache && u.cache.bytes, u.cache && u.cache.maxBytes) + ` · ${(u.cache && u.cache.entries) || 0} entries`)),
      el('tr', {}, el('th', {}, 'Layers and images pulled flat'), el('td', {}, of((node.layerBytes || 0) + (node.flatBytes || 0), u.layersMaxBytes))),
      el('tr', {}, el('th', {}, 'Registry blobs'), el('td', {}, `${bytes((u.registry && u.registry.bytes) || 0)} · ${(u.registry && u.registry.blobs) || 0} blobs`)),
      el('tr', {}, el('th', {}, 'Layer indexes'), el('td', {}, bytes(u.indexBytes || 0))),
      el('tr', {}, el('th', {}, 'Jobs: work directories, logs'), el('td', {}, `${bytes((u.jobs && u.jobs.workBytes) || 0)}, ${bytes((u.jobs && u.jobs.logBytes) || 0)}`))),
    el('h3', {}, 'Stream mounts'),
    (node.mounts || []).length
      ? el('table', { id: 'mounts' }, el('tr', {}, el('th', {}, 'Image'), el('th', {}, 'Digest'), el('th', {}, 'Users'), el('th', {}, 'Settled')),
        node.mounts.map((m) => el('tr', {}, el('td', {}, m.image), el('td', {}, el('code', {}, (m.digest || '').slice(0, 19))), el('td', {}, m.users), el('td', {}, m.settled ? 'yes' : 'no'))))
      : el('p', { class: 'muted', id: 'mounts' }, 'None.'),
  ];
}

// ---------- shell ----------

function projectPicker() {
  const sel = document.getElementById('project');
  const other = document.getElementById('project-other');
  const named = [...new Set(S.who.bindings.map((b) => b.project).filter((p) => p !== '*'))].sort();
  const any = S.who.bindings.some((b) => b.project === '*');
  sel.replaceChildren(...named.map((p) => el('option', { value: p }, p)), any ? el('option', { value: '*' }, 'other project…') : null);
  const saved = sessionStorage.getItem(PROJECT_KEY) || '';
  if (named.includes(saved)) sel.value = saved;
  else if (any && (saved || !named.length)) { sel.value = '*'; other.value = saved || 'demo'; }
  const apply = () => {
    other.hidden = sel.value !== '*';
    S.project = sel.value === '*' ? other.value.trim() : sel.value;
    sessionStorage.setItem(PROJECT_KEY, S.project);
  };
  sel.onchange = () => { apply(); route(); };
  other.onchange = () => { apply(); route(); };
  apply();
}

async function route() {
  if (!S.who) return;
  if (!S.project) { page(el('p', {}, 'Choose a project.')); return; }
  const h = location.hash || '#/jobs';
  try {
    let m;
    if ((m = h.match(/^#\/job\/([^/]+)$/))) await jobPage(decodeURIComponent(m[1]));
    else if (h === '#/images') await imagesPage();
    else if (h === '#/node') await nodePage();
    else await jobsPage();
  } catch (e) {
    if (e.status === 401) { loginPage(e); return; }
    page(errorBox(e));
  }
}

async function start() {
  if (!sessionStorage.getItem(TOKEN_KEY)) { loginPage(); return; }
  try {
    S.who = await apiJSON('/riffle/v1/auth/whoami');
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    S.who = null;
    loginPage(e);
    return;
  }
  document.getElementById('nav').hidden = false;
  document.getElementById('who').textContent = `${S.who.name || S.who.id} · ` + S.who.bindings.map((b) => `${b.role} in ${b.project === '*' ? 'every project' : b.project}`).join(', ');
  projectPicker();
  await route();
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', () => {
  document.getElementById('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    S.who = null;
    loginPage();
  });
  start();
});
