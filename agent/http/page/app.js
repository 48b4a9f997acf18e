// hflocal settings page: plain JavaScript, no build step, no network beyond this agent.
// Talks to the management API (/api/...) with the HttpOnly token cookie the agent set, and follows
// the agent's events over /api/events (Server-Sent Events).
"use strict";

const $ = (id) => document.getElementById(id);

const S = {
  status: null,
  installed: [],
  hardware: null,
  jobs: new Map(), // job_id -> {job_id, key, model_id, quantization, done, total, rate, eta, state, code, message}
  selected: null, // model id
  chosenQuant: null, // the quantization the user picked for it
  files: null, // ModelFilesResult of the selected model
  sessionEnded: false,
  apiKeyRequired: document.querySelector('meta[name="hflocal-api-key-required"]')?.content === "true",
};

// ------------------------------------------------------------------ formatting

function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "?";
  let v = Number(n);
  for (const unit of ["B", "KB", "MB", "GB", "TB"]) {
    if (Math.abs(v) < 1000 || unit === "TB") return unit === "B" ? `${Math.round(v)} B` : `${v.toFixed(1)} ${unit}`;
    v /= 1000;
  }
  return `${v.toFixed(1)} TB`;
}

function fmtEta(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  if (s < 1) return "less than a second left";
  if (s < 90) return `about ${Math.round(s)} s left`;
  if (s < 5400) return `about ${Math.round(s / 60)} min left`;
  return `about ${(s / 3600).toFixed(1)} h left`;
}

function fmtCount(n) {
  if (!n) return "0";
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function parseKey(key) {
  // huggingface-local/<modelId>::<quantization>::<device>
  const body = key.startsWith("huggingface-local/") ? key.slice("huggingface-local/".length) : key;
  const [model, quant, device] = body.split("::");
  return { model: model || key, quant: quant || "", device: device || "" };
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(node, visible) { node.hidden = !visible; }

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(code, message, status, details) {
    super(message);
    this.code = code;
    this.status = status;
    this.details = details || {};
  }
}

async function api(path, { method = "GET", body } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method,
      credentials: "same-origin",
      cache: "no-store",
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    agentUnreachable();
    throw new ApiError("agent_unreachable", "The hflocal agent is not answering.", 0);
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    if (res.status === 401) sessionEnded();
    throw new ApiError(data?.code || `http_${res.status}`, data?.message || `HTTP ${res.status}`, res.status, data?.details);
  }
  agentReachable();
  return data;
}

function modelPath(id) { return id.split("/").map(encodeURIComponent).join("/"); }

// What to tell the user for an error code: a headline that says what happened and what to do.
function explain(err) {
  const m = err.message || "";
  switch (err.code) {
    case "network": return `Can't reach the Hugging Face Hub — check your internet connection. Installed models keep working offline. (${m})`;
    case "hub_error": return `The Hugging Face Hub answered with an error; try again later. (${m})`;
    case "disk_full": return `Not enough disk space. Free some space or delete an installed model, then try again. (${m})`;
    case "integrity": return `A downloaded file was damaged; download it again. (${m})`;
    case "gated": return m;
    case "repo_not_found": return m;
    case "no_onnx": return m;
    case "quant_not_offered": return m;
    case "agent_unreachable": return "The hflocal agent is not answering. Is it still running? Start it from the tray or with `hflocal serve`.";
    case "unauthorized": return "This page's session has ended. Open Settings again from the tray icon, or run `hflocal open`.";
    default: return m || "Something went wrong.";
  }
}

function showError(node, err) {
  node.textContent = typeof err === "string" ? err : explain(err);
  node.dataset.code = err?.code || "";
  show(node, true);
}

function clearError(node) { node.textContent = ""; show(node, false); }

// ------------------------------------------------------------------ banner / connection

let bannerRetry = null;

function banner(text, retry) {
  $("banner-text").textContent = text;
  bannerRetry = retry || null;
  show($("banner-retry"), Boolean(retry));
  show($("banner"), Boolean(text));
}

function sessionEnded() {
  if (S.sessionEnded) return;
  S.sessionEnded = true;
  if (events) events.close();
  setLive("off", "signed out");
  banner("This page's session has ended (the agent restarted or the link is old). Open Settings again from the tray icon, or run `hflocal open`.");
}

