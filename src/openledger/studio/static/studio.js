"use strict";
// The Studio page: four tabs over the JSON API under /api (see openledger.studio).

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

async function api(method, path, body, headers = {}) {
  const options = { method, headers };
  if (body instanceof Blob) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers = { "Content-Type": "application/json", ...headers };
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function say(id, text, kind = "ok") {
  const box = $(id);
  box.textContent = text;
  box.className = `message ${kind}`;
}

// Runs an action, showing its error as a message on the tab.
function guarded(messageId, action) {
  return async (...args) => {
    try { await action(...args); } catch (error) { say(messageId, error.message, "error"); }
  };
}

function fillSelect(select, options, keep = true) {
  const previous = select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
  if (keep && options.some(([value]) => value === previous)) select.value = previous;
}

function baseName(model) { return model.split("/").filter(Boolean).pop() || model; }
function short(hex) { return hex ? `${hex.slice(0, 10)}…${hex.slice(-6)}` : ""; }
function tokens(wei) { return (Number(BigInt(wei) / 10n ** 12n) / 1e6).toFixed(6); }

// -- tabs -----------------------------------------------------------------------------------
document.querySelectorAll(".tab").forEach((button) => button.addEventListener("click", () => {
  document.querySelectorAll(".tab, .panel").forEach((n) => n.classList.remove("active"));
  button.classList.add("active");
  $(button.dataset.tab).classList.add("active");
  refresh[button.dataset.tab]().catch((error) => console.error(error));
}));

// -- Datanets -------------------------------------------------------------------------------
let schemas = [];

async function refreshDatanets() {
  const accounts = await api("GET", "/api/accounts");
  fillSelect($("account"), accounts.map((a) => [a.name, `${a.name} (${short(a.address)})`]));
  const chosen = accounts.find((a) => a.name === $("account").value);
  $("account-address").textContent = chosen ? chosen.address : "create an account to sign with";
  if (!schemas.length) {
    schemas = await api("GET", "/api/schemas");
    fillSelect($("dn-schema"), schemas.map((s) => [s.id, `${s.name} (${s.id})`]));
    showSchemaHelp();
  }
  const datanets = await api("GET", "/api/datanets");
  fillSelect($("dn-select"), datanets.map((d) => [d.name, d.name]));
  await showDatanet(datanets.find((d) => d.name === $("dn-select").value));
}

function showSchemaHelp() {
  const schema = schemas.find((s) => s.id === $("dn-schema").value);
  $("dn-schema-help").textContent = schema ? `${schema.doc} Fields: ${schema.fields.join(", ")}.` : "";
}

async function showDatanet(datanet) {
  $("snapshots").replaceChildren();
  $("records").tBodies[0].replaceChildren();
  if (!datanet) { $("dn-summary").textContent = "no datanet yet"; return; }
  $("dn-summary").textContent = `${datanet.schema}, ${datanet.visibility}, ${datanet.records} records`;
  for (const s of datanet.snapshots) {
    $("snapshots").append(el("p", { class: "snapshot" }, `snapshot #${s.id}: ${s.count} records, root `,
      el("span", { class: "mono root" }, s.root)));
  }
  await showAccess(datanet);
  $("records-note").textContent = "";
  const query = new URLSearchParams({ reader: $("account").value });
  let records = [];
  try {
    ({ records } = await api("GET", `/api/datanets/${encodeURIComponent(datanet.name)}/records?${query}`));
  } catch (error) {
    $("records-note").textContent = error.message;
  }
  $("records").tBodies[0].replaceChildren(...records.map((r) => el("tr", { "data-hash": r.record_hash },
    el("td", { class: `status-${r.status}` }, r.status),
    el("td", { class: "mono" }, r.contributor_name || short(r.contributor)),
    el("td", {}, JSON.stringify(r.fields)),
    el("td", { class: "mono" }, short(r.record_hash)),
    el("td", {}, reviewButton(datanet.name, r.record_hash, true), reviewButton(datanet.name, r.record_hash, false)))));
}

// Access requests of a private datanet: filed, approved, denied, revoked as Sign as.
async function showAccess(datanet) {
  $("access").hidden = datanet.visibility !== "private";
  $("access-requests").tBodies[0].replaceChildren();
  if ($("access").hidden) return;
  const access = await api("GET", `/api/datanets/${encodeURIComponent(datanet.name)}/access`);
  $("access-requests").tBodies[0].replaceChildren(...access.requests.map((r) => el("tr", { "data-request": r.id },
    el("td", {}, r.id), el("td", { class: "mono" }, r.name || short(r.requester)), el("td", {}, r.purpose),
    el("td", { class: "access-status" }, r.status),
    el("td", {}, ...["approve", "deny", "revoke"].map((d) => decisionButton(datanet.name, r.id, d))))));
}

function decisionButton(datanet, id, decision) {
  const button = el("button", { class: decision }, decision);
  button.addEventListener("click", guarded("dn-message", async () => {
    const done = await api("POST", `/api/datanets/${encodeURIComponent(datanet)}/access/${id}/${decision}`,
      { owner: $("account").value, days: Number($("access-days").value) });
    await refreshDatanets();
    say("dn-message", `access request ${id} ${done.status} by ${$("account").value}`);
  }));
  return button;
}

$("access-request").addEventListener("click", guarded("dn-message", async () => {
  const done = await api("POST", `/api/datanets/${encodeURIComponent($("dn-select").value)}/access`,
    { account: $("account").value, purpose: $("access-purpose").value });
  await refreshDatanets();
  say("dn-message", `access request ${done.id} filed by ${$("account").value}; its owner decides`);
}));

// A validator's signed decision on one record, as the account chosen above.
function reviewButton(datanet, hash, accept) {
  const button = el("button", { class: accept ? "accept" : "reject" }, accept ? "accept" : "reject");
  button.addEventListener("click", guarded("dn-message", async () => {
    const done = await api("POST", `/api/datanets/${encodeURIComponent(datanet)}/review`,
      { record_hash: hash, accept, reason: $("review-reason").value, account: $("account").value });
    await refreshDatanets();
    say("dn-message", `record ${short(hash)} ${done.status}, signed by ${$("account").value}`);
  }));
  return button;
}

$("validator-add").addEventListener("click", guarded("dn-message", async () => {
  const validator = $("validator-name").value.trim();
  const done = await api("POST", `/api/datanets/${encodeURIComponent($("dn-select").value)}/validators`,
    { validator, owner: $("account").value });
  say("dn-message", `${validator} may review; ${done.validators.length} validator(s)`);
}));

$("dn-schema").addEventListener("change", showSchemaHelp);
$("dn-select").addEventListener("change", guarded("dn-message", refreshDatanets));
$("account").addEventListener("change", guarded("dn-message", refreshDatanets));
$("account-create").addEventListener("click", guarded("dn-message", async () => {
  const made = await api("POST", "/api/accounts", { name: $("new-account").value.trim() });
  await refreshDatanets();
  $("account").value = made.name;
  await refreshDatanets();
  say("dn-message", `account ${made.name} created: ${made.address}`);
}));
$("dn-create").addEventListener("click", guarded("dn-message", async () => {
  const made = await api("POST", "/api/datanets", {
    name: $("dn-name").value.trim(), schema_id: $("dn-schema").value, owner: $("account").value || null,
    private: $("dn-private").checked,
  });
  await refreshDatanets();
  $("dn-select").value = made.name;
  await refreshDatanets();
  say("dn-message", `datanet ${made.name} created (${made.schema}, ${made.visibility})`);
}));
$("upload-btn").addEventListener("click", guarded("dn-message", async () => {
  const file = $("upload-file").files[0];
  if (!file) throw new Error("choose a .jsonl, .csv or .parquet file first");
  if (!$("account").value) throw new Error("create a local account to sign with first");
  const query = new URLSearchParams({ filename: file.name, account: $("account").value });
  const name = encodeURIComponent($("dn-select").value);
  const done = await api("POST", `/api/datanets/${name}/upload?${query}`, file);
  await refreshDatanets();
  say("dn-message", `${done.stored} records stored, signed by ${$("account").value}`);
}));
$("snapshot-btn").addEventListener("click", guarded("dn-message", async () => {
  const snap = await api("POST", `/api/datanets/${encodeURIComponent($("dn-select").value)}/snapshot`);
  await refreshDatanets();
  say("dn-message", `snapshot #${snap.id} of ${snap.count} records, root ${snap.root}`);
}));

// -- Train ----------------------------------------------------------------------------------
let options = null;
let polling = null;

async function refreshTrain() {
  if (!options) {
    options = await api("GET", "/api/train/options");
    fillSelect($("tr-preset"), Object.keys(options.presets).map((p) => [p, p]));
    $("tr-fields").replaceChildren(...Object.entries(options.fields).map(([name, field]) => el("label", {},
      el("span", { title: field.help }, name),
      el("input", { id: `tr-field-${name}`, name, value: field.default ?? "" }),
      el("small", {}, field.help))));
    applyPreset();
  }
  fillSelect($("tr-base"), options.base_models.map((m) => [m.value, m.label]));
  const datanets = await api("GET", "/api/datanets");
  fillSelect($("tr-snapshot"), datanets.flatMap((d) => d.snapshots.map((s) =>
    [`${d.name}|${s.id}`, `${d.name} #${s.id} (${s.count} records, root ${short(s.root)})`])));
  const accounts = await api("GET", "/api/accounts");
  fillSelect($("tr-registrant"), [["", "the chain's default account"], ...accounts.map((a) => [a.name, a.name])]);
  const adapters = await api("GET", "/api/adapters");
  $("adapters").tBodies[0].replaceChildren(...adapters.map((a) => el("tr", { "data-name": a.name },
    el("td", {}, a.name), el("td", { title: a.base_model }, baseName(a.base_model)), el("td", {}, a.steps),
    el("td", {}, a.train_loss == null ? "" : a.train_loss.toFixed(4)), el("td", { class: "mono" }, short(a.id)),
    el("td", { class: "mono model-id", title: a.model ? `registered by ${a.model.registrant} on chain ${a.model.chain_id}` : "" },
      a.model ? a.model.model_id : "not registered"))));
}

function applyPreset() {
  const preset = options.presets[$("tr-preset").value] || {};
  for (const [name, field] of Object.entries(options.fields)) {
    const value = name in preset ? preset[name] : field.default;
    $(`tr-field-${name}`).value = value ?? "";
  }
}

function recipeFields() {
  const fields = {};
  for (const name of Object.keys(options.fields)) {
    const raw = $(`tr-field-${name}`).value.trim();
    if (raw === "") continue;
    if (raw === "true" || raw === "false") fields[name] = raw === "true";
    else if (name !== "target_modules" && !Number.isNaN(Number(raw))) fields[name] = Number(raw);
    else fields[name] = raw;
  }
  return fields;
}

function drawCurve(losses) {
  const svg = $("tr-curve");
  svg.dataset.points = String(losses.length);
  svg.replaceChildren();
  if (!losses.length) return;
  const ns = "http://www.w3.org/2000/svg";
  const steps = losses.map((p) => p[0]);
  const values = losses.map((p) => p[1]);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps, Math.min(...steps) + 1)];
  const [y0, y1] = [Math.min(...values), Math.max(...values, Math.min(...values) + 1e-6)];
  const x = (s) => 40 + (370 * (s - x0)) / (x1 - x0);
  const y = (v) => 200 - (180 * (v - y0)) / (y1 - y0);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", losses.map(([s, v]) => `${x(s)},${y(v)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#3b7dd8");
  line.setAttribute("stroke-width", "2");
  svg.append(line);
  for (const [text, tx, ty] of [[y1.toFixed(3), 2, 24], [y0.toFixed(3), 2, 204], [`step ${x1}`, 360, 216]]) {
    const label = document.createElementNS(ns, "text");
    Object.entries({ x: tx, y: ty, "font-size": 11, fill: "#5b6672" }).forEach(([k, v]) => label.setAttribute(k, v));
    label.textContent = text;
    svg.append(label);
  }
}

