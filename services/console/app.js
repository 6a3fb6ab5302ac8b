// The console: sign-in, the subscription and billing pages, admin actions and time travel,
// all read and written through the /v1 API with the signed-in token.

import { PALETTE, renderStackedBars } from "./chart.js";
import { fromUcr, groupCredits, isZero, sumCredits, toUcr } from "./money.js";
import { initNotifications, loadNotifications } from "./notifications.js";

const SESSION_KEY = "credits-ledger-console";
const USAGE_PAGE_ROWS = 25;
const EXPORT_PAGE_ROWS = 1000; // the API's largest usage page
const MAX_EXPORT_ROWS = 1000000;
const MAX_CHART_ROWS = 200000;
const COUNTDOWN_TICK_MS = 1000;
const RESIZE_SETTLE_MS = 150;
const MS_PER_DAY = 86400000;
const MODELS = [
  "qwen3.6-plus", "glm-5", "MiniMax-M2.5", "deepseek-v3.2",
  "qwen-image-2.0", "qwen-image-2.0-pro", "wan2.7-image", "wan2.7-image-pro",
];
const TIERS = ["standard", "advanced", "premium"];
const CSV_COLUMNS = [
  "recorded_at", "event_id", "occurred_at", "seat_id", "product", "model",
  "input_tokens", "cached_tokens", "output_tokens", "thinking", "tool_calls", "images",
  "input_per_1k", "cached_per_1k", "output_per_1k", "thinking_per_1k", "tool_call", "image",
  "rate_card_version", "credits", "allocation", "kind", "reverses", "reversed", "reason",
];

const state = {
  token: null,
  sub: null,
  me: null,
  asOf: null,
  data: null,
  fetchedAtMs: 0,
  stackBy: "seat",
  chartRows: [],
  chartTruncated: false,
  usage: { filter: {}, cursors: [null], index: 0, next: null, rows: [] },
};

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text, never HTML). */
function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "className") element.className = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) element.append(child);
  }
  return element;
}

// -- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

let requestsInFlight = 0;

/** `body[data-busy]` counts requests in flight, so a test (or a style) can tell when all is drawn. */
function setBusy(step) {
  requestsInFlight += step;
  document.body.dataset.busy = String(requestsInFlight);
}

async function api(path, options = {}) {
  setBusy(1);
  try {
    return await send(path, options);
  } finally {
    setBusy(-1);
  }
}

async function send(path, { method = "GET", params = {}, body, headers = {} } = {}) {
  const url = new URL(`../v1${path}`, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const init = {
    method,
    cache: "no-store",
    headers: { Accept: "application/json", Authorization: `Bearer ${state.token}`, ...headers },
  };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

const subPath = (suffix = "") => `/subscriptions/${encodeURIComponent(state.sub)}${suffix}`;
const asOfParams = () => (state.asOf ? { as_of: state.asOf } : {});

/** Every usage row of `filter` (all pages), at most `maxRows`. */
async function fetchAllUsage(filter, maxRows) {
  const rows = [];
  let cursor = null;
  do {
    const page = await api(subPath("/usage"), {
      params: { ...filter, ...asOfParams(), limit: EXPORT_PAGE_ROWS, cursor },
    });
    rows.push(...page.items);
    cursor = page.next_cursor;
    if (cursor && rows.length >= maxRows) return { rows: rows.slice(0, maxRows), truncated: true };
  } while (cursor);
  return { rows, truncated: false };
}

function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// -- formatting -----------------------------------------------------------------------------

const credits = (text) => groupCredits(text);
const count = (n) => Number(n).toLocaleString("en-US");

function fmtTime(iso) {
  if (!iso) return "—";
  return new Date(iso).toISOString().slice(0, 19).replace("T", " ");
}

function timeEl(iso) {
  return el("time", { datetime: iso }, fmtTime(iso));
}

/** "2026-02-01T10:00" or "...:05" from a datetime-local input, read as UTC -> RFC 3339. */
function localInputToRfc3339(value) {
  if (!value) return "";
  const withSeconds = value.length === 16 ? `${value}:00` : value;
  return `${withSeconds}Z`;
}

function formatCountdown(ms) {
  if (ms <= 0) return "expired";
  const total = Math.floor(ms / 1000);
  const days = Math.floor(total / 86400);
  const pad = (n) => String(n).padStart(2, "0");
  const clock = `${pad(Math.floor((total % 86400) / 3600))}h ${pad(Math.floor((total % 3600) / 60))}m ${pad(total % 60)}s`;
  return days ? `${days}d ${clock}` : clock;
}

/** A countdown that ticks with the wall clock, or stands still when showing the past. */
function countdownEl(expiresInSeconds) {
  const ms = expiresInSeconds * 1000;
  const attributes = state.asOf
    ? { "data-frozen-ms": String(ms) }
    : { "data-deadline-ms": String(state.fetchedAtMs + ms) };
  return el("span", { className: "countdown", ...attributes }, formatCountdown(ms));
}

function tickCountdowns() {
  const now = Date.now();
  for (const node of document.querySelectorAll("[data-deadline-ms]")) {
    node.textContent = formatCountdown(Number(node.dataset.deadlineMs) - now);
  }
}

/** The instant the panels describe: the as_of instant, or the ledger clock's now. */
function referenceNowMs() {
  if (state.asOf) return Date.parse(state.asOf);
  return Date.parse(state.me.now) + (Date.now() - state.fetchedAtMs);
}

function usageText(row) {
  const u = row.usage;
  const parts = [];
  if (row.product === "text" || u.input_tokens || u.cached_tokens || u.output_tokens) {
    parts.push(`${count(u.input_tokens)} input`, `${count(u.cached_tokens)} cached`);
    parts.push(`${count(u.output_tokens)} output`);
  }
  if (u.thinking) parts.push("thinking");
  if (u.tool_calls) parts.push(`${count(u.tool_calls)} tool calls`);
  if (u.images || row.product === "image") parts.push(`${count(u.images)} images`);
  return parts.join(" · ");
}

function coefficientText(row) {
  const k = row.coefficients;
  const u = row.usage;
  const parts = [];
  if (row.product === "text" || u.input_tokens || u.cached_tokens || u.output_tokens) {
    parts.push(`input ${k.input_per_1k} · cached ${k.cached_per_1k} · output ${k.output_per_1k} per 1K`);
  }
  if (u.thinking) parts.push(`thinking ${k.thinking_per_1k} per 1K`);
  if (u.tool_calls) parts.push(`${k.tool_call} per tool call`);
  if (u.images || row.product === "image") parts.push(`${k.image} per image`);
  return parts.join(" · ");
}

function allocationText(allocation) {
  return allocation
    .map((a) => (a.source === "uncovered" ? `uncovered ${a.credits}` : `${a.source} ${a.id} ${a.credits}`))
    .join("; ");
}

/** Give each body cell its column's name, which narrow screens show beside the value. */
function labelCells(table) {
  const names = [...table.tHead.rows[0].cells].map((cell) => cell.textContent.trim());
  for (const row of table.tBodies[0].rows) {
    [...row.cells].forEach((cell, i) => cell.setAttribute("data-label", names[i] ?? ""));
  }
}

function statusBadge(status) {
  const labels = {
    active: "Active", suspended: "⚠ Suspended", removed: "Removed",
    exhausted: "Exhausted", expired: "Expired",
  };
  return el("span", { className: `badge badge-${status}` }, labels[status] || status);
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// -- sign-in and session --------------------------------------------------------------------

function saveSession() {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token: state.token, sub: state.sub }));
}