let unreachable = false;
function agentUnreachable() {
  if (S.sessionEnded) return;
  unreachable = true;
  banner("The hflocal agent is not answering. Is it still running? Start it from the tray or with `hflocal serve`.", refreshAll);
}

function agentReachable() {
  if (unreachable && !S.sessionEnded) {
    unreachable = false;
    banner("");
  }
}

function setLive(state, text) {
  $("live").dataset.state = state;
  $("live-text").textContent = text;
}

// ------------------------------------------------------------------ status, API card

function renderStatus() {
  const s = S.status;
  const node = $("agent-state");
  if (!s) { node.textContent = "Connecting to the agent…"; return; }
  node.replaceChildren();
  if (s.activating && s.activating !== s.active) {
    node.append(el("span", { class: "state loading", text: "Loading" }), ` ${parseKey(s.activating).model}…`);
  } else if (s.active) {
    const k = parseKey(s.active);
    const state = s.model_state === "none" ? "idle" : s.model_state;
    node.append(el("span", { class: `state ${state}`, text: state }), " ", el("strong", { text: k.model }), ` ${k.quant}`);
    if (s.provider) node.append(el("span", { class: "muted", text: ` · ${s.provider.replace("ExecutionProvider", "")}` }));
  } else {
    node.append(el("span", { class: "state none", text: "no model" }), " Install a model and make it active");
  }
  if (s.model_error) node.append(el("span", { class: "error-inline", text: ` — ${s.model_error}` }));
  renderApi();
  if (s.warnings && s.warnings.length && !S.sessionEnded && !unreachable) banner(s.warnings.join(" · "));
}

function apiBase() {
  const url = S.status?.http_url || window.location.origin;
  return `${url.replace(/\/$/, "")}/v1`;
}

function snippetModel() {
  const active = S.installed.find((m) => m.key === S.status?.active);
  if (S.status?.active && active?.kind !== "embed") return S.status.active;
  const ready = S.installed.find((m) => m.status === "ready" && m.kind !== "embed");
  return ready ? ready.key : null;
}

function renderApi() {
  $("api-base").value = apiBase();
  const chatModel = snippetModel();
  const embedder = S.installed.find((m) => m.status === "ready" && m.kind === "embed");
  const lines = [
    ...(S.apiKeyRequired ? ["import os", ""] : []),
    "from openai import OpenAI",
    "",
    S.apiKeyRequired
      ? `client = OpenAI(base_url="${apiBase()}", api_key=os.environ["HFLOCAL_API_KEY"])`
      : `client = OpenAI(base_url="${apiBase()}", api_key="hflocal")  # no API key is set: any value works`,
  ];
  if (chatModel || !embedder) {  // only an embedding model installed: no chat example that cannot run
    lines.push(
      "reply = client.chat.completions.create(",
      `    model="${chatModel || "MODEL-KEY (install a model first)"}",`,
      '    messages=[{"role": "user", "content": "Hello!"}],',
      ")",
      "print(reply.choices[0].message.content)");
  }
  if (embedder) {
    if (chatModel) lines.push("");
    lines.push(`vectors = client.embeddings.create(model="${embedder.key}", input=["Hello!", "Bonjour !"])`,
      "print(len(vectors.data[0].embedding))");
  }
  $("snippet").textContent = lines.join("\n");
  show($("try-key"), S.apiKeyRequired);
}

async function copyText(text, button) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch (e) {
    const area = el("textarea", { class: "offscreen", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    try { ok = document.execCommand("copy"); } catch (e2) { ok = false; }
    area.remove();
  }
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  button.textContent = ok ? "Copied" : "Copy failed — select and copy by hand";
  setTimeout(() => { button.textContent = label; }, 1800);
}

async function tryModel(ev) {
  ev.preventDefault();
  const out = $("try-answer");
  const prompt = $("try-prompt").value.trim();
  if (!prompt) return;
  out.className = "muted";
  out.textContent = "Thinking…";
  $("try-send").disabled = true;
  const headers = { "Content-Type": "application/json" };
  if (S.apiKeyRequired && $("try-key").value) headers.Authorization = `Bearer ${$("try-key").value}`;
  const body = { messages: [{ role: "user", content: prompt }], max_tokens: 128 };
  if (S.status?.active) body.model = S.status.active;
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body), cache: "no-store" });
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      out.className = "error";
      out.textContent = data?.error?.message || `HTTP ${res.status}`;
    } else {
      out.className = "answer";
      out.textContent = data?.choices?.[0]?.message?.content ?? "(empty answer)";
    }
  } catch (e) {
    out.className = "error";
    out.textContent = "The agent did not answer.";
  } finally {
    $("try-send").disabled = false;
  }
}

