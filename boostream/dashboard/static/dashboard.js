// The boostream dashboard: start a training job, watch it live over EventSource, open recent jobs.
// One module with no framework and no build step; everything it loads comes from the server itself.

const DEMOS = [
  { file: "diabetes.csv", label: "Demo: diabetes (regression)", objective: "regression" },
  { file: "breast_cancer.csv", label: "Demo: breast cancer (binary)", objective: "binary" },
  { file: "iris.csv", label: "Demo: iris (multiclass)", objective: "multiclass" },
];
const OWN_FILE = "";
const TABLE_TYPES = { csv: "text/csv", parquet: "application/vnd.apache.parquet", pq: "application/vnd.apache.parquet" };
// The hyperparameters the form offers, where the backend has them; the others keep their defaults.
const MAIN_PARAMS = ["n_estimators", "learning_rate", "num_leaves", "max_depth", "early_stopping_rounds"];
const STATUS_AFTER = {
  queued: "queued", restarted: "queued", started: "running", progress: "running",
  complete: "succeeded", error: "failed", cancelled: "cancelled",
};
const TERMINAL = new Set(["complete", "error", "cancelled"]);
const LIVE = new Set(["queued", "running"]);
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
// The jobs list is polled (no stream tells of other jobs): often while one of them waits or trains,
// so that its end shows within a second, and seldom otherwise.
const JOBS_REFRESH_LIVE_MS = 1000;
const JOBS_REFRESH_IDLE_MS = 5000;
const JOB_PROGRESS_CELL = 4;
const RECONNECT_MS = 2000;

const $ = (id) => document.getElementById(id);
let models = [];
const demoBlobs = new Map();
let guessedTarget = ""; // the target last filled in from a CSV header: cleared for a Parquet file

// ---- signing in: a server with API keys asks for one once; its session cookie does the rest ----

async function signIn() {
  const session = await request("/session");
  if (session.keys_required && !session.signed_in) {
    $("sign-in").hidden = false;
    $("api-key").focus();
    await new Promise((resolve) => {
      $("sign-in").addEventListener("submit", async function submitted(event) {
        event.preventDefault();
        try {
          const signedIn = await request("/session", {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ api_key: $("api-key").value.trim() }),
          });
          $("sign-in").removeEventListener("submit", submitted);
          Object.assign(session, signedIn, { signed_in: true });
          resolve();
        } catch (error) {
          $("sign-in-error").textContent = error.message;
        }
      });
    });
    $("api-key").value = "";
    $("sign-in").hidden = true;
  }
  if (session.keys_required) {
    $("who-name").textContent = session.admin ? `${session.name} (admin)` : session.name;
    $("who").hidden = false;
  }
}

async function signOut() {
  await request("/session", { method: "DELETE" });
  location.reload();
}

// ---- the form ----

async function loadModels() {
  try {
    models = (await request("/models")).models;
  } catch (error) {
    showFormError(`Cannot list the backends: ${error.message}`);
    return;
  }
  const select = $("model_type");
  for (const model of models) {
    const option = new Option(model.available ? model.model_type : `${model.model_type} (unavailable)`, model.model_type);
    option.disabled = !model.available;
    if (!model.available) option.title = model.reason;
    select.add(option);
  }
  select.value = models.find((model) => model.available)?.model_type ?? "";
  const unavailable = models.filter((model) => !model.available);
  $("backend-note").textContent = unavailable.map((model) => `${model.model_type} is unavailable: ${model.reason}`).join(" ");
  $("backend-note").hidden = !unavailable.length;
  $("start").disabled = !select.value;
  renderBackend();
}

function renderBackend() {
  const model = models.find((candidate) => candidate.model_type === $("model_type").value);
  if (!model) return;
  const objective = $("objective");
  const chosen = objective.value;
  objective.replaceChildren(...model.objectives.map((name) => new Option(name, name)));
  if (model.objectives.includes(chosen)) objective.value = chosen;
  renderParams(model.params.properties);
}

