// Steering playground: plain JavaScript over the public HTTP API (no build step, no network beyond this server).
"use strict";

const DEFAULT_TEMPLATE = { example: "Q: {input}\nA: {output}", query: "Q: {input}\nA:", separator: "\n\n" };
const SIGNED_METHODS = new Set(["contrastive", "icv"]);
const FINAL = new Set(["ready", "failed"]);
const EXAMPLE = [
  "hot -> cold", "big -> small", "fast -> slow", "up -> down", "day -> night", "happy -> sad",
  "open -> closed", "early -> late", "light -> dark", "strong -> weak", "rich -> poor", "full -> empty",
].join("\n");

const $ = (id) => document.getElementById(id);

const state = {
  apiKey: localStorage.getItem("steer.apiKey") || "",
  tasks: new Map(), // id -> TaskInfo
  rows: new Map(), // id -> {li, refs}
  strengths: new Map(), // id -> number
  active: new Set(), // ids ticked for steering
  autoActivate: new Set(), // ids registered here: ticked once ready
  pollTimer: null,
  lastInput: null,
  seq: { zero: 0, few: 0, steered: 0 },
  debounce: null,
  loaded: false, // the first task list came in (a ready task is ticked then, once)
};

// ------------------------------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.apiKey) headers.Authorization = "Bearer " + state.apiKey;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(0, "network", "cannot reach the server");
  }
  if (res.status === 204) return null;
  let data = null;
  try {
    data = await res.json();
  } catch (exc) {
    data = null;
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    if (res.status === 401) askForKey(err.message);
    throw new ApiError(res.status, err.type || "http_error", err.message || res.statusText);
  }
  return data;
}

// ------------------------------------------------------------------------------------------ auth

function askForKey(message) {
  $("auth").hidden = false;
  $("auth").classList.add("alert");
  $("auth-message").textContent = state.apiKey ? "That key was refused." : message || "This server needs an API key.";
  $("api-key").focus();
}

$("auth-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.apiKey = $("api-key").value.trim();
  localStorage.setItem("steer.apiKey", state.apiKey);
  $("auth").classList.remove("alert");
  $("auth-message").textContent = "";
  loadTasks();
});

// ------------------------------------------------------------------------------------ demonstrations

function parseDemos(text) {
  const demos = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    let input, output;
    if (line.startsWith("{")) {
      let obj;
      try {
        obj = JSON.parse(line);
      } catch (exc) {
        throw new Error(`line ${i + 1}: invalid JSON`);
      }
      input = obj && obj.input;
      output = obj && obj.output;
      if (typeof input !== "string" || typeof output !== "string") {
        throw new Error(`line ${i + 1}: expected string fields "input" and "output"`);
      }
    } else {
      const at = line.indexOf("->");
      if (at < 0) throw new Error(`line ${i + 1}: expected "input -> output" or a JSON object`);
      input = line.slice(0, at).trim();
      output = line.slice(at + 2).trim();
    }
    if (!input.trim() || !output.trim()) throw new Error(`line ${i + 1}: empty input or output`);
    demos.push({ input, output });
  });
  return demos;
}

function saveDemos(id, demos) {
  try {
    localStorage.setItem("steer.demos." + id, JSON.stringify(demos));
  } catch (exc) {
    /* storage full: few-shot for this task just won't be available after a reload */
  }
}

function loadDemos(id) {
  try {
    return JSON.parse(localStorage.getItem("steer.demos." + id) || "null");
  } catch (exc) {
    return null;
  }
}

function updateDemoCount() {
  const el = $("demo-count");
  try {
    const n = parseDemos($("demos").value).length;
    el.textContent = `${n} demonstration${n === 1 ? "" : "s"}`;
    el.classList.remove("bad");
  } catch (exc) {
    el.textContent = exc.message;
    el.classList.add("bad");
  }
}

