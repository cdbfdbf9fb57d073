// lineinspect operator page: polls the service's JSON and JPEG routes, no framework, no build.
// Every value from the service reaches the DOM through textContent or an attribute, never as
// markup. The API token stays in this tab's sessionStorage and travels only as a bearer header.
// The review queue is review.js, loaded after this file (both deferred, so in document order).
"use strict";

(() => {
  const LIVE_MS = 1000;
  const TOKEN_KEY = "lineinspect.token";
  const INSPECTOR_KEY = "lineinspect.inspector";
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clock(seconds) {
    return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
  }

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  function showError(message) {
    const banner = $("error");
    banner.textContent = message || "";
    banner.classList.toggle("hidden", !message);
  }

  // -- cameras

  const tiles = new Map();

  function badge(cls, text) {
    return el("span", `badge ${cls}`, text);
  }

  function makeTile(name) {
    const root = el("article", "tile");
    root.dataset.camera = name;
    const head = el("header", "tile-head");
    head.append(el("h3", "tile-name", name));
    const state = badge("state", "…");
    const drift = badge("drift na", "drift: n/a");
    const tags = el("div", "tags");
    tags.append(state, drift);
    head.append(tags);

    const view = el("div", "view");
    const img = el("img", "frame");
    img.alt = `last judged frame of ${name}`;
    img.dataset.camera = name;
    img.hidden = true;
    const waiting = el("p", "waiting", "waiting for the first judged frame");
    img.addEventListener("load", () => {
      img.hidden = false;
      waiting.hidden = true;
    });
    img.addEventListener("error", () => {
      img.hidden = true;
      waiting.hidden = false;
    });
    view.append(img, waiting);

    const counts = el("div", "counts");
    const numbers = {};
    for (const verdict of ["pass", "fail", "uncertain"]) {
      const box = el("div", `count ${verdict}`);
      numbers[verdict] = el("span", "n", "0");
      box.append(numbers[verdict], el("span", "what", verdict));
      counts.append(box);
    }
    const last = el("p", "last", "");
    const candidate = el("p", "candidate", "");
    candidate.hidden = true;
    root.append(head, view, counts, last, candidate);
    const tile = { root, img, waiting, state, drift, numbers, last, candidate, frameKey: null };
    tiles.set(name, tile);
    return tile;
  }

  function updateTile(tile, cam, info) {
    tile.state.textContent = cam.state;
    tile.state.className = `badge state ${cam.state}`;
    const v = cam.last_verdict;
    const key = v ? `${v.sequence}/${v.frame_id}` : null;
    if (key && key !== tile.frameKey && v.frame_id) {
      tile.frameKey = key;
      tile.img.src = `v1/cameras/${encodeURIComponent(cam.name)}/frame.jpg?seq=${v.sequence}`;
    }
    if (v) {
      const top = (v.findings || [])[0];
      const what = top ? ` · ${top.class_name} ${Number(top.confidence).toFixed(2)}` : "";
      tile.last.textContent = `#${v.frame_id} ${v.verdict.toUpperCase()}${what} · ${clock(v.decided_at)}`;
      tile.last.className = `last ${v.verdict}`;
    }
    if (info) {
      for (const verdict of ["pass", "fail", "uncertain"]) {
        tile.numbers[verdict].textContent = String(info.counts[verdict] ?? 0);
      }
      showCandidate(tile.candidate, info.candidate);
      const drift = info.drift;
      if (drift && drift.state) {
        const ratio = drift.uncertain_ratio;
        tile.drift.textContent = `drift: ${String(drift.state).replace("_", " ")}`;
        tile.drift.className = `badge drift ${drift.state}`;
        const parts = [`window ${drift.window}`];
        if (typeof ratio === "number") parts.push(`uncertain ${(100 * ratio).toFixed(1)}%`);
        for (const [signal, s] of Object.entries(drift.signals || {})) {
          if (s && typeof s.psi === "number") parts.push(`${signal} PSI ${s.psi.toFixed(3)}`);
        }
        tile.drift.title = parts.join(" · ");
      } else {
        tile.drift.textContent = "drift: n/a";
        tile.drift.className = "badge drift na";
        tile.drift.title = "no drift monitor";
      }
    }
  }

  // A candidate model judging this camera's frames beside the live one (never published).
  function showCandidate(node, c) {
    node.hidden = !c;
    if (!c) return;
    const f = c.flips || {};
    const toU = (f["pass->uncertain"] || 0) + (f["fail->uncertain"] || 0);
    const fromU = (f["uncertain->pass"] || 0) + (f["uncertain->fail"] || 0);
    const agree = typeof c.agreement === "number" ? `${(100 * c.agreement).toFixed(1)}%` : "n/a";
    node.textContent = `candidate ${c.version}: agrees ${agree} of ${c.compared} · `
      + `pass→fail ${f["pass->fail"] || 0} · fail→pass ${f["fail->pass"] || 0} · `
      + `to uncertain ${toU} · from uncertain ${fromU} · dropped ${c.dropped}`;
    node.title = `sha256 ${c.sha256}; disagreements kept for review: ${c.kept_for_review}`;
  }

  function renderCameras(cams, state) {
    const grid = $("cameras");
    if (!cams.cameras.length) return;
    const order = [];
    for (const cam of cams.cameras) {
      const tile = tiles.get(cam.name) || makeTile(cam.name);
      updateTile(tile, cam, state.cameras[cam.name]);
      order.push(tile.root);
    }
    if (order.length !== grid.children.length || order.some((n, i) => grid.children[i] !== n)) {
      grid.replaceChildren(...order);
    }
    const select = $("review-camera");
    for (const cam of cams.cameras) {
      if (![...select.options].some((o) => o.value === cam.name)) {
        const option = el("option", null, cam.name);
        option.value = cam.name;
        select.append(option);
      }
    }
  }

  function renderFeed(feed) {
    const items = feed.map((v) => {
      const li = el("li", `feed-item ${v.verdict}`);
      li.append(el("span", `chip ${v.verdict}`, v.verdict));
      li.append(el("span", "cam", v.camera));
      li.append(el("span", "frame-no", v.part_id ? `part ${v.part_id}` : `#${v.frame_id}`));
      const top = v.top ? `${v.top.class_name} ${Number(v.top.confidence).toFixed(2)}` : "";
      li.append(el("span", "what", v.error ? v.reason : top || v.reason));
      li.append(el("time", "when", clock(v.decided_at)));
      return li;
    });
    const list = $("feed");
    if (!items.length) items.push(el("li", "empty", "no verdicts yet"));
    list.replaceChildren(...items);
  }

  function renderStatus(cams, state) {
    $("line-name").textContent = state.line;
    document.title = `lineinspect · ${state.line}`;
    $("recipe").hidden = !state.recipe;
    $("recipe").textContent = `recipe ${state.recipe}`;
    const mqtt = $("mqtt");
    mqtt.textContent = cams.mqtt_connected ? "MQTT connected" : "MQTT down";
    mqtt.className = `pill ${cams.mqtt_connected ? "ok" : "bad"}`;
    if (cams.mqtt_error && !cams.mqtt_connected) mqtt.title = cams.mqtt_error;
    const outbox = $("outbox");
    outbox.textContent = `outbox ${cams.outbox.messages}`;
    outbox.className = `pill ${cams.outbox.messages > 100 ? "warn" : ""}`;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("updated").className = "pill";
  }

  async function refreshLive() {
    try {
      const [cams, state] = await Promise.all([
        getJSON("v1/cameras"),
        getJSON("v1/operator/state?feed=30"),
      ]);
      renderStatus(cams, state);
      renderCameras(cams, state);
      renderFeed(state.feed);
      showError("");
    } catch (err) {
      $("updated").textContent = "service unreachable";
      $("updated").className = "pill bad";
      showError(`Cannot reach the service: ${err.message}`);
    } finally {
      setTimeout(refreshLive, LIVE_MS);
    }
  }

  // -- start

  function start() {
    const token = $("token");
    token.value = sessionStorage.getItem(TOKEN_KEY) || "";
    token.addEventListener("input", () => {
      if (token.value) sessionStorage.setItem(TOKEN_KEY, token.value);
      else sessionStorage.removeItem(TOKEN_KEY);
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      token.value = "";
    });
    const inspector = $("inspector");
    inspector.value = localStorage.getItem(INSPECTOR_KEY) || "";
    inspector.addEventListener("input", () => localStorage.setItem(INSPECTOR_KEY, inspector.value.trim()));
    $("credentials").addEventListener("submit", (e) => e.preventDefault());
    refreshLive();
  }

  // Shared with review.js, which the page loads next.
  window.lineinspect = Object.freeze({ $, el, clock, getJSON, TOKEN_KEY });
  start();
})();