function renderParams(schemas) {
  const fieldset = $("params");
  const typed = Object.fromEntries([...fieldset.querySelectorAll("input")].map((input) => [input.name, input.value]));
  fieldset.querySelectorAll(".param").forEach((node) => node.remove());
  for (const name of MAIN_PARAMS.filter((candidate) => candidate in schemas)) {
    const schema = schemas[name];
    const input = el("input", { id: `param-${name}`, name, type: "number", "aria-describedby": `hint-${name}` });
    input.step = schema.type === "integer" ? schema.multipleOf ?? 1 : "any";
    const minimum = schema.minimum ?? schema.exclusiveMinimum;
    if (minimum !== undefined) input.min = minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
    input.value = typed[name] ?? schema.default;
    const bounds = [
      schema.minimum !== undefined ? `≥ ${schema.minimum}` : schema.exclusiveMinimum !== undefined ? `> ${schema.exclusiveMinimum}` : "",
      schema.maximum !== undefined ? `≤ ${schema.maximum}` : "",
    ].filter(Boolean).join(", ");
    const hint = el("span", { id: `hint-${name}`, class: "note" }, `${schema.description} ${bounds}`.trim());
    fieldset.append(el("div", { class: "param" }, el("label", { for: input.id }, name), input, hint));
  }
}

function setupTables() {
  const select = $("table");
  for (const demo of DEMOS) select.add(new Option(demo.label, demo.file));
  select.add(new Option("Your own CSV or Parquet file…", OWN_FILE));
  select.addEventListener("change", tableChanged);
  $("file").addEventListener("change", tableChanged);
  return tableChanged();
}

async function tableChanged() {
  const demo = DEMOS.find((candidate) => candidate.file === $("table").value);
  $("file-row").hidden = Boolean(demo);
  if (demo && [...$("objective").options].some((option) => option.value === demo.objective)) $("objective").value = demo.objective;
  let columns = [];
  try {
    const table = await chosenTable();
    if (table?.type === TABLE_TYPES.csv) columns = csvHeader(await table.blob.slice(0, 1 << 16).text());
  } catch (error) {
    showFormError(error.message);
  }
  $("columns").replaceChildren(...columns.map((name) => new Option(name, name)));
  const target = $("target");
  if (columns.length && !columns.includes(target.value)) target.value = columns.at(-1);
  else if (!columns.length && target.value === guessedTarget) target.value = ""; // a Parquet file: ask for it
  guessedTarget = columns.length ? target.value : "";
  target.placeholder = columns.length ? "" : "the label column's name";
}

// The table to send: a bundled demo or the picked file, with its media type; null when none is picked.
async function chosenTable() {
  const demo = DEMOS.find((candidate) => candidate.file === $("table").value);
  if (demo) {
    if (!demoBlobs.has(demo.file)) {
      const response = await fetch(`/ui/demo/${demo.file}`);
      if (!response.ok) throw new Error(`Cannot load the demo table ${demo.file}: ${response.status}`);
      demoBlobs.set(demo.file, await response.blob());
    }
    return { blob: demoBlobs.get(demo.file), type: TABLE_TYPES.csv };
  }
  const file = $("file").files[0];
  if (!file) return null;
  const type = TABLE_TYPES[file.name.split(".").pop().toLowerCase()];
  if (!type) throw new Error(`${file.name} is neither .csv nor .parquet`);
  return { blob: file, type };
}

// The names in a CSV's first line (quoted fields allowed); unnamed columns, such as an index, left out.
function csvHeader(text) {
  const names = [];
  let name = "";
  let quoted = false;
  for (let i = text.charCodeAt(0) === 0xfeff ? 1 : 0; i < text.length; i++) {
    const c = text[i];
    if (quoted && c === '"' && text[i + 1] === '"') { name += '"'; i++; }
    else if (c === '"') quoted = !quoted;
    else if (!quoted && c === ",") { names.push(name); name = ""; }
    else if (!quoted && (c === "\n" || c === "\r")) break;
    else name += c;
  }
  names.push(name);
  return names.filter((candidate) => candidate.trim() !== "");
}

async function startJob(event) {
  event.preventDefault();
  showFormError("");
  const start = $("start");
  start.disabled = true;
  try {
    const table = await chosenTable();
    if (!table) throw Object.assign(new Error("Pick a CSV or Parquet file first."), { field: "file" });
    if (!$("target").value.trim()) throw Object.assign(new Error("Name the target column."), { field: "target" });
    const fields = new URLSearchParams({ target: $("target").value.trim(), model_type: $("model_type").value, objective: $("objective").value });
    if ($("valid_fraction").value !== "") fields.set("valid_fraction", $("valid_fraction").value);
    for (const input of $("params").querySelectorAll("input")) if (input.value !== "") fields.set(input.name, input.value);
    const job = await request(`/jobs?${fields}`, { method: "POST", headers: { "content-type": table.type }, body: table.blob });
    openJob(job.job_id);
    refreshJobs();
  } catch (error) {
    showFormError(error.message, error.field);
  } finally {
    start.disabled = false;
  }
}

