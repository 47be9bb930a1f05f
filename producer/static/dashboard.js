// The smsq dashboard: polls /dashboard/api/* every POLL_MS and updates the page in place
// (rows keyed by campaign, so keyboard focus survives an update). No library, no build step.
"use strict";

(() => {
  // Fast enough to watch a campaign move, slow enough to cost Redis nothing.
  const POLL_MS = 2000;
  // The chart: the campaign's trunk's last hour (the server's rates ring), in 10 s buckets.
  const HOUR_S = 3600;
  const BUCKET_S = 10;
  const STATES = ["queued", "sending", "accepted", "sent", "failed", "rejected", "expired",
    "unknown", "unconfirmed", "cancelled", "suppressed"];
  const COLUMNS = [...document.querySelectorAll("table.campaigns thead th")].map((th) => th.textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);

  let view = { name: "", cid: "" };
  let generation = 0;
  let timer = null;
  let running = false;
  let again = false;
  let loaded = false;
  // The trunk's seconds shown: {trunk, start, end, claimed: [...], callbacks: [...]}.
  let rates = null;
  let previous = null;
  let previousTrunks = null;

  // --- formatting --------------------------------------------------------------------------
  const whenFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const number = (n) => Number(n).toLocaleString();
  const when = (ts) => (ts ? whenFormat.format(new Date(ts * 1000)) : "–");
  const perSecond = (n) => `${Number(n).toFixed(1)}/s`;
  function duration(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function cell(tag, text, className) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // The one row of a table with nothing to show: its text across every column.
  function emptyRow(text, columns) {
    const tr = cell("tr", undefined, "empty");
    const td = cell("td", text);
    td.colSpan = columns;
    tr.append(td);
    return tr;
  }

  // --- talking to the server ---------------------------------------------------------------
  class SignedOut extends Error {}

  async function answer(response) {
    if (response.status === 401) {
      // The session ended (logged out elsewhere, expired, or the token changed): the page
      // itself shows the sign-in form now.
      window.location.assign("/");
      throw new SignedOut("signed out");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  async function getJson(path) {
    return answer(await fetch(path, { headers: { Accept: "application/json" } }));
  }

  async function post(path) {
    return answer(await fetch(path, { method: "POST", headers: { "X-CSRF-Token": csrf } }));
  }

  function connection(ok, why) {
    setText($("connection"), ok ? `Live · ${new Date().toLocaleTimeString()}` : `Not updating: ${why}`);
    $("connection").classList.toggle("down", !ok);
  }

  // --- the state badge ---------------------------------------------------------------------
  function badge(el, state) {
    setText(el, state);
    el.className = `state state-${state.replace(" ", "-")}`;
  }

  // --- campaigns and trunks ----------------------------------------------------------------
  function campaignRow(c) {
    const tr = document.createElement("tr");
    tr.dataset.cid = c.campaign_id;
    const name = cell("th");
    name.scope = "row";
    const link = cell("a");
    link.href = `#/campaigns/${c.campaign_id}`;
    name.append(link);
    const progress = cell("td", undefined, "progress-cell");
    const bar = document.createElement("progress");
    bar.max = 1;
    progress.append(bar, cell("span"));
    const state = cell("span");
    const stateCell = cell("td");
    stateCell.append(state);
    tr.append(name, cell("td"), cell("td"), stateCell, progress,
      cell("td", "", "num"), cell("td", "", "num"), cell("td", "", "num"),
      cell("td", "", "num"), cell("td", "", "num"));
    // On a phone each row is a card, and each cell shows its column's name (CSS).
    [...tr.children].forEach((td, i) => { if (i) td.dataset.label = COLUMNS[i]; });
    return tr;
  }

  function fillCampaignRow(tr, c) {
    const cells = tr.children;
    const label = c.name || "(no name)";
    const link = cells[0].firstChild;
    setText(link, label);
    link.setAttribute("aria-label", `${label}, ${c.state}`);
    setText(cells[1], c.trunk);
    setText(cells[2], when(c.created_at));
    badge(cells[3].firstChild, c.state);
    const bar = cells[4].firstChild;
    bar.value = c.progress;
    const percent = `${Math.floor(c.progress * 100)}%`;
    bar.setAttribute("aria-label", `${label}: ${percent} settled`);
    setText(cells[4].lastChild, percent);
    setText(cells[5], number(c.counts.sent));
    setText(cells[6], number(c.counts.failed));
    setText(cells[7], number(c.counts.unknown));
    setText(cells[8], number(c.counts.queued));
    setText(cells[9], c.state === "active" ? perSecond(c.rate_per_s) : "–");
  }

  function renderCampaigns(doc) {
    const body = $("campaign-rows");
    setText($("campaigns-limit"), String(doc.limit));
    const rows = new Map([...body.querySelectorAll("tr[data-cid]")].map((tr) => [tr.dataset.cid, tr]));
    body.querySelectorAll("tr.empty").forEach((tr) => tr.remove());
    if (!doc.campaigns.length) {
      rows.forEach((tr) => tr.remove());
      body.append(emptyRow("No campaigns yet. Create one with smsq send or POST /v1/campaigns.", 10));
      return;
    }
    const keep = new Set(doc.campaigns.map((c) => c.campaign_id));
    rows.forEach((tr, cid) => { if (!keep.has(cid)) tr.remove(); });
    // Walk in order, moving a row only when it is out of place (a move of the focused row
    // would drop the focus).
    let at = body.firstElementChild;
    for (const c of doc.campaigns) {
      let tr = rows.get(c.campaign_id);
      if (!tr) tr = campaignRow(c);
      fillCampaignRow(tr, c);
      if (tr !== at) body.insertBefore(tr, at);
      else at = at.nextElementSibling;
    }
  }

  function alertText(trunk) {
    const parts = [];
    if (trunk.halted) parts.push(`Halted since ${when(trunk.halted.at)}: ${trunk.halted.detail}`);
    if (trunk.backing_off) {
      parts.push(`Backing off since ${when(trunk.backing_off.at)}: ${trunk.backing_off.detail}`);
    }
    return parts.join(" · ");
  }

  // A trunk's callbacks per second, from its settled count now and at the previous poll.
  function callbackRate(doc, t) {
    const before = previousTrunks && previousTrunks.trunks.find((p) => p.name === t.name);
    if (!before || !(doc.at > previousTrunks.at)) return "–";
    const rate = (t.callbacks_settled - before.callbacks_settled) / (doc.at - previousTrunks.at);
    return perSecond(Math.max(0, rate));
  }

  function renderTrunks(doc) {
    const body = $("trunk-rows");
    const rows = doc.trunks.map((t) => {
      const tr = document.createElement("tr");
      tr.dataset.trunk = t.name;
      const name = cell("th", t.name);
      name.scope = "row";
      const sending = t.halted ? "halted" : t.backing_off ? "backing off" : "ok";
      const state = cell("span");
      badge(state, sending);
      const stateCell = cell("td");
      stateCell.append(state);
      tr.append(
        name,
        stateCell,
        cell("td", perSecond(t.claimed_per_s), "num"),
        cell("td", number(t.parked_batches), "num"),
        cell("td", number(t.callbacks_waiting), "num"),
        cell("td", callbackRate(doc, t), "num"),
        cell("td", alertText(t) || "none"),
      );
      return tr;
    });
    // The trunks table holds no focusable element, so replacing it loses nothing.
    body.replaceChildren(...rows);
    previousTrunks = doc;
  }

  async function refreshOverview(g) {
    const [campaigns, trunks] = await Promise.all([
      getJson("/dashboard/api/campaigns"), getJson("/dashboard/api/trunks")]);
    if (g !== generation) return;
    renderCampaigns(campaigns);
    renderTrunks(trunks);
  }

  // --- one campaign ------------------------------------------------------------------------
  function renderCounts(counts) {
    const body = $("count-rows");
    if (!body.children.length) {
      for (const state of STATES) {
        const tr = document.createElement("tr");
        const th = cell("th", state);
        th.scope = "row";
        tr.append(th, cell("td", "0", "num"));
        tr.dataset.state = state;
        body.append(tr);
      }
    }
    for (const tr of body.children) {
      const n = counts[tr.dataset.state] || 0;
      setText(tr.lastChild, number(n));
      tr.classList.toggle("zero", n === 0);
    }
  }

  function renderFailures(doc) {
    const body = $("failure-rows");
    const note = $("failures-note");
    const groups = doc.failures;
    if (groups === null) {
      note.hidden = false;
      setText(note, `Not counted here for a campaign over ${number(doc.failures_scanned_up_to)} ` +
        "messages: the report has every failure with its code_id.");
      body.replaceChildren();
      return;
    }
    const counted = groups.reduce((sum, g) => sum + g.count, 0);
    const failed = doc.status.counts.failed;
    note.hidden = counted === failed;
    setText(note, `Counted every few seconds for a large campaign: ${number(counted)} of ` +
      `${number(failed)} failed messages so far.`);
    if (!groups.length) {
      body.replaceChildren(emptyRow("No failed messages.", 3));
      return;
    }
    body.replaceChildren(...groups.map((g) => {
      const tr = document.createElement("tr");
      const code = cell("th", g.code_id === null ? "none" : String(g.code_id), "num");
      code.scope = "row";
      tr.append(code, cell("td", g.reason || "not documented by DIDWW"), cell("td", number(g.count), "num"));
      return tr;
    }));
  }

  function setEnabled(button, enabled) {
    if (button.disabled === !enabled) return;
    const hadFocus = document.activeElement === button;
    button.disabled = !enabled;
    if (hadFocus && !enabled) {
      const next = [...document.querySelectorAll(".actions button, .actions a")].find((b) => !b.disabled);
      (next || $("campaign-title")).focus();
    }
  }

  function renderCampaign(doc) {
    const s = doc.status;
    const label = s.name || "(no name)";
    setText($("campaign-title"), label);
    document.title = `${label} · smsq`;
    setText($("campaign-id"), s.campaign_id);
    badge($("c-state"), s.state);
    setText($("c-trunk"), s.trunk);
    setText($("c-created"), when(s.created_at));
    setText($("c-total"), number(s.total));
    setText($("c-rate"), perSecond(s.rate_per_s));
    const left = s.state === "done" ? "done" : s.state === "cancelled" ? "cancelled"
      : doc.time_left_s === null ? (s.state === "paused" ? "paused" : "– (not posting now)")
        : duration(doc.time_left_s);
    setText($("c-left"), left);
    $("c-progress").value = doc.progress;
    setText($("c-progress-text"), `${Math.floor(doc.progress * 100)}% of ${number(s.total)}`);
    $("report").href = `/dashboard/api/campaigns/${s.campaign_id}/report.csv`;

    const alert = alertText(doc.trunk);
    $("trunk-alert").hidden = !alert;
    setText($("trunk-alert"), alert ? `Trunk ${doc.trunk.name}: ${alert}` : "");
    const warnings = $("warnings");
    warnings.hidden = !s.warnings.length;
    warnings.replaceChildren(...s.warnings.map((w) => cell("li", w)));

    const stuck = Boolean(doc.trunk.halted || doc.trunk.backing_off);
    const open = s.state !== "cancelled" && s.state !== "done";
    setEnabled($("pause"), s.state === "active" || s.state === "scheduled");
    setEnabled($("resume"), s.state === "paused" || (open && stuck));
    setEnabled($("cancel"), open);

    renderCounts(s.counts);
    renderFailures(doc);

    let callbacks = null;
    if (previous && previous.status.campaign_id === s.campaign_id && doc.at > previous.at) {
      callbacks = Math.max(0, (doc.callbacks_settled - previous.callbacks_settled) / (doc.at - previous.at));
    }
    previous = doc;
    setText($("c-callbacks"), callbacks === null ? "–" : perSecond(callbacks));
  }

  // The trunk's seconds since the last ones shown (the whole hour at first), kept to an hour.
  async function refreshRates(g, trunk) {
    const known = rates && rates.trunk === trunk ? rates : null;
    const since = known ? known.end - 1 : 0;
    const doc = await getJson(`/dashboard/api/trunks/${encodeURIComponent(trunk)}/rates?since=${since}`);
    if (g !== generation) return;
    if (known && doc.start === known.end) {
      known.claimed.push(...doc.claimed);
      known.callbacks.push(...doc.callbacks);
      known.end = doc.end;
      const drop = Math.max(0, known.end - known.start - HOUR_S);
      known.claimed.splice(0, drop);
      known.callbacks.splice(0, drop);
      known.start += drop;
    } else {
      rates = doc;
    }
    drawChart();
  }

  async function refreshCampaign(g, cid) {
    const doc = await getJson(`/dashboard/api/campaigns/${encodeURIComponent(cid)}`);
    if (g !== generation) return;
    renderCampaign(doc);
    await refreshRates(g, doc.trunk.name);
  }

  // Per-second averages over BUCKET_S seconds, ending with the last whole bucket.
  function buckets() {
    if (!rates) return [];
    const out = [];
    const n = rates.claimed.length;
    for (let end = n; end - BUCKET_S >= 0; end -= BUCKET_S) {
      let claimed = 0;
      let callbacks = 0;
      for (let i = end - BUCKET_S; i < end; i += 1) {
        claimed += rates.claimed[i];
        callbacks += rates.callbacks[i];
      }
      out.unshift({ at: rates.start + end, posted: claimed / BUCKET_S, callbacks: callbacks / BUCKET_S });
    }
    return out;
  }

  // --- the chart: two polylines in an SVG, drawn by hand ------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attributes, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) el.setAttribute(name, value);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function niceMax(value) {
    if (value <= 1) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((m) => m >= value);
  }

  // Drawn in the SVG's own pixels (its viewBox follows its size), so text stays legible
  // from a phone to a wide screen.
  function drawChart() {
    const chart = $("chart");
    const box = chart.getBoundingClientRect();
    const width = Math.max(280, Math.round(box.width) || 600);
    const height = Math.max(160, Math.round(box.height) || 220);
    chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const PLOT = { left: 44, right: width - 12, top: 12, bottom: height - 26 };
    const samples = buckets();
    const top = niceMax(Math.max(1, ...samples.map((p) => Math.max(p.posted, p.callbacks))));
    const end = rates ? rates.end : 0;
    const x = (i) => PLOT.left + (PLOT.right - PLOT.left) * (1 - (end - samples[i].at) / HOUR_S);
    const y = (v) => PLOT.bottom - (PLOT.bottom - PLOT.top) * (v / top);
    const parts = [];
    for (const v of [0, top / 2, top]) {
      parts.push(svg("line", { x1: PLOT.left, x2: PLOT.right, y1: y(v), y2: y(v), class: "grid" }));
      parts.push(svg("text", { x: PLOT.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" },
        Number.isInteger(v) ? String(v) : v.toFixed(1)));
    }
    parts.push(svg("text", { x: PLOT.left, y: height - 6, class: "tick" }, "1 h ago"));
    parts.push(svg("text", { x: PLOT.right, y: height - 6, class: "tick", "text-anchor": "end" }, "now"));
    for (const series of ["posted", "callbacks"]) {
      if (!samples.length) break;
      const points = samples.map((p, i) => `${x(i).toFixed(1)},${y(p[series]).toFixed(1)}`).join(" ");
      parts.push(svg("polyline", { points, class: `line ${series}` }));
      const last = samples.length - 1;
      parts.push(svg("circle", { cx: x(last), cy: y(samples[last][series]), r: 4, class: `dot ${series}` }));
    }
    chart.replaceChildren(...parts);
    const last = samples[samples.length - 1];
    const trunk = rates ? rates.trunk : "";
    setText($("chart-caption"), last
      ? `Trunk ${trunk}, per second over the last hour (10 s averages): messages claimed and callbacks settled. Last 10 s: ${perSecond(last.posted)} claimed, ${perSecond(last.callbacks)} callbacks.`
      : "Per second over the last hour: loading…");
  }

  // --- buttons -----------------------------------------------------------------------------
  async function act(action) {
    const cid = view.cid;
    const result = $("action-result");
    setText(result, `${action[0].toUpperCase()}${action.slice(1)}…`);
    try {
      const doc = await post(`/dashboard/api/campaigns/${encodeURIComponent(cid)}/${action}`);
      const extra = action === "cancel" ? ` ${number(doc.cancelled)} queued messages cancelled.` : "";
      setText(result, `Campaign ${doc.state}.${extra}`);
      result.classList.remove("failed");
    } catch (error) {
      if (error instanceof SignedOut) return;
      setText(result, `Could not ${action}: ${error.message}`);
      result.classList.add("failed");
    }
    await tick();
  }

  function wireButtons() {
    // Shown only where the script runs: without it they could not work.
    for (const id of ["pause", "resume", "cancel"]) $(id).hidden = false;
    $("pause").addEventListener("click", () => act("pause"));
    $("resume").addEventListener("click", () => act("resume"));
    const dialog = $("confirm-cancel");
    $("cancel").addEventListener("click", () => { dialog.returnValue = ""; dialog.showModal(); });
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "cancel") act("cancel");
      else $("cancel").focus();
    });
  }

  // --- views and polling -------------------------------------------------------------------
  function route() {
    // A campaign's page is /campaigns/{id} as the server sends it, #/campaigns/{id} after.
    const match = window.location.hash.match(/^#\/campaigns\/([0-9a-f]{16})$/)
      || (!window.location.hash && window.location.pathname.match(/^\/campaigns\/([0-9a-f]{16})$/));
    const next = match ? { name: "campaign", cid: match[1] } : { name: "overview", cid: "" };
    const trunks = window.location.hash === "#/trunks";
    const changed = next.name !== view.name || next.cid !== view.cid;
    view = next;
    $("overview").hidden = view.name !== "overview";
    $("campaign").hidden = view.name !== "campaign";
    document.querySelectorAll("[data-nav]").forEach((a) => {
      const current = view.name === "overview" && (a.dataset.nav === "trunks") === trunks;
      if (current) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    if (changed) {
      generation += 1;
      previous = null;
      setText($("action-result"), "");
      if (view.name === "campaign") {
        setText($("campaign-title"), "Campaign");
        $("count-rows").replaceChildren();
        $("failure-rows").replaceChildren();
        drawChart();
      } else {
        document.title = "Campaigns · smsq";
      }
    }
    // A new view moves the focus to its heading, as a page load would (the first is one).
    const heading = view.name === "campaign" ? "campaign-title" : trunks ? "trunks-title" : "campaigns-title";
    if (loaded && (changed || trunks)) $(heading).focus();
    loaded = true;
    if (changed) tick();
  }

  // One read at a time: a tick asked for while one runs (a button, a new view) follows it.
  async function tick() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    clearTimeout(timer);
    const g = generation;
    try {
      if (view.name === "campaign") await refreshCampaign(g, view.cid);
      else await refreshOverview(g);
      connection(true);
    } catch (error) {
      if (error instanceof SignedOut) return;
      connection(false, error.message);
    } finally {
      running = false;
    }
    if (again) {
      again = false;
      tick();
    } else {
      timer = setTimeout(tick, POLL_MS);
    }
  }

  wireButtons();
  new ResizeObserver(() => drawChart()).observe($("chart"));
  window.addEventListener("hashchange", route);
  route();
})();