function showJob(job) {
  $("tr-progress").max = job.max_steps || 1;
  $("tr-progress").value = job.step;
  const eta = job.eta == null ? "" : `, about ${Math.ceil(job.eta)} s left`;
  $("tr-status").textContent = `${job.name}: ${job.state}, step ${job.step}/${job.max_steps || "?"}${eta}`;
  $("tr-status").dataset.state = job.state;
  $("tr-logs").textContent = job.logs.join("\n");
  $("tr-logs").scrollTop = $("tr-logs").scrollHeight;
  drawCurve(job.losses);
  const running = job.state === "queued" || job.state === "running";
  $("tr-start").disabled = running;
  $("tr-cancel").disabled = !running;
  if (job.state === "failed") say("tr-message", job.error, "error");
  if (job.state === "done") {
    say("tr-message", `adapter ${job.adapter} is ready, registered on chain ${job.model.chain_id} as model ${job.model.model_id}`);
  }
  if (job.state === "cancelled") say("tr-message", "training cancelled; nothing was kept");
  return running;
}

async function poll(jobId) {
  clearTimeout(polling);
  const job = await api("GET", `/api/train/jobs/${jobId}`);
  if (showJob(job)) polling = setTimeout(() => poll(jobId).catch((e) => say("tr-message", e.message, "error")), 500);
  else await refreshTrain();
}

