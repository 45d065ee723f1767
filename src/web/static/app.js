// The page of app.py: uploads go to /api/detect, which answers with every detection above the model's
// own score floor; the threshold and the category filter then only redraw what came back.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  settings: null,   // the server's limits and the threshold to start at
  info: null,       // the model in use: its name, what runs it, categories and thresholds
  results: [],      // one per upload: {kind, input, file, detections, scores, ...; photo: bitmap; video: frames}
  selected: -1,     // the result whose detections the table lists
  hidden: new Set(), // category names filtered out
};

// ---- calls to the server -------------------------------------------------------------------

async function call(method, url, body, type) {
  const headers = {"X-Requested-With": "ssd-page"};
  if (type !== undefined) headers["Content-Type"] = type || "application/octet-stream";
  let response;
  try {
    response = await fetch(url, {method, body, headers});
  } catch (e) {
    throw new Error("the server does not answer (is app.py still running?)");
  }
  let answer;
  try {
    answer = await response.json();
  } catch (e) {
    throw new Error(`the server answered ${response.status} ${response.statusText}`);
  }
  if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
  return answer;
}

function say(text) { $("status").textContent = text; }

function fail(text) {
  if (text) say("");
  $("error").textContent = text;
  $("error").hidden = !text;
}

// ---- the model -----------------------------------------------------------------------------

async function start() {
  try {
    const listing = await call("GET", "/api/models");
    state.settings = listing.settings;
    $("threshold").value = listing.settings.threshold;
    for (const name of listing.models) $("model").add(new Option(name, name, false, name === listing.current));
    await useModel(listing.current);
  } catch (e) {
    fail(e.message);
  }
}

async function useModel(name) {
  say(`Loading ${name}…`);
  state.info = await call("POST", `/api/model?name=${encodeURIComponent(name)}`);
  const info = state.info;
  $("model-line").textContent = `${info.model}: ${info.describe}, ${info.categories.length} categories`;
  $("about").textContent = `Input ${info.input_size}x${info.input_size}; NMS at IoU ${info.nms_threshold}, ` +
    `at most ${info.max_output} detections an image; the model reports scores above ${info.score_floor}. ` +
    `Categories: ${info.categories.map((c) => c.name).join(", ")}.`;
  showThreshold();
  say(`Ready: ${name}.`);
}

async function changeModel() {
  fail("");
  try {
    await useModel($("model").value);
    state.results.forEach(stopPlaying);
    const files = state.results.map((r) => r.file);
    state.results = [];
    state.selected = -1;
    for (const file of files) await detect(file);  // the same uploads, by the new model
    render();
  } catch (e) {
    if (state.info) $("model").value = state.info.model;  // the model in use is still the one before
    fail(e.message);
  }
}

// ---- uploads -------------------------------------------------------------------------------

async function upload(files) {
  fail("");
  for (const file of files) {
    try {
      await detect(file);
    } catch (e) {
      fail(`${file.name}: ${e.message}`);
    }
    render();
  }
}

async function detect(file) {
  if (!state.info) throw new Error("no model is loaded: choose one in the list");
  const limit = state.settings.max_upload_mb;
  if (file.size > limit * 1048576) {
    throw new Error(`it is ${(file.size / 1048576).toFixed(1)} MB: this page takes up to ${limit} MB`);
  }
  say(`Detecting in ${file.name}…`);
  const url = `/api/detect?model=${encodeURIComponent(state.info.model)}&file=${encodeURIComponent(file.name)}`;
  const result = await call("POST", url, file, file.type);
  result.file = file;
  if (result.kind === "photo") {
    result.bitmap = await createImageBitmap(file).catch(() => null);  // null: a format the browser cannot show
  } else {
    result.at = 0;
    for (const frame of result.frames) frame.picture = await loadPicture(frame.image);
  }
  state.results.push(result);
  state.selected = state.results.length - 1;
  say(`${file.name}: ${countOf(result)}, by ${result.model}.`);
}

function loadPicture(url) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => resolve(null);
    img.src = url;
  });
}

