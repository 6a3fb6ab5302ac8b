// The console's notifications page: the subscription's feed (every role that reads it) and,
// for admins, its webhook endpoints: register one (the secret is shown once), send a test,
// read the delivery attempts, delete. Everything goes through the /v1 API like the rest.

const FEED_PAGE_ITEMS = 100;
const DELIVERY_ROWS = 20;
const TYPES = [
  "seat.threshold_reached",
  "seat.suspended",
  "seat.resumed",
  "pack.expiring",
  "pack.expired",
  "pack.exhausted",
  "subscription.credits_low",
  "hold.expired",
  "webhook.disabled",
];

let ctx = null;
const feed = { items: [], after: null, full: false };

/** What a notification says, in a line. */
function summary(n) {
  const d = n.data || {};
  switch (n.type) {
    case "seat.threshold_reached":
      return `Seat ${d.seat_id} reached ${d.threshold_percent} % of its quota (${d.used} of ${d.quota} credits).`;
    case "seat.suspended":
      return `Seat ${d.seat_id} suspended (${d.reason}; request ${d.event_id}).`;
    case "seat.resumed":
      return `Seat ${d.seat_id} resumed (${d.reason}).`;
    case "pack.expiring":
      return `Pack ${d.pack_id} expires ${ctx.fmtTime(d.expires_at)} UTC with ${d.remaining} credits left.`;
    case "pack.expired":
      return `Pack ${d.pack_id} expired; ${d.expired} credits were left.`;
    case "pack.exhausted":
      return `${d.kind === "grant" ? "Grant" : "Pack"} ${d.pack_id} used up (last taken by ${d.seat_id}).`;
    case "subscription.credits_low":
      return d.state === "recovered"
        ? `Credits recovered: ${d.available} available (threshold ${d.threshold}).`
        : `Credits low: ${d.available} available, below ${d.threshold}.`;
    case "hold.expired":
      return `Hold ${d.hold_id} of seat ${d.seat_id} expired; ${d.released} credits released.`;
    case "webhook.disabled":
      return `Webhook ${d.webhook_id} disabled after failing since ${ctx.fmtTime(d.failing_since)} UTC.`;
    default:
      return JSON.stringify(d);
  }
}

async function loadFeed(reset) {
  if (reset) Object.assign(feed, { items: [], after: null, full: false });
  const $ = ctx.$;
  try {
    const page = await ctx.api(ctx.subPath("/notifications"), {
      params: { after: feed.after, limit: FEED_PAGE_ITEMS },
    });
    feed.items.push(...page.items);
    if (page.next_cursor) feed.after = page.next_cursor;
    feed.full = page.items.length < FEED_PAGE_ITEMS;
    $("feed-error").textContent = "";
  } catch (error) {
    $("feed-error").textContent = `Could not load the notifications: ${error.message}`;
  }
  renderFeed();
}

function renderFeed() {
  const { $, el } = ctx;
  const rows = [...feed.items].reverse().map((n) =>
    el("tr", {},
      el("td", { "data-label": "Time (UTC)" }, ctx.timeEl(n.occurred_at)),
      el("td", { "data-label": "Type" }, el("code", {}, n.type)),
      el("td", { "data-label": "What" }, summary(n))),
  );
  $("feed-table").querySelector("tbody").replaceChildren(...rows);
  $("feed-empty").hidden = feed.items.length > 0;
  $("feed-count").textContent = `${feed.items.length} notification${feed.items.length === 1 ? "" : "s"}, newest first.`;
  $("feed-more").hidden = feed.full;
}

// -- webhooks (admins) ------------------------------------------------------------------------

async function loadWebhooks() {
  const { $, el } = ctx;
  if (!ctx.isAdmin()) return;
  let hooks = [];
  try {
    hooks = (await ctx.api(ctx.subPath("/webhooks"))).items;
    $("webhook-error").textContent = "";
  } catch (error) {
    $("webhook-error").textContent = `Could not load the webhooks: ${error.message}`;
  }
  const rows = hooks.map((hook) => {
    const row = el("tr", { "data-webhook": hook.webhook_id },
      el("th", { scope: "row", "data-label": "Webhook" }, hook.webhook_id),
      el("td", { "data-label": "URL", className: "wrap" }, hook.url),
      el("td", { "data-label": "Types" }, hook.event_types.length ? hook.event_types.join(", ") : "all"),
      el("td", { "data-label": "Status" }, ctx.statusBadge(hook.status)),
      el("td", { "data-label": "Actions", className: "actions" },
        el("button", { type: "button", className: "secondary", "data-action": "deliveries" }, "Deliveries"),
        el("button", { type: "button", className: "secondary", "data-action": "test" }, "Send a test"),
        el("button", { type: "button", className: "danger", "data-action": "delete" }, "Delete")));
    row.querySelector("[data-action=deliveries]").addEventListener("click", () => showDeliveries(hook));
    row.querySelector("[data-action=test]").addEventListener("click", () => sendTest(hook));
    row.querySelector("[data-action=delete]").addEventListener("click", () => deleteWebhook(hook));
    return row;
  });
  $("webhooks-table").querySelector("tbody").replaceChildren(...rows);
  $("webhooks-empty").hidden = hooks.length > 0;
}