$("demos").addEventListener("input", updateDemoCount);
$("example").addEventListener("click", () => {
  $("demos").value = EXAMPLE;
  if (!$("task-name").value) $("task-name").value = "antonyms";
  updateDemoCount();
});
$("demos-file").addEventListener("change", async (ev) => {
  const file = ev.target.files && ev.target.files[0];
  if (!file) return;
  $("demos").value = await file.text();
  if (!$("task-name").value) $("task-name").value = file.name.replace(/\.[^.]+$/, "");
  updateDemoCount();
  ev.target.value = "";
});

// ------------------------------------------------------------------------------------------ register

function showRegisterError(message) {
  const el = $("register-error");
  el.textContent = message || "";
  el.hidden = !message;
}

$("register-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showRegisterError("");
  let demos, options;
  try {
    demos = parseDemos($("demos").value);
    if (!demos.length) throw new Error("add at least one demonstration");
    const raw = $("options").value.trim();
    options = raw ? JSON.parse(raw) : {};
    if (typeof options !== "object" || Array.isArray(options) || options === null) throw new Error("options: a JSON object");
  } catch (exc) {
    showRegisterError(exc instanceof SyntaxError ? "options: " + exc.message : exc.message);
    return;
  }
  const body = { demonstrations: demos, method: $("method").value, options };
  const name = $("task-name").value.trim();
  if (name) body.name = name;
  const button = $("register");
  button.disabled = true;
  button.textContent = "Registering…";
  try {
    const created = await api("POST", "/v1/tasks", body);
    saveDemos(created.id, demos);
    state.autoActivate.add(created.id);
    await loadTasks();
  } catch (exc) {
    showRegisterError(exc.message);
  } finally {
    button.disabled = false;
    button.textContent = "Register task";
  }
});

// ------------------------------------------------------------------------------------------ tasks

async function loadTasks() {
  let list;
  try {
    list = (await api("GET", "/v1/tasks?limit=200")).tasks;
  } catch (exc) {
    if (exc.status !== 401) setServer(false, exc.message);
    return;
  }
  if (state.apiKey) $("auth").hidden = false; // keep the key visible so it can be changed
  const seen = new Set();
  for (const info of list) {
    seen.add(info.id);
    updateTask(info);
  }
  for (const id of [...state.rows.keys()]) if (!seen.has(id)) removeTask(id);
  // Order rows as the server does: newest first.
  const ul = $("tasks");
  list.forEach((info) => ul.appendChild(state.rows.get(info.id).li));
  $("tasks-empty").hidden = list.length > 0;
  if (!state.loaded && !state.active.size) {
    const first = list.find((t) => t.status === "ready");
    if (first) setActive(first.id, true);
  }
  state.loaded = true;
  schedulePoll(list.some((t) => !FINAL.has(t.status)));
}

