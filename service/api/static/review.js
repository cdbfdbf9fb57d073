// lineinspect operator page, the review queue: lists the items kept for a human label, draws
// the model's boxes over each and sends the inspector's label. Loaded after operator.js, whose
// helpers it takes from window.lineinspect. Every value from the service reaches the DOM through
// textContent or an attribute, never as markup; the API token travels only as a bearer header.
"use strict";

(() => {
  const REVIEW_MS = 4000;
  const { $, el, clock, getJSON, TOKEN_KEY } = window.lineinspect;

  function pct(value, whole) {
    return `${Math.max(0, Math.min(100, (100 * value) / whole))}%`;
  }

  let toastTimer = 0;
  function toast(message, kind) {
    const node = $("toast");
    node.textContent = message;
    node.className = `toast ${kind || ""}`;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => node.classList.add("hidden"), 6000);
  }

  const cards = new Map();

  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    return headers;
  }

  async function sendLabel(item, label, card) {
    const inspector = $("inspector").value.trim();
    if (!inspector) {
      toast("Enter your name (Inspector) before labelling.", "bad");
      $("inspector").focus();
      return;
    }
    const url = `v1/review/${encodeURIComponent(item.camera)}/${encodeURIComponent(item.id)}/label`;
    const buttons = card.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: authHeaders(),
        body: JSON.stringify({ label, inspector }),
      });
      if (response.status === 401) {
        toast("The API token is missing or wrong: enter it at the top right.", "bad");
        return;
      }
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        toast(`Not saved: ${typeof body.detail === "string" ? body.detail : response.status}`, "bad");
        return;
      }
      setLabelled(card, body);
      toast(`Saved: ${describeLabel(body.label)} for ${item.camera} ${item.id}`, "ok");
    } catch (err) {
      toast(`Not saved: ${err.message}`, "bad");
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  function describeLabel(label) {
    if (typeof label === "string") return label;
    if (Array.isArray(label)) return label.length ? `${label.length} box(es)` : "no defect";
    return "";
  }

  function setLabelled(card, item) {
    const status = card.querySelector(".label-status");
    if (item.label === null || item.label === undefined) {
      status.textContent = "pending";
      status.className = "label-status pending";
      return;
    }
    status.textContent = `labelled ${describeLabel(item.label)} by ${item.labelled_by} · ${clock(item.labelled_at)}`;
    status.className = "label-status done";
    card.classList.add("labelled");
  }

  function makeCard(item) {
    const card = el("article", "card");
    card.dataset.camera = item.camera;
    card.dataset.item = item.id;

    const figure = el("div", "thumb");
    const img = el("img");
    img.alt = `review item ${item.id}`;
    img.loading = "lazy";
    img.src = item.image_url.replace(/^\//, "");
    figure.append(img);
    const w = item.width || 1;
    const h = item.height || 1;
    for (const f of item.findings || []) {
      if (!f.box || !["fail", "uncertain"].includes(f.outcome)) continue;
      const box = el("div", `box ${f.outcome}`);
      box.style.left = pct(f.box[0], w);
      box.style.top = pct(f.box[1], h);
      box.style.width = pct(f.box[2] - f.box[0], w);
      box.style.height = pct(f.box[3] - f.box[1], h);
      box.title = `${f.class_name} ${Number(f.confidence).toFixed(2)}`;
      figure.append(box);
    }

    const body = el("div", "card-body");
    const head = el("div", "card-head");
    head.append(el("span", `chip ${item.verdict}`, item.verdict));
    head.append(el("span", "cam", item.camera));
    head.append(el("span", "muted", `${item.reason} · ${clock(item.captured_at)}`));
    body.append(head);
    body.append(el("p", "decision", item.decision));
    if (item.candidate) {
      const c = item.candidate;
      const said = `candidate ${(c.model || {}).version || ""} said ${String(c.verdict).toUpperCase()}`;
      body.append(el("p", "candidate", `${said}: ${c.decision}`));
    }

    const findings = el("ul", "findings");
    const shown = (item.findings || []).slice(0, 5);
    for (const f of shown) {
      const li = el("li", f.outcome);
      li.append(el("span", "cls", f.class_name));
      li.append(el("span", "conf", Number(f.confidence).toFixed(2)));
      li.append(el("span", "muted", f.outcome.replace("_", " ")));
      findings.append(li);
    }
    if (!shown.length) findings.append(el("li", "muted", "no findings"));
    body.append(findings);
    body.append(el("p", "label-status pending", "pending"));

    const actions = el("div", "actions");
    const modelBoxes = (item.findings || [])
      .filter((f) => f.box && ["fail", "uncertain"].includes(f.outcome))
      .map((f) => ({ class_name: f.class_name, box: f.box }));
    if (item.task === "detect") {
      if (modelBoxes.length) {
        const ok = el("button", "confirm", `Confirm ${modelBoxes.length} box(es)`);
        ok.type = "button";
        ok.addEventListener("click", () => sendLabel(item, modelBoxes, card));
        actions.append(ok);
      }
      const none = el("button", "reject", "No defect");
      none.type = "button";
      none.addEventListener("click", () => sendLabel(item, [], card));
      actions.append(none);
    }
    const top = (item.findings || [])[0];
    const classes = el("div", "classes");
    classes.append(el("span", "muted", item.task === "detect" ? "Image class:" : "Class:"));
    for (const cls of item.classes || []) {
      const b = el("button", "label-btn", cls);
      b.type = "button";
      b.dataset.label = cls;
      if (top && top.class_name === cls && item.task !== "detect") b.classList.add("suggested");
      b.addEventListener("click", () => sendLabel(item, cls, card));
      classes.append(b);
    }
    actions.append(classes);
    body.append(actions);
    card.append(figure, body);
    setLabelled(card, item);
    return card;
  }

  let reviewBusy = false;
  async function refreshReview() {
    if (reviewBusy) return;
    reviewBusy = true;
    try {
      const params = new URLSearchParams({ status: $("review-status").value, limit: "24" });
      if ($("review-camera").value) params.set("camera", $("review-camera").value);
      const data = await getJSON(`v1/review?${params}`);
      const order = [];
      const keep = new Set();
      for (const item of data.items) {
        const key = `${item.camera}/${item.id}`;
        keep.add(key);
        let card = cards.get(key);
        if (!card) {
          card = makeCard(item);
          cards.set(key, card);
        } else {
          setLabelled(card, item);
        }
        order.push(card);
      }
      for (const key of [...cards.keys()]) if (!keep.has(key)) cards.delete(key);
      const list = $("review");
      if (!order.length) order.push(el("p", "empty", "Nothing to review."));
      const same = order.length === list.children.length
        && order.every((n, i) => list.children[i] === n);
      if (!same) list.replaceChildren(...order);
    } catch (err) {
      $("review").replaceChildren(el("p", "empty", `Review queue unavailable: ${err.message}`));
    } finally {
      reviewBusy = false;
    }
  }

  // -- start

  function start() {
    for (const id of ["review-camera", "review-status"]) {
      $(id).addEventListener("change", () => {
        cards.clear();
        refreshReview();
      });
    }
    refreshReview();
    setInterval(refreshReview, REVIEW_MS);
  }

  start();
})();
