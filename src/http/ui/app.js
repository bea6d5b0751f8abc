// flowhook dashboard: plain JavaScript against the status API, no build step, no CDN.
// Everything shown is built with textContent, never innerHTML, so callback data cannot inject markup.
"use strict";

const TOKEN_KEY = "flowhook.token";
const REFRESH_MS = 5000;
const state = { token: localStorage.getItem(TOKEN_KEY), field: null, timer: null };
const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
  });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((body && body.errors && body.errors[0].message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function showLogin(message) {
  $("#login-error").textContent = message || "";
  $("#logout").hidden = true;
  setLive("not connected", "");
  const dialog = $("#login");
  if (!dialog.open) dialog.showModal();
  $("#token").focus();
}

function setLive(text, kind) {
  const live = $("#live");
  live.textContent = text;
  live.className = `pill ${kind}`;
}

const pct = (part, whole) => (whole > 0 ? Math.round((100 * part) / whole) : 0);
const rate = (r) => (r === null || r === undefined ? "–" : `${Math.round(r * 100)}%`);
const when = (t) => (t ? new Date(t).toLocaleString() : "");

function funnelCard(group) {
  const stages = [
    ["sent", "Sent"], ["delivered", "Delivered"], ["read", "Read"], ["clicked", "Clicked"],
  ];
  const card = el("article", { class: "funnel", "data-value": group.value },
    el("h3", { text: group.value }));
  for (const [key, label] of stages) {
    const fill = el("span");
    fill.style.width = `${pct(group[key], group.sent)}%`;
    card.append(el("div", { class: "stage", "data-stage": key },
      el("span", { text: label }),
      el("div", { class: "bar" }, fill),
      el("span", { class: "count", "data-testid": `count-${key}`, text: String(group[key]) })));
  }
  const fact = (label, value, id) =>
    el("span", {}, `${label} `, el("b", { "data-testid": id, text: String(value) }));
  card.append(el("div", { class: "facts" },
    fact("failed", group.failed, "count-failed"),
    fact("delivery", rate(group.rates.delivered), "rate-delivered"),
    fact("read", rate(group.rates.read), "rate-read"),
    fact("click", rate(group.rates.clicked), "rate-clicked"),
    fact("replied", group.replied, "count-replied"),
    fact("opted out", group.opted_out, "count-opted-out"),
    fact("follow-ups ok", group.actions_delivered, "actions-delivered"),
    fact("dead", group.actions_dead, "actions-dead"),
    group.cost && group.cost.billable
      ? fact("est. cost", `${group.cost.currency} ${group.cost.estimated} (${group.cost.billable} billable)`, "cost")
      : ""));
  if (group.top_failure_reasons.length) {
    card.append(el("ul", { class: "reasons" },
      ...group.top_failure_reasons.map((r) => el("li", { "data-testid": "failure-reason" },
        r.code ? el("b", { class: "code", text: r.code }) : "",
        `${r.code ? " " : ""}${r.reason || "no reason given"} (${r.count})`))));
  }
  return card;
}

async function loadFunnels() {
  const field = state.field || "campaign";
  let stats;
  try {
    stats = await api(`/v1/stats?group_by=callback.${encodeURIComponent(field)}`);
  } catch (error) {
    if (error.status === 400 && !state.field) {
      // No `campaign` field configured: fall back to the first indexed one.
      const match = /\[([^\]]*)\]/.exec(error.message);
      const first = match && match[1].split(",")[0].trim();
      if (first) {
        state.field = first;
        return loadFunnels();
      }
    }
    throw error;
  }
  state.field = field;
  const select = $("#group-by");
  if (select.options.length !== stats.fields.length) {
    select.replaceChildren(...stats.fields.map((f) => el("option", { value: f, text: f })));
  }
  select.value = field;
  const cards = $("#funnels");
  cards.replaceChildren(...(stats.groups.length
    ? stats.groups.map(funnelCard)
    : [el("p", { class: "muted", text: "No messages with this field yet." })]));
}

function messageLink(id) {
  return el("a", { class: "msg", href: "#", text: id, onclick: (e) => { e.preventDefault(); openMessage(id); } });
}

function badge(text) {
  return el("span", { class: `badge ${text || ""}`, text: text || "–" });
}

async function loadRecent() {
  const page = await api("/v1/messages?order=recent&limit=15");
  $("#recent tbody").replaceChildren(...page.messages.map((m) => el("tr", {},
    el("td", { class: "id" }, messageLink(m.message_id)),
    el("td", {}, badge(m.status)),
    el("td", { text: m.recipient || "" }),
    el("td", { text: (m.callback_data && m.callback_data.campaign) || "" }),
    el("td", { text: when(m.updated_at) }))));
  if (!page.messages.length) {
    $("#recent tbody").replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "No messages yet." })));
  }
}

async function loadDead() {
  const page = await api("/v1/actions?state=dead&limit=50");
  const rows = page.actions.map((a) => el("tr", { "data-action": a.id },
    el("td", { text: a.rule }),
    el("td", { text: a.action }),
    el("td", { class: "id" }, messageLink(a.message_id)),
    el("td", { text: String(a.attempts) }),
    el("td", { text: a.last_error || "" }),
    el("td", {}, el("button", { class: "small", type: "button", text: "Retry", onclick: () => retry(a.id) }))));
  $("#dead tbody").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: "6", class: "muted", text: "Nothing dead." }))]));
}