async function onCreate(event) {
  event.preventDefault();
  const { $ } = ctx;
  const types = [...document.querySelectorAll("#webhook-types input:checked")].map((i) => i.value);
  $("webhook-error").textContent = "";
  $("webhook-create").disabled = true;
  try {
    const created = await ctx.api(ctx.subPath("/webhooks"), {
      method: "POST", body: { url: $("webhook-url").value.trim(), event_types: types },
    });
    $("webhook-form").reset();
    $("webhook-secret-value").textContent = created.secret;
    $("webhook-secret-id").textContent = created.webhook_id;
    $("webhook-secret").hidden = false;
    await loadWebhooks();
  } catch (error) {
    $("webhook-error").textContent = `Refused: ${error.message}`;
  } finally {
    $("webhook-create").disabled = false;
  }
}

async function showDeliveries(hook) {
  const { $, el } = ctx;
  const path = ctx.subPath(`/webhooks/${encodeURIComponent(hook.webhook_id)}/deliveries`);
  let items = [];
  try {
    items = (await ctx.api(path, { params: { limit: DELIVERY_ROWS } })).items;
  } catch (error) {
    $("webhook-error").textContent = `Could not load the deliveries: ${error.message}`;
    return;
  }
  $("deliveries-title").textContent = `Latest deliveries to ${hook.webhook_id}`;
  const rows = items.map((d) =>
    el("tr", {},
      el("td", { "data-label": "Time (UTC)" }, ctx.timeEl(d.attempted_at)),
      el("td", { "data-label": "Notification", className: "wrap" }, d.notification_id),
      el("td", { "data-label": "Attempt", className: "num" }, String(d.attempt)),
      el("td", { "data-label": "Outcome" }, ctx.statusBadge(d.outcome)),
      el("td", { "data-label": "Status", className: "num" }, d.status_code === null ? "–" : String(d.status_code)),
      el("td", { "data-label": "Duration", className: "num" }, `${d.duration_ms} ms`),
      el("td", { "data-label": "Error", className: "wrap" }, d.error || "")),
  );
  $("deliveries-table").querySelector("tbody").replaceChildren(...rows);
  $("deliveries-empty").hidden = items.length > 0;
  $("deliveries").hidden = false;
}

async function sendTest(hook) {
  const path = ctx.subPath(`/webhooks/${encodeURIComponent(hook.webhook_id)}/test`);
  try {
    const queued = await ctx.api(path, { method: "POST" });
    ctx.$("webhook-result").textContent = `Test ${queued.notification_id} queued for ${hook.webhook_id}: see its deliveries.`;
  } catch (error) {
    ctx.$("webhook-error").textContent = `Refused: ${error.message}`;
  }
}

async function deleteWebhook(hook) {
  const path = ctx.subPath(`/webhooks/${encodeURIComponent(hook.webhook_id)}`);
  try {
    await ctx.api(path, { method: "DELETE" });
    ctx.$("webhook-result").textContent = `Webhook ${hook.webhook_id} deleted.`;
    ctx.$("deliveries").hidden = true;
    await loadWebhooks();
  } catch (error) {
    ctx.$("webhook-error").textContent = `Refused: ${error.message}`;
  }
}

/** Load the page's panels (after sign-in and on every refresh). */
export async function loadNotifications() {
  if (!ctx) return;
  ctx.$("webhooks-card").hidden = !ctx.isAdmin();
  await Promise.all([loadFeed(true), loadWebhooks()]);
}

/** Wire the page once; `context` lends the console's API client and helpers. */
export function initNotifications(context) {
  ctx = context;
  const { $, el } = ctx;
  $("webhook-types").replaceChildren(
    ...TYPES.map((type) =>
      el("label", {}, el("input", { type: "checkbox", value: type }), " ", type)),
  );
  $("webhook-form").addEventListener("submit", onCreate);
  $("feed-refresh").addEventListener("click", () => loadFeed(true));
  $("feed-more").addEventListener("click", () => loadFeed(false));
  $("webhook-secret-hide").addEventListener("click", () => {
    $("webhook-secret-value").textContent = "";
    $("webhook-secret").hidden = true;
  });
}