function signOut(message = "") {
  sessionStorage.removeItem(SESSION_KEY);
  Object.assign(state, { token: null, sub: null, me: null, asOf: null, data: null });
  $("as-of-input").value = "";
  $("token-input").value = "";
  $("sign-in-error").textContent = message;
  showSignedIn(false);
}

function showSignedIn(signedIn) {
  $("sign-in-page").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("nav").hidden = !signedIn;
  $("who").hidden = !signedIn;
  if (signedIn) showPage();
  else $("token-input").focus();
}

function signInMessage(error, sub) {
  if (!(error instanceof ApiError)) return `The ledger did not answer: ${error.message}`;
  if (error.status === 401) return "This token is not accepted (unknown, revoked or mistyped).";
  if (error.status === 403) return "This token's role may not read subscriptions.";
  if (error.status === 404) return `No subscription “${sub}” for this token: it does not exist or the token may not see it.`;
  return error.message;
}

async function onSignIn(event) {
  event.preventDefault();
  const token = $("token-input").value.trim();
  let sub = $("subscription-input").value.trim();
  const error = $("sign-in-error");
  error.textContent = "";
  if (!token) {
    error.textContent = "Enter an API token.";
    $("token-input").focus();
    return;
  }
  $("sign-in-button").disabled = true;
  try {
    state.token = token;
    const me = await api("/tokens/self");
    if (!sub) {
      if (me.subscription_ids?.length === 1) [sub] = me.subscription_ids;
      else {
        error.textContent = "Enter the subscription ID: this token may see more than one.";
        $("subscription-input").focus();
        return;
      }
    }
    await api(`/subscriptions/${encodeURIComponent(sub)}/overview`);
    Object.assign(state, { sub, me, asOf: null });
    state.usage.filter = {};
    saveSession();
    $("token-input").value = "";
    showSignedIn(true);
    await refresh({ resetUsage: true });
  } catch (failure) {
    state.token = null;
    error.textContent = signInMessage(failure, sub);
  } finally {
    $("sign-in-button").disabled = false;
  }
}

// -- loading --------------------------------------------------------------------------------

async function refresh({ resetUsage = false } = {}) {
  setStatus("Loading…");
  setBusy(1);
  try {
    const params = { params: asOfParams() };
    const [me, overview, packs, billing] = await Promise.all([
      api("/tokens/self"),
      api(subPath("/overview"), params),
      api(subPath("/packs"), params),
      api(subPath("/billing"), params),
    ]);
    state.me = me;
    state.data = { overview, packs: packs.items, billing };
    state.fetchedAtMs = Date.now();
    renderWho();
    renderSubscription();
    renderBillingSummary();
    fillFilterOptions();
    await Promise.all([
      loadChart(), loadUsagePage(resetUsage), loadHistory(), loadNotifications(),
    ]);
    setStatus(
      state.asOf
        ? `Showing the ledger as it was at ${fmtTime(state.asOf)} UTC.`
        : `Up to date: ledger clock ${fmtTime(me.now)} UTC.`,
    );
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut("The token is no longer accepted: sign in again.");
      return;
    }
    setStatus(`Could not load: ${error.message}`, true);
  } finally {
    setBusy(-1);
  }
}