function schedulePoll(needed) {
  clearTimeout(state.pollTimer);
  state.pollTimer = needed ? setTimeout(loadTasks, 700) : null;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function createRow(info) {
  const li = el("li", "task");
  li.dataset.id = info.id;
  const head = el("div", "task-head");
  const use = el("label", "use");
  const box = el("input");
  box.type = "checkbox";
  box.title = "Steer with this task";
  box.addEventListener("change", () => setActive(info.id, box.checked));
  const name = el("span", "task-name");
  use.append(box, name);
  const badge = el("span", "badge");
  const del = el("button", "icon-btn delete", "×");
  del.type = "button";
  del.title = "Delete task";
  del.setAttribute("aria-label", "Delete task");
  del.addEventListener("click", () => deleteTask(info.id));
  head.append(use, badge, del);

  const sub = el("div", "task-sub");
  const progress = el("div", "progress");
  const bar = el("div", "bar");
  const fill = el("span");
  bar.appendChild(fill);
  const progressText = el("div", "progress-text");
  progress.append(bar, progressText);

  const strength = el("div", "strength");
  const label = el("span", "small muted", "strength");
  const slider = el("input");
  slider.type = "range";
  slider.step = "0.05";
  slider.dataset.task = info.id;
  const value = el("output", "value");
  slider.addEventListener("input", () => {
    state.strengths.set(info.id, Number(slider.value));
    value.textContent = Number(slider.value).toFixed(2);
    if (state.active.has(info.id)) rerunSteeredSoon();
  });
  strength.append(label, slider, value);
  const verdict = el("div", "verdict");
  const error = el("div", "error small");
  li.append(head, sub, progress, verdict, strength, error);
  const refs = { box, name, badge, sub, progress, fill, progressText, verdict, strength, slider, value, error };
  state.rows.set(info.id, { li, refs });
  $("tasks").prepend(li);
  $("tasks-empty").hidden = true;
  return state.rows.get(info.id);
}

function updateTask(info) {
  const previous = state.tasks.get(info.id);
  state.tasks.set(info.id, info);
  const row = state.rows.get(info.id) || createRow(info);
  const r = row.refs;
  r.name.textContent = info.name || "untitled";
  r.badge.textContent = info.status;
  r.badge.className = "badge status-" + info.status;
  const bits = [info.method];
  if (info.layers && info.layers.length) {
    bits.push((info.layers.length === 1 ? "layer " : "layers ") + formatLayers(info.layers));
  }
  if (info.num_demonstrations) bits.push(info.num_demonstrations + " demos");
  const acc = info.metrics && info.metrics.dev_steered_accuracy;
  if (typeof acc === "number" && !info.verdict) bits.push(`dev acc ${(acc * 100).toFixed(0)}%`);
  r.sub.replaceChildren(el("code", "", info.id.slice(0, 13) + "…"), document.createTextNode(" · " + bits.join(" · ")));
  r.sub.title = info.id;
  renderProgress(r, info);
  renderVerdict(r.verdict, info);
  const ready = info.status === "ready";
  r.box.disabled = !ready;
  r.strength.hidden = !ready;
  r.slider.disabled = !ready;
  r.error.hidden = !info.error;
  r.error.textContent = info.error || "";
  if (ready && (!previous || previous.status !== "ready" || !state.strengths.has(info.id))) initSlider(info, r);
  if (ready && state.autoActivate.delete(info.id)) setActive(info.id, true);
  r.box.checked = state.active.has(info.id);
  row.li.classList.toggle("active", state.active.has(info.id));
}

// "0-3, 7, 9-11" for [0, 1, 2, 3, 7, 9, 10, 11]: a vector on every layer reads "0-29", not thirty numbers.
function formatLayers(layers) {
  const values = [...new Set(layers || [])].filter(Number.isInteger).sort((a, b) => a - b);
  const runs = [];
  for (const layer of values) {
    const last = runs[runs.length - 1];
    if (last && layer === last[1] + 1) last[1] = layer;
    else runs.push([layer, layer]);
  }
  return runs.map(([a, b]) => (a === b ? String(a) : `${a}-${b}`)).join(", ");
}

const RATING_LABELS = {
  better_than_few_shot: (shots) => `better than ${shots}`,
  as_good_as_few_shot: (shots) => `as good as ${shots}`,
  below_few_shot: (shots) => `below ${shots}`,
  no_effect: () => "no effect",
};

function percent(fraction) {
  return `${Math.round(fraction * 100)}%`;
}

// A stop string or delimiter as typed: bare when one visible character, else quoted ("\n", " -").
function endPiece(text) {
  return text.length === 1 && text.trim() ? text : JSON.stringify(text);
}

// The learned rule in one line: `stop "\n" · at , ; . · max 1 word · max 10 tokens`.
function answerEndText(rule) {
  if (!rule) return "";
  const parts = [];
  if (rule.stop && rule.stop.length) parts.push("stop " + rule.stop.map(endPiece).join(" "));
  if (rule.delimiters && rule.delimiters.length) parts.push("at " + rule.delimiters.map(endPiece).join(" "));
  for (const [key, unit] of [["max_words", "word"], ["max_chars", "char"], ["max_tokens", "token"]]) {
    const n = rule[key];
    if (Number.isInteger(n)) parts.push(`max ${n} ${unit}${n === 1 ? "" : "s"}`);
  }
  return parts.join(" · ");
}

// How the vector did on held-out demonstrations: a label by rating, steered / k-shot / zero-shot bars, the summary,
// advice when weak, and where answers end.
function renderVerdict(box, info) {
  const v = info.status === "ready" ? info.verdict : null;
  box.hidden = !v;
  if (!v) {
    box.replaceChildren();
    return;
  }
  const shots = v.few_shot_k ? `${v.few_shot_k}-shot` : "few-shot";
  box.className = "verdict rating-" + v.rating;
  const label = (RATING_LABELS[v.rating] || (() => v.rating))(shots);
  const marginPoints = v.margin != null ? Math.round(v.margin * 100) : null;
  const measure =
    `${v.metric === "exact" ? "exact match" : "first token"}, ${v.held_out ? v.held_out + " held out" : "training demos"}` +
    (marginPoints != null ? `, ±${marginPoints} points` : "");
  const head = el("div", "verdict-head");
  const measureEl = el("span", "verdict-measure", measure);
  if (marginPoints != null) measureEl.title = `a gap to ${shots} prompting under ${marginPoints} points may be chance (95 %)`;
  head.append(el("span", "verdict-label", label), measureEl);
  const bars = el("div", "verdict-bars");
  for (const [condition, name, value] of [["steered", "steered", v.steered], ["few", shots, v.few_shot], ["zero", "zero-shot", v.zero_shot]]) {
    const row = el("div", "vbar " + condition);
    const track = el("span", "vbar-track");
    const fillEl = el("span", "vbar-fill");
    fillEl.style.width = `${Math.max(0, Math.min(100, Math.round(value * 100)))}%`;
    track.appendChild(fillEl);
    row.append(el("span", "vbar-name", name), track, el("span", "vbar-value", percent(value)));
    bars.appendChild(row);
  }
  const nodes = [head, bars, el("p", "verdict-summary", v.summary)];
  if (v.advice) nodes.push(el("p", "verdict-advice", v.advice));
  const end = answerEndText(info.answer_end);
  if (end) {
    const line = el("p", "answer-end", "answers end: " + end);
    line.title = line.textContent;
    nodes.push(line);
  }
  box.replaceChildren(...nodes);
}

function initSlider(info, r) {
  const base = info.default_strength != null ? info.default_strength : 1;
  const max = Math.max(2, Math.ceil(Math.abs(base) * 2));
  r.slider.max = String(max);
  r.slider.min = String(SIGNED_METHODS.has(info.method) ? -max : 0);
  const current = state.strengths.has(info.id) ? state.strengths.get(info.id) : base;
  r.slider.value = String(current);
  state.strengths.set(info.id, Number(r.slider.value));
  r.value.textContent = Number(r.slider.value).toFixed(2);
}

function renderProgress(r, info) {
  const running = !FINAL.has(info.status);
  r.progress.hidden = !running;
  if (!running) return;
  const p = info.progress || {};
  const parts = [info.status === "pending" ? "queued" : p.stage || "computing"];
  let fraction = null;
  if (typeof p.step === "number" && typeof p.steps === "number" && p.steps > 0) {
    parts.push(`step ${p.step}/${p.steps}`);
    fraction = p.step / p.steps;
  }
  if (typeof p.loss === "number") parts.push(`loss ${p.loss.toFixed(4)}`);
  r.progressText.textContent = parts.join(" · ");
  r.fill.parentElement.classList.toggle("indeterminate", fraction === null);
  r.fill.style.width = fraction === null ? "" : `${Math.round(fraction * 100)}%`;
}

function removeTask(id) {
  const row = state.rows.get(id);
  if (row) row.li.remove();
  state.rows.delete(id);
  state.tasks.delete(id);
  state.strengths.delete(id);
  state.active.delete(id);
  $("tasks-empty").hidden = state.rows.size > 0;
}

async function deleteTask(id) {
  try {
    await api("DELETE", "/v1/tasks/" + encodeURIComponent(id));
  } catch (exc) {
    if (exc.status !== 404) {
      alertRow(id, exc.message);
      return;
    }
  }
  localStorage.removeItem("steer.demos." + id);
  removeTask(id);
  rerunAll();
}

function alertRow(id, message) {
  const row = state.rows.get(id);
  if (!row) return;
  row.refs.error.hidden = false;
  row.refs.error.textContent = message;
}

function setActive(id, on) {
  if (on) state.active.add(id);
  else state.active.delete(id);
  const row = state.rows.get(id);
  if (row) {
    row.refs.box.checked = on;
    row.li.classList.toggle("active", on);
  }
  describeSteering();
  rerunAll();
}

function activeTasks() {
  return [...state.rows.keys()]
    .filter((id) => state.active.has(id))
    .map((id) => state.tasks.get(id))
    .filter((t) => t && t.status === "ready");
}

function describeSteering() {
  const tasks = activeTasks();
  $("steered-desc").textContent = tasks.length
    ? "Zero-shot prompt + " + tasks.map((t) => `${t.name || t.id.slice(0, 10)} @ ${strengthOf(t).toFixed(2)}`).join(" + ")
    : "Tick a ready task to steer with";
}

function strengthOf(task) {
  return state.strengths.has(task.id) ? state.strengths.get(task.id) : task.default_strength || 1;
}

$("refresh").addEventListener("click", loadTasks);

// ------------------------------------------------------------------------------------------ generation

function fill(template, input, output) {
  let text = template.split("{input}").join(input);
  if (output !== undefined) text = text.split("{output}").join(output);
  return text;
}

function templateOf(task) {
  return (task && task.template) || DEFAULT_TEMPLATE;
}

function fewShotPrompt(template, demos, query, shots) {
  const chosen = demos.filter((d) => d.input !== query).slice(0, shots);
  const parts = chosen.map((d) => fill(template.example, d.input, d.output));
  parts.push(fill(template.query, query));
  return (template.prefix || "") + parts.join(template.separator);  // a chat template's system turn comes once
}

function maxTokens() {
  const n = parseInt($("max-tokens").value, 10);
  return Number.isFinite(n) && n > 0 ? n : 24;
}

function answerBlock(label, data, request) {
  const block = el("div", "answer-block");
  if (label) block.appendChild(el("div", "answer-label", label));
  const pre = el("pre", "answer");
  pre.textContent = data.text === "" ? "(empty)" : data.text;
  pre.title = request.prompt !== undefined ? "Prompt:\n" + request.prompt : "Input: " + request.input;
  block.appendChild(pre);
  if (data.usage) {
    const ms = data.timing && data.timing.request_s != null ? ` · ${Math.round(data.timing.request_s * 1000)} ms` : "";
    block.appendChild(el("div", "meta", `${data.usage.completion_tokens} tokens · ${data.finish_reason}${ms}`));
  }
  return block;
}

function errorBlock(label, message) {
  const block = el("div", "answer-block");
  if (label) block.appendChild(el("div", "answer-label", label));
  block.appendChild(el("div", "error", message));
  return block;
}

function setColumn(name, nodes, busy) {
  const out = $("out-" + name);
  out.replaceChildren(...nodes);
  out.parentElement.classList.toggle("busy", !!busy);
}

async function settle(jobs) {
  return Promise.all(
    jobs.map(async ([label, request, rule]) => {
      try {
        const data = await api("POST", "/v1/generate", request);
        if (rule) data.text = cutAnswer(data.text, rule);
        return answerBlock(label, data, request);
      } catch (exc) {
        return errorBlock(label, exc.message);
      }
    }),
  );
}

async function runColumn(name, jobs, emptyText) {
  const seq = ++state.seq[name];
  if (!jobs.length) {
    setColumn(name, [el("p", "placeholder", emptyText)]);
    return;
  }
  $("out-" + name).parentElement.classList.add("busy");
  const nodes = await settle(jobs);
  if (seq === state.seq[name]) setColumn(name, nodes, false);
}

// Where an answer ends under a task's learned rule (`answer_end`), as the server's steering/tasks/answer_end.py cuts it:
// the few-shot column's answers end as the steered ones do, so the columns compare like the task's verdict.
function cutAnswer(text, rule) {
  const ends = [];
  for (const s of rule.stop || []) {
    const at = text.indexOf(s);
    if (at >= 0) ends.push(at);
  }
  const start = text.length - text.trimStart().length;
  if (start < text.length) {
    for (const d of rule.delimiters || []) {
      const at = text.indexOf(d, start + 1);
      if (at >= 0) ends.push(at);
    }
    if (Number.isInteger(rule.max_chars) && text.length - start > rule.max_chars) ends.push(start + rule.max_chars);
    if (Number.isInteger(rule.max_words)) {
      const words = [...text.slice(start).matchAll(/\S+/g)];
      const last = words[rule.max_words - 1];
      const end = last ? start + last.index + last[0].length : text.length;
      if (end < text.length) ends.push(end);
    }
  }
  return ends.length ? text.slice(0, Math.min(...ends)) : text;
}

function runZero(text) {
  const tasks = activeTasks();
  // With tasks ticked: the steered request at strength 0 (the plain model), so its answer ends where theirs do.
  const request = tasks.length
    ? { input: text, steering: tasks.map((t) => ({ task: t.id, strength: 0 })), max_new_tokens: maxTokens() }
    : { prompt: fill(DEFAULT_TEMPLATE.query, text), stop: ["\n"], max_new_tokens: maxTokens() };
  return runColumn("zero", [[null, request]], "");
}

function runFew(text) {
  const shots = Math.max(1, parseInt($("shots").value, 10) || 8);
  const jobs = [];
  const missing = [];
  const tasks = activeTasks();
  for (const task of tasks) {
    const demos = task.demonstrations && task.demonstrations.length ? task.demonstrations : loadDemos(task.id);
    if (!demos || !demos.length) {
      missing.push(task.name || task.id);
      continue;
    }
    const prompt = fewShotPrompt(templateOf(task), demos, text, shots);
    const rule = task.answer_end;
    const request = { prompt, stop: rule && rule.stop.length ? rule.stop : ["\n"], max_new_tokens: maxTokens() };
    if (rule && Number.isInteger(rule.max_tokens)) request.max_new_tokens = Math.min(request.max_new_tokens, rule.max_tokens);
    jobs.push([tasks.length > 1 ? task.name || task.id : null, request, rule]);
  }
  const empty = !tasks.length
    ? "Tick a task: its demonstrations make the prompt"
    : `Demonstrations of ${missing.join(", ")} are not known to this page (registered elsewhere)`;
  return runColumn("few", jobs, empty);
}

function runSteered(text) {
  const tasks = activeTasks();
  describeSteering();
  const jobs = tasks.length
    ? [[null, { input: text, steering: tasks.map((t) => ({ task: t.id, strength: strengthOf(t) })), max_new_tokens: maxTokens() }]]
    : [];
  return runColumn("steered", jobs, "Tick a ready task to steer with");
}

function rerunAll() {
  if (state.lastInput === null) return;
  runZero(state.lastInput);
  runFew(state.lastInput);
  runSteered(state.lastInput);
}

function rerunSteeredSoon() {
  describeSteering();
  clearTimeout(state.debounce);
  state.debounce = setTimeout(() => {
    if (state.lastInput !== null) runSteered(state.lastInput);
  }, 150);
}

$("try-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("query").value.trim();
  if (!text) {
    $("query").focus();
    return;
  }
  state.lastInput = text;
  rerunAll();
});

// ------------------------------------------------------------------------------------------ server

function setServer(ok, text) {
  $("server-dot").className = "dot " + (ok ? "ok" : "down");
  $("server-info").textContent = text;
}

async function loadServer() {
  try {
    const res = await fetch("/readyz");
    const info = await res.json();
    setServer(res.ok, `${info.model} · ${res.ok ? "ready" : info.status}`);
    $("server-info").title = info.fingerprint || "";
  } catch (exc) {
    setServer(false, "server unreachable");
  }
}

if (state.apiKey) {
  $("api-key").value = state.apiKey;
  $("auth").hidden = false;
}
updateDemoCount();
loadServer();
loadTasks();