function countOf(result) {
  if (result.kind === "photo") return `${shown(result).length} detections shown of ${result.detections.length} found`;
  const found = result.frames.reduce((n, f) => n + f.detections.length, 0);
  return `${result.frames.length} frames, ${found} detections found`;
}

// ---- the webcam ----------------------------------------------------------------------------

let stream = null;

async function openWebcam() {
  fail("");
  try {
    stream = await navigator.mediaDevices.getUserMedia({video: true});
  } catch (e) {
    const why = window.isSecureContext ? "" :
      " (browsers give a camera only to pages on http://127.0.0.1, localhost or https)";
    fail(`no webcam: ${e.message || e.name}${why}`);
    return;
  }
  $("webcam-video").srcObject = stream;
  $("webcam").hidden = false;
}

function closeWebcam() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("webcam").hidden = true;
}

function takePhoto() {
  const video = $("webcam-video");
  if (!video.videoWidth) return;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    upload([new File([blob], `webcam-${stamp}.jpg`, {type: "image/jpeg"})]);
  }, "image/jpeg", 0.92);
}

// ---- what is shown -------------------------------------------------------------------------

function threshold() { return parseFloat($("threshold").value); }

function showThreshold() { $("threshold-value").textContent = threshold().toFixed(2); }

// The detections of one picture that pass the filter: score strictly above the threshold (as the
// model's own threshold), category not hidden; each keeps its index among all.
function shown(item) {
  const t = threshold();
  return item.detections.map((d, i) => ({...d, index: i + 1}))
    .filter((d, i) => item.scores[i] > t && !state.hidden.has(d.name));
}

function pictureOf(result) {
  return result.kind === "photo" ? result : result.frames[result.at];
}

function render() {
  renderCategories();
  const holder = $("results");
  holder.replaceChildren(...state.results.map(card));
  renderTable();
  $("download").disabled = state.results.length === 0;
}

function card(result, i) {
  const box = document.createElement("div");
  box.className = "card" + (i === state.selected ? " selected" : "");
  box.dataset.input = result.input;
  const canvas = document.createElement("canvas");
  const caption = document.createElement("div");
  caption.className = "caption";
  box.append(canvas, caption);
  box.addEventListener("click", () => {
    if (state.selected !== i) { state.selected = i; render(); }
  });
  if (result.kind === "video") box.append(player(result, i, () => draw(result, canvas, caption)));
  draw(result, canvas, caption);
  return box;
}

// A video's play button and frame slider. The interval calls result.show, which each render points
// at the card of the moment, so that a video keeps playing through redraws.
function player(result, i, redraw) {
  const bar = document.createElement("div");
  bar.className = "player";
  const play = document.createElement("button");
  play.type = "button";
  play.textContent = result.timer ? "pause" : "play";
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = 0;
  slider.max = result.frames.length - 1;
  slider.value = result.at;
  result.show = (n) => {
    result.at = n;
    slider.value = n;
    redraw();
    if (state.selected === i) renderTable();
  };
  slider.addEventListener("input", () => {
    state.selected = i;
    result.show(parseInt(slider.value, 10));
  });
  play.addEventListener("click", (event) => {
    event.stopPropagation();
    if (result.timer) {
      stopPlaying(result);
      play.textContent = "play";
      return;
    }
    play.textContent = "pause";
    result.timer = setInterval(() => result.show((result.at + 1) % result.frames.length), 1000 * result.step);
  });
  bar.append(play, slider);
  return bar;
}

function stopPlaying(result) {
  clearInterval(result.timer);
  result.timer = null;
}