$("tr-preset").addEventListener("change", applyPreset);
$("tr-start").addEventListener("click", guarded("tr-message", async () => {
  const [datanet, snapshot] = $("tr-snapshot").value.split("|");
  if (!datanet) throw new Error("take a snapshot of a datanet first (Datanets tab)");
  const job = await api("POST", "/api/train", {
    name: $("tr-name").value.trim(), datanet, snapshot_id: Number(snapshot),
    base_model: $("tr-base").value, recipe: recipeFields(), registrant: $("tr-registrant").value || null,
  });
  say("tr-message", "training started");
  $("tr-cancel").dataset.job = job.id;
  await poll(job.id);
}));
$("tr-cancel").addEventListener("click", guarded("tr-message", async () => {
  await api("POST", `/api/train/jobs/${$("tr-cancel").dataset.job}/cancel`);
}));

// -- Chat -----------------------------------------------------------------------------------
async function refreshChat() {
  const adapters = await api("GET", "/api/adapters");
  fillSelect($("ch-adapter"), [["", "none (base model)"], ...adapters.map((a) => [a.name, `${a.name} (on ${baseName(a.base_model)})`])]);
  if (!options) options = await api("GET", "/api/train/options");
  fillSelect($("ch-base"), options.base_models.map((m) => [m.value, m.label]));
  const kept = mixWeights();
  $("ch-mix").replaceChildren(...adapters.map((a) => el("label", {}, `${a.name} `,
    el("input", { class: "mix-weight", type: "number", min: "0", step: "0.1", value: kept[a.name] ?? "0", "data-adapter": a.name }))));
  const datanets = await api("GET", "/api/datanets");
  fillSelect($("ch-retrieval"), [["", "no retrieval"], ...datanets.filter((d) => d.snapshots.length)
    .map((d) => [d.name, `${d.name} (latest snapshot${d.visibility === "private" ? ", private" : ""})`])]);
  await fillReaders($("ch-reader"));
}