async function retry(id) {
  try {
    await api(`/v1/actions/${encodeURIComponent(id)}/retry`, { method: "POST", body: "{}" });
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("That token was refused.");
    alert(error.message);
  }
  refresh();
}

// The recipient as sent, with its E.164 form or user id when they say more.
function recipientText(m) {
  const parts = [m.recipient || m.recipient_user_id || "no recipient"];
  if (m.recipient_e164 && m.recipient_e164 !== m.recipient) parts.push(`(${m.recipient_e164})`);
  return parts.join(" ");
}

function eventDetail(e) {
  const parts = [];
  if (e.reply) {
    parts.push(`“${e.reply.text ?? ""}”`);
    if (e.reply.payload) parts.push(`payload ${e.reply.payload}`);
  }
  if (e.participant) parts.push(`participant ${e.participant}`);
  if (e.failure_code) parts.push(e.failure_code);
  if (e.failure_reason) parts.push(e.failure_reason);
  return parts.join(" · ");
}

async function openMessage(id) {
  const panel = $("#timeline");
  panel.hidden = false;
  panel.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  try {
    const m = await api(`/v1/messages/${encodeURIComponent(id)}`);
    panel.replaceChildren(
      el("h3", { "data-testid": "timeline-id", text: m.message_id }),
      el("p", {}, badge(m.status), ` ${m.provider} · ${recipientText(m)} · ${m.channel || ""}`,
        m.opted_out_at ? el("b", { class: "error", "data-testid": "opted-out", text: ` · opted out ${when(m.opted_out_at)}` }) : ""),
      m.status === "failed"
        ? el("p", { class: "error", "data-testid": "failure" },
          m.failure_code ? el("b", { class: "code", text: m.failure_code }) : "",
          `${m.failure_code ? " " : ""}${m.failure_reason || "no reason given"}`)
        : "",
      el("pre", { text: JSON.stringify(m.callback_data ?? m.callback_data_raw, null, 2) }),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["Event", "At", "Received", "Detail"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...m.events.map((e) => el("tr", {},
          el("td", { "data-kind": e.kind },
            e.kind === "click" ? `click ${e.url}`
              : e.kind === "reply" ? `reply (${e.reply ? e.reply.type : "?"})`
                : e.kind === "opt_out" ? `opt-out: ${e.opt_out ? `${e.opt_out.value} (${e.opt_out.source})` : "?"}`
                  : badge(e.status)),
          el("td", { text: when(e.at) }),
          el("td", { text: when(e.received_at) }),
          el("td", { class: "detail", text: eventDetail(e) })))))),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["Follow-up", "State", "Attempts", "Last error"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...m.actions.map((a) => el("tr", {},
          el("td", { text: `${a.rule} (${a.action})` }),
          el("td", {}, badge(a.state)),
          el("td", { text: String(a.attempts) }),
          el("td", { text: a.last_error || "" })))))));
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("That token was refused.");
    panel.replaceChildren(el("p", { class: "error", text: error.message }));
  }
}

async function search(query) {
  const results = $("#results");
  $("#timeline").hidden = true;
  results.replaceChildren(el("p", { class: "muted", text: "Searching…" }));
  try {
    try {
      const m = await api(`/v1/messages/${encodeURIComponent(query)}`);
      results.replaceChildren();
      return openMessage(m.message_id);
    } catch (error) {
      if (error.status !== 404) throw error;
    }
    const found = [];
    for (const filter of ["callback.order_id", "recipient"]) {
      try {
        const page = await api(`/v1/messages?${filter}=${encodeURIComponent(query)}&limit=20`);
        found.push(...page.messages);
      } catch (error) {
        if (error.status !== 400) throw error; // 400: order_id is not indexed here
      }
    }
    if (found.length === 1) {
      results.replaceChildren();
      return openMessage(found[0].message_id);
    }
    results.replaceChildren(found.length
      ? el("ul", {}, ...found.map((m) => el("li", {}, messageLink(m.message_id), " ", badge(m.status))))
      : el("p", { class: "muted", text: `Nothing found for “${query}”.` }));
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("That token was refused.");
    results.replaceChildren(el("p", { class: "error", text: error.message }));
  }
}

async function refresh() {
  if (!state.token) return showLogin();
  try {
    await Promise.all([loadFunnels(), loadRecent(), loadDead()]);
    setLive(`live · ${new Date().toLocaleTimeString()}`, "ok");
    $("#logout").hidden = false;
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("That token was refused.");
    setLive(`error: ${error.message}`, "bad");
  }
}

function start() {
  $("#login-form").addEventListener("submit", () => {
    state.token = $("#token").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    refresh();
  });
  $("#logout").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin();
  });
  $("#group-by").addEventListener("change", (e) => { state.field = e.target.value; refresh(); });
  $("#search").addEventListener("submit", (e) => {
    e.preventDefault();
    const query = $("#q").value.trim();
    if (query) search(query);
  });
  state.timer = setInterval(() => { if (!document.hidden && state.token) refresh(); }, REFRESH_MS);
  refresh();
}

start();