// ------------------------------------------------------------------ search and pick

let searchSeq = 0;

const KIND_WORDS = { chat: "chat", embed: "embedding" };

function searchKind() {
  return $("search-kind").value === "embed" ? "embed" : "chat";
}

function kindChanged() {
  const kind = searchKind();
  $("search-label").textContent = `Search the Hugging Face Hub for ONNX ${KIND_WORDS[kind]} models`;
  $("search-q").placeholder = kind === "embed" ? "e.g. minilm, bge, e5, nomic" : "e.g. qwen, llama, phi";
  search($("search-q").value.trim());
}

async function search(query) {
  const seq = ++searchSeq;
  const kind = searchKind();
  clearError($("search-error"));
  $("results").setAttribute("aria-busy", "true");
  $("search-note").textContent = query ? `Searching for “${query}”…` : "Loading suggested models…";
  try {
    const result = await api(`/api/search?q=${encodeURIComponent(query)}&kind=${kind}&limit=30`);
    if (seq !== searchSeq) return;
    renderResults(result, query);
  } catch (err) {
    if (seq !== searchSeq) return;
    $("results").replaceChildren();
    $("search-note").textContent = "";
    showError($("search-error"), err);
  } finally {
    if (seq === searchSeq) $("results").removeAttribute("aria-busy");
  }
}

function renderResults(result, query) {
  const list = $("results");
  list.replaceChildren();
  if (!result.models.length) {
    $("search-note").textContent = query
      ? `No ONNX ${KIND_WORDS[result.kind] || "chat"} models match “${query}”. Try a shorter or different name.`
      : "No suggested models available.";
    return;
  }
  const n = result.models.length;
  $("search-note").textContent = query ? `${n} ${n === 1 ? "model" : "models"} for “${query}”:` : "Suggested models:";
  for (const m of result.models) {
    const meta = [];
    if (m.downloads) meta.push(`${fmtCount(m.downloads)} downloads`);
    if (m.likes) meta.push(`${fmtCount(m.likes)} likes`);
    if (!meta.length && m.curated) meta.push("details unavailable offline");
    const button = el("button", {
      type: "button", class: "result", "aria-pressed": String(S.selected === m.id), "data-model": m.id,
      onclick: () => selectModel(m.id),
    },
    el("span", { class: "result-id", text: m.id }),
    el("span", { class: "result-meta muted" }, meta.join(" · "),
      m.kind === "embed" ? el("span", { class: "badge kind", text: "embedding" }) : null,
      m.curated ? el("span", { class: "badge", text: "suggested" }) : null));
    list.append(el("li", {}, button));
  }
}

async function selectModel(id) {
  if (S.selected !== id) S.chosenQuant = null;
  S.selected = id;
  S.files = null;
  for (const b of document.querySelectorAll(".result")) b.setAttribute("aria-pressed", String(b.dataset.model === id));
  show($("pick"), true);
  $("pick-h").textContent = id;
  clearError($("pick-error"));
  show($("pick-form"), false);
  show($("pick-loading"), true);
  $("pick-h").focus();
  try {
    const files = await api(`/api/models/${modelPath(id)}/files`);
    if (S.selected !== id) return;
    S.files = files;
    renderPick();
  } catch (err) {
    if (S.selected !== id) return;
    showError($("pick-error"), err);
  } finally {
    if (S.selected === id) show($("pick-loading"), false);
  }
}

const DEVICE_PROVIDER = { cuda: "CUDAExecutionProvider", directml: "DmlExecutionProvider", coreml: "CoreMLExecutionProvider" };

