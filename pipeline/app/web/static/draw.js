// The draw page: strokes on a canvas, read by the model as they are drawn.
"use strict";

const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const strokes = []; // each stroke: a list of [x, y] in canvas pixels
let drawing = null;
let timer = null;
let asked = 0; // the latest request; older answers are dropped

const $ = (id) => document.getElementById(id);

function paint() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = 20;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const stroke of strokes) {
    if (stroke.length === 1) {
      ctx.beginPath();
      ctx.arc(stroke[0][0], stroke[0][1], ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(...stroke[0]);
    for (const point of stroke.slice(1)) ctx.lineTo(...point);
    ctx.stroke();
  }
}

function at(event) {
  const box = canvas.getBoundingClientRect();
  return [
    ((event.clientX - box.left) * canvas.width) / box.width,
    ((event.clientY - box.top) * canvas.height) / box.height,
  ];
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  drawing = [at(event)];
  strokes.push(drawing);
  paint();
  soon();
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  event.preventDefault();
  drawing.push(at(event));
  paint();
  soon();
});
for (const type of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(type, () => {
    if (drawing) soon(0);
    drawing = null;
  });
}

const ASK = document.querySelector(".draw").dataset.ask; // "Draw a digit.", or "Open a picture ..."

$("undo")?.addEventListener("click", () => {
  strokes.pop();
  paint();
  soon(0);
});
$("clear")?.addEventListener("click", () => {
  strokes.length = 0;
  paint();
  soon(0);
});

// "waiting" for the pen to rest, "asking" the model, "idle" once the latest answer shows.
function state(now) {
  document.body.dataset.state = now;
}

function soon(delay = 150) {
  clearTimeout(timer);
  state("waiting");
  timer = setTimeout(readCanvas, delay);
}

function readCanvas() {
  if (strokes.length === 0) {
    asked++;
    show({ message: ASK });
    return;
  }
  canvas.toBlob((blob) => ask(blob, "canvas.png"), "image/png");
}

async function ask(blob, name) {
  const mine = ++asked;
  state("asking");
  const form = new FormData();
  form.append("image", blob, name);
  let body;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    body = await response.json();
    if (!response.ok) body = { message: messageOf(body, response.status) };
  } catch (error) {
    body = { message: `The server did not answer (${error.message}).` };
  }
  if (mine === asked) show(body);
}

function messageOf(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return /blank/.test(detail) ? ASK : detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
  return `The server answered ${status}.`;
}

function show(result) {
  state("idle");
  const answer = $("answer");
  const bars = $("bars");
  if (result.message) {
    $("message").textContent = result.message;
    $("message").hidden = false;
    answer.hidden = true;
    bars.replaceChildren();
    return;
  }
  $("message").hidden = true;
  answer.hidden = false;
  $("digit").textContent = result.class ?? result.digit;
  $("confidence").textContent = `${(100 * result.probabilities[result.digit]).toFixed(1)}%`;
  $("seen").src = result.input;
  bars.replaceChildren(
    ...result.probabilities.map((p, digit) => {
      const row = document.createElement("li");
      row.className = digit === result.digit ? "best" : "";
      row.innerHTML = `<span class="label"></span><span class="bar"><span></span></span><span class="value"></span>`;
      row.querySelector(".label").textContent = result.classes ? result.classes[digit] : digit;
      row.querySelector(".bar span").style.width = `${(100 * p).toFixed(1)}%`;
      row.querySelector(".value").textContent = p.toFixed(3);
      return row;
    }),
  );
}

function upload(file) {
  if (!file) return;
  strokes.length = 0;
  paint();
  ask(file, file.name);
}

$("file").addEventListener("change", (event) => upload(event.target.files[0]));
const pad = $("pad");
pad.addEventListener("dragover", (event) => {
  event.preventDefault();
  pad.classList.add("over");
});
pad.addEventListener("dragleave", () => pad.classList.remove("over"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("over");
  upload(event.dataTransfer.files[0]);
});

async function describeModel() {
  const place = $("model");
  try {
    const about = await (await fetch("/api/model")).json();
    const parts = [];
    if (about.name) parts.push(`${about.name} version ${about.version ?? "?"} @${about.alias}`);
    else if (about.path) parts.push(about.path);
    else if (about.uri) parts.push(about.uri);
    if (about.run_id) parts.push(`run ${about.run_name ?? ""} ${about.run_id.slice(0, 8)}`.replace("  ", " "));
    if (about.test_accuracy != null) parts.push(`test accuracy ${about.test_accuracy.toFixed(4)}`);
    if (about.val_accuracy != null) parts.push(`validation accuracy ${about.val_accuracy.toFixed(4)}`);
    place.textContent = `Model: ${parts.join(" · ")}`;
    if (about.mlflow_run_url) {
      const link = document.createElement("a");
      link.href = about.mlflow_run_url;
      link.textContent = "open in MLflow";
      place.append(" · ", link);
    }
  } catch (error) {
    place.textContent = `The model could not be described (${error.message}).`;
  }
}

paint();
state("idle");
describeModel();
