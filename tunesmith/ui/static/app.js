// tunesmith web UI: live run charts (server-sent events + uPlot) and the chat playground (OpenAI streaming API).
"use strict";

const PALETTE = ["#4f46e5", "#f59e0b", "#0f9d58", "#db2777", "#0891b2", "#7c3aed", "#64748b"];

function fmtDuration(s) {
  if (s === null || s === undefined || isNaN(s)) return "–";
  s = Math.round(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function fmtNum(v, digits) {
  if (v === null || v === undefined || isNaN(v)) return "–";
  return Number(v).toLocaleString("en-US", {maximumFractionDigits: digits, minimumFractionDigits: digits});
}

// ---- charts ----

class LineChart {
  // keys: metric names (a trailing * matches a prefix); rows: metrics.jsonl rows merged by step
  constructor(el, keys, title, labels) {
    this.el = el;
    this.keys = keys;
    this.labels = labels || null;
    this.title = title;
    this.plot = null;
    this.series = [];
  }

  matching(rowKeys) {
    const out = [];
    for (const k of this.keys) {
      if (k.endsWith("*")) rowKeys.filter(r => r.startsWith(k.slice(0, -1))).sort().forEach(r => out.push(r));
      else out.push(k);
    }
    return [...new Set(out)];
  }

  // columns: list of {label, points: Map(step -> value)}
  draw(columns) {
    const steps = [...new Set(columns.flatMap(c => [...c.points.keys()]))].sort((a, b) => a - b);
    const data = [steps, ...columns.map(c => steps.map(s => (c.points.has(s) ? c.points.get(s) : null)))];
    const names = columns.map(c => c.label).join("|");
    this.el.dataset.points = String(steps.length);
    if (!steps.length) return;
    this.el.classList.remove("hidden");
    if (!this.plot || this.names !== names) {
      if (this.plot) this.plot.destroy();
      this.names = names;
      const width = Math.max(280, this.el.clientWidth - 36);
      this.plot = new uPlot({
        title: this.title, width: width, height: 220,
        scales: {x: {time: false}},
        axes: [{label: "step", stroke: "#6b7385", grid: {stroke: "#eef0f4"}}, {stroke: "#6b7385", grid: {stroke: "#eef0f4"}, size: 60,
          // small values (learning rates) in scientific notation, or every tick reads "0.001"
          values: (u, ticks) => ticks.map(v => (v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : +v.toPrecision(4)))}],
        series: [{label: "step"}, ...columns.map((c, i) => ({
          label: c.label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true,
          points: {show: c.sparse || steps.length < 40, size: c.sparse ? 7 : 4},
          value: (u, v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(4)),
        }))],
      }, data, this.el);
    } else {
      this.plot.setData(data);
    }
  }

  resize() {
    if (this.plot) this.plot.setSize({width: Math.max(280, this.el.clientWidth - 36), height: 220});
  }
}

// ---- one run, live ----

function initRunPage(page) {
  const byStep = new Map();  // step -> merged row
  const charts = [...document.querySelectorAll(".chart[data-keys]")].map(
    el => new LineChart(el, el.dataset.keys.split(","), el.dataset.title));
  window.tunesmithCharts = charts;

  function redraw() {
    const rows = [...byStep.values()];
    const allKeys = [...new Set(rows.flatMap(r => Object.keys(r)))];
    for (const chart of charts) {
      const columns = chart.matching(allKeys).map(key => {
        const points = new Map();
        for (const r of rows) if (typeof r[key] === "number") points.set(r.step, r[key]);
        return {label: key.replace("probe/", ""), points: points, sparse: key === "valid_loss" || key.startsWith("probe/")};
      }).filter(c => c.points.size);
      chart.draw(columns);
    }
  }

  function setState(s) {
    const status = document.getElementById("status");
    status.textContent = s.status;
    status.className = "badge " + s.status.replace(/ /g, "-");
    document.getElementById("t-step").innerHTML = s.step + (s.total ? " <small>/ " + s.total + "</small>" : "");
    document.getElementById("t-bar").style.width = (s.total ? (100 * s.step / s.total) : 0) + "%";
    document.getElementById("t-loss").textContent = fmtNum(s.loss, 3);
    document.getElementById("t-valid").textContent = fmtNum(s.valid_loss, 3);
    document.getElementById("t-tps").textContent = fmtNum(s.tokens_per_second, 0);
    document.getElementById("t-elapsed").textContent = fmtDuration(s.summary ? s.summary.train_seconds : s.elapsed_seconds);
    document.getElementById("t-eta").textContent = s.status === "running" ? fmtDuration(s.eta_seconds) : "–";
    document.getElementById("checkpoints").textContent = s.checkpoints.length ? s.checkpoints.join(", ") : "–";
    document.getElementById("final").textContent = s.has_final ? "final/" : "–";
    document.getElementById("stop").hidden = s.status !== "running";
    document.getElementById("resume").hidden = !s.resumable;
    document.getElementById("chat-link").hidden = !s.has_final;
    document.getElementById("eval-link").hidden = !s.has_final;
    const error = document.getElementById("error");
    error.hidden = !s.error;
    error.textContent = s.error || "";
    page.dataset.status = s.status;
  }

  const source = new EventSource(page.dataset.events);
  source.addEventListener("reset", () => { byStep.clear(); redraw(); });
  source.addEventListener("metrics", ev => {
    for (const row of JSON.parse(ev.data)) byStep.set(row.step, Object.assign(byStep.get(row.step) || {}, row));
    redraw();
  });
  source.addEventListener("state", ev => setState(JSON.parse(ev.data)));
  source.addEventListener("log", ev => {
    const log = document.getElementById("log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    log.textContent = JSON.parse(ev.data).text || log.textContent;
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  window.addEventListener("resize", () => charts.forEach(c => c.resize()));
  window.addEventListener("beforeunload", () => source.close());
}

// ---- two runs on one chart ----

function initCompareRuns(page) {
  const sides = JSON.parse(document.getElementById("compare-data").textContent);
  const names = page.dataset.names.split("|");
  for (const el of page.querySelectorAll(".chart[data-key]")) {
    const key = el.dataset.key;
    const chart = new LineChart(el, [key], el.dataset.title);
    chart.draw(sides.map((rows, i) => {
      const points = new Map();
      for (const r of rows) if (typeof r[key] === "number") points.set(r.step, r[key]);
      return {label: names[i], points: points};
    }));
    window.addEventListener("resize", () => chart.resize());
  }
}

// ---- chat playground ----

function initChat() {
  const messages = document.getElementById("messages");
  const settings = document.getElementById("chat-settings");
  const prompt = document.getElementById("prompt");
  let history = [];
  let opened = null;  // {key, url, model, label}

  function bubble(cls, text, meta) {
    document.getElementById("chat-hint")?.remove();
    const div = document.createElement("div");
    div.className = "msg " + cls;
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = text;
    div.appendChild(body);
    if (meta !== undefined) {
      const m = document.createElement("span");
      m.className = "meta";
      m.textContent = meta;
      div.appendChild(m);
    }
    messages.appendChild(div);
    messages.scrollTop = messages.scrollHeight;
    return div;
  }

  async function open() {
    const key = settings.source.value + "|" + settings.guardrails.value;
    if (opened && opened.key === key) return opened;
    const form = new FormData();
    form.append("source", settings.source.value);
    form.append("guardrails", settings.guardrails.value);
    const r = await fetch("/chat/open", {method: "POST", body: form, headers: {"Accept": "application/json"}});
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    opened = Object.assign({key: key}, body);
    return opened;
  }

  async function send(text) {
    history.push({role: "user", content: text});
    bubble("user", text);
    const answer = bubble("assistant", "…", "loading the model");
    const body = answer.querySelector(".body");
    const meta = answer.querySelector(".meta");
    document.getElementById("send").disabled = true;
    try {
      const slot = await open();
      meta.textContent = slot.label + (slot.guardrails ? " · guardrails " + slot.guardrails : "");
      const system = document.getElementById("system").value.trim();
      const request = {
        model: slot.model, stream: true, stream_options: {include_usage: true},
        messages: (system ? [{role: "system", content: system}] : []).concat(history),
        temperature: Number(document.getElementById("temperature").value),
        top_p: Number(document.getElementById("top_p").value),
        max_tokens: Number(document.getElementById("max_tokens").value),
        seed: Number(document.getElementById("seed").value),
      };
      const started = performance.now();
      const r = await fetch(slot.url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(request)});
      if (!r.ok) {
        const err = await r.json().catch(() => ({}));
        throw new Error(err.error ? err.error.message : r.status + " " + r.statusText);
      }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "", text = "", finish = null, usage = null;
      body.textContent = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const line = buffer.slice(0, cut).trim();
          buffer = buffer.slice(cut + 2);
          if (!line.startsWith("data:")) continue;
          const payload = line.slice(5).trim();
          if (payload === "[DONE]") continue;
          const chunk = JSON.parse(payload);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          for (const choice of chunk.choices || []) {
            if (choice.delta && choice.delta.content) { text += choice.delta.content; body.textContent = text; }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
          messages.scrollTop = messages.scrollHeight;
        }
      }
      const seconds = (performance.now() - started) / 1000;
      const parts = [slot.label];
      if (finish === "content_filter") { parts.push("refused or edited by the guardrails"); answer.classList.add("refused"); }
      else if (finish) parts.push("finish: " + finish);
      if (usage) parts.push(usage.completion_tokens + " tokens, " + (usage.completion_tokens / seconds).toFixed(1) + " tokens/s");
      meta.textContent = parts.join(" · ");
      answer.dataset.finish = finish || "";
      history.push({role: "assistant", content: text});
    } catch (e) {
      answer.className = "msg error";
      body.textContent = String(e.message || e);
      meta.textContent = "error";
      history.pop();
    } finally {
      document.getElementById("send").disabled = false;
      prompt.focus();
    }
  }

  document.getElementById("composer").addEventListener("submit", ev => {
    ev.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    prompt.value = "";
    send(text);
  });
  prompt.addEventListener("keydown", ev => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); document.getElementById("composer").requestSubmit(); }
  });
  document.getElementById("clear-chat").addEventListener("click", () => {
    history = [];
    messages.innerHTML = "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run-page");
  if (run) initRunPage(run);
  const compare = document.getElementById("compare-page");
  if (compare) initCompareRuns(compare);
  if (document.getElementById("chat-page")) initChat();
});
