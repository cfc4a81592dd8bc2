// The boostream dashboard: start a training job or a hyperparameter search, watch it live over
// EventSource, open recent jobs. One module with no framework and no build step; everything it loads
// comes from the server itself.

const DEMOS = [
  { file: "diabetes.csv", label: "Demo: diabetes (regression)", objective: "regression" },
  { file: "breast_cancer.csv", label: "Demo: breast cancer (binary)", objective: "binary" },
  { file: "iris.csv", label: "Demo: iris (multiclass)", objective: "multiclass" },
];
const OWN_FILE = "";
const TABLE_TYPES = { csv: "text/csv", parquet: "application/vnd.apache.parquet", pq: "application/vnd.apache.parquet" };
// The hyperparameters the form offers, where the backend has them; the others keep their defaults.
const MAIN_PARAMS = ["n_estimators", "learning_rate", "num_leaves", "max_depth", "early_stopping_rounds"];
// What the search editor offers, where the backend has the parameter: its range, and whether it is
// searched unless the user says otherwise. The ranges are the usual ones for a table of a few thousand rows.
const SEARCHABLE = [
  { name: "learning_rate", low: 0.01, high: 0.3, log: true, searched: true },
  { name: "num_leaves", low: 8, high: 128, log: true, searched: true },
  { name: "min_data_in_leaf", low: 5, high: 100, log: true, searched: false },
  { name: "max_depth", low: 3, high: 12, log: false, searched: false },
  { name: "feature_fraction", low: 0.5, high: 1, log: false, searched: false },
  { name: "lambda_l2", low: 0.001, high: 10, log: true, searched: false },
];
// A dataset column's Arrow type that holds text (`GET /datasets/{id}`'s `columns`).
const TEXT_TYPES = new Set(["string", "large_string", "string_view"]);
// A job's refused fields that name the table (a search's are `dataset.x`): the table input is marked.
const TABLE_FIELDS = new Set(["file", "dataset_id", "features", "categorical"]);
const STATUS_AFTER = {
  queued: "queued", restarted: "queued", started: "running", progress: "running",
  complete: "succeeded", error: "failed", cancelled: "cancelled",
};
// A search's status after each of its events (`boostream/tuning.py`).
const TUNE_STATUS_AFTER = {
  started: "running", restarted: "running", trial_waiting: "running", trial_started: "running",
  trial_restarted: "running", progress: "running", trial_pruned: "running", trial_complete: "running",
  trial_failed: "running", best: "running", complete: "succeeded", error: "failed", cancelled: "cancelled",
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
  $("start").disabled = $("search-start").disabled = !select.value;
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
  renderSearchSpace(model.params.properties);
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

// One row per searchable parameter the backend has: ticked to search it, its low and high, log scale.
function renderSearchSpace(schemas) {
  const body = $("search-params");
  const typed = Object.fromEntries([...body.querySelectorAll("input")].map((input) => [input.id, input.type === "checkbox" ? input.checked : input.value]));
  body.replaceChildren();
  for (const offered of SEARCHABLE.filter((candidate) => candidate.name in schemas)) {
    const { name } = offered;
    const step = schemas[name].type === "integer" ? 1 : "any";
    const searched = el("input", { id: `search-${name}`, type: "checkbox" });
    searched.checked = typed[searched.id] ?? offered.searched;
    const low = el("input", { id: `search-${name}-low`, type: "number", step, "aria-label": `${name}: low` });
    const high = el("input", { id: `search-${name}-high`, type: "number", step, "aria-label": `${name}: high` });
    low.value = typed[low.id] ?? offered.low;
    high.value = typed[high.id] ?? offered.high;
    const log = el("input", { id: `search-${name}-log`, type: "checkbox", "aria-label": `${name}: on a log scale` });
    log.checked = typed[log.id] ?? offered.log;
    const label = el("label", { for: searched.id }, name);
    body.append(el("tr", { "data-param": name }, el("th", { scope: "row" }, searched, label), ...[low, high, log].map((input) => el("td", {}, input))));
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

// The table to send: a bundled demo or the picked file, with its media type and name; null when none is picked.
async function chosenTable() {
  const demo = DEMOS.find((candidate) => candidate.file === $("table").value);
  if (demo) {
    if (!demoBlobs.has(demo.file)) {
      const response = await fetch(`/ui/demo/${demo.file}`);
      if (!response.ok) throw new Error(`Cannot load the demo table ${demo.file}: ${response.status}`);
      demoBlobs.set(demo.file, await response.blob());
    }
    return { blob: demoBlobs.get(demo.file), type: TABLE_TYPES.csv, name: demo.file };
  }
  const file = $("file").files[0];
  if (!file) return null;
  const type = TABLE_TYPES[file.name.split(".").pop().toLowerCase()];
  if (!type) throw new Error(`${file.name} is neither .csv nor .parquet`);
  return { blob: file, type, name: file.name };
}

// The names in a CSV's first line; unnamed columns, such as an index, left out.
function csvHeader(text) {
  return (csvRows(text, 1)[0] ?? []).filter((name) => name.trim() !== "");
}

// A CSV's rows of fields, at most `limit` of them: quoted fields may hold commas, line breaks and
// doubled quotes; blank lines are skipped.
function csvRows(text, limit = Infinity) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  const endRow = () => {
    row.push(field);
    if (row.length > 1 || row[0] !== "") rows.push(row);
    row = [];
    field = "";
  };
  for (let i = text.charCodeAt(0) === 0xfeff ? 1 : 0; i < text.length && rows.length < limit; i++) {
    const c = text[i];
    if (quoted && c === '"' && text[i + 1] === '"') { field += '"'; i++; }
    else if (c === '"') quoted = !quoted;
    else if (!quoted && c === ",") { row.push(field); field = ""; }
    else if (!quoted && (c === "\n" || c === "\r")) {
      if (c === "\r" && text[i + 1] === "\n") i++;
      endRow();
    } else field += c;
  }
  if (rows.length < limit && (field !== "" || row.length)) endRow();
  return rows;
}

// A job: the form's table, uploaded as a dataset (as a search's is, so that a CSV's text columns are
// named as categories), trained on with the form's target, backend, objective, validation share and
// hyperparameters in the query string and no body. The dataset is deleted once the job is created
// (it keeps its own copy of the table) or was refused.
async function startJob(event) {
  event.preventDefault();
  showFormError("");
  const start = $("start");
  start.disabled = true;
  let columns;
  try {
    const table = await chosenTable();
    if (!table) throw fieldError("Pick a CSV or Parquet file first.", "file");
    const target = $("target").value.trim();
    if (!target) throw fieldError("Name the target column.", "target");
    const dataset = await uploadDataset(table);
    columns = dataset.columns.map(({ name }) => name);
    const fields = new URLSearchParams({ ...datasetFields(dataset, target), model_type: $("model_type").value, objective: $("objective").value });
    if ($("valid_fraction").value !== "") fields.set("valid_fraction", $("valid_fraction").value);
    for (const input of $("params").querySelectorAll("input")) if (input.value !== "") fields.set(input.name, input.value);
    let job;
    try {
      job = await request(`/jobs?${fields}`, { method: "POST" });
    } finally {
      await deleteDataset(dataset.dataset_id);
    }
    openJob(job.job_id);
    refreshJobs();
  } catch (error) {
    showFormError(error.message, error.field, columns);
  } finally {
    start.disabled = false;
  }
}

// A search: the form's table, uploaded once as a dataset, with its target, backend, objective,
// validation share and fixed hyperparameters (but those searched), and the search editor's ranges
// and settings. The dataset is deleted once the search has started (it keeps its own copy of the
// table) or was refused.
async function startSearch() {
  showFormError("");
  const button = $("search-start");
  button.disabled = true;
  let columns;
  try {
    const target = $("target").value.trim();
    if (!target) throw fieldError("Name the target column.", "target");
    const space = searchSpace();
    const table = await chosenTable();
    if (!table) throw fieldError("Pick a CSV or Parquet file first.", "file");
    const dataset = await uploadDataset(table);
    columns = dataset.columns.map(({ name }) => name);
    const body = {
      dataset: datasetFields(dataset, target),
      model_type: $("model_type").value,
      objective: $("objective").value,
      valid_fraction: numberOrNothing("valid_fraction"),
      params: fixedParams(space),
      search: space,
      n_trials: numberOrNothing("n_trials"),
      parallel: numberOrNothing("parallel"),
      pruner: $("pruner").value,
      sampler: $("sampler").value,
      seed: numberOrNothing("seed"),
    };
    let created;
    try {
      created = await request("/tunes", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    } finally {
      await deleteDataset(dataset.dataset_id);
    }
    openTune(created.tune_id);
    refreshJobs();
  } catch (error) {
    showFormError(error.message, error.field, columns);
  } finally {
    button.disabled = false;
  }
}

// The chosen table, uploaded once as a dataset (`POST /datasets`): its id, format and columns' names and types.
function uploadDataset(table) {
  return request(`/datasets?${new URLSearchParams({ name: table.name })}`, {
    method: "POST", headers: { "content-type": table.type }, body: table.blob,
  });
}

// What a job or a search names of its dataset, in a table request's fields:
// the target; every other column a feature, but for unnamed ones (an index), left out as the target
// list leaves them out; and, of a CSV, whose text columns are categories only where named, the
// columns the server read as text. A Parquet file's string columns are categories unnamed.
function datasetFields(dataset, target) {
  const fields = { dataset_id: dataset.dataset_id, target };
  const others = dataset.columns.filter(({ name }) => name !== target);
  const named = others.filter(({ name }) => name.trim() !== "");
  if (named.length < others.length) fields.features = named.map(({ name }) => name).join(",");
  const text = named.filter(({ type }) => TEXT_TYPES.has(type)).map(({ name }) => name);
  if (dataset.format === "csv" && text.length) fields.categorical = text.join(",");
  return fields;
}

// A dataset the page uploaded, once it is of no more use; one left behind (a lost connection)
// expires on the server by itself.
async function deleteDataset(datasetId) {
  await fetch(`/datasets/${encodeURIComponent(datasetId)}`, { method: "DELETE" }).catch(() => {});
}

// The ticked rows of the search editor: {name: {low, high, log}}.
function searchSpace() {
  const space = {};
  for (const row of $("search-params").rows) {
    const name = row.dataset.param;
    if (!$(`search-${name}`).checked) continue;
    const [low, high] = ["low", "high"].map((end) => numberOrNothing(`search-${name}-${end}`));
    if (low === undefined || high === undefined) throw fieldError("give the range's low and high", `search.${name}.${low === undefined ? "low" : "high"}`);
    space[name] = { low, high, log: $(`search-${name}-log`).checked };
  }
  if (!Object.keys(space).length) throw fieldError("Tick at least one hyperparameter to search.", "search");
  return space;
}

// The hyperparameters filled in, as numbers, but those searched (the server refuses a parameter both fixed and searched).
function fixedParams(space) {
  const params = {};
  for (const input of $("params").querySelectorAll("input")) if (input.value !== "" && !(input.name in space)) params[input.name] = Number(input.value);
  return params;
}

// An input's number; nothing (left out of the request, for the server's default) when it is empty.
function numberOrNothing(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function fieldError(message, field) {
  return Object.assign(new Error(message), { field });
}

// The form's error; the input its `field` names marked. `columns`: the table's, where a refusal
// may name one of them (by default those of the CSV header read for the target list).
function showFormError(message, field, columns = [...$("columns").options].map((option) => option.value)) {
  $("form-error").textContent = message && field ? `${field}: ${message}` : message;
  document.querySelectorAll("[aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
  const input = field && fieldInput(field, columns);
  if (input) input.setAttribute("aria-invalid", "true");
}

// The input a refusal's field names: `target` (a search's `dataset.target`, or the target's own
// column) the target; `file`, a job's `dataset_id`, `features` or `categorical`, a search's other
// `dataset.x` and any other column of the table the table; `search.x.low` (or `search.x`) a row of
// the search editor; else a form input by its id, `params.x` or `x` a hyperparameter.
function fieldInput(field, columns) {
  if (field === "target" || field === "dataset.target" || field === $("target").value.trim()) return $("target");
  if (TABLE_FIELDS.has(field) || field.startsWith("dataset.") || columns.includes(field)) return $("file-row").hidden ? $("table") : $("file");
  const searched = /^search\.([^.]+)(?:\.(low|high|log))?$/.exec(field);
  if (searched) return $(`search-${searched[1]}-${searched[2] ?? "low"}`);
  if (field === "search") return $("search-params").querySelector("input");
  return $(field) || $(`param-${field.replace(/^params\./, "")}`);
}

// ---- following a stream of events, a job's or a search's, resumed where it broke off ----
// A view (`watch`, `search`) holds its `path` (/jobs/ID or /tunes/ID), its stream (`source`,
// `connections`, `lastEventId`, `finished`), the event `kinds` it takes and `receive(kind, data)`,
// `gone()` for a job or search that no longer exists, and the `ids` of its status badge, cancel
// button and connection note.

function connect(view, after) {
  const source = new EventSource(`${view.path}/events?after=${after}`);
  view.source = source;
  view.connections++;
  for (const kind of view.kinds) {
    source.addEventListener(kind, (message) => {
      const id = Number(message.lastEventId);
      if (source !== view.source || !(id > view.lastEventId)) return; // already seen, or from a stream since closed
      view.lastEventId = id;
      view.receive(kind, JSON.parse(message.data));
    });
  }
  source.onopen = () => setConnection(view, "live");
  source.onerror = () => connectionFailed(view, source);
}

function closeSource(view) {
  view.source?.close();
  view.source = null;
  setConnection(view, "");
}

// A test hook, and what a dropped connection looks like: close the stream and resume after `after`
// (by default the last event seen; an earlier id replays events, which must be ignored).
function dropConnection(view, after = view.lastEventId) {
  closeSource(view);
  connect(view, after);
}

function connectionFailed(view, source) {
  if (source !== view.source) return;
  if (source.readyState === EventSource.CONNECTING) {
    setConnection(view, "reconnecting…"); // the browser retries by itself, sending Last-Event-ID
    return;
  }
  // Closed for good (an HTTP error): try again from the last event seen, unless it is gone.
  const path = view.path;
  view.source = null;
  setConnection(view, "disconnected");
  request(path).then(() => true, (error) => error.status !== 404).then((retry) => {
    if (!retry) view.gone();
    else setTimeout(() => view.path === path && !view.source && !view.finished && connect(view, view.lastEventId), RECONNECT_MS);
  });
}

function setConnection(view, text) {
  $(view.ids.connection).textContent = text;
}

// The status badge, and the cancel button: enabled while there is something to cancel.
function showStatus(view, status) {
  const cancelling = view.cancelling && LIVE.has(status);
  view.status = status;
  setText(view.ids.status, cancelling ? "cancelling…" : status); // until the `cancelled` event
  $(view.ids.status).dataset.status = status;
  $(view.ids.cancel).disabled = cancelling || !LIVE.has(status);
}

// POST its cancel; the status reads "cancelling…" until the `cancelled` event comes.
async function requestCancel(view, showError) {
  const path = view.path;
  $(view.ids.cancel).disabled = true;
  try {
    await request(`${path}/cancel`, { method: "POST" });
    if (view.path !== path) return;
    view.cancelling = true;
    showStatus(view, view.status);
  } catch (error) {
    if (view.path === path) showError(error.message);
  }
}

// ---- watching a job ----

const watch = {
  path: null, jobId: null, source: null, connections: 0, kinds: Object.keys(STATUS_AFTER),
  ids: { status: "job-status", cancel: "cancel", connection: "connection" },
  receive: receiveJobEvent, gone: () => showJobError("No such job (deleted or expired)."),
  ...jobState(),
};

// What the panel knows of the open job; all of it starts over when another job is opened.
function jobState() {
  return {
    lastEventId: 0, status: "idle", finished: false, cancelling: false,
    total: 0, iteration: 0, percent: 0, trained: null, best: null, curve: newCurve(),
  };
}

function openJob(jobId) {
  closeSource(watch);
  Object.assign(watch, { jobId, path: `/jobs/${encodeURIComponent(jobId)}`, ...jobState() });
  history.replaceState(null, "", `#${jobId}`);
  $("job-id").textContent = jobId;
  $("job-meta").textContent = "";
  $("job-error").textContent = "";
  $("result").hidden = true;
  clearProgress();
  setStatus("…");
  markOpenJob();
  request(watch.path).then((job) => {
    if (watch.jobId !== jobId) return;
    if (watch.lastEventId === 0) setStatus(job.status);
    if (!$("job-meta").textContent) $("job-meta").textContent = `${job.model_type} · ${job.objective}`;
  }, (error) => error.status === 404 && watch.gone());
  connect(watch, 0);
}

function receiveJobEvent(kind, data) {
  setStatus(STATUS_AFTER[kind]);
  HANDLERS[kind](data);
  if (TERMINAL.has(kind)) endWatch();
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
  closeSource(watch); // or EventSource would reconnect forever once the server ends the stream
  refreshJobs();
}

function setStatus(status) {
  showStatus(watch, status);
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

function cancelJob() {
  return requestCancel(watch, showJobError);
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

// `draw`, at the next animation frame: once, however often it was asked for before then.
function onNextFrame(draw) {
  let pending = false;
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  };
}

const scheduleChart = onNextFrame(drawChart);

function drawChart() {
  const svg = $("chart");
  const curve = watch.curve;
  const names = Object.keys(curve.metrics).sort(); // train_* before valid_*
  const values = names.flatMap((name) => curve.metrics[name]).filter(Number.isFinite);
  if (!startChart(svg, values, watch.jobId ? "Waiting for the first round…" : "Start or open a job to see its metrics.")) return;
  // The rounds planned; once early stopping has ended the job, the rounds it trained.
  const rounds = watch.trained ?? Math.max(watch.total, curve.iterations.at(-1), 1);
  const scale = chartScale(niceTicks(0, rounds), niceTicks(...extent(values)));
  drawAxes(svg, scale);
  names.forEach((name, index) => drawSeries(svg, scale, curve, name, index));
  if (watch.best !== null && watch.best < watch.trained) drawBestRound(svg, scale, curve, names, watch.best);
}

// Empties the chart; false, with `empty` written in it, when there is no value to draw.
function startChart(svg, values, empty) {
  svg.querySelectorAll(":scope > :not(title)").forEach((node) => node.remove());
  if (values.length) return true;
  svgEl(svg, "text", { x: BOX.width / 2, y: BOX.height / 2, class: "empty", "text-anchor": "middle" }, empty);
  return false;
}

function extent(values) {
  return values.reduce(([min, max], value) => [Math.min(min, value), Math.max(max, value)], [Infinity, -Infinity]);
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
function drawSeries(svg, scale, curve, name, index) {
  const style = { class: "series", stroke: COLORS[index % COLORS.length], "stroke-dasharray": name.startsWith("valid") ? "6 3" : "none" };
  const values = curve.metrics[name];
  const { d, points } = seriesPath(scale, curve.iterations, values);
  const rounds = values.filter(Number.isFinite).length;
  svgEl(svg, "path", { d, "data-name": name, "data-rounds": rounds, "data-points": points, ...style });
  const left = BOX.left + index * 170;
  svgEl(svg, "line", { x1: left, x2: left + 24, y1: 14, y2: 14, ...style });
  svgEl(svg, "text", { x: left + 30, y: 18, class: "legend" }, name);
}

// A path's `d` through the rounds' values (a gap where a value is null), and how many points it has.
function seriesPath({ x, y }, iterations, values) {
  const commands = [];
  let pen = "M";
  for (const j of drawnRounds(iterations, values, x)) {
    if (j === null) { pen = "M"; continue; }
    commands.push(`${pen}${x(iterations[j]).toFixed(1)},${y(values[j]).toFixed(1)}`);
    pen = "L";
  }
  return { d: commands.join(""), points: commands.length };
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

// ---- watching a search: every trial's curve on one chart, the leaderboard, the best so far ----

const search = {
  path: null, tuneId: null, source: null, connections: 0, kinds: Object.keys(TUNE_STATUS_AFTER),
  ids: { status: "tune-status", cancel: "tune-cancel", connection: "tune-connection" },
  receive: receiveTuneEvent, gone: () => showTuneError("No such search (deleted or expired)."),
  ...searchState(),
};

// What the panel knows of the open search; all of it starts over when another search is opened.
// `trials` holds each trial as the server's leaderboard has it (trial, params, job_id, state, value,
// best_iteration, iterations, artifact_id, pruned_at), and its curve of the search's metric.
function searchState() {
  return {
    lastEventId: 0, status: "idle", finished: false, cancelling: false,
    nTrials: 0, metric: null, plannedRounds: 0, trials: new Map(), best: null, shownRows: "",
  };
}

function openTune(tuneId) {
  closeSource(search);
  Object.assign(search, { tuneId, path: `/tunes/${encodeURIComponent(tuneId)}`, ...searchState() });
  history.replaceState(null, "", `#tune/${tuneId}`);
  $("tune").hidden = false;
  $("tune-id").textContent = tuneId;
  for (const id of ["tune-meta", "tune-error", "tune-importances"]) $(id).textContent = "";
  $("tune-download").hidden = $("tune-importances").hidden = true;
  showStatus(search, "…");
  request(search.path).then((tune) => {
    if (search.tuneId !== tuneId || search.lastEventId > 0) return; // its events say more
    Object.assign(search, { nTrials: tune.n_trials, metric: tune.metric });
    showStatus(search, tune.status);
    showTune();
  }, (error) => search.tuneId === tuneId && error.status === 404 && search.gone());
  showTune();
  connect(search, 0);
}

function receiveTuneEvent(kind, data) {
  showStatus(search, TUNE_STATUS_AFTER[kind]);
  TUNE_HANDLERS[kind](data);
  if (TERMINAL.has(kind)) {
    search.finished = true;
    closeSource(search); // or EventSource would reconnect once the server ends the stream
    showTune(); // at once: the search's end is shown whole, with its status
    refreshJobs();
  } else {
    scheduleTune();
  }
}

const TUNE_HANDLERS = {
  started: (data) => {
    Object.assign(search, { nTrials: data.n_trials, metric: data.metric, plannedRounds: data.params?.n_estimators ?? 0 });
    const searched = Object.keys(data.space).join(", ");
    $("tune-meta").textContent = `${data.model_type} · ${data.objective} · ${searched} · ${data.sampler} sampler, `
      + `${data.pruner} pruner · ${data.parallel} at once · minimising ${data.metric}`;
  },
  // The server stopped while the search ran, and it goes on.
  restarted: (data) => { $("tune-meta").textContent += ` · restarted (${data.reason})`; },
  // No room for the trial's job yet (a full queue, the key's quota): it asks again until there is.
  trial_waiting: (data) => Object.assign(trialOf(data), { waiting: `${data.code}: ${data.message}` }),
  trial_started: (data) => Object.assign(trialOf(data), { params: data.params, job_id: data.job_id, waiting: null }),
  // Its job starts over (the server stopped while it trained): so does its curve, whose rounds come again.
  trial_restarted: (data) => { trialOf(data).curve = newCurve(); },
  progress: (data) => {
    // A round of a trial's job (with `history`, every round since the previous event): its metric joins the trial's curve.
    const rounds = data.history ?? { first: data.iteration, metrics: mapValues(data.metrics, (value) => [value]) };
    const values = rounds.metrics[search.metric];
    if (values) addRounds(trialOf(data).curve, rounds.first, { [search.metric]: values });
  },
  trial_pruned: (data) => Object.assign(trialOf(data), { state: "pruned", pruned_at: data.round, value: data.value }),
  trial_complete: (data) => {
    const { tune_id: _, ...ended } = data; // its value, best round, rounds, model, as the leaderboard has them
    Object.assign(trialOf(data), ended, { state: "complete" });
  },
  trial_failed: (data) => Object.assign(trialOf(data), { state: "failed", params: data.params, error: `${data.code}: ${data.message}` }),
  best: (data) => { search.best = data.trial; },
  complete: (data) => {
    endSearch(data);
    for (const format of ["joblib", "native"]) $(`tune-download-${format}`).href = `/artifacts/${data.artifact_id}?format=${format}`;
    $("tune-download").hidden = !data.artifact_id;
    if (data.importances) {
      const ranked = Object.entries(data.importances).sort(([, a], [, b]) => b - a);
      $("tune-importances").textContent = `Importance: ${ranked.map(([name, value]) => `${name} ${formatNumber(value)}`).join(" · ")}`;
      $("tune-importances").hidden = false;
    }
    if (data.timed_out) $("tune-meta").textContent += " · stopped when its time ran out";
  },
  error: (data) => showTuneError(`${data.code}: ${data.message}`),
  cancelled: (data) => {
    endSearch(data);
    $("tune-meta").textContent += " · cancelled";
  },
};

function newTrial(number) {
  return {
    trial: number, params: {}, job_id: null, state: "running", value: null, best_iteration: null,
    iterations: null, artifact_id: null, pruned_at: null, waiting: null, curve: newCurve(),
  };
}

function trialOf(data) {
  if (!search.trials.has(data.trial)) search.trials.set(data.trial, newTrial(data.trial));
  return search.trials.get(data.trial);
}

// A search's last word: its leaderboard, the server's own account of every trial.
function endSearch(summary) {
  for (const { trial, ...row } of summary.leaderboard ?? []) Object.assign(trialOf({ trial }), row);
  if (summary.best) search.best = summary.best.trial;
}

function cancelTune() {
  return requestCancel(search, showTuneError);
}

function showTuneError(message) {
  $("tune-error").textContent = message;
}

const scheduleTune = onNextFrame(showTune);

function showTune() {
  showTrialCounts();
  showBest();
  showLeaderboard();
  drawTuneChart();
}

function showTrialCounts() {
  const counts = { running: 0, complete: 0, pruned: 0, failed: 0 };
  for (const trial of search.trials.values()) counts[trial.state]++;
  const done = counts.complete + counts.pruned + counts.failed;
  const total = Math.max(search.nTrials, search.trials.size);
  $("tune-progress").max = total || 1;
  $("tune-progress").value = done;
  const running = counts.running ? ` · ${counts.running} running` : "";
  setText("tune-counts", `${done} of ${total} trials done: ${counts.complete} complete, ${counts.pruned} pruned, ${counts.failed} failed${running}`);
}

function showBest() {
  const best = search.trials.get(search.best);
  $("tune-best-value").textContent = best ? `${formatNumber(best.value)} (${search.metric})` : "–";
  $("tune-best-trial").textContent = best ? `${best.trial}${best.best_iteration ? `, best round ${best.best_iteration} of ${best.iterations}` : ""}` : "–";
  $("tune-best-params").textContent = best ? paramsText(best.params) : "–";
}

// The trials as the server ranks them: the complete ones by value (lowest first), then the others by number.
function rankedTrials() {
  const trials = [...search.trials.values()];
  const complete = trials.filter((trial) => trial.state === "complete").sort((a, b) => a.value - b.value || a.trial - b.trial);
  return [...complete, ...trials.filter((trial) => trial.state !== "complete").sort((a, b) => a.trial - b.trial)];
}

function showLeaderboard() {
  const ranked = rankedTrials();
  const shown = ranked.map((trial) => [trial.trial, trial.job_id, stateText(trial), trial.value, trial.best_iteration, paramsText(trial.params), trial.trial === search.best]);
  const fingerprint = JSON.stringify(shown);
  if (fingerprint === search.shownRows) return; // unchanged: keep the rows, and the focus in them
  search.shownRows = fingerprint;
  $("leaderboard-body").replaceChildren(...ranked.map(leaderboardRow));
}

function leaderboardRow(trial) {
  let number = String(trial.trial);
  if (trial.job_id) { // its job, with every round of its curve, opens in the job panel
    number = el("button", { type: "button", class: "link", "aria-label": `Open trial ${trial.trial}'s job` }, number);
    number.addEventListener("click", () => openJob(trial.job_id));
  }
  const value = trial.state === "complete" || trial.state === "pruned" ? formatNumber(trial.value) : "–";
  const cells = [number, stateText(trial), value, trial.best_iteration ?? "–", paramsText(trial.params)];
  const row = el("tr", { "data-trial": trial.trial, "data-state": trial.state }, ...cells.map((cell) => el("td", {}, cell)));
  row.toggleAttribute("aria-current", trial.trial === search.best);
  if (trial.error || trial.waiting) row.title = trial.error || trial.waiting;
  return row;
}

function stateText(trial) {
  if (trial.state === "pruned") return `pruned at round ${trial.pruned_at}`;
  if (trial.state === "running" && trial.waiting) return "waiting for room";
  if (trial.state === "failed" && trial.error) return `failed (${trial.error.split(":")[0]})`;
  return trial.state;
}

function paramsText(params) {
  return Object.entries(params ?? {}).map(([name, value]) => `${name} ${formatNumber(value)}`).join(" · ") || "–";
}

// One path per trial. The pruned and failed ones are drawn first (faded, under the others), the best
// last, on top. `data-rounds` is the last round charted: the rounds its job trained once it has ended.
function drawTuneChart() {
  const svg = $("tune-chart");
  const trials = [...search.trials.values()];
  const values = trials.flatMap((trial) => trial.curve.metrics[search.metric] ?? []).filter(Number.isFinite);
  if (!startChart(svg, values, search.tuneId ? "Waiting for the first trial's rounds…" : "")) return;
  const rounds = Math.max(search.plannedRounds, ...trials.map((trial) => trial.curve.iterations.at(-1) ?? 0), 1);
  const scale = chartScale(niceTicks(0, rounds), niceTicks(...extent(values)));
  drawAxes(svg, scale);
  const layer = { pruned: 0, failed: 0, complete: 1, running: 2 };
  const isBest = (trial) => trial.trial === search.best;
  trials.sort((a, b) => isBest(a) - isBest(b) || layer[a.state] - layer[b.state] || a.trial - b.trial);
  for (const trial of trials) drawTrial(svg, scale, trial, isBest(trial));
  svgEl(svg, "text", { x: 12, y: BOX.top + PLOT.height / 2, transform: `rotate(-90 12 ${BOX.top + PLOT.height / 2})`, "text-anchor": "middle", class: "label" }, search.metric);
  drawTuneLegend(svg, new Set(trials.map((trial) => trial.state)));
}

function drawTrial(svg, scale, trial, best) {
  const values = trial.curve.metrics[search.metric] ?? [];
  const { d, points } = seriesPath(scale, trial.curve.iterations, values);
  const path = svgEl(svg, "path", {
    d, class: `trial ${trial.state}${best ? " best" : ""}`, "data-trial": trial.trial, "data-state": trial.state,
    "data-rounds": trial.curve.iterations.at(-1) ?? 0, "data-points": points,
  });
  svgEl(path, "title", {}, `trial ${trial.trial}: ${stateText(trial)}; ${paramsText(trial.params)}`);
  const last = values.findLastIndex(Number.isFinite);
  if (best && last >= 0) {
    const [x, y] = [scale.x(trial.curve.iterations[last]), scale.y(values[last])];
    const right = x > BOX.left + PLOT.width * 0.8; // keep the label inside the plot
    svgEl(svg, "text", { x: right ? x - 6 : x + 6, y: y - 6, "text-anchor": right ? "end" : "start", class: "best-label" }, `best: trial ${trial.trial}`);
  }
}

// What each kind of line means, for the states the chart has now.
function drawTuneLegend(svg, states) {
  const kinds = ["complete", "running", "pruned", "failed"].filter((state) => states.has(state)).map((state) => [state, `trial ${state}`]);
  if (search.best !== null) kinds.unshift(["best", "trial best"]);
  kinds.forEach(([name, classes], index) => {
    const left = BOX.left + index * 100;
    svgEl(svg, "line", { x1: left, x2: left + 24, y1: 14, y2: 14, class: `key ${classes}` });
    svgEl(svg, "text", { x: left + 30, y: 18, class: "legend" }, name);
  });
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

// An element's text, replaced only when it changes: a screen reader may read a live region (role=status,
// aria-live) out again whenever its text is replaced, and a status is set on every event.
function setText(id, text) {
  if ($(id).textContent !== text) $(id).textContent = text;
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
  dropConnection: (after) => dropConnection(watch, after),
  dropTuneConnection: (after) => dropConnection(search, after),
  // `rounds` counts the chart's rounds; with `firstRound` 1 and `lastRound` equal to it, none is missing or twice.
  state: () => ({
    jobId: watch.jobId, status: watch.status, lastEventId: watch.lastEventId, connections: watch.connections,
    open: Boolean(watch.source), rounds: watch.curve.iterations.length, firstRound: watch.curve.iterations[0] ?? null,
    lastRound: watch.curve.iterations.at(-1) ?? null,
  }),
  curve: () => structuredClone(watch.curve),
  // The open search; each trial's `lastRound` is the last round its curve has, `rounds` how many it has.
  tuneState: () => ({
    tuneId: search.tuneId, status: search.status, lastEventId: search.lastEventId, connections: search.connections,
    open: Boolean(search.source), nTrials: search.nTrials, metric: search.metric, best: search.best,
    trials: rankedTrials().map(({ curve, ...trial }) => ({ ...trial, rounds: curve.iterations.length, lastRound: curve.iterations.at(-1) ?? null })),
  }),
  // Each trial's curve: {trial: {iterations: [...], values: [...]}}.
  tuneCurves: () => Object.fromEntries([...search.trials.values()].map((trial) => [trial.trial, { iterations: trial.curve.iterations, values: trial.curve.metrics[search.metric] ?? [] }])),
};

async function start() {
  $("job-form").addEventListener("submit", startJob);
  $("model_type").addEventListener("change", renderBackend);
  $("cancel").addEventListener("click", cancelJob);
  $("search-start").addEventListener("click", startSearch);
  $("tune-cancel").addEventListener("click", cancelTune);
  $("refresh-jobs").addEventListener("click", refreshJobs);
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && refreshJobs());
  $("sign-out").addEventListener("click", signOut);
  await signIn();
  await loadModels();
  await setupTables();
  drawChart();
  await refreshJobs();
  const opened = decodeURIComponent(location.hash.slice(1)); // #JOB_ID, or #tune/TUNE_ID
  if (opened.startsWith("tune/")) openTune(opened.slice("tune/".length));
  else if (opened) openJob(opened);
  document.body.dataset.ready = "true"; // for tests: the form is filled in
}

start();
