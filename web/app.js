// Runs an exported kd_jax student with onnxruntime-web's WebAssembly backend: an image
// classifier (uint8 images [B, H, W, C] in, logits out: the normalisation is inside the
// model), a one-step diffusion generator (float32 noise in, uint8 image out) or the
// arithmetic language model (int32 tokens [B, L] in, logits [B, L, V] out;
// greedy generation runs the whole fixed-length row once per new token).
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

function drawPixels(pixels, height, width, target = context) {
  const image = target.createImageData(width, height);
  for (let i = 0; i < pixels.length; i++) {
    image.data.set([pixels[i], pixels[i], pixels[i], 255], 4 * i);
  }
  const small = document.createElement("canvas");
  small.width = width;
  small.height = height;
  small.getContext("2d").putImageData(image, 0, 0);
  target.imageSmoothingEnabled = false;
  target.drawImage(small, 0, 0, target.canvas.width, target.canvas.height);
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

// ---------------------------------------------------------------- the language model

const encode = (text) => Array.from(text, (c) => {
  const i = samples.chars.indexOf(c);
  if (i < 0) throw new Error(`character ${JSON.stringify(c)} is not in ${samples.chars}`);
  return i + 3;        // 0 PAD, 1 BOS, 2 EOS, then the characters
});
const decode = (ids) => ids.filter((i) => i >= 3).map((i) => samples.chars[i - 3]).join("");

// Greedy decoding: the argmax at the last real position (the first maximum, as jnp.argmax),
// until EOS, the token budget or the row's end. onToken(id) sees each new token.
async function generate(promptText, onToken) {
  const length = samples.max_len;
  const ids = [samples.bos, ...encode(promptText)];
  const generated = [];
  const times = [];
  while (generated.length < samples.max_new_tokens && ids.length < length) {
    const row = new Int32Array(length).fill(samples.pad);
    row.set(ids);
    const start = performance.now();
    const output = await session.run(
      { [session.inputNames[0]]: new ort.Tensor("int32", row, [1, length]) });
    times.push(performance.now() - start);
    const logits = output[session.outputNames[0]].data;
    const vocab = logits.length / length;
    const offset = (ids.length - 1) * vocab;
    let best = 0;
    for (let v = 1; v < vocab; v++) if (logits[offset + v] > logits[offset + best]) best = v;
    ids.push(best);
    generated.push(best);
    if (onToken) await onToken(best);
    if (best === samples.eos) break;
  }
  return { generated, times };
}

async function solve(promptText) {
  const reasoning = document.getElementById("reasoning");
  reasoning.textContent = promptText;
  const { times } = await generate(promptText, async (id) => {
    reasoning.textContent += decode([id]);
    await new Promise((resolve) => setTimeout(resolve, 30));   // let the page draw each token
  });
  times.sort((a, b) => a - b);
  document.getElementById("token-latency").textContent =
    `${times.length} tokens, median ${times[times.length >> 1].toFixed(2)} ms per token ` +
    "(a full forward pass each) in the browser";
}

async function runAllProblems() {
  const generated = [];
  const times = [];
  for (const prompt of samples.prompts) {
    const result = await generate(prompt);
    generated.push(result.generated);
    times.push(...result.times);
  }
  times.sort((a, b) => a - b);
  document.getElementById("results").textContent = JSON.stringify(
    { generated, median_ms_per_token: times[times.length >> 1], tokens: times.length });
  document.body.dataset.done = "1";
}

function enableProblems() {
  let index = -1;
  const input = document.getElementById("prompt");
  document.getElementById("language-model").hidden = false;
  document.getElementById("solve").onclick = () => solve(input.value).catch((error) => {
    document.getElementById("reasoning").textContent = String(error);
  });
  document.getElementById("next-prompt").onclick = () => {
    index = (index + 1) % samples.prompts.length;
    input.value = samples.prompts[index];
    solve(input.value);
  };
  document.getElementById("next-prompt").onclick();
}

// ---------------------------------------------------------------- the one-step generator
// float32 noise [1, H, W, C] in, uint8 image [1, H, W, C] out (kd_jax/export/student.py);
// a class-conditional student (samples.class_names) also takes an int32 label [1].

function gaussianNoise(size) {         // Box–Muller
  const noise = new Float32Array(size);
  for (let i = 0; i < size; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(1 - Math.random()));
    const angle = 2 * Math.PI * Math.random();
    noise[i] = radius * Math.cos(angle);
    if (i + 1 < size) noise[i + 1] = radius * Math.sin(angle);
  }
  return noise;
}

async function imageOf(noise, label) {
  const [h, w, c] = samples.input_shape;
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", noise, [1, h, w, c]) };
  if (session.inputNames.length > 1) {
    feeds[session.inputNames[1]] = new ort.Tensor("int32", Int32Array.from([label]), [1]);
  }
  const output = await session.run(feeds);
  return output[session.outputNames[0]].data;
}

function enableClasses() {           // a class-conditional generator: which garment to draw
  const picker = document.getElementById("garment-class");
  samples.class_names.forEach((name, i) => picker.add(new Option(name, i)));
  picker.hidden = false;
  picker.onchange = drawGarment;
}

async function drawGarment() {
  const [h, w, c] = samples.input_shape;
  const label = Number(document.getElementById("garment-class").value || 0);
  const start = performance.now();
  const pixels = await imageOf(gaussianNoise(h * w * c), label);
  const milliseconds = performance.now() - start;
  drawPixels(pixels, h, w, document.getElementById("garment").getContext("2d"));
  document.getElementById("garment-latency").textContent =
    `${milliseconds.toFixed(2)} ms for this image in the browser (one forward pass)`;
}

// ?auto=1: the image of every fixed noise draw in samples.json, and the median time.
async function runAllNoise() {
  const images = [];
  const times = [];
  for (const [i, noise] of samples.noise.entries()) {
    const start = performance.now();
    const label = samples.labels ? samples.labels[i] : 0;
    images.push(Array.from(await imageOf(Float32Array.from(noise), label)));
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  document.getElementById("results").textContent = JSON.stringify(
    { images, median_ms_per_image: times[times.length >> 1] });
  document.body.dataset.done = "1";
}

// ---------------------------------------------------------------- the image classifier

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
    const language = samples.kind === "language_model";
    const generator = samples.kind === "denoiser";
    if (params.get("auto")) {
      await (language ? runAllProblems() : generator ? runAllNoise() : runAll());
    } else if (language) {
      enableProblems();
    } else if (generator) {
      document.getElementById("generator").hidden = false;
      if (samples.class_names) enableClasses();
      document.getElementById("draw-garment").onclick = drawGarment;
      await drawGarment();
    } else {
      document.getElementById("image-classifier").hidden = false;
      context.fillStyle = "black";
      context.fillRect(0, 0, canvas.width, canvas.height);
      enableDrawing();
      nextSample();
    }
  } catch (error) {
    status.textContent = `Could not run ${base}student.onnx: ${error}`;
    document.body.dataset.error = String(error);
  }
}

main();