function showFormError(message, field) {
  $("form-error").textContent = message && field ? `${field}: ${message}` : message;
  document.querySelectorAll("[aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
  const input = field && ($(field) || $(`param-${field.replace(/^params\./, "")}`));
  if (input) input.setAttribute("aria-invalid", "true");
}

// ---- watching a job ----

const watch = { jobId: null, source: null, connections: 0, ...jobState() };

// What the panel knows of the open job; all of it starts over when another job is opened.
function jobState() {
  return {
    lastEventId: 0, status: "idle", finished: false, cancelling: false,
    total: 0, iteration: 0, percent: 0, trained: null, best: null, curve: newCurve(),
  };
}

function openJob(jobId) {
  closeSource();
  Object.assign(watch, { jobId, ...jobState() });
  history.replaceState(null, "", `#${jobId}`);
  $("job-id").textContent = jobId;
  $("job-meta").textContent = "";
  $("job-error").textContent = "";
  $("result").hidden = true;
  clearProgress();
  setStatus("…");
  markOpenJob();
  request(`/jobs/${jobId}`).then((job) => {
    if (watch.jobId !== jobId) return;
    if (watch.lastEventId === 0) setStatus(job.status);
    if (!$("job-meta").textContent) $("job-meta").textContent = `${job.model_type} · ${job.objective}`;
  }, (error) => error.status === 404 && showJobError("No such job (deleted or expired)."));
  connect(0);
}

function connect(after) {
  const source = new EventSource(`/jobs/${encodeURIComponent(watch.jobId)}/events?after=${after}`);
  watch.source = source;
  watch.connections++;
  for (const type of Object.keys(STATUS_AFTER)) source.addEventListener(type, (message) => receive(source, type, message));
  source.onopen = () => setConnection("live");
  source.onerror = () => connectionFailed(source);
}

function closeSource() {
  watch.source?.close();
  watch.source = null;
  setConnection("");
}

// A test hook, and what a dropped connection looks like: close the stream and resume after `after`
// (by default the last event seen; an earlier id replays events, which must be ignored).
function dropConnection(after = watch.lastEventId) {
  closeSource();
  connect(after);
}

function connectionFailed(source) {
  if (source !== watch.source) return;
  if (source.readyState === EventSource.CONNECTING) {
    setConnection("reconnecting…"); // the browser retries by itself, sending Last-Event-ID
    return;
  }
  // Closed for good (an HTTP error): try again from the last event seen, unless the job is gone.
  const jobId = watch.jobId;
  watch.source = null;
  setConnection("disconnected");
  request(`/jobs/${jobId}`).then(() => true, (error) => error.status !== 404).then((retry) => {
    if (!retry) showJobError("No such job (deleted or expired).");
    else setTimeout(() => watch.jobId === jobId && !watch.source && !watch.finished && connect(watch.lastEventId), RECONNECT_MS);
  });
}

function receive(source, type, message) {
  const id = Number(message.lastEventId);
  if (source !== watch.source || !(id > watch.lastEventId)) return; // already seen, or from a stream since closed
  watch.lastEventId = id;
  const data = JSON.parse(message.data);
  setStatus(STATUS_AFTER[type]);
  HANDLERS[type](data);
  if (TERMINAL.has(type)) endWatch();
  showOpenJobRow();
}

const HANDLERS = {
  queued: (data) => { $("job-meta").textContent = `waiting for the ${data.device}: position ${data.position} in the queue`; },
  restarted: (data) => {
    Object.assign(watch, { total: 0, iteration: 0, percent: 0, curve: newCurve() }); // training starts over: so does its chart
    clearProgress();
    $("job-meta").textContent = `restarted (${data.reason}); attempt ${data.attempts}`;
  },
  started: (data) => {
    watch.total = data.n_estimators;
    const valid = data.n_valid_rows ? ` (+${data.n_valid_rows} validation)` : "";
    const attempt = data.attempt > 1 ? ` · attempt ${data.attempt}` : "";
    $("job-meta").textContent = `${data.model_type} · ${data.objective} · ${data.device} · ${data.n_rows} rows${valid} × ${data.n_features} features${attempt}`;
    scheduleChart();
  },
  progress: (data) => {
    if (!(data.iteration > watch.iteration)) return; // never the same round twice
    // Every round since the previous progress event (an older server sends only the event's own round).
    const rounds = data.history ?? { first: data.iteration, metrics: mapValues(data.metrics, (value) => [value]) };
    addRounds(watch.curve, rounds.first, rounds.metrics);
    showProgress(data);
    scheduleChart();
  },
  complete: (data) => {
    if (data.curve) { // every round trained: the chart ends exactly as the model was trained
      watch.curve = newCurve();
      addRounds(watch.curve, data.curve.first, data.curve.metrics);
    }
    showSucceeded(data);
    const figures = { ...data.metrics, "best round": data.best_iteration, "rounds trained": data.iterations, "training time": duration(data.training_time_s) };
    $("final-metrics").replaceChildren(...Object.entries(figures).flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, formatNumber(value))]));
    for (const format of ["joblib", "native"]) $(`download-${format}`).href = `/artifacts/${data.artifact_id}?format=${format}`;
    $("result").hidden = false;
    scheduleChart();
  },
  error: (data) => showJobError(`${data.code}: ${data.message}`),
  cancelled: (data) => { $("job-meta").textContent += ` · cancelled after round ${data.iteration}`; },
};

