// The page of `e2vpt serve`: it talks to this server's API only, and every string
// the API returns goes into the page as text (textContent), never as HTML.
"use strict";

const STATUS_WORDS = {
  400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict",
  413: "Too large", 415: "Unsupported type", 500: "Server error", 503: "Server busy",
};

const $ = (id) => document.getElementById(id);

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = String(text);
  if (className) td.className = className;
  return td;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// An API answer as JSON, or an Error whose message says the status and the server's
// own words (its JSON body's "error"), e.g. "413 Too large: a body of ... bytes".
async function api(path, options) {
  let reply;
  try {
    reply = await fetch(path, options);
  } catch (err) {
    throw new Error(`the server could not be reached (${err.message})`);
  }
  let body = null;
  try {
    body = await reply.json();
  } catch (err) {
    body = null;
  }
  if (!reply.ok) {
    const words = STATUS_WORDS[reply.status] || reply.statusText || "Error";
    const said = body && typeof body.error === "string" ? body.error : "no explanation given";
    throw new Error(`${reply.status} ${words}: ${said}`);
  }
  if (body === null) throw new Error(`the answer to ${path} was not JSON`);
  return body;
}

async function loadTasks() {
  const select = $("task");
  const chosen = select.value;
  const { tasks } = await api("/v1/tasks");
  select.replaceChildren();
  for (const task of tasks) {
    const option = document.createElement("option");
    option.value = task.name;
    option.textContent = `${task.name} (${task.method}, ${task.classes.length} classes)`;
    select.append(option);
  }
  if (tasks.some((t) => t.name === chosen)) select.value = chosen;
  if (!tasks.length) $("message").textContent = "The server serves no task.";
}

async function loadStatus() {
  const status = await api("/v1/status");
  $("backbone").textContent = status.backbone;
  $("device").textContent = status.device;
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  for (const task of status.tasks) {
    const row = body.insertRow();
    row.dataset.task = task.name;
    cell(row, task.name);
    cell(row, task.method);
    cell(row, task.classes, "num");
    cell(row, task.requests, "num requests");
  }
  const errors = Object.entries(status.errors).map(([code, n]) => `${code} × ${n}`);
  const said = errors.length ? `Error answers since the start: ${errors.join(", ")}` : "";
  $("errors-line").textContent = said;
}

function showResult(answer, milliseconds) {
  $("result-task").textContent = `Task ${answer.task}`;
  $("latency").textContent = `${milliseconds.toFixed(0)} ms round trip`;
  const body = $("classes").tBodies[0];
  body.replaceChildren();
  answer.classes.forEach((name, i) => {
    const p = Number(answer.probabilities[i]);
    const row = body.insertRow();
    cell(row, name, "class");
    cell(row, `${(100 * p).toFixed(2)} %`, "num probability");
    const bar = document.createElement("span");
    bar.style.width = `${Math.max(0, Math.min(100, 100 * p))}%`;
    cell(row, "", "bar").append(bar);
  });
  $("result").hidden = false;
}

async function classify(file) {
  const task = $("task").value;
  if (!task) {
    showError("Choose a task first (the server lists none).");
    return;
  }
  clearError();
  $("result").hidden = true;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);  // the previous file's
  preview.removeAttribute("src");
  if (file.type.startsWith("image/")) preview.src = URL.createObjectURL(file);
  preview.hidden = !preview.src;
  $("drop-text").textContent = file.name;
  $("message").textContent = `Classifying ${file.name} with ${task} …`;
  const form = new FormData();
  form.append("image", file, file.name);
  const topK = Math.max(1, parseInt($("top-k").value, 10) || 5);
  const path = `/v1/tasks/${encodeURIComponent(task)}/predict?top_k=${topK}`;
  const started = performance.now();
  try {
    const answer = await api(path, { method: "POST", body: form });
    showResult(answer, performance.now() - started);
    $("message").textContent = `${file.name}: done.`;
  } catch (err) {
    $("message").textContent = `${file.name}: refused.`;
    showError(err.message);
  }
  refresh(false);
}

async function refresh(tasksToo) {
  try {
    if (tasksToo) await loadTasks();
    await loadStatus();
  } catch (err) {
    showError(err.message);
  }
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) classify(file);
    event.target.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const [file] = event.dataTransfer.files;
    if (file) classify(file);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
  $("refresh").addEventListener("click", () => refresh(true));
  refresh(true).then(() => document.body.setAttribute("data-ready", "1"));
}

setUp();