// -- rendering: header and subscription page -------------------------------------------------

function renderWho() {
  $("who-text").textContent = `${state.me.role} · ${state.sub}`;
  const isAdmin = state.me.role === "admin";
  for (const node of document.querySelectorAll(".admin-only")) node.hidden = !isAdmin || !!state.asOf;
  $("admin-paused").hidden = !(isAdmin && state.asOf);
  document.body.classList.toggle("time-travel", !!state.asOf);
  $("as-of-state").textContent = state.asOf ? `Viewing the past: ${fmtTime(state.asOf)} UTC` : "";
}

const canAdminister = () => state.me?.role === "admin" && !state.asOf;

function renderSubscription() {
  const { overview } = state.data;
  $("sub-name").textContent = overview.subscription_id;
  if (overview.cycle_start && overview.cycle_end) {
    const leftMs = Date.parse(overview.cycle_end) - referenceNowMs();
    const days = Math.max(0, Math.ceil(leftMs / MS_PER_DAY));
    $("cycle-text").replaceChildren(
      `Cycle ${overview.cycle + 1}: `, timeEl(overview.cycle_start), " → ",
      timeEl(overview.cycle_end), " UTC · ",
      el("strong", { id: "days-left" }, `${days} ${days === 1 ? "day" : "days"} left`),
    );
  } else {
    $("cycle-text").textContent = "No billing cycle yet.";
  }
  const percent = overview.utilization_percent;
  const bar = $("util-bar");
  bar.setAttribute("aria-valuenow", percent);
  bar.setAttribute("aria-valuetext", `${percent} % of this cycle's seat quota used`);
  bar.firstElementChild.style.width = `${Math.min(100, Number.parseFloat(percent))}%`;
  $("util-percent").textContent = `${percent} %`;
  $("util-detail").textContent =
    `${credits(overview.quota_used)} of ${credits(overview.quota_total)} credits of seat quota used this cycle.`;

  const uncovered = $("uncovered");
  const total = overview.uncovered_total ?? overview.uncovered;
  uncovered.hidden = isZero(overview.uncovered) && isZero(total);
  uncovered.replaceChildren(
    el("strong", {}, `Uncovered: ${credits(overview.uncovered)} credits`),
    ` this cycle (${credits(total)} in all) were served when no credit was left. Seats that ran out are suspended until a pack is bought or their next cycle starts.`,
  );

  const seatRows = overview.seats.map((seat) => {
    const tier = seat.pending_tier && seat.pending_tier !== seat.tier
      ? `${seat.tier} (→ ${seat.pending_tier} next cycle)`
      : seat.tier;
    const actions = canAdminister() && seat.status !== "removed"
      ? el("td", { className: "actions" },
        el("button", {
          type: "button", className: "secondary small", "data-action": "change-tier",
          "aria-label": `Change tier of seat ${seat.seat_id}`,
        }, "Change tier…"),
        el("button", {
          type: "button", className: "danger small", "data-action": "remove-seat",
          "aria-label": `Remove seat ${seat.seat_id}`,
        }, "Remove…"))
      : el("td", { className: "admin-only actions", hidden: !canAdminister() });
    const row = el("tr", { className: `seat-${seat.status}`, "data-seat-id": seat.seat_id },
      el("th", { scope: "row" }, seat.seat_id),
      el("td", {}, tier),
      el("td", { className: "num" }, credits(seat.quota)),
      el("td", { className: "num" }, credits(seat.used)),
      el("td", { className: "num" }, credits(seat.remaining)),
      el("td", { className: "num" }, credits(seat.pack_used)),
      el("td", { className: "num" }, credits(seat.uncovered)),
      el("td", { className: "status" }, statusBadge(seat.status)),
      el("td", { className: "num" }, credits(seat.held)),
      el("td", { className: "num" }, credits(seat.available)),
      actions);
    row.querySelector("[data-action=change-tier]")?.addEventListener("click", () => changeTier(seat));
    row.querySelector("[data-action=remove-seat]")?.addEventListener("click", () => removeSeat(seat));
    return row;
  });
  $("seats-table").tBodies[0].replaceChildren(...seatRows);
  if (!seatRows.length) {
    $("seats-table").tBodies[0].append(el("tr", {}, el("td", { colspan: "11" }, "No seats yet.")));
  }
  labelCells($("seats-table"));

  const { packs } = state.data;
  $("packs-summary").textContent = packs.length
    ? `${credits(overview.packs_remaining)} credits remaining in packs.`
    : "No shared quota packs.";
  $("packs-table").tBodies[0].replaceChildren(...packs.map((pack) => el("tr",
    { className: `pack-${pack.status}`, "data-pack-id": pack.pack_id },
    el("th", { scope: "row" }, pack.pack_id),
    el("td", { className: "num" }, credits(pack.credits)),
    el("td", { className: "num" }, credits(pack.remaining)),
    el("td", { className: "num" }, credits(pack.expired)),
    el("td", {}, timeEl(pack.purchased_at)),
    el("td", {}, timeEl(pack.expires_at)),
    el("td", {}, pack.status === "expired" ? "expired" : countdownEl(pack.expires_in_seconds)),
    el("td", { className: "status" }, statusBadge(pack.status)))));
  labelCells($("packs-table"));
}