function renderPick() {
  const files = S.files;
  const box = $("quant-options");
  box.replaceChildren();
  if (!files.options.length) {
    showError($("pick-error"), "This repository has no ONNX weights that hflocal can run.");
    return;
  }
  // Keep the user's choice across refreshes; otherwise suggest q4, else the first not yet installed.
  const preferred = files.options.find((o) => o.quantization === S.chosenQuant)
    || files.options.find((o) => o.quantization === "q4" && !o.installed)
    || files.options.find((o) => !o.installed) || files.options[0];
  S.chosenQuant = preferred.quantization;
  for (const opt of files.options) {
    const id = `quant-${opt.quantization}`;
    const input = el("input", { type: "radio", name: "quant", id, value: opt.quantization, checked: opt === preferred,
      onchange: () => { S.chosenQuant = opt.quantization; renderDiskNote(); } });
    box.append(el("label", { class: "option", for: id }, input,
      el("span", { class: "q", text: opt.quantization }),
      el("span", { class: "size", text: fmtBytes(opt.size) }),
      opt.installed ? el("span", { class: "badge ok", text: "installed" }) : null));
  }
  const select = $("device");
  const current = select.value || "auto";
  select.replaceChildren();
  const providers = S.hardware?.providers || [];
  const auto = S.hardware ? ` (${S.hardware.auto_device} here)` : "";
  select.append(el("option", { value: "auto", text: `Automatic${auto}` }), el("option", { value: "cpu", text: "CPU" }));
  for (const [device, provider] of Object.entries(DEVICE_PROVIDER)) {
    if (providers.includes(provider)) select.append(el("option", { value: device, text: device.toUpperCase() === "CUDA" ? "CUDA (NVIDIA)" : device === "directml" ? "DirectML" : "Core ML" }));
  }
  select.value = [...select.options].some((o) => o.value === current) ? current : "auto";
  $("device-note").textContent = S.hardware ? S.hardware.auto_reason : "";
  if (files.gated) showError($("pick-error"), "This model is gated: accept its terms on the Hub and set HF_TOKEN for the agent, or the download will be refused.");
  renderDiskNote();
  show($("pick-form"), true);
}

function chosenOption() {
  const q = document.querySelector('input[name="quant"]:checked')?.value;
  return S.files?.options.find((o) => o.quantization === q) || null;
}

function renderDiskNote() {
  const opt = chosenOption();
  const note = $("disk-note");
  note.classList.remove("warn");
  if (!opt) { note.textContent = ""; return; }
  let text = `Download size ${fmtBytes(opt.size)}`;
  if (S.hardware) {
    text += ` · ${fmtBytes(S.hardware.disk_free)} free on the cache disk`;
    if (opt.size > S.hardware.disk_free) {
      text += " — not enough space";
      note.classList.add("warn");
    }
  }
  note.textContent = text;
  $("download-go").textContent = opt.installed ? `Download ${opt.quantization} again` : `Download ${opt.quantization} (${fmtBytes(opt.size)})`;
}

async function startDownload(ev) {
  ev.preventDefault();
  const opt = chosenOption();
  if (!opt || !S.files) return;
  clearError($("pick-error"));
  await download(S.files.model_id, opt.quantization, $("device").value, opt.size);
}