// After the terminal event: nothing more to wait for, and the jobs list has news.
function endWatch() {
  watch.finished = true;
  $("job-eta").textContent = "–";
  closeSource(); // or EventSource would reconnect forever once the server ends the stream
  refreshJobs();
}

function setStatus(status) {
  const cancelling = watch.cancelling && LIVE.has(status);
  watch.status = status;
  $("job-status").textContent = cancelling ? "cancelling…" : status; // until the `cancelled` event
  $("job-status").dataset.status = status;
  $("cancel").disabled = cancelling || !LIVE.has(status);
}

function setConnection(text) {
  $("connection").textContent = text;
}

function showProgress(progress) {
  Object.assign(watch, { total: progress.total, iteration: progress.iteration, percent: progress.percent });
  showPercent(progress.percent);
  $("job-round").textContent = `${progress.iteration} of ${progress.total}`;
  $("job-elapsed").textContent = duration(progress.elapsed_s);
  $("job-eta").textContent = duration(progress.eta_s);
}

// A job that succeeded is done, even when early stopping ended it before its last planned round.
function showSucceeded(complete) {
  const total = Math.max(watch.total, complete.iterations);
  Object.assign(watch, { total, iteration: complete.iterations, percent: 100, trained: complete.iterations, best: complete.best_iteration });
  showPercent(100);
  $("job-round").textContent = roundsText(complete.iterations, total, complete.best_iteration);
  $("job-elapsed").textContent = duration(complete.training_time_s);
}

function showPercent(percent) {
  $("job-progress").value = percent;
  $("job-percent").textContent = percentText(percent);
}

function clearProgress() {
  showPercent(0);
  for (const id of ["job-round", "job-elapsed", "job-eta"]) $(id).textContent = "–";
  scheduleChart();
}

// "142 of 2000 (stopped early, best 137)": the rounds trained, and the one the model predicts with.
function roundsText(iterations, total, best) {
  const notes = [iterations < total ? "stopped early" : "", best < iterations ? `best ${best}` : ""].filter(Boolean);
  return notes.length ? `${iterations} of ${total} (${notes.join(", ")})` : `${iterations} of ${total}`;
}

function showJobError(message) {
  $("job-error").textContent = message;
}

async function cancelJob() {
  const jobId = watch.jobId;
  $("cancel").disabled = true;
  try {
    await request(`/jobs/${jobId}/cancel`, { method: "POST" });
    if (watch.jobId !== jobId) return;
    watch.cancelling = true;
    setStatus(watch.status);
  } catch (error) {
    if (watch.jobId === jobId) showJobError(error.message);
  }
}

// ---- the curve: every round's metrics, one column per metric ----

function newCurve() {
  return { iterations: [], metrics: {} };
}

