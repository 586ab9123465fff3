// SegVol in the browser: three views rendered by the server, prompts sent as view coordinates.
"use strict";

const VIEWS = ["axial", "coronal", "sagittal"];
const state = { image: null, active: null, cross: [0, 0, 0], pending: 0, drag: null };

const $ = (id) => document.getElementById(id);

// The launch's token arrives once in the address (?token=...); the server has set its cookie by then.
// Keep it for the API's header and take it out of the address bar (and so out of history and bookmarks).
const TOKEN = new URLSearchParams(location.search).get("token");
if (TOKEN) history.replaceState(null, "", location.pathname);

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").dataset.state = kind;
  $("spinner").hidden = state.pending === 0;
}

// Resolves to the answer's JSON, or to null when the server says a newer request for the same object
// overtook this one (409 superseded): its result is dropped, and the newer answer will be shown.
async function call(method, url, body, headers) {
  state.pending += 1;
  setStatus("working…", "busy");
  try {
    const sent = Object.assign({}, headers || { "Content-Type": "application/json" });
    if (TOKEN) sent["X-SegVol-Token"] = TOKEN;
    const response = await fetch(url, { method, body, headers: sent, credentials: "same-origin" });
    const payload = await response.json();
    if (response.status === 409 && payload.superseded) return null;
    if (!response.ok) throw new Error(payload.error || response.statusText);
    $("message").textContent = "";
    return payload;
  } catch (error) {
    $("message").textContent = error.message;
    throw error;
  } finally {
    state.pending -= 1;
    $("spinner").hidden = state.pending === 0;
  }
}

const post = (url, payload) => call("POST", url, JSON.stringify(payload || {}));

function sliceIndex(view) {
  return state.cross[VIEWS.indexOf(view)];
}

function render() {
  if (!state.image || !state.image.open) return;
  const [d, h, w] = state.cross;
  const windowName = $("window").value;
  for (const view of VIEWS) {
    const img = $("view-" + view);
    const index = sliceIndex(view);
    img.src = `/api/slice?view=${view}&index=${index}&window=${windowName}&d=${d}&h=${h}&w=${w}&t=${Date.now()}`;
    $("index-" + view).textContent = `${index + 1} / ${state.image.views[view].slices}`;
  }
  // Names and texts are the user's data: text nodes only, never parsed as HTML.
  const items = state.image.objects.map((item) => {
    const li = document.createElement("li");
    li.className = item.name === state.active ? "active" : "";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = item.colour;
    const detail = document.createElement("small");
    detail.textContent = ` ${item.text || ""} ${item.voxels} voxels`;
    li.append(swatch, document.createTextNode(item.name), " ", detail);
    li.onclick = () => { state.active = item.name; render(); };
    return li;
  });
  $("objects").replaceChildren(...items);
}

function applyState(payload, message) {
  if (payload === null) return;  // superseded: a newer answer is on its way
  // answers can arrive out of order: never replace a newer state by an older one
  if (state.image && payload.open && payload.version < state.image.version) return;
  state.image = payload;
  if (!state.active && payload.objects && payload.objects.length) state.active = payload.objects[0].name;
  sizeViews();
  render();
  if (state.pending > 0) return;  // another request is still running: keep showing that
  setStatus(message || (payload.waiting ? payload.waiting : `done in ${payload.seconds} s`), payload.waiting ? "idle" : "done");
}

function sizeViews() {
  for (const view of VIEWS) {
    const info = state.image.views[view];
    const img = $("view-" + view);
    img.style.aspectRatio = `${info.size[0]} / ${info.size[1] * info.aspect}`;
  }
}

async function openImage(path) {
  const payload = await post("/api/open", { path });
  state.cross = payload.shape.map((n) => Math.floor(n / 2));
  state.active = null;
  $("image-name").textContent = payload.name;
  applyState(payload, "image open");
}

function pixel(event, view) {
  const img = event.target;
  const size = state.image.views[view].size;
  return [event.offsetX * size[0] / img.clientWidth, event.offsetY * size[1] / img.clientHeight];
}

function voxelFromPixel(view, x, y) {
  const [depth, height, width] = state.image.shape;
  const index = sliceIndex(view);
  const col = Math.floor(x), row = Math.floor(y);
  if (view === "axial") return [index, height - 1 - row, width - 1 - col];
  if (view === "coronal") return [depth - 1 - row, index, width - 1 - col];
  return [depth - 1 - row, height - 1 - col, index];
}

function requireObject() {
  if (!state.active) throw new Error("add an object first");
  return state.active;
}

function tool() {
  return document.querySelector("input[name=tool]:checked").value;
}