async function download(modelId, quantization, device, size) {
  const button = $("download-go");
  button.disabled = true;
  try {
    const job = await api("/api/downloads", { method: "POST", body: { model_id: modelId, quantization, device } });
    const known = S.jobs.get(job.job_id);
    S.jobs.set(job.job_id, known || {
      job_id: job.job_id, key: job.key, model_id: modelId, quantization, done: 0, total: size || 0,
      rate: 0, eta: null, state: "running",
    });
    renderJobs();
  } catch (err) {
    if (S.selected === modelId) showError($("pick-error"), err);
    else banner(explain(err));
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ downloads

function jobFromInfo(d) {
  return {
    job_id: d.job_id, key: d.key, model_id: d.model_id, quantization: d.quantization,
    done: d.done_bytes, total: d.total_bytes, rate: d.rate_bps, eta: d.eta_s, state: d.state === "running" ? "running" : d.state,
  };
}

function ensureJob(ev) {
  let job = S.jobs.get(ev.job_id);
  if (!job) {
    const k = parseKey(ev.key);
    job = { job_id: ev.job_id, key: ev.key, model_id: ev.model_id || k.model, quantization: ev.quantization || k.quant,
      done: 0, total: ev.total_bytes || 0, rate: 0, eta: null, state: "running" };
    S.jobs.set(ev.job_id, job);
  }
  return job;
}

function renderJobs() {
  const list = $("jobs");
  const jobs = [...S.jobs.values()];
  show($("downloads-empty"), jobs.length === 0);
  const seen = new Set();
  for (const job of jobs) {
    seen.add(job.job_id);
    let item = list.querySelector(`li[data-job="${CSS.escape(job.job_id)}"]`);
    if (!item) {
      item = el("li", { class: "job", "data-job": job.job_id });
      list.append(item);
    }
    renderJob(item, job);
  }
  for (const item of [...list.children]) if (!seen.has(item.dataset.job)) item.remove();
}

function renderJob(item, job) {
  const pct = job.total > 0 ? Math.min(100, Math.floor((100 * job.done) / job.total)) : (job.state === "finished" ? 100 : 0);
  item.dataset.state = job.state;
  const title = el("div", { class: "job-title" }, el("strong", { text: job.model_id }), ` ${job.quantization}`);
  const bar = el("progress", { max: 100, value: pct, "aria-label": `Download of ${job.model_id} ${job.quantization}` });
  bar.value = pct;
  let detail;
  const actions = el("div", { class: "actions" });
  const dismiss = () => { S.jobs.delete(job.job_id); renderJobs(); };
  switch (job.state) {
    case "finished":
      detail = `Downloaded ${fmtBytes(job.total)} — ready to use.`;
      actions.append(el("button", { type: "button", class: "secondary", text: "Dismiss", onclick: dismiss }));
      break;
    case "failed":
      detail = explain({ code: job.code, message: job.message });
      actions.append(
        el("button", { type: "button", text: "Retry", onclick: () => { dismiss(); download(job.model_id, job.quantization, parseKey(job.key).device); } }),
        el("button", { type: "button", class: "secondary", text: "Dismiss", onclick: dismiss }));
      break;
    case "cancelled":
      detail = `Cancelled at ${fmtBytes(job.done)}. Downloading again resumes from there.`;
      actions.append(el("button", { type: "button", class: "secondary", text: "Dismiss", onclick: dismiss }));
      break;
    default: {
      const parts = [`${fmtBytes(job.done)} of ${fmtBytes(job.total)}`];
      if (job.rate > 0) parts.push(`${fmtBytes(job.rate)}/s`);
      const eta = fmtEta(job.eta);
      if (eta) parts.push(eta);
      detail = parts.join(" · ");
      actions.append(el("button", { type: "button", class: "danger", text: "Cancel", "aria-label": `Cancel the download of ${job.model_id} ${job.quantization}`,
        onclick: (e) => cancelJob(job, e.currentTarget) }));
    }
  }
  const pctText = el("span", { class: "pct", text: `${pct} %` });
  const line = el("div", { class: `job-detail ${job.state === "failed" ? "error-inline" : "muted"}`, text: detail });
  const focused = item.contains(document.activeElement) ? document.activeElement.textContent : null;
  item.replaceChildren(el("div", { class: "job-head" }, title, pctText), bar, line, actions);
  if (focused) [...item.querySelectorAll("button")].find((b) => b.textContent === focused)?.focus();
}

async function cancelJob(job, button) {
  button.disabled = true;
  try {
    await api(`/api/downloads/${encodeURIComponent(job.job_id)}`, { method: "DELETE" });
    job.state = "cancelled";
    renderJobs();
  } catch (err) {
    if (err.code === "not_found") { refreshDownloads(); return; }
    banner(explain(err));
    button.disabled = false;
  }
}

async function refreshDownloads() {
  try {
    const { downloads } = await api("/api/downloads");
    for (const d of downloads) {
      const job = S.jobs.get(d.job_id);
      if (!job || job.state === "running") S.jobs.set(d.job_id, { ...(job || {}), ...jobFromInfo(d) });
    }
    renderJobs();
  } catch (err) { /* banner already says why */ }
}

// ------------------------------------------------------------------ installed

async function refreshInstalled() {
  try {
    const result = await api("/api/installed");
    S.installed = result.models;
    clearError($("installed-error"));
    renderInstalled();
    renderApi();
  } catch (err) {
    showError($("installed-error"), err);
  }
}

function renderInstalled() {
  const list = $("models");
  list.replaceChildren();
  show($("installed-empty"), S.installed.length === 0);
  const status = S.status;
  for (const m of S.installed) {
    const isActive = status?.active === m.key || m.active;
    const loading = status?.activating === m.key;
    let state = m.status;
    if (loading) state = "loading";
    else if (isActive && status?.model_state === "failed") state = "failed";
    else if (isActive) state = "active";
    const label = { ready: "installed", downloading: "downloading", error: "error", loading: "loading…", active: "active", failed: "failed to load" }[state] || state;
    const sub = [m.kind === "embed" ? "embedding model" : "chat model", m.quantization, m.device, fmtBytes(m.size)];
    if (m.downloaded_at) sub.push(`added ${m.downloaded_at.slice(0, 10)}`);
    if (m.source && m.source !== "hub") sub.push(m.source);
    const actions = el("div", { class: "actions" });
    if (!isActive && m.status === "ready") {
      actions.append(el("button", { type: "button", text: "Make active", "aria-label": `Make ${m.model_id} ${m.quantization} active`,
        disabled: loading, onclick: (e) => activate(m, e.currentTarget) }));
    }
    actions.append(el("button", { type: "button", class: "danger secondary", text: "Delete", "aria-label": `Delete ${m.model_id} ${m.quantization}`,
      onclick: (e) => remove(m, e.currentTarget) }));
    list.append(el("li", { class: "model", "data-key": m.key, "data-state": state },
      el("div", { class: "model-main" },
        el("div", { class: "model-name" }, el("strong", { text: m.model_id }), el("span", { class: `state ${state}`, text: label })),
        el("div", { class: "muted small", text: sub.join(" · ") }),
        m.error ? el("div", { class: "error-inline small", text: m.error }) : null,
        isActive && status?.model_error ? el("div", { class: "error-inline small", text: status.model_error }) : null),
      actions));
  }
}

async function activate(m, button) {
  button.disabled = true;
  clearError($("installed-error"));
  try {
    await api("/api/activate", { method: "POST", body: { key: m.key } });
    await refreshStatus();
  } catch (err) {
    showError($("installed-error"), err);
    button.disabled = false;
  }
}

async function remove(m, button) {
  const what = `${m.model_id} (${m.quantization}, ${fmtBytes(m.size)})`;
  if (!window.confirm(`Delete ${what}? Its files are removed from the disk.`)) return;
  button.disabled = true;
  clearError($("installed-error"));
  try {
    await api(`/api/installed/${encodeURIComponent(m.key)}`, { method: "DELETE" });
    $("installed-h").setAttribute("tabindex", "-1");
    $("installed-h").focus();
    await Promise.all([refreshInstalled(), refreshStatus(), refreshHardware()]);
  } catch (err) {
    showError($("installed-error"), err);
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ hardware

async function refreshHardware() {
  try {
    S.hardware = await api("/api/hardware");
    clearError($("hardware-error"));
    renderHardware();
    if (S.files) renderDiskNote();
  } catch (err) {
    showError($("hardware-error"), err);
  }
}

function renderHardware() {
  const h = S.hardware;
  if (!h) return;
  const cores = h.cores_physical ? `${h.cores_logical} threads, ${h.cores_physical} cores` : `${h.cores_logical} threads`;
  $("hw-cpu").textContent = `${h.cpu} · ${cores}`;
  $("hw-ram").textContent = `${fmtBytes(h.ram_available)} free of ${fmtBytes(h.ram_total)}`;
  $("hw-gpu").textContent = h.gpus.length
    ? h.gpus.map((g) => g.name + (g.memory_bytes ? ` (${fmtBytes(g.memory_bytes)})` : "")).join(", ")
    : "None detected";
  $("hw-providers").replaceChildren(...h.providers.map((p) => el("span", { class: "chip", text: p })));
  $("hw-auto").textContent = `${h.auto_device} — ${h.auto_reason}`;
  $("hw-cache").replaceChildren(el("code", { text: h.cache_dir }));
  $("hw-cache-size").textContent = fmtBytes(h.cache_size);
  const free = $("hw-free");
  free.textContent = fmtBytes(h.disk_free);
  free.classList.toggle("warn", h.disk_free < 2e9);
  const s = S.status;
  $("hw-agent").textContent = s ? `hflocal ${s.version} · pid ${s.pid} · ${h.os} ${h.arch} · home ${s.home}` : `${h.os} ${h.arch}`;
}

// ------------------------------------------------------------------ refresh + events

async function refreshStatus() {
  try {
    S.status = await api("/api/status");
    for (const d of S.status.downloads) {
      const job = S.jobs.get(d.job_id);
      if (!job || job.state === "running") S.jobs.set(d.job_id, { ...(job || {}), ...jobFromInfo(d) });
    }
    renderStatus();
    renderJobs();
    renderInstalled();
    renderHardware();
  } catch (err) { /* banner says why */ }
}

async function refreshAll() {
  await Promise.all([refreshStatus(), refreshInstalled(), refreshHardware()]);
}

let events = null;

function connectEvents() {
  if (S.sessionEnded) return;
  events = new EventSource("/api/events");
  events.onopen = () => { setLive("on", "live"); refreshAll(); };
  events.onerror = async () => {
    setLive("off", "reconnecting…");
    // EventSource hides the status code: ask the API whether the session is still valid.
    try { await api("/api/status"); } catch (e) { /* sessionEnded / agentUnreachable already handled */ }
  };
  events.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    onEvent(ev);
  };
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { refreshStatus(); refreshInstalled(); }, 150);
}

function onEvent(ev) {
  switch (ev.topic) {
    case "download.started": {
      const job = ensureJob(ev);
      Object.assign(job, { total: ev.total_bytes, done: ev.resumed_bytes || 0, state: "running" });
      renderJobs();
      break;
    }
    case "download.progress": {
      const job = ensureJob(ev);
      if (job.state !== "running") break;
      Object.assign(job, { done: ev.done_bytes, total: ev.total_bytes, rate: ev.rate_bps, eta: ev.eta_s });
      renderJobs();
      break;
    }
    case "download.finished": {
      const job = ensureJob(ev);
      Object.assign(job, { state: "finished", done: ev.size_bytes, total: ev.size_bytes, rate: 0, eta: null });
      renderJobs();
      refreshSoon();
      refreshHardware();
      if (S.selected && S.selected === job.model_id) selectModel(S.selected);
      break;
    }
    case "download.failed": {
      const job = ensureJob(ev);
      Object.assign(job, { state: "failed", code: ev.code, message: ev.message });
      renderJobs();
      refreshSoon();
      break;
    }
    case "download.cancelled": {
      const job = ensureJob(ev);
      job.state = "cancelled";
      renderJobs();
      refreshSoon();
      break;
    }
    case "model.installed_changed":
    case "model.loading":
    case "model.ready":
    case "model.failed":
    case "model.unloaded":
    case "model.activated":
      refreshSoon();
      break;
    case "resync":
      refreshAll();
      break;
    default:
      break;
  }
}

// ------------------------------------------------------------------ start

function init() {
  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); search($("search-q").value.trim()); });
  $("search-kind").addEventListener("change", kindChanged);
  $("pick-form").addEventListener("submit", startDownload);
  $("try-form").addEventListener("submit", tryModel);
  $("banner-retry").addEventListener("click", () => { if (bannerRetry) bannerRetry(); });
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", () => {
      const target = $(button.dataset.copy);
      copyText(target.value !== undefined && target.tagName === "INPUT" ? target.value : target.textContent, button);
    });
  }
  renderApi();
  search("");  // the suggestions; a search the user starts meanwhile wins (searchSeq)
  refreshAll();
  connectEvents();
}

document.addEventListener("DOMContentLoaded", init);