// Boxes and "name : score" labels as draw_detections draws them (src/inference/draw.py), in the
// category's colour; boxes are in the pixels of the uploaded picture.
function draw(result, canvas, caption) {
  const item = pictureOf(result);
  const picture = result.kind === "photo" ? result.bitmap : item.picture;
  const w = item.width, h = item.height;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  if (picture) {
    ctx.drawImage(picture, 0, 0, w, h);
  } else {
    ctx.fillStyle = "#eee";
    ctx.fillRect(0, 0, w, h);
  }
  const dets = shown(item);
  const colors = new Map(state.info.categories.map((c) => [c.label, c.color]));
  const line = Math.max(1, Math.round(Math.min(w, h) / 300));
  const size = Math.max(9, Math.round(22 * Math.max(0.4, Math.min(w, h) / 900)));
  ctx.font = `${size}px sans-serif`;
  ctx.textBaseline = "top";
  for (const d of dets) {
    const [x1, y1, x2, y2] = d.box;
    const color = colors.get(d.label) || "#ff0000";
    ctx.strokeStyle = color;
    ctx.lineWidth = line;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.name} : ${d.score.toFixed(2)}`;
    const tw = ctx.measureText(text).width + 4, th = size + 4;
    const tx = Math.min(Math.max(0, x1), Math.max(0, w - tw));
    const ty = y1 - th >= 0 ? y1 - th : Math.min(Math.max(0, y1), Math.max(0, h - th));
    ctx.fillStyle = color;
    ctx.fillRect(tx, ty, tw, th);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, tx + 2, ty + 2);
  }
  const where = result.kind === "video" ? `, frame ${item.frame} at ${item.time.toFixed(2)} s ` +
    `(${result.at + 1} of ${result.frames.length} shown)` : "";
  caption.textContent = `${result.input}${where}: ${dets.length} of ${item.detections.length} detections shown` +
    (picture ? "" : " (the browser cannot show this picture's format)");
}

function renderTable() {
  const result = state.results[state.selected];
  $("table-section").hidden = !result;
  if (!result) return;
  const item = pictureOf(result);
  const dets = shown(item);
  const where = result.kind === "video" ? `, frame ${item.frame}` : "";
  $("table-title").textContent = `${result.input}${where}: ${dets.length} detections`;
  $("detections").tBodies[0].replaceChildren(...dets.map((d) => {
    const row = document.createElement("tr");
    for (const text of [d.index, d.name, d.score.toFixed(3), d.box.map((v) => v.toFixed(1)).join(", ")]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
  document.querySelectorAll(".card").forEach((c, i) => c.classList.toggle("selected", i === state.selected));
}

// One checkbox per category found, with how many of its detections pass the threshold.
function renderCategories() {
  const t = threshold();
  const counts = new Map();
  for (const result of state.results) {
    const items = result.kind === "photo" ? [result] : result.frames;
    for (const item of items) {
      item.detections.forEach((d, i) => {
        if (item.scores[i] > t) counts.set(d.name, (counts.get(d.name) || 0) + 1);
      });
    }
  }
  const colors = new Map(state.info ? state.info.categories.map((c) => [c.name, c.color]) : []);
  const names = [...counts.keys()].sort();
  $("categories").hidden = names.length === 0;
  $("category-list").replaceChildren(...names.map((name) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = name;
    box.checked = !state.hidden.has(name);
    box.addEventListener("change", () => {
      if (box.checked) state.hidden.delete(name); else state.hidden.add(name);
      render();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colors.get(name) || "#888";
    label.append(box, swatch, `${name} (${counts.get(name)})`);
    return label;
  }));
}

// ---- the JSON download: test_image.py --json's form, of what the page shows --------------------

function download() {
  const report = [];
  for (const result of state.results) {
    if (result.kind === "photo") {
      report.push({input: result.input, output: null, detections: shown(result).map(strip)});
    } else {
      for (const f of result.frames) {
        report.push({input: result.input, frame: f.frame, time: f.time, output: null,
          detections: shown(f).map(strip)});
      }
    }
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(report, null, 1)], {type: "application/json"}));
  link.download = "detections.json";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function strip(d) { return {label: d.label, name: d.name, score: d.score, box: d.box}; }

// ---- wiring --------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("files").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
  $("threshold").addEventListener("input", () => { showThreshold(); render(); });
  $("model").addEventListener("change", changeModel);
  $("all-categories").addEventListener("click", () => { state.hidden.clear(); render(); });
  $("no-categories").addEventListener("click", () => {
    for (const c of state.info.categories) state.hidden.add(c.name);
    render();
  });
  $("download").addEventListener("click", download);
  $("webcam-open").addEventListener("click", openWebcam);
  $("webcam-close").addEventListener("click", closeWebcam);
  $("webcam-take").addEventListener("click", takePhoto);
  start();
});