function attachView(view) {
  const img = $("view-" + view);
  img.addEventListener("wheel", (event) => {
    event.preventDefault();
    const axis = VIEWS.indexOf(view);
    const count = state.image.views[view].slices;
    state.cross[axis] = Math.max(0, Math.min(count - 1, state.cross[axis] + (event.deltaY > 0 ? 1 : -1)));
    render();
  });
  img.addEventListener("mousedown", (event) => {
    if (tool() === "box") state.drag = { view, start: pixel(event, view) };
  });
  img.addEventListener("mouseup", async (event) => {
    if (!state.image) return;
    const [x, y] = pixel(event, view);
    try {
      if (tool() === "box" && state.drag && state.drag.view === view) {
        const [x0, y0] = state.drag.start;
        state.drag = null;
        applyState(await post("/api/box", { object: requireObject(), view, index: sliceIndex(view), x0, y0, x1: x, y1: y }));
      } else if (tool() === "point") {
        applyState(await post("/api/point", { object: requireObject(), view, index: sliceIndex(view), x, y,
                                              positive: !event.shiftKey }));
      } else if (tool() === "navigate") {
        state.cross = voxelFromPixel(view, x, y);
        render();
      }
    } catch (error) {
      setStatus("error", "error");
    }
  });
}

async function start() {
  VIEWS.forEach(attachView);
  $("open").onclick = () => openImage($("files").value).catch(() => setStatus("error", "error"));
  $("upload").onchange = async () => {
    const file = $("upload").files[0];
    if (!file) return;
    if (state.maxUpload && file.size > state.maxUpload) {
      $("message").textContent = `${file.name}: ${file.size} bytes is over the server's limit of ${state.maxUpload}`;
      setStatus("error", "error");
      return;
    }
    try {
      const headers = { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) };
      const payload = await call("POST", "/api/upload", file, headers);
      state.cross = payload.shape.map((n) => Math.floor(n / 2));
      state.active = null;
      $("image-name").textContent = payload.name;
      applyState(payload, "image open");
    } catch (error) { setStatus("error", "error"); }
  };
  $("window").onchange = render;
  $("add-object").onclick = async () => {
    const name = $("object-name").value;
    try {
      const payload = await post("/api/object", { name });
      state.active = payload.objects[payload.objects.length - 1].name;
      applyState(payload, "object added");
    } catch (error) { setStatus("error", "error"); }
  };
  $("set-text").onclick = async () => {
    try { applyState(await post("/api/text", { object: requireObject(), text: $("text").value })); }
    catch (error) { setStatus("error", "error"); }
  };
  $("undo").onclick = async () => {
    try { applyState(await post("/api/undo"), "undone"); } catch (error) { setStatus("error", "error"); }
  };
  const showLabels = (payload) => {
    // Label names come from a file: text only, never parsed as HTML.
    const options = payload.labels.map((item) => {
      const option = document.createElement("option");
      option.value = String(item.value);
      option.textContent = `${item.value}${item.name ? " " + item.name : ""} (${item.voxels} voxels)`;
      return option;
    });
    $("labels").replaceChildren(...options);
    setStatus(`${payload.labels.length} labels in ${payload.source}`, "done");
  };
  $("load-labels").onclick = async () => {
    try { showLabels(await post("/api/labels", { path: $("files").value })); }
    catch (error) { setStatus("error", "error"); }
  };
  $("upload-labels").onchange = async () => {
    const file = $("upload-labels").files[0];
    if (!file) return;
    try {
      const headers = { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) };
      showLabels(await call("POST", "/api/upload-labels", file, headers));
    } catch (error) { setStatus("error", "error"); }
  };
  $("import-label").onclick = async () => {
    try {
      const payload = await post("/api/import", { label: Number($("labels").value) });
      state.active = payload.objects[payload.objects.length - 1].name;
      applyState(payload, "label imported: click to edit it");
    } catch (error) { setStatus("error", "error"); }
  };
  $("export").onclick = async () => {
    try {
      const payload = await post("/api/export", { name: $("export-name").value || "segmentation.nii.gz" });
      $("export-result").textContent = `wrote ${payload.path}`;
      $("export-result").dataset.path = payload.path;
      setStatus("exported", "done");
    } catch (error) { setStatus("error", "error"); }
  };
  // Handlers first: a click before the lists arrive must not be lost.
  const files = await call("GET", "/api/files");
  for (const name of files.files) {
    const option = document.createElement("option");
    option.textContent = name;
    $("files").appendChild(option);
  }
  const categories = await call("GET", "/api/categories");
  for (const name of categories.categories) {
    const option = document.createElement("option");
    option.value = name;
    $("categories").appendChild(option);
  }
  const current = await call("GET", "/api/state");
  state.maxUpload = current.max_upload_bytes;
  if (current.open) applyState(current, "image open");
  else setStatus("open an image", "idle");
}

start();