// Append the rounds first, first + 1, ... of `metrics` (a name → one value per round) that come after
// the curve's last round: a batch replayed after a reconnect, or overlapping one already seen, adds
// no round twice.
function addRounds(curve, first, metrics) {
  const count = Math.max(0, ...Object.values(metrics).map((values) => values.length));
  const last = curve.iterations.at(-1) ?? 0;
  for (const name of Object.keys(metrics)) curve.metrics[name] ??= curve.iterations.map(() => null); // new from here on
  for (let i = Math.max(0, last + 1 - first); i < count; i++) {
    curve.iterations.push(first + i);
    for (const [name, values] of Object.entries(curve.metrics)) values.push(metrics[name]?.[i] ?? null);
  }
}

// ---- the chart: metrics per round, one curve per metric, and the best round ----

const SVG = "http://www.w3.org/2000/svg";
const BOX = { width: 640, height: 300, left: 64, right: 16, top: 30, bottom: 40 };
const PLOT = { width: BOX.width - BOX.left - BOX.right, height: BOX.height - BOX.top - BOX.bottom };
const COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2"];
const MAX_POINTS_PER_COLUMN = 4;
let chartPending = false;

function scheduleChart() {
  if (chartPending) return;
  chartPending = true;
  requestAnimationFrame(() => { chartPending = false; drawChart(); });
}

function drawChart() {
  const svg = $("chart");
  svg.querySelectorAll(":scope > :not(title)").forEach((node) => node.remove());
  const curve = watch.curve;
  const names = Object.keys(curve.metrics).sort(); // train_* before valid_*
  const values = names.flatMap((name) => curve.metrics[name]).filter(Number.isFinite);
  if (!values.length) {
    const text = watch.jobId ? "Waiting for the first round…" : "Start or open a job to see its metrics.";
    svgEl(svg, "text", { x: BOX.width / 2, y: BOX.height / 2, class: "empty", "text-anchor": "middle" }, text);
    return;
  }
  // The rounds planned; once early stopping has ended the job, the rounds it trained.
  const rounds = watch.trained ?? Math.max(watch.total, curve.iterations.at(-1), 1);
  const [lo, hi] = values.reduce(([min, max], value) => [Math.min(min, value), Math.max(max, value)], [Infinity, -Infinity]);
  const scale = chartScale(niceTicks(0, rounds), niceTicks(lo, hi));
  drawAxes(svg, scale);
  names.forEach((name, index) => drawSeries(svg, scale, curve, name, index));
  if (watch.best !== null && watch.best < watch.trained) drawBestRound(svg, scale, curve, names, watch.best);
}

function chartScale(xTicks, yTicks) {
  const [x0, x1, y0, y1] = [xTicks[0], xTicks.at(-1), yTicks[0], yTicks.at(-1)];
  return {
    xTicks, yTicks,
    x: (value) => BOX.left + ((value - x0) / (x1 - x0)) * PLOT.width,
    y: (value) => BOX.top + (1 - (value - y0) / (y1 - y0)) * PLOT.height,
  };
}

function drawAxes(svg, { xTicks, yTicks, x, y }) {
  const bottom = BOX.top + PLOT.height;
  for (const tick of yTicks) {
    svgEl(svg, "line", { x1: BOX.left, x2: BOX.left + PLOT.width, y1: y(tick), y2: y(tick), class: "grid" });
    svgEl(svg, "text", { x: BOX.left - 6, y: y(tick) + 4, "text-anchor": "end", class: "tick" }, formatNumber(tick));
  }
  for (const tick of xTicks) {
    svgEl(svg, "line", { x1: x(tick), x2: x(tick), y1: bottom, y2: bottom + 5, class: "axis" });
    svgEl(svg, "text", { x: x(tick), y: bottom + 18, "text-anchor": "middle", class: "tick" }, formatNumber(tick));
  }
  svgEl(svg, "line", { x1: BOX.left, x2: BOX.left + PLOT.width, y1: bottom, y2: bottom, class: "axis" });
  svgEl(svg, "line", { x1: BOX.left, x2: BOX.left, y1: BOX.top, y2: bottom, class: "axis" });
  svgEl(svg, "text", { x: BOX.left + PLOT.width / 2, y: BOX.height - 4, "text-anchor": "middle", class: "label" }, "round");
}

