// The dashboard's behaviour: poll /json once a second, show the counters, and draw the speed of
// the last two minutes on a canvas. No library: the chart is a few dozen lines of canvas calls,
// and the page must work on a workshop network with no internet access.
"use strict";

(function () {
  const POLL_EVERY_MS = 1000;
  // Longer than the server's own 1 s deadline, so that its 503 arrives before we give up.
  const POLL_TIMEOUT_MS = 2500;
  const HISTORY_MS = 120 * 1000;
  const REDRAW_EVERY_MS = 100;

  const byId = (id) => document.getElementById(id);
  const view = {
    speed: byId("speed"),
    hashes: byId("hashes"),
    coins: byId("coins"),
    status: byId("status-text"),
    banner: byId("banner"),
    bannerTitle: byId("banner-title"),
    bannerReason: byId("banner-reason"),
    writeProblem: byId("write-problem"),
    updated: byId("updated"),
    chart: byId("chart"),
    replicas: { rng: byId("replicas-rng"), hasher: byId("replicas-hasher") },
    golden: { rng: byId("golden-rng"), hasher: byId("golden-hasher") },
  };

  // The golden tables' head, the same for every service, and an empty body for the rows.
  for (const table of Object.values(view.golden)) {
    const head = table.createTHead().insertRow();
    for (const title of ["Replica", "calls/s", "success", "p50 ms", "p95 ms", "p99 ms"]) {
      const cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = title;
      head.appendChild(cell);
    }
    table.createTBody();
  }

  // One point per poll: the speed, or null while it is unknown (a gap in the line).
  const history = [];

  function remember(rate) {
    const now = Date.now();
    history.push({ t: now, rate: rate });
    while (history.length > 0 && history[0].t < now - HISTORY_MS - 2 * POLL_EVERY_MS) {
      history.shift();
    }
  }

  function setState(state, label) {
    document.body.dataset.state = state;
    view.status.textContent = label;
  }

  function show(data) {
    // Plain digits: the numbers are read by people and by tests alike.
    view.speed.textContent = data.rate.toFixed(2);
    view.hashes.textContent = String(data.hashes);
    view.coins.textContent = String(data.coins);
    view.updated.textContent = "updated " + new Date(data.now * 1000).toLocaleTimeString();
    document.title = data.rate.toFixed(2) + " hashes/s · DockerCoins";
    view.banner.hidden = true;
    // Redis answers reads but refuses the workers' writes: the counters stand still meanwhile.
    view.writeProblem.textContent = data.write_problem || "";
    view.writeProblem.hidden = !data.write_problem;
    setState("live", "Live");
    remember(data.rate);
    showReplicas(data.replicas || {});
    showGolden(data.golden || {});
  }

  // A number of milliseconds or a share, or a dash when there were no calls to measure.
  const ms = (value) => (typeof value === "number" ? value.toFixed(value < 10 ? 3 : 1) : "–");
  const share = (value) => (typeof value === "number" ? (100 * value).toFixed(1) + "%" : "–");

  function goldenRow(golden, name, kind) {
    const row = document.createElement("tr");
    row.className = kind;
    const head = document.createElement("th");
    head.scope = "row";
    head.textContent = name;
    if (golden.sick) {
      row.classList.add("sick");
      row.dataset.sick = golden.sick;
      const mark = document.createElement("span");
      mark.className = "sick-mark";
      mark.textContent = golden.sick;
      head.append(" ", mark);
    }
    row.appendChild(head);
    for (const text of [golden.rate.toFixed(2), share(golden.success_rate), ms(golden.p50_ms), ms(golden.p95_ms), ms(golden.p99_ms)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    return row;
  }

  // One table per service: the service as a whole first, then each replica, the sick ones marked.
  // Names come from Redis: set as text, never as markup.
  function showGolden(golden) {
    for (const [service, table] of Object.entries(view.golden)) {
      const report = golden[service];
      const rows = [];
      if (report && report.replicas.length > 0) {
        rows.push(goldenRow(report.service, "all replicas", "total"));
        for (const replica of report.replicas) {
          rows.push(goldenRow(replica, replica.name, "replica"));
        }
      } else {
        const row = document.createElement("tr");
        const cell = document.createElement("td");
        cell.colSpan = 6;
        cell.className = "bar-empty";
        cell.textContent = "No calls in the last 10 s.";
        row.appendChild(cell);
        rows.push(row);
      }
      table.tBodies[0].replaceChildren(...rows);
    }
  }

  // One bar per replica, as long as its share of the busiest one. Names come from Redis: they are
  // set as text, never as markup.
  function showReplicas(replicas) {
    for (const [service, list] of Object.entries(view.replicas)) {
      const rows = replicas[service] || [];
      const top = Math.max(1, ...rows.map((r) => r.rate));
      const items = rows.map((replica) => {
        const item = document.createElement("li");
        item.className = "bar";
        item.dataset.replica = replica.name;
        const name = document.createElement("span");
        name.className = "bar-name";
        name.textContent = replica.name;
        name.title = replica.calls + " calls in all";
        const track = document.createElement("span");
        track.className = "bar-track";
        const fill = document.createElement("span");
        fill.className = "bar-fill";
        fill.style.width = ((100 * replica.rate) / top).toFixed(1) + "%";
        track.appendChild(fill);
        const value = document.createElement("span");
        value.className = "bar-value";
        value.textContent = replica.rate.toFixed(2);
        item.append(name, track, value);
        return item;
      });
      if (items.length === 0) {
        const empty = document.createElement("li");
        empty.className = "bar-empty";
        empty.textContent = "No calls in the last 10 s.";
        items.push(empty);
      }
      list.replaceChildren(...items);
    }
  }

  // The last numbers stay on screen, dimmed, and the banner says why they no longer move.
  function unavailable(title, reason) {
    view.bannerTitle.textContent = title;
    view.bannerReason.textContent = reason;
    view.banner.hidden = false;
    document.title = title + " · DockerCoins";
    setState("down", title);
    remember(null);
  }

  async function poll() {
    const started = Date.now();
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), POLL_TIMEOUT_MS);
    try {
      const response = await fetch("json", {
        cache: "no-store",
        headers: { accept: "application/json" },
        signal: abort.signal,
      });
      const body = await response.json().catch(() => null);
      if (response.ok && body && typeof body.rate === "number") {
        show(body);
      } else if (response.status === 503) {
        unavailable("Redis unavailable", (body && body.error) || "Redis did not answer.");
      } else {
        unavailable("Unexpected answer", "/json answered HTTP " + response.status + ".");
      }
    } catch (err) {
      const reason = err && err.name === "AbortError"
        ? "/json did not answer within " + POLL_TIMEOUT_MS / 1000 + " s."
        : "The webui does not answer; is it running?";
      unavailable("webui unreachable", reason);
    } finally {
      clearTimeout(timer);
      // Once a second from the start of each poll, never two at once.
      setTimeout(poll, Math.max(0, POLL_EVERY_MS - (Date.now() - started)));
    }
  }

  // A scale whose top and step are 1, 2 or 5 times a power of ten, with four to six lines.
  function niceScale(max) {
    const rough = max / 4;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
    return { top: Math.ceil(max / step) * step, step: step };
  }

  function colours() {
    const css = getComputedStyle(document.documentElement);
    const get = (name) => css.getPropertyValue(name).trim();
    return {
      text: get("--muted"),
      grid: get("--grid"),
      line: get("--accent"),
      fill: get("--accent-fill"),
      fade: get("--accent-fade"),
      panel: get("--panel"),
      outage: get("--bad-fill"),
      font: "12px " + get("--font"),
    };
  }

  function draw() {
    const canvas = view.chart;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) {
      return;
    }
    // Draw at the screen's resolution, so that lines stay sharp on high-density displays.
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const c = colours();
    const pad = { left: 46, right: 14, top: 10, bottom: 28 };
    const plotWidth = width - pad.left - pad.right;
    const plotHeight = height - pad.top - pad.bottom;
    const now = Date.now();
    const from = now - HISTORY_MS;
    const known = history.filter((p) => p.rate !== null).map((p) => p.rate);
    const scale = niceScale(Math.max(1, ...known) * 1.15);
    const x = (t) => pad.left + ((t - from) / HISTORY_MS) * plotWidth;
    const y = (rate) => pad.top + plotHeight - (rate / scale.top) * plotHeight;

    ctx.font = c.font;
    ctx.lineWidth = 1;

    // Horizontal lines, labelled in hashes per second.
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const decimals = scale.step < 1 ? 1 : 0;
    for (let value = 0; value <= scale.top + scale.step / 1000; value += scale.step) {
      const at = Math.round(y(value)) + 0.5;
      ctx.strokeStyle = c.grid;
      ctx.beginPath();
      ctx.moveTo(pad.left, at);
      ctx.lineTo(width - pad.right, at);
      ctx.stroke();
      ctx.fillStyle = c.text;
      ctx.fillText(value.toFixed(decimals), pad.left - 8, at);
    }

    // Time marks every 30 s, from two minutes ago to now.
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let ago = HISTORY_MS; ago >= 0; ago -= 30 * 1000) {
      const label = ago === 0 ? "now" : ago % 60000 === 0 ? "−" + ago / 60000 + " min" : "−" + ago / 1000 + " s";
      const at = Math.round(x(now - ago)) + 0.5;
      ctx.fillStyle = c.text;
      ctx.textAlign = ago === HISTORY_MS ? "left" : ago === 0 ? "right" : "center";
      ctx.fillText(label, ago === HISTORY_MS ? pad.left : ago === 0 ? width - pad.right : at, height - pad.bottom + 10);
    }

    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.left, 0, plotWidth, height);
    ctx.clip();

    // Outages, as bands: the gap in the line is explained, not only left blank.
    ctx.fillStyle = c.outage;
    const half = POLL_EVERY_MS / 2;
    history.forEach((p, i) => {
      if (p.rate === null) {
        const start = x(p.t - half);
        const end = i + 1 < history.length ? x(history[i + 1].t - half) : x(now);
        ctx.fillRect(start, pad.top, end - start, plotHeight);
      }
    });

    // The line, broken where the speed was unknown, over a soft fill.
    const runs = [];
    let run = [];
    for (const point of history) {
      if (point.rate === null) {
        if (run.length > 0) runs.push(run);
        run = [];
      } else {
        run.push(point);
      }
    }
    if (run.length > 0) runs.push(run);

    const gradient = ctx.createLinearGradient(0, pad.top, 0, pad.top + plotHeight);
    gradient.addColorStop(0, c.fill);
    gradient.addColorStop(1, c.fade);
    for (const points of runs) {
      const trace = () => {
        ctx.beginPath();
        points.forEach((p, i) => (i === 0 ? ctx.moveTo(x(p.t), y(p.rate)) : ctx.lineTo(x(p.t), y(p.rate))));
      };
      trace();
      ctx.lineTo(x(points[points.length - 1].t), y(0));
      ctx.lineTo(x(points[0].t), y(0));
      ctx.closePath();
      ctx.fillStyle = gradient;
      ctx.fill();
      trace();
      ctx.strokeStyle = c.line;
      ctx.lineWidth = 2.5;
      ctx.lineJoin = "round";
      ctx.lineCap = "round";
      ctx.stroke();
    }
    ctx.restore();

    // The latest reading, as a dot, if it is known.
    const last = history[history.length - 1];
    if (last && last.rate !== null) {
      ctx.beginPath();
      ctx.arc(x(last.t), y(last.rate), 4.5, 0, 2 * Math.PI);
      ctx.fillStyle = c.line;
      ctx.fill();
      ctx.lineWidth = 2;
      ctx.strokeStyle = c.panel;
      ctx.stroke();
    }
  }

  // The chart scrolls smoothly between polls; browsers pause this in hidden tabs.
  let drawn = 0;
  function frame(time) {
    if (time - drawn >= REDRAW_EVERY_MS) {
      drawn = time;
      draw();
    }
    requestAnimationFrame(frame);
  }

  poll();
  requestAnimationFrame(frame);
})();