// Local accounts that may read a private datanet with their approved access ("" for public ones).
async function fillReaders(select) {
  const accounts = await api("GET", "/api/accounts");
  fillSelect(select, [["", "nobody (public datanets)"], ...accounts.map((a) => [a.name, a.name])]);
}

// The mix's adapters with a weight above zero, {name: weight}.
function mixWeights() {
  const found = {};
  for (const input of document.querySelectorAll(".mix-weight")) {
    const weight = Number(input.value);
    if (weight > 0) found[input.dataset.adapter] = weight;
  }
  return found;
}

// Numbered sources under an answer; the ones the answer cites are marked.
function sourceList(sources) {
  return el("ol", { class: "sources" }, ...sources.map((s) => el("li", { id: `source-${s.number}`, "data-number": s.number },
    el("span", { class: "mono", title: s.record_hash }, `${s.name || short(s.contributor)} · ${short(s.record_hash)}`),
    " ", s.text)));
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
    }
  }
}

$("ch-send").addEventListener("click", guarded("ch-message", async () => {
  const message = $("ch-input").value.trim();
  const mix = mixWeights();
  const mixed = Object.keys(mix).length > 0;
  const adapter = mixed ? null : ($("ch-adapter").value || null);
  const body = { message, adapter, mix: mixed ? mix : null, base_model: adapter || mixed ? null : $("ch-base").value,
    max_tokens: Number($("ch-max").value), retrieval: $("ch-retrieval").value || null,
    reader: $("ch-reader").value || null };
  const response = await fetch("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) throw new Error((await response.json()).error);
  say("ch-message", "");
  $("ch-log").append(el("div", { class: "turn user" }, el("span", { class: "who" }, "you"), message));
  const text = el("span", { class: "answer" });
  const who = mixed ? Object.entries(mix).map(([n, w]) => `${n}×${w}`).join(" + ") : (adapter || "base");
  const turn = el("div", { class: "turn assistant" }, el("span", { class: "who" }, who), text);
  $("ch-log").append(turn);
  let list = null;
  await readEvents(response, (event) => {
    if (event.sources) { list = sourceList(event.sources); turn.append(list); }
    if (event.delta) text.textContent += event.delta;
    if (event.cited && list) for (const n of event.cited) list.querySelector(`[data-number="${n}"]`).classList.add("cited");
    if (event.error) say("ch-message", event.error, "error");
    if (event.done) {
      turn.dataset.done = "true";
      turn.dataset.requestId = event.request_id;
      const parts = mixed ? Object.keys(mix) : (adapter ? [adapter] : []);
      for (const part of parts) turn.append(attributeButton(event.request_id, part, message, event.text, mixed));
    }
  });
}));

// "Attribute this answer": a background job the page polls, with a cancel button.
function attributeButton(requestId, adapter, prompt, completion, mixed) {
  const bars = el("div", { class: "bars" });
  const label = mixed ? `Attribute ${adapter}'s part` : "Attribute this answer";
  const button = el("button", { class: "attribute", "data-adapter": adapter }, label);
  const cancel = el("button", { class: "attribute-cancel", hidden: "" }, "Cancel");
  const status = el("span", { class: "attribute-status" });
  let job = null;
  cancel.addEventListener("click", guarded("ch-message", async () => {
    if (job) await api("POST", `/api/attribute/${job}/cancel`);
  }));
  button.addEventListener("click", guarded("ch-message", async () => {
    button.disabled = true;
    cancel.hidden = false;
    status.dataset.state = "running";
    status.textContent = "attributing…";
    try {
      let result = await api("POST", "/api/attribute", { request_id: requestId, adapter, prompt, completion });
      job = result.id;
      while (result.state === "running") {
        await new Promise((resolve) => setTimeout(resolve, 300));
        result = await api("GET", `/api/attribute/${job}`);
        status.textContent = `attributing… ${result.elapsed.toFixed(0)} s`;
      }
      status.dataset.state = result.state;
      if (result.state === "failed") throw new Error(result.error);
      if (result.state === "cancelled") {
        status.textContent = "cancelled; nothing was written";
        button.disabled = false;
        say("ch-message", "attribution cancelled; nothing was written");
        return;
      }
      status.textContent = `attributed (${result.method})`;
      bars.replaceChildren(...result.shares.map((s) => el("div", { class: "bar" },
        el("span", { class: "mono" }, s.name || short(s.contributor)),
        el("div", { class: "fill", style: `width: ${(100 * s.share).toFixed(1)}%` }),
        el("span", {}, `${(100 * s.share).toFixed(1)}%`))));
      if (!result.shares.length) bars.textContent = "no record helped this answer";
      say("ch-message", `attributed (${result.method}); ${result.pending} answer(s) wait for the next reward epoch`);
    } catch (error) {
      button.disabled = false;
      status.textContent = "";
      throw error;
    } finally { cancel.hidden = true; }
  }));
  return el("div", { class: "attribution" }, button, cancel, status, bars);
}

// -- Rewards --------------------------------------------------------------------------------
async function refreshRewards() {
  const data = await api("GET", "/api/rewards");
  $("rw-pending").textContent = `${data.answers} answer(s) metered; ${data.unsettled} not settled yet, ` +
    `${data.attributed} attributed answer(s) wait for the next epoch`;
  $("rw-epochs").tBodies[0].replaceChildren(...data.epochs.flatMap((epoch) => epoch.payees.map((p) => {
    const claim = el("button", { class: "claim" }, "Claim");
    claim.disabled = p.claimed || !epoch.live;
    claim.addEventListener("click", guarded("rw-message", async () => {
      const done = await api("POST", "/api/rewards/claim", { epoch_id: epoch.epoch_id, address: p.address });
      say("rw-message", `claimed: ${p.name || p.address} now holds ${tokens(done.balance)} tokens`);
      await refreshRewards();
    }));
    const state = p.claimed ? "claimed" : (epoch.live ? tokens(p.amount) : `${tokens(p.amount)} (chain gone)`);
    return el("tr", { "data-address": p.address, "data-epoch": epoch.epoch_id },
      el("td", {}, epoch.epoch_id), el("td", { class: "mono" }, p.name || p.address),
      el("td", { class: "claimable" }, state),
      el("td", { class: "balance" }, tokens(p.balance)), el("td", {}, claim));
  })));
  const slashed = data.epochs.flatMap((epoch) => epoch.bond_penalties.map((b) => el("tr", {},
    el("td", {}, epoch.epoch_id), el("td", { class: "mono" }, b.name || b.address), el("td", {}, tokens(b.amount)))));
  $("rw-balances").hidden = data.balances.length === 0;
  $("rw-balances").tBodies[0].replaceChildren(...data.balances.map((b) => el("tr", { "data-account": b.name },
    el("td", {}, b.name), el("td", { class: "mono" }, b.address), el("td", { class: "tokens" }, tokens(b.balance)))));
  $("rw-bonds").hidden = slashed.length === 0;
  $("rw-bonds").tBodies[0].replaceChildren(...slashed);
}

$("rw-settle").addEventListener("click", guarded("rw-message", async () => {
  const epoch = await api("POST", "/api/rewards/settle", { pool: $("rw-pool").value });
  const closed = epoch.nothing_owed ? `; ${epoch.nothing_owed} unattributed answer(s) closed with nothing owed` : "";
  const bonds = epoch.bond_penalties.length ? `; ${epoch.bond_penalties.length} data bond(s) slashed in its window` : "";
  say("rw-message", epoch.epoch_id === null
    ? `nothing was owed${closed}`
    : `epoch ${epoch.epoch_id} settled (${epoch.settled} answer(s)), reward root ${epoch.root}${closed}${bonds}`);
  await refreshRewards();
}));

// -- Evaluate -------------------------------------------------------------------------------
async function refreshEvaluate() {
  const adapters = await api("GET", "/api/adapters");
  fillSelect($("ev-adapter"), adapters.map((a) => [a.name, a.name]));
  const datanets = await api("GET", "/api/datanets");
  fillSelect($("ev-snapshot"), datanets.flatMap((d) => d.snapshots.map((s) =>
    [`${d.name}|${s.id}`, `${d.name} #${s.id} (${s.count} records${d.visibility === "private" ? ", private" : ""})`])));
  await fillReaders($("ev-reader"));
}

function score(value, digits = 4) { return value == null ? "n/a" : Number(value).toFixed(digits); }

function showEvaluation(job) {
  $("ev-status").textContent = job.state === "running" ? "evaluating…" : job.state;
  if (job.state === "failed") say("ev-message", job.error, "error");
  if (job.state !== "done") return;
  const r = job.result;
  say("ev-message", `${job.adapter} on ${job.datanet} #${job.snapshot_id}: ${r.num_records} records, `
    + `${r.num_generated} answers generated` + (job.trained_on ? " (the snapshot it was trained on: not held out)" : ""));
  const rows = [["loss", r.base_loss, r.loss], ["perplexity", r.base_perplexity, r.perplexity],
    ["exact match", r.base_exact_match, r.exact_match], ["ROUGE-L", r.base_rouge_l, r.rouge_l]];
  $("ev-scores").tBodies[0].replaceChildren(...rows.map(([name, base, mine]) =>
    el("tr", {}, el("td", {}, name), el("td", {}, score(base)), el("td", {}, score(mine)))));
  $("ev-samples").tBodies[0].replaceChildren(...r.samples.map((s) => el("tr", {},
    el("td", {}, s.prompt), el("td", {}, s.reference), el("td", {}, s.base), el("td", {}, s.adapter))));
}

$("ev-start").addEventListener("click", guarded("ev-message", async () => {
  const [datanet, snapshot] = $("ev-snapshot").value.split("|");
  const body = { adapter: $("ev-adapter").value, datanet, snapshot_id: Number(snapshot),
    num_generate: Number($("ev-generate").value), reader: $("ev-reader").value || null };
  let job = await api("POST", "/api/evaluate", body);
  $("ev-scores").tBodies[0].replaceChildren();
  $("ev-samples").tBodies[0].replaceChildren();
  say("ev-message", "", "ok");
  showEvaluation(job);
  while (job.state === "running") {
    await new Promise((resolve) => setTimeout(resolve, 500));
    job = await api("GET", `/api/evaluate/${job.id}`);
    showEvaluation(job);
  }
}));

const refresh = { datanets: refreshDatanets, train: refreshTrain, evaluate: refreshEvaluate, chat: refreshChat, rewards: refreshRewards };
refreshDatanets().catch((error) => say("dn-message", error.message, "error"));