// -- rendering: billing page -----------------------------------------------------------------

function renderBillingSummary() {
  const { billing } = state.data;
  $("total-credits").textContent = credits(billing.total_credits);
  $("remaining-credits").textContent = credits(billing.remaining);
  const next = billing.next_expiration;
  if (next) {
    $("next-expiration").replaceChildren(countdownEl(next.expires_in_seconds));
    $("next-expiration-detail").replaceChildren(
      `Pack ${next.pack_id} expires `, timeEl(next.expires_at), " UTC.");
  } else {
    $("next-expiration").textContent = "None";
    $("next-expiration-detail").textContent = "No active pack is due to expire.";
  }
}

function fillFilterOptions() {
  const fill = (select, values, allLabel) => {
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, allLabel),
      ...values.map((value) => el("option", { value }, value)));
    select.value = values.includes(current) ? current : "";
  };
  fill($("filter-seat"), state.data.overview.seats.map((s) => s.seat_id), "All seats");
  const seen = new Set([...MODELS, ...state.chartRows.map((r) => r.model)]);
  fill($("filter-model"), [...seen], "All models");
}

/** The UTC calendar days a cycle touches, as "YYYY-MM-DD". */
function cycleDays(startIso, endIso) {
  const days = [];
  const last = new Date(Date.parse(endIso) - 1).toISOString().slice(0, 10);
  for (let day = new Date(`${startIso.slice(0, 10)}T00:00:00Z`); ; day = new Date(day.getTime() + MS_PER_DAY)) {
    const text = day.toISOString().slice(0, 10);
    days.push(text);
    if (text >= last) return days;
  }
}

async function loadChart() {
  const { overview } = state.data;
  if (!overview.cycle_start || !overview.cycle_end) {
    state.chartRows = [];
    drawChart();
    return;
  }
  const filter = { from: overview.cycle_start, to: overview.cycle_end };
  const { rows, truncated } = await fetchAllUsage(filter, MAX_CHART_ROWS);
  // What each charge deducted net of its reversals; reversal rows add nothing more.
  state.chartRows = rows.filter((row) => row.kind !== "reversal").map((row) => ({
    ...row, credits: fromUcr(toUcr(row.credits) - toUcr(row.reversed ?? "0")),
  }));
  state.chartTruncated = truncated;
  fillFilterOptions();
  drawChart();
}

function drawChart() {
  const { overview } = state.data;
  const container = $("chart");
  if (!overview.cycle_start || !overview.cycle_end) {
    container.replaceChildren(el("p", { className: "muted" }, "No billing cycle yet."));
    $("chart-legend").replaceChildren();
    $("chart-table").replaceChildren();
    $("chart-caption").textContent = "";
    return;
  }
  const days = cycleDays(overview.cycle_start, overview.cycle_end);
  const field = state.stackBy === "seat" ? "seat_id" : "model";
  const keys = [...new Set(state.chartRows.map((row) => row[field]))].sort();
  const series = keys.map((key, i) => ({
    key, color: PALETTE[i % PALETTE.length], ucr: days.map(() => 0n),
  }));
  const byKey = new Map(series.map((s) => [s.key, s]));
  const dayIndex = new Map(days.map((day, i) => [day, i]));
  for (const row of state.chartRows) {
    const index = dayIndex.get(new Date(row.recorded_at).toISOString().slice(0, 10));
    if (index !== undefined) byKey.get(row[field]).ucr[index] += toUcr(row.credits);
  }
  const total = sumCredits(state.chartRows.map((row) => row.credits));
  const label = `Credits deducted per day from ${days[0]} to ${days.at(-1)}, stacked by ${state.stackBy}: ${credits(total)} credits in all.`;
  renderStackedBars(container, days, series, label);
  $("chart-caption").textContent = `${label} ${count(state.chartRows.length)} requests.` +
    (state.chartTruncated ? ` Only the first ${count(MAX_CHART_ROWS)} requests are drawn.` : "");
  $("chart-legend").replaceChildren(...series.map((s) => {
    const swatch = el("span", { className: "swatch", "aria-hidden": "true" });
    swatch.style.background = s.color; // through the CSSOM: the page's CSP allows no inline style
    return el("li", {}, swatch, `${s.key}: ${credits(fromUcr(s.ucr.reduce((a, b) => a + b, 0n)))}`);
  }));
  const busyDays = days.map((day, i) => [day, i]).filter(([, i]) => series.some((s) => s.ucr[i] !== 0n));
  $("chart-table").replaceChildren(
    el("caption", { className: "visually-hidden" }, "Credits per day"),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Day (UTC)"),
      ...keys.map((key) => el("th", { scope: "col", className: "num" }, key)),
      el("th", { scope: "col", className: "num" }, "Total"))),
    el("tbody", {}, ...busyDays.map(([day, i]) => el("tr", {}, el("th", { scope: "row" }, day),
      ...series.map((s) => el("td", { className: "num" }, credits(fromUcr(s.ucr[i])))),
      el("td", { className: "num" }, credits(fromUcr(series.reduce((a, s) => a + s.ucr[i], 0n))))))),
  );
}

// -- usage details: filters, paging, CSV -----------------------------------------------------