// Every round with a value; `data-rounds` says how many, `data-points` how many points were drawn.
function drawSeries(svg, { x, y }, curve, name, index) {
  const style = { class: "series", stroke: COLORS[index % COLORS.length], "stroke-dasharray": name.startsWith("valid") ? "6 3" : "none" };
  const values = curve.metrics[name];
  const commands = [];
  let pen = "M";
  for (const j of drawnRounds(curve.iterations, values, x)) {
    if (j === null) { pen = "M"; continue; } // a gap where the metric is null
    commands.push(`${pen}${x(curve.iterations[j]).toFixed(1)},${y(values[j]).toFixed(1)}`);
    pen = "L";
  }
  const rounds = values.filter(Number.isFinite).length;
  svgEl(svg, "path", { d: commands.join(""), "data-name": name, "data-rounds": rounds, "data-points": commands.length, ...style });
  const left = BOX.left + index * 170;
  svgEl(svg, "line", { x1: left, x2: left + 24, y1: 14, y2: 14, ...style });
  svgEl(svg, "text", { x: left + 30, y: 18, class: "legend" }, name);
}

// The rounds to draw, as indices (null for a gap): all of them while they are a few per pixel column;
// beyond that, each column's first, lowest, highest and last, which draws the same line. Without
// this, a 100,000-round job would rebuild paths of 100,000 points ten times a second.
function drawnRounds(iterations, values, x) {
  const drawn = [];
  let column = null;
  let bucket = [];
  const flush = () => {
    if (bucket.length > MAX_POINTS_PER_COLUMN) {
      const low = bucket.reduce((best, j) => (values[j] < values[best] ? j : best));
      const high = bucket.reduce((best, j) => (values[j] > values[best] ? j : best));
      bucket = [...new Set([bucket[0], low, high, bucket.at(-1)])].sort((a, b) => a - b);
    }
    drawn.push(...bucket);
    bucket = [];
  };
  iterations.forEach((iteration, j) => {
    if (!Number.isFinite(values[j])) {
      flush();
      drawn.push(null);
      column = null;
      return;
    }
    const at = Math.floor(x(iteration));
    if (at !== column) flush();
    column = at;
    bucket.push(j);
  });
  flush();
  return drawn;
}

// Early stopping trained past the round the model predicts with: a line and a dot on each curve there.
function drawBestRound(svg, { x, y }, curve, names, best) {
  const at = x(best);
  const marker = svgEl(svg, "g", { class: "best-round", "data-round": best });
  svgEl(marker, "line", { x1: at, x2: at, y1: BOX.top, y2: BOX.top + PLOT.height });
  const index = curve.iterations.indexOf(best);
  names.forEach((name, n) => {
    const value = curve.metrics[name][index];
    if (Number.isFinite(value)) svgEl(marker, "circle", { cx: at, cy: y(value), r: 3.5, fill: COLORS[n % COLORS.length], "data-name": name });
  });
  const right = at > BOX.left + PLOT.width * 0.7; // keep the label inside the plot
  svgEl(marker, "text", { x: right ? at - 6 : at + 6, y: BOX.top + 12, "text-anchor": right ? "end" : "start" }, `best round ${best}`);
}

// About `count` round steps (1, 2, 2.5 or 5 times a power of ten) covering lo..hi.
function niceTicks(lo, hi, count = 5) {
  if (hi - lo < 1e-12 * Math.max(1, Math.abs(hi))) [lo, hi] = [lo - (Math.abs(lo) / 10 || 1), hi + (Math.abs(hi) / 10 || 1)];
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((factor) => factor * magnitude).find((candidate) => candidate >= raw);
  const first = Math.floor(lo / step);
  const last = Math.ceil(hi / step);
  return Array.from({ length: last - first + 1 }, (_, i) => Number(((first + i) * step).toPrecision(12)));
}

// ---- the jobs list: polled, faster while a listed job waits or trains; the open job's row follows its stream ----

let shownJobs = "";
let jobsAsked = 0; // the latest request: an older answer arriving late is not shown
let jobsTimer = 0;

