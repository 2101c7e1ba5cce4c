// Runs an exported kd_jax image classifier (uint8 images [B, H, W, C] in, logits out:
// the normalisation is inside the model) with onnxruntime-web's WebAssembly backend.
"use strict";

const params = new URLSearchParams(location.search);
const run = params.get("run") || "runs/default";
const base = `/${run.replace(/^\/+|\/+$/g, "")}/export/`;
const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
let session, samples, sampleIndex = -1;

function softmax(logits) {
  const top = Math.max(...logits);
  const exps = logits.map((v) => Math.exp(v - top));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / total);
}

// The canvas, averaged down to the model's H × W, as uint8 grey levels.
function canvasPixels(height, width) {
  const small = document.createElement("canvas");
  small.width = width;
  small.height = height;
  const smallContext = small.getContext("2d");
  smallContext.drawImage(canvas, 0, 0, width, height);
  const rgba = smallContext.getImageData(0, 0, width, height).data;
  const pixels = new Uint8Array(height * width);
  for (let i = 0; i < pixels.length; i++) pixels[i] = rgba[4 * i];
  return pixels;
}

function drawPixels(pixels, height, width) {
  const image = context.createImageData(width, height);
  for (let i = 0; i < pixels.length; i++) {
    image.data.set([pixels[i], pixels[i], pixels[i], 255], 4 * i);
  }
  const small = document.createElement("canvas");
  small.width = width;
  small.height = height;
  small.getContext("2d").putImageData(image, 0, 0);
  context.imageSmoothingEnabled = false;
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
}

async function logitsOf(batch, count) {
  const [h, w, c] = samples.input_shape;
  const input = new ort.Tensor("uint8", batch, [count, h, w, c]);
  const output = await session.run({ [session.inputNames[0]]: input });
  return output[session.outputNames[0]].data;
}

async function classify(pixels) {
  const start = performance.now();
  const logits = Array.from(await logitsOf(pixels, 1));
  const milliseconds = performance.now() - start;
  const probabilities = softmax(logits);
  const best = probabilities.indexOf(Math.max(...probabilities));
  document.getElementById("prediction").textContent = samples.class_names[best];
  document.getElementById("probabilities").innerHTML = probabilities.map((p, i) =>
    `<tr><td>${samples.class_names[i]}</td><td>${(100 * p).toFixed(1)}%</td>` +
    `<td><div class="bar" style="width:${Math.round(200 * p)}px"></div></td></tr>`).join("");
  document.getElementById("latency").textContent =
    `${milliseconds.toFixed(2)} ms for this image in the browser`;
}

function nextSample() {
  sampleIndex = (sampleIndex + 1) % samples.labels.length;
  const [h, w] = samples.input_shape;
  const pixels = Uint8Array.from(samples.images[sampleIndex]);
  drawPixels(pixels, h, w);
  document.getElementById("truth").textContent =
    `held-out image ${sampleIndex + 1}: ${samples.class_names[samples.labels[sampleIndex]]}`;
  classify(pixels);
}

// ?auto=1: every sample at once, then its logits and the median time per image.
async function runAll() {
  const [h, w, c] = samples.input_shape;
  const size = h * w * c;
  const logits = [];
  const times = [];
  for (const image of samples.images) {
    const start = performance.now();
    logits.push(Array.from(await logitsOf(Uint8Array.from(image), 1)));
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  const results = document.getElementById("results");
  results.textContent = JSON.stringify({ logits, median_ms_per_image: times[times.length >> 1],
                                         images: logits.length, pixels: size });
  document.body.dataset.done = "1";
}

function enableDrawing() {
  let drawing = false;
  const paint = (event) => {
    if (!drawing) return;
    const box = canvas.getBoundingClientRect();
    context.fillStyle = "white";
    context.beginPath();
    context.arc(event.clientX - box.left, event.clientY - box.top, 14, 0, 2 * Math.PI);
    context.fill();
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; paint(e); });
  canvas.addEventListener("pointermove", paint);
  canvas.addEventListener("pointerup", () => {
    drawing = false;
    document.getElementById("truth").textContent = "your drawing";
    const [h, w] = samples.input_shape;
    classify(canvasPixels(h, w));
  });
  document.getElementById("clear").onclick = () => {
    context.fillStyle = "black";
    context.fillRect(0, 0, canvas.width, canvas.height);
  };
  document.getElementById("sample").onclick = nextSample;
}

async function main() {
  const status = document.getElementById("status");
  try {
    ort.env.wasm.numThreads = 1;   // threads need cross-origin isolation headers
    samples = await (await fetch(base + "samples.json")).json();
    session = await ort.InferenceSession.create(base + "student.onnx",
                                                { executionProviders: ["wasm"] });
    status.textContent = `${run}: ${samples.description}`;
    context.fillStyle = "black";
    context.fillRect(0, 0, canvas.width, canvas.height);
    if (params.get("auto")) {
      await runAll();
    } else {
      enableDrawing();
      nextSample();
    }
  } catch (error) {
    status.textContent = `Could not run ${base}student.onnx: ${error}`;
    document.body.dataset.error = String(error);
  }
}

main();