function readFilter() {
  const filter = {
    from: localInputToRfc3339($("filter-from").value),
    to: localInputToRfc3339($("filter-to").value),
    seat: $("filter-seat").value,
    model: $("filter-model").value,
  };
  return Object.fromEntries(Object.entries(filter).filter(([, value]) => value));
}

async function loadUsagePage(reset) {
  const usage = state.usage;
  if (reset) Object.assign(usage, { cursors: [null], index: 0 });
  const page = await api(subPath("/usage"), {
    params: { ...usage.filter, ...asOfParams(), limit: USAGE_PAGE_ROWS, cursor: usage.cursors[usage.index] },
  });
  usage.rows = page.items;
  usage.next = page.next_cursor;
  renderUsage();
}

function renderUsage() {
  const { rows, index, next } = state.usage;
  $("usage-table").tBodies[0].replaceChildren(...rows.map((row) => el("tr",
    { "data-event-id": row.event_id, className: row.kind === "reversal" ? "reversal" : null },
    el("td", {}, timeEl(row.recorded_at)),
    el("td", {}, row.seat_id),
    el("td", {}, row.product),
    el("td", { className: "model" }, row.model),
    el("td", { className: "usage" }, usageText(row)),
    el("td", { className: "coefficients", title: `rate card ${row.rate_card_version}` }, coefficientText(row)),
    el("td", { className: "num credits" }, creditsText(row)),
    el("td", { className: "allocation" }, allocationText(row.allocation)),
    reverseCell(row))));
  labelCells($("usage-table"));
  $("usage-empty").hidden = rows.length > 0;
  const first = index * USAGE_PAGE_ROWS + 1;
  $("usage-page").textContent = rows.length
    ? `Page ${index + 1}: rows ${count(first)}–${count(first + rows.length - 1)}`
    : `Page ${index + 1}`;
  $("usage-prev").disabled = index === 0;
  $("usage-next").disabled = !next;
}

async function pageUsage(step) {
  const usage = state.usage;
  if (step > 0) {
    if (!usage.next) return;
    usage.cursors[usage.index + 1] = usage.next;
  }
  usage.index = Math.max(0, usage.index + step);
  try {
    await loadUsagePage(false);
  } catch (error) {
    setStatus(`Could not load usage: ${error.message}`, true);
  }
}