async function refreshJobs() {
  const asked = ++jobsAsked;
  clearTimeout(jobsTimer);
  let jobs;
  try {
    jobs = (await request("/jobs?limit=20")).jobs;
  } catch {
    jobs = null; // keep the list shown; the next refresh tries again
  }
  if (asked !== jobsAsked) return;
  if (document.visibilityState === "visible") {
    const live = jobs?.some((job) => LIVE.has(job.status)) ?? true;
    jobsTimer = setTimeout(refreshJobs, live ? JOBS_REFRESH_LIVE_MS : JOBS_REFRESH_IDLE_MS);
  }
  if (jobs) showJobs(jobs);
}

function showJobs(jobs) {
  const fingerprint = JSON.stringify(jobs.map((job) => [job.job_id, job.status, job.progress]));
  if (fingerprint === shownJobs) return; // unchanged: keep the rows, and the focus in them
  shownJobs = fingerprint;
  $("jobs-body").replaceChildren(...jobs.map(jobRow));
  markOpenJob();
  showOpenJobRow();
}

function jobRow(job) {
  const open = el("button", { type: "button", class: "link", "aria-label": `Open job ${job.job_id}` }, job.job_id.slice(0, 8));
  open.addEventListener("click", () => openJob(job.job_id));
  const cells = [open, el("span", { class: "status" }), job.model_type, job.objective, "", new Date(job.created_at).toLocaleString()];
  const row = el("tr", { "data-job": job.job_id }, ...cells.map((cell) => el("td", {}, cell)));
  showJobRowProgress(row, { status: job.status, ...job.progress });
  return row;
}

function showJobRowProgress(row, { status, percent, iteration, total }) {
  const badge = row.querySelector(".status");
  badge.textContent = badge.dataset.status = status;
  row.cells[JOB_PROGRESS_CELL].textContent = status === "succeeded"
    ? `${percentText(100)}${iteration < total ? ` (stopped early: ${iteration} of ${total} rounds)` : ""}`
    : percentText(percent ?? 0);
}

// The open job's row shows what its panel shows as each event arrives, not the last poll's figures.
function showOpenJobRow() {
  const row = [...$("jobs-body").rows].find((candidate) => candidate.dataset.job === watch.jobId);
  if (!row || watch.lastEventId === 0) return; // nothing heard from the stream yet
  if (FINISHED.has(row.querySelector(".status").dataset.status) && !watch.finished) return; // replaying a finished job
  showJobRowProgress(row, watch);
}

function markOpenJob() {
  for (const row of $("jobs-body").rows) row.toggleAttribute("aria-current", row.dataset.job === watch.jobId);
}

// ---- small helpers ----

// fetch, answering the JSON body; an Error with the server's message, `status` and `field` otherwise.
async function request(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => null);
  if (response.status === 401 && url !== "/session") location.reload(); // the session ended: sign in again
  if (!response.ok) {
    const error = new Error(body?.error?.message ?? `${response.status} ${response.statusText}`);
    throw Object.assign(error, { status: response.status, field: body?.error?.field });
  }
  return body;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function svgEl(parent, tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  parent.append(node);
  return node;
}

function mapValues(object, map) {
  return Object.fromEntries(Object.entries(object).map(([name, value]) => [name, map(value)]));
}

function percentText(percent) {
  return `${percent.toFixed(1)}%`;
}

function formatNumber(value) {
  if (typeof value !== "number") return String(value ?? "–");
  if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

// ---- start ----

window.__boostream = {
  dropConnection,
  // `rounds` counts the chart's rounds; with `firstRound` 1 and `lastRound` equal to it, none is missing or twice.
  state: () => ({
    jobId: watch.jobId, status: watch.status, lastEventId: watch.lastEventId, connections: watch.connections,
    open: Boolean(watch.source), rounds: watch.curve.iterations.length, firstRound: watch.curve.iterations[0] ?? null,
    lastRound: watch.curve.iterations.at(-1) ?? null,
  }),
  curve: () => structuredClone(watch.curve),
};

async function start() {
  $("job-form").addEventListener("submit", startJob);
  $("model_type").addEventListener("change", renderBackend);
  $("cancel").addEventListener("click", cancelJob);
  $("refresh-jobs").addEventListener("click", refreshJobs);
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && refreshJobs());
  $("sign-out").addEventListener("click", signOut);
  await signIn();
  await loadModels();
  await setupTables();
  drawChart();
  await refreshJobs();
  if (location.hash.length > 1) openJob(decodeURIComponent(location.hash.slice(1)));
  document.body.dataset.ready = "true"; // for tests: the form is filled in
}

start();
