// voting_det viewer: the page's logic (no library, no network beyond this viewer's own API).
"use strict";
(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const state = {
    info: null,
    items: new Map(),   // id -> the item JSON of the API
    files: new Map(),   // id -> the dropped File (to show another frame of a cine)
    order: [],          // ids in the order of the cards
    pending: new Set(), // caliper corrections not yet saved
    queue: Promise.resolve(),
    keyTimers: new Map(),
  };
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgEl(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const known = (v) => v !== null && v !== undefined && !Number.isNaN(Number(v));
  const fmt = (v, digits) => (known(v) ? Number(v).toFixed(digits) : "–");

  async function api(method, url, body) {
    const options = { method, headers: {} };
    if (body instanceof FormData) options.body = body;
    else if (body !== undefined) {
      options.body = JSON.stringify(body);
      options.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(url, options);
    } catch (error) {
      throw new Error("the viewer did not answer (is tools/serve.py still running?)");
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    return { status: response.status, ok: response.ok, data };
  }

  // ------------------------------------------------------------------ measurement (as the server computes it)

  function cutoff() { return state.info ? state.info.model.cutoff_mm : 3.5; }

  function measure(item, upper, lower) {
    const dx = lower[0] - upper[0], dy = lower[1] - upper[1];
    const s = item.pixel_spacing_xy_mm;
    const mm = s ? Math.hypot(dx * s[0], dy * s[1]) : null;
    return {
      thickness_px: Math.hypot(dx, dy), thickness_mm: mm,
      above_cutoff: mm === null ? null : (mm >= cutoff() ? 1 : 0),
      calipers: [upper, lower], corrected: true,
    };
  }

  // ------------------------------------------------------------------ drawing on the scan

  function zoomBox(item) {
    const [H, W] = item.image_size;
    let box = item.detection ? item.detection.box : null;
    const cal = item.measurement.calipers;
    if (!box && cal) {
      box = [Math.min(cal[0][0], cal[1][0]), Math.min(cal[0][1], cal[1][1]),
             Math.max(cal[0][0], cal[1][0]), Math.max(cal[0][1], cal[1][1])];
    }
    if (!box) return null;
    const cx = (box[0] + box[2]) / 2, cy = (box[1] + box[3]) / 2;
    const w = Math.min(Math.max((box[2] - box[0]) * 1.5, (box[3] - box[1]) * 2.5 * 4 / 3, 48), Math.max(W, H * 4 / 3));
    const h = w * 3 / 4;
    return [cx - w / 2, cy - h / 2, w, h];
  }

  // image units per screen pixel of a view (sizes of marks and text stay constant on screen)
  function unit(svg) {
    const vb = svg.viewBox.baseVal;
    const width = svg.clientWidth || svg.getBoundingClientRect().width || 600;
    return vb.width / width;
  }

  function drawScene(svg, item) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const [H, W] = item.image_size;
    const u = unit(svg);
    svg.appendChild(svgEl("image", { href: item.image_url, x: 0, y: 0, width: W, height: H,
                                     preserveAspectRatio: "none", class: "scan-image" }));
    const ex = item.explanation;
    if (ex) {
      const context = svgEl("g", { class: "layer-context" });
      for (const b of ex.context_boxes || []) {
        context.appendChild(svgEl("rect", { class: "context-box", x: b[0], y: b[1], width: b[2] - b[0], height: b[3] - b[1] }));
      }
      svg.appendChild(context);
    }
    if (item.detection) {
      const b = item.detection.box;
      svg.appendChild(svgEl("rect", { class: "nt-box", x: b[0], y: b[1], width: b[2] - b[0], height: b[3] - b[1] }));
      svg.appendChild(svgEl("text", { class: "nt-score", x: b[0], y: b[1] - 5 * u, "font-size": 13 * u },
                            `NT ${fmt(item.detection.score, 2)}`));
    }
    if (ex) {
      const layer = svgEl("g", { class: "layer-primitives" });
      for (const level of ex.levels) {
        for (const p of level.primitives) {
          const role = level.role;
          layer.appendChild(svgEl("line", { class: `prim-link ${role}`, x1: p.matched[0], y1: p.matched[1],
                                            x2: p.voted[0], y2: p.voted[1] }));
          layer.appendChild(svgEl("circle", { class: `prim-voted ${role}`, cx: p.voted[0], cy: p.voted[1], r: 4.5 * u }));
          const dot = svgEl("circle", { class: `prim-matched ${role}`, cx: p.matched[0], cy: p.matched[1], r: 4 * u,
                                        "data-level": level.name, "data-k": p.k });
          dot.appendChild(svgEl("title", {}, `${level.role} level, primitive ${p.k}: matched here, voted for the circle`));
          layer.appendChild(dot);
          layer.appendChild(svgEl("text", { class: `prim-label ${role}`, x: p.matched[0] + 5 * u, y: p.matched[1] - 4 * u,
                                            "font-size": 11 * u }, String(p.k)));
        }
      }
      svg.appendChild(layer);
    }
    // on the whole scan, the window the enlarged view shows
    const zoomSvg = svg.closest(".view-full") && svg.closest("article") ? $(".view-zoom svg", svg.closest("article")) : null;
    if (zoomSvg) {
      const z = zoomSvg.viewBox.baseVal;
      svg.appendChild(svgEl("rect", { class: "zoom-window", x: z.x, y: z.y, width: z.width, height: z.height }));
    }
    const cal = svgEl("g", { class: "calipers" });
    cal.appendChild(svgEl("line", { class: "cal-line" }));
    for (const which of ["upper", "lower"]) {
      const g = svgEl("g", { class: `cal-mark cal-${which}` });
      g.appendChild(svgEl("line", { class: "cal-cross cal-h" }));
      g.appendChild(svgEl("line", { class: "cal-cross cal-v" }));
      const handle = svgEl("circle", { class: "caliper-handle", "data-which": which, tabindex: 0, r: 9 * u,
                                       role: "slider", "aria-label": `${which} caliper: drag, or use the arrow keys` });
      g.appendChild(handle);
      cal.appendChild(g);
      attachDrag(handle, svg, item.id, which);
    }
    cal.appendChild(svgEl("text", { class: "cal-text", "font-size": 13 * u }));
    svg.appendChild(cal);
    updateCalipers(svg, item.measurement);
  }

  function updateCalipers(svg, m) {
    const group = $(".calipers", svg);
    if (!group) return;
    const points = m.calipers;
    group.style.display = points ? "" : "none";
    if (!points) return;
    const u = unit(svg), arm = 6 * u;
    const [a, b] = points;
    const line = $(".cal-line", group);
    line.setAttribute("x1", a[0]); line.setAttribute("y1", a[1]);
    line.setAttribute("x2", b[0]); line.setAttribute("y2", b[1]);
    [["upper", a], ["lower", b]].forEach(([which, p]) => {
      const mark = $(`.cal-${which}`, group);
      const h = $(".cal-h", mark), v = $(".cal-v", mark), handle = $(".caliper-handle", mark);
      h.setAttribute("x1", p[0] - arm); h.setAttribute("x2", p[0] + arm); h.setAttribute("y1", p[1]); h.setAttribute("y2", p[1]);
      v.setAttribute("x1", p[0]); v.setAttribute("x2", p[0]); v.setAttribute("y1", p[1] - arm); v.setAttribute("y2", p[1] + arm);
      handle.setAttribute("cx", p[0]); handle.setAttribute("cy", p[1]);
      handle.setAttribute("aria-valuetext", `x ${p[0].toFixed(1)}, y ${p[1].toFixed(1)}`);
    });
    const text = $(".cal-text", group);
    const lowest = a[1] > b[1] ? a : b;
    text.setAttribute("x", Math.max(a[0], b[0]) + 9 * u);
    text.setAttribute("y", lowest[1] + 4 * u);
    text.textContent = thicknessLabel(m);
  }

  function thicknessLabel(m) {
    if (!known(m.thickness_px)) return "";
    return known(m.thickness_mm) ? `${fmt(m.thickness_mm, 2)} mm` : `${fmt(m.thickness_px, 1)} px`;
  }

  function clamp(item, p) {
    const [H, W] = item.image_size;
    return [Math.min(Math.max(p[0], 0), W), Math.min(Math.max(p[1], 0), H)];
  }

  // the image point under a pointer event (clamped to the image unless told not to)
  function toImage(svg, event, item, clamped = true) {
    const point = svg.createSVGPoint();
    point.x = event.clientX; point.y = event.clientY;
    const p = point.matrixTransform(svg.getScreenCTM().inverse());
    return clamped ? clamp(item, [p.x, p.y]) : [p.x, p.y];
  }

  function moveCaliper(id, which, point) {
    const item = state.items.get(id);
    const [upper, lower] = item.measurement.calipers;
    const next = which === "upper" ? [point, lower] : [upper, point];
    item.measurement = measure(item, next[0], next[1]);
    const card = cardOf(id);
    for (const svg of $$("svg.scan", card)) updateCalipers(svg, item.measurement);
    renderFacts(card, item);
  }

  function attachDrag(handle, svg, id, which) {
    handle.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      handle.focus();
      handle.setPointerCapture(event.pointerId);
      handle.classList.add("dragging");
      // the point keeps its offset from the pointer (grabbing it off-centre does not make it jump)
      const item = state.items.get(id);
      const start = item.measurement.calipers[which === "upper" ? 0 : 1];
      const grab = toImage(svg, event, item, false);
      const offset = [start[0] - grab[0], start[1] - grab[1]];
      const move = (ev) => {
        const p = toImage(svg, ev, state.items.get(id), false);
        moveCaliper(id, which, clamp(state.items.get(id), [p[0] + offset[0], p[1] + offset[1]]));
      };
      const end = () => {
        handle.removeEventListener("pointermove", move);
        handle.removeEventListener("pointerup", end);
        handle.removeEventListener("pointercancel", end);
        handle.classList.remove("dragging");
        save(id);
      };
      handle.addEventListener("pointermove", move);
      handle.addEventListener("pointerup", end);
      handle.addEventListener("pointercancel", end);
    });
    handle.addEventListener("keydown", (event) => {
      const steps = { ArrowUp: [0, -1], ArrowDown: [0, 1], ArrowLeft: [-1, 0], ArrowRight: [1, 0] };
      if (!(event.key in steps)) return;
      event.preventDefault();
      const item = state.items.get(id);
      const size = event.shiftKey ? 5 : event.altKey ? 0.25 : 1;
      const p = item.measurement.calipers[which === "upper" ? 0 : 1];
      moveCaliper(id, which, clamp(item, [p[0] + steps[event.key][0] * size, p[1] + steps[event.key][1] * size]));
      clearTimeout(state.keyTimers.get(id));
      state.keyTimers.set(id, setTimeout(() => { state.keyTimers.delete(id); save(id); }, 350));
    });
  }

  function save(id) {
    const item = state.items.get(id);
    if (!item || !item.measurement.calipers) return Promise.resolve();
    const [upper, lower] = item.measurement.calipers;
    const job = api("PUT", `/api/images/${id}/calipers`, { upper, lower }).then((result) => {
      if (result.ok && result.data) replaceItem(result.data);
      else showCardMessage(id, (result.data && result.data.error) || `the correction was not saved (${result.status})`);
    }).catch((error) => showCardMessage(id, error.message)).finally(() => state.pending.delete(job));
    state.pending.add(job);
    return job;
  }

  // ------------------------------------------------------------------ cards

  function cardOf(id) { return $(`article.card[data-id="${CSS.escape(id)}"]`); }

  function showCardMessage(id, message) {
    const card = cardOf(id);
    if (!card) return;
    let box = $(".card-message", card);
    if (!box) { box = el("p", { class: "card-message message", role: "alert" }); card.appendChild(box); }
    box.textContent = message;
  }

  function pendingCard(name) {
    const card = el("article", { class: "card pending", "data-file": name });
    const header = el("header");
    header.appendChild(el("h2", {}, name));
    header.appendChild(el("span", { class: "muted" }, "analysing…"));
    card.appendChild(header);
    $("#cards").appendChild(card);
    return card;
  }

  function errorCard(message, name, id, target) {
    const card = el("article", { class: "card error", "data-file": name, "data-id": id || null, role: "alert" });
    const header = el("header");
    header.appendChild(el("h2", {}, name));
    header.appendChild(el("span", { class: "badge alarm" }, "not read"));
    const remove = el("button", { type: "button", class: "remove" }, "Remove");
    remove.addEventListener("click", () => removeCard(card, id));
    header.appendChild(remove);
    card.appendChild(header);
    card.appendChild(el("p", { class: "message" }, message));
    if (target) target.replaceWith(card); else $("#cards").appendChild(card);
    return card;
  }

  async function removeCard(card, id) {
    if (id) {
      await api("DELETE", `/api/images/${id}`);
      state.items.delete(id);
      state.files.delete(id);
      state.order = state.order.filter((x) => x !== id);
    }
    card.remove();
    renderSummary();
  }

  function buildCard(item, target) {
    if (!item.ok) {
      const card = errorCard(item.error, item.file, item.id, target);
      if (!state.order.includes(item.id)) state.order.push(item.id);
      return card;
    }
    const card = el("article", { class: "card", "data-id": item.id, "data-file": item.file });
    const header = el("header");
    header.appendChild(el("h2", {}, item.file));
    header.appendChild(el("span", { class: "badges" }));
    const remove = el("button", { type: "button", class: "remove" }, "Remove");
    remove.addEventListener("click", () => removeCard(card, item.id));
    header.appendChild(remove);
    card.appendChild(header);

    const body = el("div", { class: "body" });
    const views = el("div", { class: "views" });
    const [H, W] = item.image_size;
    const full = el("figure", { class: "view view-full" });
    const fullSvg = svgEl("svg", { class: "scan", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "xMidYMid meet",
                                   role: "img", "aria-label": `${item.file}: the whole scan` });
    full.appendChild(fullSvg);
    full.appendChild(el("figcaption", {}, "Whole scan"));
    views.appendChild(full);
    const zoom = zoomBox(item);
    if (zoom) {
      const figure = el("figure", { class: "view view-zoom" });
      figure.appendChild(svgEl("svg", { class: "scan", viewBox: zoom.map((v) => v.toFixed(2)).join(" "),
                                        preserveAspectRatio: "xMidYMid meet", role: "img",
                                        "aria-label": `${item.file}: the NT enlarged` }));
      figure.appendChild(el("figcaption", {}, "The NT enlarged: drag the yellow calipers to correct them"));
      views.appendChild(figure);
    } else {
      views.classList.add("single");
    }
    body.appendChild(views);
    body.appendChild(el("div", { class: "facts" }));
    body.appendChild(el("section", { class: "explanation" }));
    card.appendChild(body);
    if (target) target.replaceWith(card); else $("#cards").appendChild(card);
    if (!state.order.includes(item.id)) state.order.push(item.id);
    for (const svg of $$("svg.scan", card)) drawScene(svg, item);
    renderFacts(card, item);
    renderExplanation(card, item);
    return card;
  }

  function dd(dl, term, content) {
    dl.appendChild(el("dt", {}, term));
    const d = el("dd");
    if (typeof content === "string") d.textContent = content; else d.appendChild(content);
    dl.appendChild(d);
    return d;
  }

  function renderFacts(card, item) {
    const facts = $(".facts", card);
    facts.textContent = "";
    const m = item.measurement, model = item.model_measurement;
    const dl = el("dl");
    dd(dl, "NT detection", item.detection ? `score ${fmt(item.detection.score, 2)}` : "none found (no box above the threshold)");

    const thick = el("div", { class: "thickness" });
    if (m.calipers && known(m.thickness_px)) {
      if (known(m.thickness_mm)) {
        thick.appendChild(document.createTextNode(`${fmt(m.thickness_mm, 2)} mm `));
        thick.appendChild(el("small", {}, `(${fmt(m.thickness_px, 1)} px)`));
      } else {
        thick.appendChild(document.createTextNode(`${fmt(m.thickness_px, 1)} px `));
        thick.appendChild(el("small", {}, "(mm unknown: no pixel spacing)"));
      }
    } else {
      thick.appendChild(el("small", {}, item.detection ? "not measured: no clear NT profile in the box" : "not measured"));
    }
    dd(dl, "NT thickness", thick);
    if (known(m.thickness_mm)) {
      const above = m.thickness_mm >= cutoff();
      dd(dl, "Cut-off", el("span", { class: `badge ${above ? "alarm" : "ok"}`, "data-above": above ? 1 : 0 },
                           above ? `≥ ${cutoff()} mm: above the cut-off` : `< ${cutoff()} mm`));
    } else {
      dd(dl, "Cut-off", `${cutoff()} mm (needs the pixel spacing)`);
    }
    if (m.corrected) {
      const was = model.calipers
        ? (known(model.thickness_mm) ? `${fmt(model.thickness_mm, 2)} mm, ${fmt(model.thickness_px, 1)} px`
                                     : `${fmt(model.thickness_px, 1)} px`)
        : "none";
      const span = el("span");
      span.appendChild(el("span", { class: "badge info corrected" }, "corrected by hand"));
      span.appendChild(document.createTextNode(` (the model's: ${was})`));
      dd(dl, "Calipers", span);
    } else {
      dd(dl, "Calipers", m.calipers ? "as placed by the model" : "none");
    }
    dd(dl, "Pixel spacing", known(item.pixel_spacing_mm)
      ? `${Number(item.pixel_spacing_mm).toPrecision(4)} mm/px (${item.spacing_source})`
      : `unknown${item.spacing_note ? ": " + item.spacing_note : ""}`);
    dd(dl, "File", item.format === "dicom"
      ? `DICOM${item.frames > 1 ? `, frame ${item.frame} (a cine of ${item.frames} frames, counted from 0)` : ""}` : "image");
    facts.appendChild(dl);

    const buttons = el("div", { class: "buttons" });
    if (m.corrected) {
      const reset = el("button", { type: "button", class: "reset" }, "Back to the model's calipers");
      reset.addEventListener("click", async () => {
        const result = await api("DELETE", `/api/images/${item.id}/calipers`);
        if (result.ok) replaceItem(result.data);
      });
      buttons.appendChild(reset);
    }
    if (!m.calipers) {
      const place = el("button", { type: "button", class: "place" }, "Place calipers");
      place.addEventListener("click", () => placeCalipers(item.id));
      buttons.appendChild(place);
    }
    if (item.frames > 1 && state.files.has(item.id)) {
      const picker = el("span", { class: "frame-picker" });
      const input = el("input", { type: "number", min: 0, max: item.frames - 1, value: item.frame || 0,
                                  "aria-label": "frame (from 0)" });
      const show = el("button", { type: "button" }, "Show frame");
      show.addEventListener("click", () => enqueue(state.files.get(item.id), input.value, item.id));
      picker.appendChild(document.createTextNode("Frame "));
      picker.appendChild(input);
      picker.appendChild(show);
      buttons.appendChild(picker);
    }
    facts.appendChild(buttons);
    if (m.calipers) facts.appendChild(el("p", { class: "hint" }, "Drag a caliper (or focus it and use the arrow keys; Shift: 5 px) to correct the measurement; the CSV marks the row corrected."));
    const badges = $(".badges", card);
    badges.textContent = "";
    if (known(m.thickness_mm) && m.thickness_mm >= cutoff()) badges.appendChild(el("span", { class: "badge alarm" }, `≥ ${cutoff()} mm`));
    if (m.corrected) badges.appendChild(el("span", { class: "badge info" }, "corrected"));
  }

  function placeCalipers(id) {
    const item = state.items.get(id);
    const [H, W] = item.image_size;
    const b = item.detection ? item.detection.box : [W * 0.45, H * 0.45, W * 0.55, H * 0.55];
    const x = (b[0] + b[2]) / 2;
    item.measurement = measure(item, [x, b[1]], [x, b[3]]);
    save(id).then(() => buildCard(state.items.get(id), cardOf(id)));
  }

  function renderExplanation(card, item) {
    const section = $(".explanation", card);
    section.textContent = "";
    section.appendChild(el("h3", {}, "How the model found it"));
    if (!item.explains) {
      section.appendChild(el("p", { class: "muted" }, (state.info && state.info.model.note) || "This model gives no explanation."));
      return;
    }
    const ex = item.explanation;
    if (!ex) {
      section.appendChild(el("p", { class: "muted" }, "No detection: nothing to explain."));
      return;
    }
    section.appendChild(el("p", { class: "line" }, ex.line));
    const list = el("ul");
    for (const level of ex.levels) {
      for (const p of level.primitives) {
        const li = el("li");
        li.appendChild(el("span", { class: `chip ${level.role}` }));
        const share = known(p.share) ? `${Math.round(p.share * 100)}% of the vote at the centre` : "its vote";
        li.appendChild(document.createTextNode(
          `${level.role === "fine" ? "Fine" : "Coarse"} level (${level.name}), primitive ${p.k}: ${share}; ` +
          `matched the image best ${p.place}.`));
        list.appendChild(li);
      }
    }
    if ((ex.context_boxes || []).length) {
      const li = el("li");
      li.appendChild(document.createTextNode(`${ex.context_boxes.length} context boxes (blue, dashed): the surroundings the model compared` +
        (known(ex.mu) ? `; the NT's own look weighs ${Math.round(ex.mu * 100)}% in the score, its context ${Math.round((1 - ex.mu) * 100)}%.` : ".")));
      list.appendChild(li);
    }
    section.appendChild(list);
    if (item.panel_url) {
      const details = el("details", { class: "panel" });
      details.appendChild(el("summary", {}, "Research panel: every primitive's scores and maps"));
      const img = el("img", { alt: `research panel of ${item.file}` });
      details.addEventListener("toggle", () => { if (details.open && !img.getAttribute("src")) img.setAttribute("src", item.panel_url); });
      details.appendChild(img);
      const link = el("a", { href: item.panel_url, target: "_blank", rel: "noopener" }, "open it in a new tab");
      const p = el("p", { class: "muted" });
      p.appendChild(document.createTextNode("Drawn on request (a few seconds); "));
      p.appendChild(link);
      details.appendChild(p);
      section.appendChild(details);
    }
  }

  function replaceItem(data) {
    state.items.set(data.id, data);
    const card = cardOf(data.id);
    if (card && data.ok) {
      for (const svg of $$("svg.scan", card)) updateCalipers(svg, data.measurement);
      renderFacts(card, data);
    }
    renderSummary();
  }

  function addItem(data, target) {
    state.items.set(data.id, data);
    buildCard(data, target);
    renderSummary();
  }

  function renderSummary() {
    const body = $("#summary-table tbody");
    body.textContent = "";
    for (const id of state.order) {
      const item = state.items.get(id);
      if (!item) continue;
      const row = item.row;
      const tr = el("tr", { "data-id": id });
      const above = known(row.thickness_mm) && Number(row.thickness_mm) >= cutoff();
      const cells = [item.file, fmt(row.score, 2), fmt(row.thickness_mm, 2), fmt(row.thickness_px, 1),
                     known(row.above_cutoff) ? (row.above_cutoff ? "yes" : "no") : "–",
                     row.corrected ? "yes" : "", item.ok ? (item.detection ? "" : "no detection") : row.error];
      cells.forEach((text, i) => tr.appendChild(el("td", { class: i === 4 && above ? "alarm" : null }, text)));
      body.appendChild(tr);
    }
  }

  // ------------------------------------------------------------------ uploads

  function enqueue(file, frame, replaceId) {
    const placeholder = replaceId ? null : pendingCard(file.name);
    state.queue = state.queue.then(() => upload(file, frame, placeholder, replaceId));
    return state.queue;
  }

  async function upload(file, frame, placeholder, replaceId) {
    const form = new FormData();
    form.append("file", file, file.name);
    const spacing = $("#pixel-spacing").value.trim();
    if (spacing) form.append("pixel_spacing", spacing);
    if (frame !== undefined && frame !== null && frame !== "") form.append("frame", String(frame));
    let result;
    try {
      result = await api("POST", "/api/images", form);
    } catch (error) {
      errorCard(`${file.name}: ${error.message}`, file.name, null, placeholder);
      return;
    }
    const data = result.data;
    if (!data || !data.id) {
      const message = (data && data.error) || `${file.name}: the viewer answered ${result.status}; try again, or see its log`;
      if (replaceId) showCardMessage(replaceId, message); else errorCard(message, file.name, null, placeholder);
      return;
    }
    state.files.set(data.id, file);
    if (replaceId) {
      const old = cardOf(replaceId);
      await api("DELETE", `/api/images/${replaceId}`);
      state.items.delete(replaceId);
      state.files.delete(replaceId);
      state.order = state.order.map((x) => (x === replaceId ? data.id : x));
      addItem(data, old);
    } else {
      addItem(data, placeholder);
    }
  }

  function addFiles(list) {
    for (const file of Array.from(list)) enqueue(file);
  }

  function setupPage() {
    const input = $("#file-input");
    input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
    const zone = $("#drop-zone");
    window.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    window.addEventListener("dragleave", (e) => { if (!e.relatedTarget) zone.classList.remove("over"); });
    window.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
    });
    $("#show-primitives").addEventListener("change", (e) => document.body.classList.toggle("hide-primitives", !e.target.checked));
    $("#show-context").addEventListener("change", (e) => document.body.classList.toggle("hide-context", !e.target.checked));
    const download = $("#download-csv");
    download.addEventListener("click", async (e) => {
      if (!state.pending.size && !state.keyTimers.size) return;
      e.preventDefault(); // save the corrections still on their way first
      for (const [id, timer] of state.keyTimers) { clearTimeout(timer); save(id); }
      state.keyTimers.clear();
      await Promise.all(Array.from(state.pending));
      download.click();
    });
    $("#clear-all").addEventListener("click", async () => {
      if (!state.order.length) return;
      if (!window.confirm("Remove every image from the viewer? Download the CSV first if you need it.")) return;
      await api("DELETE", "/api/images");
      state.items.clear(); state.files.clear(); state.order = [];
      $("#cards").textContent = "";
      renderSummary();
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        for (const card of $$("article.card[data-id]")) {
          const item = state.items.get(card.dataset.id);
          if (item && item.ok) for (const svg of $$("svg.scan", card)) drawScene(svg, item);
        }
      }, 200);
    });
  }

  async function start() {
    setupPage();
    try {
      const info = await api("GET", "/api/info");
      state.info = info.data;
      const m = state.info.model;
      $("#model-info").textContent = `Model: ${m.architecture}, weights ${m.weights}; NT cut-off ${m.cutoff_mm} mm` +
        (known(m.default_pixel_spacing_mm) ? `; pixel spacing of images without their own: ${m.default_pixel_spacing_mm} mm/px` : "");
      if (m.note) { $("#model-note").textContent = m.note; $("#model-note").hidden = false; }
      const list = await api("GET", "/api/images");
      for (const item of list.data.images) addItem(item);
      document.body.dataset.ready = "1";
    } catch (error) {
      $("#model-info").textContent = `The viewer did not answer: ${error.message}`;
    }
  }

  start();
})();