function csvCell(value) {
  let text = value === null || value === undefined ? "" : String(value);
  // A cell a spreadsheet would run as a formula is defused (ids come from gateways).
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

function csvRow(row) {
  const u = row.usage;
  const k = row.coefficients;
  const allocation = row.allocation.map((a) => `${a.source}:${a.id}:${a.credits}`).join(";");
  return [
    row.recorded_at, row.event_id, row.occurred_at, row.seat_id, row.product, row.model,
    u.input_tokens, u.cached_tokens, u.output_tokens, u.thinking, u.tool_calls, u.images,
    k.input_per_1k, k.cached_per_1k, k.output_per_1k, k.thinking_per_1k, k.tool_call, k.image,
    row.rate_card_version, row.credits, allocation,
    row.kind ?? "charge", row.reverses, row.reversed ?? "0.00", row.reason,
  ].map(csvCell).join(",");
}

async function downloadCsv() {
  const status = $("csv-status");
  const button = $("usage-csv");
  button.disabled = true;
  status.textContent = "Preparing the CSV (every page of these filters)…";
  try {
    const { rows, truncated } = await fetchAllUsage(state.usage.filter, MAX_EXPORT_ROWS);
    if (truncated) throw new Error(`more than ${count(MAX_EXPORT_ROWS)} rows: narrow the filters or use \`ledger export usage\``);
    const text = [CSV_COLUMNS.join(","), ...rows.map(csvRow)].join("\r\n") + "\r\n";
    const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    const stamp = state.asOf ? `-as-of-${state.asOf.replace(/[^0-9A-Za-z]/g, "")}` : "";
    const link = el("a", { href: url, download: `usage-${state.sub}${stamp}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    status.textContent = `Downloaded ${count(rows.length)} rows, ${sumCredits(rows.map((r) => r.credits))} credits.`;
  } catch (error) {
    status.textContent = `Could not prepare the CSV: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

// -- admin actions ---------------------------------------------------------------------------

/**
 * Ask for confirmation, then send the request with an Idempotency-Key made once per confirmed
 * action: a retry after a failure re-sends the same request with the same key, so the ledger
 * applies it at most once. `request()` is read once, at the first confirmation.
 */
function adminAction({ title, text, extra = null, request, describe }) {
  const dialog = $("confirm-dialog");
  const ok = $("confirm-ok");
  const cancel = $("confirm-cancel");
  const error = $("confirm-error");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-extra").replaceChildren(...(extra ? [extra] : []));
  error.textContent = "";
  ok.textContent = "Confirm";
  ok.disabled = false;
  cancel.disabled = false;
  let key = null;
  let pending = null;
  cancel.onclick = () => dialog.close();
  $("confirm-form").onsubmit = async (event) => {
    event.preventDefault();
    if (key === null) {
      try {
        pending = request();
      } catch (invalid) {
        error.textContent = invalid.message; // what was typed is refused before anything is sent
        return;
      }
      key = newIdempotencyKey();
      for (const input of $("confirm-extra").querySelectorAll("input, select, textarea")) input.disabled = true;
    }
    ok.disabled = true;
    cancel.disabled = true;
    error.textContent = "";
    try {
      const result = await api(pending.path, {
        method: pending.method, body: pending.body, headers: { "Idempotency-Key": key },
      });
      dialog.close();
      await refresh();
      showResult(describe(result));
    } catch (failure) {
      const retryable = !(failure instanceof ApiError) || failure.status >= 500;
      if (retryable) {
        error.textContent = `Not confirmed by the ledger (${failure.message}). Retry sends the same request with the same key: it is applied at most once.`;
        ok.textContent = "Retry";
      } else {
        error.textContent = `Refused: ${failure.message}`;
        ok.textContent = "Confirm";
        key = null;
        for (const input of $("confirm-extra").querySelectorAll("input, select, textarea")) input.disabled = false;
      }
      ok.disabled = false;
      cancel.disabled = false;
    }
  };
  dialog.showModal();
  ok.focus();
}

function showResult(text) {
  const box = $("action-result");
  box.textContent = text;
  box.hidden = false;
  box.focus();
}

function seatNow(seatId) {
  return state.data.overview.seats.find((s) => s.seat_id === seatId);
}

function describeSeat(seatId, verb) {
  const seat = seatNow(seatId);
  if (!seat) return `Seat ${seatId} ${verb}.`;
  const pending = seat.pending_tier && seat.pending_tier !== seat.tier
    ? ` (${seat.pending_tier} from the next cycle)` : "";
  return `Seat ${seatId} ${verb}: now ${seat.tier}${pending}, quota ${credits(seat.quota)}, ` +
    `remaining ${credits(seat.remaining)}, ${seat.status}.`;
}

function onAddSeat(event) {
  event.preventDefault();
  const seatId = $("add-seat-id").value.trim();
  const tier = $("add-seat-tier").value;
  if (!seatId) {
    $("add-seat-id").focus();
    return;
  }
  adminAction({
    title: "Add a seat",
    text: `Add seat “${seatId}” as ${tier} to ${state.sub}? Its full quota is granted for the current cycle.`,
    request: () => ({ method: "POST", path: subPath("/seats"), body: { seat_id: seatId, tier } }),
    describe: () => {
      $("add-seat-id").value = "";
      return describeSeat(seatId, "added");
    },
  });
}

function changeTier(seat) {
  const select = el("select", { id: "confirm-tier" },
    ...TIERS.filter((t) => t !== seat.tier).map((t) => el("option", { value: t }, t)));
  const extra = el("div", {}, el("label", { for: "confirm-tier" }, "New tier"), select);
  adminAction({
    title: `Change the tier of ${seat.seat_id}`,
    text: `Seat ${seat.seat_id} is ${seat.tier}. An upgrade applies at once; a downgrade at the next cycle start.`,
    extra,
    request: () => ({
      method: "PATCH",
      path: subPath(`/seats/${encodeURIComponent(seat.seat_id)}`),
      body: { tier: select.value },
    }),
    describe: () => describeSeat(seat.seat_id, "changed"),
  });
}

function removeSeat(seat) {
  adminAction({
    title: `Remove ${seat.seat_id}`,
    text: `Remove seat ${seat.seat_id}? It can no longer spend; its history stays.`,
    request: () => ({ method: "DELETE", path: subPath(`/seats/${encodeURIComponent(seat.seat_id)}`) }),
    describe: () => describeSeat(seat.seat_id, "removed"),
  });
}

function buyPack() {
  adminAction({
    title: "Buy a shared quota pack",
    text: `Buy a pack of 625,000 credits for ${state.sub}? It is valid for one month from now; unused credits expire.`,
    request: () => ({ method: "POST", path: subPath("/packs"), body: {} }),
    describe: (result) => {
      const packs = [...state.data.packs].sort((a, b) => a.purchased_at.localeCompare(b.purchased_at));
      const pack = packs.find((p) => p.pack_id === result?.pack_id) || packs.at(-1);
      if (!pack) return "Pack bought.";
      return `Pack ${pack.pack_id} bought: ${credits(pack.remaining)} of ${credits(pack.credits)} credits, expires ${fmtTime(pack.expires_at)} UTC.`;
    },
  });
}

// -- corrections and the history of admin actions --------------------------------------------

const HISTORY_MAX_ROWS = 1000;
const HISTORY_LABELS = {
  "subscription.opened": "Subscription opened",
  "seat.added": "Seat added",
  "seat.tier_changed": "Tier changed",
  "seat.removed": "Seat removed",
  "pack.purchased": "Pack bought",
  "notification.settings_changed": "Notification settings changed",
  "seat.adjusted": "Seat adjusted",
  "grant.issued": "Credits granted",
  "usage.reversed": "Charge reversed",
  "pack.voided": "Pack voided",
  "grant.voided": "Grant voided",
};
const CREDITS_TEXT = /^-?\d{1,10}(\.\d{1,6})?$/;

/** A charge row's credits, with what its reversals gave back; a reversal row's, negative. */
function creditsText(row) {
  if (row.kind === "reversal") return `${row.credits} (reverses ${row.reverses})`;
  if (row.reversed && !isZero(row.reversed)) return `${row.credits} (${row.reversed} reversed)`;
  return row.credits;
}

/** A charge row's "Reverse…" button for admins (while something of it is left to reverse). */
function reverseCell(row) {
  const left = row.kind === "charge" && toUcr(row.credits) > toUcr(row.reversed ?? "0");
  if (!canAdminister() || !left) return el("td", { className: "admin-only actions", hidden: !canAdminister() });
  const button = el("button", {
    type: "button", className: "secondary small", "data-action": "reverse-charge",
    "aria-label": `Reverse charge ${row.event_id}`,
  }, "Reverse…");
  button.addEventListener("click", () => reverseCharge(row.event_id));
  return el("td", { className: "actions" }, button);
}

async function loadHistory() {
  const items = [];
  let after = 0;
  do {
    const page = await api(subPath("/history"), { params: { ...asOfParams(), after, limit: 1000 } });
    items.push(...page.items);
    after = page.next_after;
  } while (after !== null && items.length < HISTORY_MAX_ROWS);
  renderHistory(items);
}

function historyAbout(entry) {
  if (entry.type === "usage.reversed") return `${entry.id} of charge ${entry.event_id} (seat ${entry.seat_id})`;
  if (entry.type === "seat.adjusted") return `${entry.id} on seat ${entry.seat_id}`;
  if (entry.type === "grant.issued") return `${entry.id}, expires ${fmtTime(entry.expires_at)} UTC`;
  return entry.id;
}

function renderHistory(items) {
  const rows = [...items].reverse().map((entry) => el("tr",
    { "data-type": entry.type, "data-id": entry.id, "data-position": String(entry.position) },
    el("td", {}, timeEl(entry.recorded_at)),
    el("td", {}, HISTORY_LABELS[entry.type] || entry.type),
    el("th", { scope: "row" }, historyAbout(entry)),
    el("td", { className: "num" }, entry.credits === null ? "" : credits(entry.credits)),
    el("td", { className: "actor" }, entry.actor ? `${entry.actor.token_id} (${entry.actor.role})` : "—"),
    el("td", { className: "reason" }, entry.reason ?? "")));
  $("history-table").tBodies[0].replaceChildren(...rows);
  $("history-empty").hidden = rows.length > 0;
  labelCells($("history-table"));
}

/** A labelled input of the confirmation dialog. */
function field(id, label, attributes = {}) {
  const input = el(attributes.tag || "input", { id, spellcheck: "false", ...attributes, tag: null });
  return [el("label", { for: id }, label), input];
}

function reasonField() {
  return field("confirm-reason", "Reason (required, kept in the log)", {
    tag: "textarea", maxlength: "500", "aria-required": "true", rows: "2",
  });
}

/** The value of a dialog input, refused (before anything is sent) when it does not fit. */
function typed(id, pattern, message) {
  const value = $(id).value.trim();
  if (!pattern.test(value)) {
    $(id).focus();
    throw new Error(message);
  }
  return value;
}

const reasonTyped = () => typed("confirm-reason", /^[\s\S]{1,500}$/, "Give a reason: 1 to 500 characters.");
const newCorrectionId = (prefix) => `${prefix}-${newIdempotencyKey()}`;
const correctionDone = (result) =>
  `${HISTORY_LABELS[result.type] || result.type}: ${historyAbout(result)}` +
  (result.credits === null ? "" : `, ${credits(result.credits)} credits`) +
  ` — by ${result.actor?.token_id ?? "?"}, reason: ${result.reason}.`;

function adjustSeat() {
  const seats = state.data.overview.seats.filter((s) => s.status !== "removed");
  const select = el("select", { id: "confirm-seat" },
    ...seats.map((s) => el("option", { value: s.seat_id }, `${s.seat_id} (${credits(s.remaining)} left)`)));
  const extra = el("div", { className: "dialog-fields" },
    el("label", { for: "confirm-seat" }, "Seat"), select,
    ...field("confirm-credits", "Credits (negative takes them away)", { inputmode: "decimal" }),
    ...reasonField());
  adminAction({
    title: "Adjust a seat's quota",
    text: "Add credits to (or take them from) a seat's quota for the current cycle. Taking more than it has left is refused.",
    extra,
    request: () => {
      const amount = typed("confirm-credits", CREDITS_TEXT, "Credits: a number like 500 or -20.5.");
      return {
        method: "POST",
        path: subPath(`/seats/${encodeURIComponent(select.value)}/adjustments`),
        body: { adjustment_id: newCorrectionId("adj"), credits: amount, reason: reasonTyped() },
      };
    },
    describe: correctionDone,
  });
}

function grantCredits() {
  const extra = el("div", { className: "dialog-fields" },
    ...field("confirm-credits", "Credits", { inputmode: "decimal" }),
    ...field("confirm-expires", "Expires (UTC)", { type: "datetime-local", step: "1" }),
    ...reasonField());
  adminAction({
    title: "Grant credits",
    text: `Give ${state.sub} shared credits, valid from now until they expire, spent like packs (soonest expiring first).`,
    extra,
    request: () => {
      const amount = typed("confirm-credits", CREDITS_TEXT, "Credits: a number like 50000.");
      const expires = localInputToRfc3339(typed("confirm-expires", /^.+$/, "Choose when the credits expire."));
      return {
        method: "POST",
        path: subPath("/grants"),
        body: { grant_id: newCorrectionId("grant"), credits: amount, expires_at: expires, reason: reasonTyped() },
      };
    },
    describe: correctionDone,
  });
}

function reverseCharge(eventId = "") {
  const extra = el("div", { className: "dialog-fields" },
    ...field("confirm-event", "Charge (event ID)", { value: eventId, maxlength: "128" }),
    ...field("confirm-credits", "Credits (empty: all that is left of it)", { inputmode: "decimal" }),
    ...reasonField());
  adminAction({
    title: "Reverse a charge",
    text: "Give back a charge, all of it or part: the credits return to where they came from, last taken first.",
    extra,
    request: () => {
      const event = typed("confirm-event", /^[A-Za-z0-9._:@-]{1,128}$/, "Give the charge's event ID.");
      const amount = $("confirm-credits").value.trim();
      const body = { reversal_id: newCorrectionId("rev"), reason: reasonTyped() };
      if (amount) body.credits = typed("confirm-credits", CREDITS_TEXT, "Credits: a number like 3.18, or empty.");
      return { method: "POST", path: subPath(`/charges/${encodeURIComponent(event)}/reversals`), body };
    },
    describe: correctionDone,
  });
}

function voidSource() {
  const kind = el("select", { id: "confirm-kind" },
    el("option", { value: "packs" }, "Pack"), el("option", { value: "grants" }, "Grant"));
  const extra = el("div", { className: "dialog-fields" },
    el("label", { for: "confirm-kind" }, "Void a"), kind,
    ...field("confirm-source", "Pack or grant ID", { maxlength: "128" }),
    ...reasonField());
  adminAction({
    title: "Void a pack or grant",
    text: "What it has left is removed and recorded as voided (say, its payment was refunded). Active holds on it shrink.",
    extra,
    request: () => {
      const id = typed("confirm-source", /^[A-Za-z0-9._:@-]{1,128}$/, "Give the pack's or grant's ID.");
      return {
        method: "POST",
        path: subPath(`/${kind.value}/${encodeURIComponent(id)}/void`),
        body: { reason: reasonTyped() },
      };
    },
    describe: correctionDone,
  });
}

// -- pages and time travel -------------------------------------------------------------------

const PAGE_TITLES = { subscription: "Subscription", billing: "Billing", notifications: "Notifications" };

function currentPage() {
  const page = location.hash.replace("#/", "");
  return page in PAGE_TITLES ? page : "subscription";
}

function showPage() {
  const page = currentPage();
  for (const name of Object.keys(PAGE_TITLES)) $(`${name}-page`).hidden = page !== name;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${PAGE_TITLES[page]} · Credits ledger console`;
  if (page === "billing" && state.data) drawChart();
  if (page === "notifications" && state.data) loadNotifications();
}

async function onAsOf(event) {
  event.preventDefault();
  const value = localInputToRfc3339($("as-of-input").value);
  state.asOf = value || null;
  $("action-result").hidden = true;
  await refresh({ resetUsage: true });
}

async function onAsOfClear() {
  $("as-of-input").value = "";
  state.asOf = null;
  await refresh({ resetUsage: true });
}

function start() {
  setBusy(0);
  $("sign-in-form").addEventListener("submit", onSignIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("as-of-form").addEventListener("submit", onAsOf);
  $("as-of-clear").addEventListener("click", onAsOfClear);
  $("add-seat-form").addEventListener("submit", onAddSeat);
  $("buy-pack").addEventListener("click", buyPack);
  $("correct-adjust").addEventListener("click", adjustSeat);
  $("correct-grant").addEventListener("click", grantCredits);
  $("correct-reverse").addEventListener("click", () => reverseCharge());
  $("correct-void").addEventListener("click", voidSource);
  $("usage-filter").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.usage.filter = readFilter();
    await loadUsagePage(true).catch((error) => setStatus(`Could not load usage: ${error.message}`, true));
  });
  $("filter-clear").addEventListener("click", async () => {
    $("usage-filter").reset();
    state.usage.filter = {};
    await loadUsagePage(true).catch((error) => setStatus(`Could not load usage: ${error.message}`, true));
  });
  $("usage-prev").addEventListener("click", () => pageUsage(-1));
  $("usage-next").addEventListener("click", () => pageUsage(1));
  $("usage-csv").addEventListener("click", downloadCsv);
  for (const radio of document.querySelectorAll("input[name=stack-by]")) {
    radio.addEventListener("change", () => {
      state.stackBy = radio.value;
      drawChart();
    });
  }
  window.addEventListener("hashchange", showPage);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => state.data && !$("billing-page").hidden && drawChart(), RESIZE_SETTLE_MS);
  });
  setInterval(tickCountdowns, COUNTDOWN_TICK_MS);
  initNotifications({
    $, el, api, subPath, fmtTime, timeEl, statusBadge,
    isAdmin: () => state.me?.role === "admin",
  });

  const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  if (saved?.token && saved?.sub) {
    Object.assign(state, { token: saved.token, sub: saved.sub });
    $("sign-in-page").hidden = true;
    api("/tokens/self")
      .then((me) => {
        state.me = me;
        showSignedIn(true);
        return refresh({ resetUsage: true });
      })
      .catch((error) => signOut(signInMessage(error, saved.sub)));
  } else {
    showSignedIn(false);
  }
}

start();
