// The studio: makes clips through the API's asynchronous jobs, plays them, and manages the library.
// Hand-written, no build step, nothing loaded from elsewhere: the page's policy allows only this file.
//
// Every clip is fetched whole (through the presigned redirect with S3 storage) and played, drawn and
// saved from those bytes: one download for all three, and it carries the API key, which an
// <audio src> or a plain link could not.

const KEY_STORAGE = "srocks-music.api-key";
const PAGE_SIZE = 10;
const POLL_MAX_MS = 1000;
const POLL_RETRIES = 3;
const WAVE_SAMPLE_RATE = 8000;
const WAVE_COLUMNS = 800;
const SEARCH_DELAY_MS = 300;

const element = (id) => document.getElementById(id);

const form = element("generate-form");
const promptInput = element("prompt");
const durationInput = element("duration");
const guidanceInput = element("guidance");
const temperatureInput = element("temperature");
const seedInput = element("seed");
const formatSelect = element("format");
const normalizeSelect = element("normalize");
const generateButton = element("generate");
const formStatus = element("form-status");
const job = element("job");
const progress = element("progress");
const jobStatus = element("job-status");
const errorBox = element("error");
const serverStatus = element("server-status");
const player = element("player");
const playerTitle = element("player-title");
const playerMeta = element("player-meta");
const waveform = element("waveform");
const audio = element("audio");
const playerDownload = element("player-download");
const library = element("library");
const libraryHeading = element("library-heading");
const libraryStatus = element("library-status");
const libraryError = element("library-error");
const clipTemplate = element("clip-template");
const libraryFilter = element("library-filter");
const searchInput = element("search");
const formatFilter = element("format-filter");
const newerButton = element("newer");
const olderButton = element("older");
const pageLabel = element("page-label");
const deleteDialog = element("delete-dialog");
const deleteWhat = element("delete-what");
const keyDialog = element("key-dialog");
const keyForm = element("key-form");
const keyWhy = element("key-why");
const keyInput = element("api-key");
const forgetKeyButton = element("forget-key");

/** An error whose message is fit to show: the API's own words, or the page's. */
class ShownError extends Error {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** What to tell the user about `error`: never a stack trace. */
function describe(error) {
  if (error instanceof ShownError) return error.message;
  if (error instanceof TypeError) return "Could not reach the API. Check the connection and try again.";
  return "Something went wrong in the page. Reload it and try again.";
}

// ---- The API, and its key ------------------------------------------------------------------------

function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

function keepKey(key) {
  try {
    if (key === null) localStorage.removeItem(KEY_STORAGE);
    else localStorage.setItem(KEY_STORAGE, key);
  } catch {
    // A browser that keeps nothing asks again next time.
  }
  forgetKeyButton.hidden = storedKey() === null;
}

function send(path, options, key) {
  const headers = { ...options.headers };
  if (key !== null) headers.Authorization = `Bearer ${key}`;
  return fetch(path, { ...options, headers });
}

/** A request to the API with the kept key; a 401 asks for a key (once for all waiting requests) and tries again. */
async function api(path, options = {}) {
  const key = storedKey();
  const response = await send(path, options, key);
  if (response.status !== 401) return response;
  const newer = storedKey();
  const next = newer !== key ? newer : await askForKey(key !== null);
  if (next === null) throw new ShownError("This API needs a key: enter it to go on (Refresh asks again).");
  return send(path, options, next);
}

let keyRequest = null;
let settleKey = null;

function askForKey(refused) {
  if (keyRequest === null) {
    keyRequest = new Promise((resolve) => {
      settleKey = resolve;
    });
    keyWhy.textContent = refused
      ? "The API refused the key this browser kept. Enter the right one: the studio keeps it here and sends it with each request."
      : "This API needs a key. Enter it once: the studio keeps it in this browser and sends it with each request.";
    keyInput.value = "";
    keyDialog.returnValue = "";
    keyDialog.showModal();
  }
  return keyRequest;
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (key) keyDialog.close(key);
});
element("key-cancel").addEventListener("click", () => keyDialog.close(""));
// Every way the dialog ends (Save, Cancel, Escape) ends here, with the key or without one.
keyDialog.addEventListener("close", () => {
  const key = keyDialog.returnValue || null;
  if (key !== null) keepKey(key);
  const settle = settleKey;
  keyRequest = settleKey = null;
  settle?.(key);
});
forgetKeyButton.addEventListener("click", () => keepKey(null));

/** The API's words for a failed response (`detail`; a gateway's `message`), else its status. */
async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: the status says enough.
  }
  const words = [body?.detail, body?.message].find((value) => typeof value === "string");
  return new ShownError(words ?? `The API answered ${response.status} ${response.statusText}`.trim());
}

async function expectOk(response) {
  if (!response.ok) throw await failure(response);
  return response;
}

// ---- Status lines ----------------------------------------------------------------------------------

function showError(box, error) {
  box.textContent = describe(error);
  box.hidden = false;
}

function hideError(box) {
  box.hidden = true;
  box.textContent = "";
}

function formatSeconds(seconds) {
  const whole = Math.max(1, Math.round(seconds));
  return whole < 60 ? `${whole} s` : `${Math.floor(whole / 60)} min ${whole % 60} s`;
}

function formatDate(createdAt) {
  // The API's times are UTC, written "YYYY-MM-DD HH:MM:SS".
  const date = new Date(`${createdAt.replace(" ", "T")}Z`);
  if (Number.isNaN(date.getTime())) return { iso: "", text: createdAt };
  return { iso: date.toISOString(), text: date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) };
}

function clipDetails(clip) {
  const parts = [];
  if (clip.duration != null) parts.push(`${clip.duration} s`);
  if (clip.format) parts.push(clip.format.toUpperCase());
  if (clip.size_kb != null) parts.push(`${Math.round(clip.size_kb)} KB`);
  if (clip.seed != null) parts.push(`seed ${clip.seed}`);
  return parts.join(" · ");
}

async function checkServer() {
  try {
    const health = await (await expectOk(await api("/"))).json();
    if (health.model_loaded) serverStatus.textContent = `${health.model} · ready`;
    else if (health.model_error) serverStatus.textContent = `${health.model} · the model failed to load: ${health.model_error}`;
    else serverStatus.textContent = `${health.model} · the model loads for the first clip, which takes longer`;
  } catch (error) {
    serverStatus.textContent = describe(error);
  }
}

// ---- Making a clip ---------------------------------------------------------------------------------

function generationRequest() {
  const request = {
    text: promptInput.value,
    duration: durationInput.valueAsNumber,
    guidance_scale: guidanceInput.valueAsNumber,
    temperature: temperatureInput.valueAsNumber,
    format: formatSelect.value,
    normalize: normalizeSelect.value,
  };
  if (seedInput.value !== "") request.seed = seedInput.valueAsNumber;
  return request;
}

function showProgress(percent, words) {
  job.hidden = false;
  progress.value = Math.round(percent);
  jobStatus.textContent = words;
}

function jobWords(record) {
  if (record.status === "queued") return "Waiting to start…";
  const percent = Math.round(record.progress * 100);
  const eta = record.eta_seconds == null ? "" : ` · about ${formatSeconds(record.eta_seconds)} left`;
  return `Making the clip: ${percent}%${eta}`;
}

function pollDelay(response) {
  const seconds = Number(response.headers.get("Retry-After"));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, POLL_MAX_MS) : POLL_MAX_MS;
}

/** Polls a job until it ends; its finished record, or a ShownError with the job's error. */
async function followJob(statusUrl) {
  let failures = 0;
  for (;;) {
    let response;
    try {
      response = await api(statusUrl);
    } catch (error) {
      if (error instanceof ShownError || ++failures > POLL_RETRIES) throw error;
      await sleep(POLL_MAX_MS);
      continue;
    }
    if (response.status >= 500 && ++failures <= POLL_RETRIES) {
      await sleep(POLL_MAX_MS);
      continue;
    }
    const record = await (await expectOk(response)).json();
    failures = 0;
    if (record.status === "succeeded") return record;
    if (record.status === "failed") throw new ShownError(record.error || "The clip could not be made.");
    showProgress(record.progress * 100, jobWords(record));
    await sleep(pollDelay(response));
  }
}

let busy = false;

function setBusy(value) {
  busy = value;
  generateButton.disabled = value;
  form.setAttribute("aria-busy", String(value));
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (busy || !form.reportValidity()) return;
  hideError(errorBox);
  formStatus.textContent = "";
  const request = generationRequest();
  setBusy(true);
  showProgress(0, "Sending…");
  try {
    const fileUrl = await makeClip(request);
    showProgress(100, "Done.");
    const filename = fileUrl.split("/").pop();
    await openClip({ ...request, prompt: request.text, url: fileUrl, filename, seed: request.seed ?? null });
  } catch (error) {
    showError(errorBox, error);
  } finally {
    setBusy(false);
  }
  await Promise.all([refreshLibrary(0), checkServer()]);
});

/** Asks for a clip as a job and follows it; the new file's URL, or a ShownError. */
async function makeClip(request) {
  try {
    const response = await expectOk(
      await api("/generate/", {
        method: "POST",
        headers: { "Content-Type": "application/json", Prefer: "respond-async" },
        body: JSON.stringify(request),
      }),
    );
    const answer = await response.json();
    // 202 with the job to follow; a server that made the clip at once answers 200 with it.
    return response.status === 202 ? (await followJob(answer.status_url)).file_url : answer.file_url;
  } catch (error) {
    jobStatus.textContent = "Not made.";
    throw error;
  }
}

promptInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit();
  }
});

form.addEventListener("reset", () => {
  formStatus.textContent = "";
});

// ---- The player and its waveform -----------------------------------------------------------------

let clipUrl = null;
let currentFile = null;
let peaks = null;

async function clipBlob(clip) {
  let response;
  try {
    response = await api(clip.url);
  } catch (error) {
    if (!(error instanceof TypeError)) throw error;
    // With S3 the request is redirected to the bucket, which must allow this page (template.yaml's CORS rule).
    throw new ShownError("Could not download the clip: the connection failed, or the storage refused this page.");
  }
  return (await expectOk(response)).blob();
}

/** Loads a clip into the player (and draws it); plays it when asked. */
async function openClip(clip, { play = false } = {}) {
  const blob = await clipBlob(clip);
  if (clipUrl) URL.revokeObjectURL(clipUrl);
  clipUrl = URL.createObjectURL(blob);
  currentFile = clip.filename;
  audio.src = clipUrl;
  playerDownload.href = clipUrl;
  playerDownload.download = clip.filename;
  playerTitle.textContent = clip.prompt ?? clip.filename;
  playerMeta.textContent = [clipDetails(clip), clip.filename].filter(Boolean).join(" · ");
  player.hidden = false;
  markCurrent();
  await drawWaveform(blob);
  if (play) {
    try {
      await audio.play();
    } catch {
      // The browser wants its own play button pressed: the controls are there.
    }
  }
}

function closePlayer() {
  audio.pause();
  audio.removeAttribute("src");
  audio.load();
  if (clipUrl) URL.revokeObjectURL(clipUrl);
  clipUrl = currentFile = peaks = null;
  player.hidden = true;
  markCurrent();
}

async function drawWaveform(blob) {
  peaks = null;
  waveform.dataset.state = "loading";
  try {
    // An offline context decodes without needing a user gesture, at a rate plenty for a picture.
    const context = new OfflineAudioContext(1, 1, WAVE_SAMPLE_RATE);
    const buffer = await context.decodeAudioData(await blob.arrayBuffer());
    peaks = columnPeaks(buffer.getChannelData(0), WAVE_COLUMNS);
    waveform.dataset.state = "drawn";
  } catch {
    waveform.dataset.state = "unavailable";
  }
  paintWaveform();
}

function columnPeaks(samples, columns) {
  const result = new Float32Array(columns);
  const per = samples.length / columns;
  for (let column = 0; column < columns; column++) {
    let peak = 0;
    const end = Math.min(samples.length, Math.ceil((column + 1) * per));
    for (let index = Math.floor(column * per); index < end; index++) peak = Math.max(peak, Math.abs(samples[index]));
    result[column] = Math.min(1, peak);
  }
  return result;
}

function paintWaveform() {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(waveform.clientWidth * ratio));
  const height = Math.max(1, Math.round(waveform.clientHeight * ratio));
  if (waveform.width !== width) waveform.width = width;
  if (waveform.height !== height) waveform.height = height;
  const context = waveform.getContext("2d");
  context.clearRect(0, 0, width, height);
  if (peaks === null) return;
  const style = getComputedStyle(document.documentElement);
  const played = audio.duration > 0 ? audio.currentTime / audio.duration : 0;
  const bar = Math.max(1, Math.round(2 * ratio));
  for (let x = 0; x < width; x += bar + 1) {
    const peak = peaks[Math.min(peaks.length - 1, Math.floor((x / width) * peaks.length))];
    // At least a line, so silence still shows where the clip is.
    const barHeight = Math.max(ratio, peak * height * 0.95);
    context.fillStyle = x / width < played ? style.getPropertyValue("--accent") : style.getPropertyValue("--wave");
    context.fillRect(x, (height - barHeight) / 2, bar, barHeight);
  }
}

for (const name of ["timeupdate", "seeked", "loadedmetadata", "ended"]) audio.addEventListener(name, paintWaveform);
new ResizeObserver(paintWaveform).observe(waveform);
waveform.addEventListener("click", (event) => {
  if (!(audio.duration > 0)) return;
  audio.currentTime = (event.offsetX / waveform.clientWidth) * audio.duration;
});
audio.addEventListener("error", () => {
  if (currentFile !== null) showError(errorBox, new ShownError("This browser can't play this clip's format."));
});

// ---- The library -----------------------------------------------------------------------------------

let skip = 0;
let entries = new Map();
let libraryRequests = 0;

function markCurrent() {
  for (const item of library.children) {
    if (item.dataset.filename === currentFile) item.setAttribute("aria-current", "true");
    else item.removeAttribute("aria-current");
  }
}

function clipItem(entry, index) {
  const item = clipTemplate.content.firstElementChild.cloneNode(true);
  item.dataset.filename = entry.filename;
  const prompt = item.querySelector(".clip-prompt");
  prompt.id = `clip-${skip + index}`;
  prompt.textContent = entry.prompt ?? entry.filename;
  item.querySelector(".clip-details").textContent = clipDetails(entry);
  const date = formatDate(entry.created_at);
  const time = item.querySelector(".clip-date");
  time.dateTime = date.iso;
  time.textContent = date.text;
  for (const button of item.querySelectorAll("button")) button.setAttribute("aria-describedby", prompt.id);
  // A file from before the API kept settings has none to reuse.
  item.querySelector('[data-action="reuse"]').disabled = entry.prompt == null;
  return item;
}

/** Shows the library page starting at `start`; a page emptied by deletes steps back. */
async function refreshLibrary(start = skip) {
  const request = ++libraryRequests;
  hideError(libraryError);
  library.setAttribute("aria-busy", "true");
  try {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE + 1), skip: String(start) });
    if (searchInput.value.trim()) query.set("q", searchInput.value.trim());
    if (formatFilter.value) query.set("format", formatFilter.value);
    const response = await expectOk(await api(`/files/?${query}`));
    const page = await response.json();
    // Only the newest request shows: a quick search sends several.
    if (request !== libraryRequests) return;
    if (page.length === 0 && start > 0) return refreshLibrary(Math.max(0, start - PAGE_SIZE));
    skip = start;
    const shown = page.slice(0, PAGE_SIZE);
    entries = new Map(shown.map((entry) => [entry.filename, entry]));
    library.replaceChildren(...shown.map(clipItem));
    markCurrent();
    newerButton.disabled = skip === 0;
    olderButton.disabled = page.length <= PAGE_SIZE;
    pageLabel.textContent = `Page ${Math.floor(skip / PAGE_SIZE) + 1}`;
    const filtered = Boolean(searchInput.value.trim() || formatFilter.value);
    libraryStatus.textContent = shown.length
      ? `Clips ${skip + 1} to ${skip + shown.length}${filtered ? " of those that match" : ""}`
      : filtered
        ? "No clip matches."
        : "No clips yet: make one.";
  } catch (error) {
    if (request === libraryRequests) showError(libraryError, error);
  } finally {
    if (request === libraryRequests) library.removeAttribute("aria-busy");
  }
}

function useSettings(entry) {
  promptInput.value = entry.prompt ?? "";
  if (entry.duration != null) durationInput.value = String(entry.duration);
  if (entry.guidance_scale != null) guidanceInput.value = String(entry.guidance_scale);
  if (entry.temperature != null) temperatureInput.value = String(entry.temperature);
  seedInput.value = entry.seed != null ? String(entry.seed) : "";
  for (const [select, value] of [
    [formatSelect, entry.format],
    [normalizeSelect, entry.normalize],
  ]) {
    if (value && [...select.options].some((option) => option.value === value)) select.value = value;
  }
  formStatus.textContent = "Settings copied from the library: press Generate to make it again.";
  promptInput.focus();
  promptInput.scrollIntoView({ block: "center" });
}

async function saveClip(entry) {
  const url = entry.filename === currentFile ? clipUrl : URL.createObjectURL(await clipBlob(entry));
  const link = document.createElement("a");
  link.href = url;
  link.download = entry.filename;
  document.body.append(link);
  link.click();
  link.remove();
  // The download has to start before its blob URL goes.
  if (url !== clipUrl) setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

let pendingDelete = null;

function confirmDelete(entry) {
  pendingDelete = entry;
  deleteWhat.textContent = `“${entry.prompt ?? entry.filename}” (${entry.filename})`;
  deleteDialog.showModal();
}

async function deleteClip(entry) {
  const response = await api(entry.url, { method: "DELETE" });
  if (response.status !== 404) await expectOk(response);
  if (entry.filename === currentFile) closePlayer();
  await refreshLibrary();
  libraryStatus.textContent =
    response.status === 404 ? "That clip was already gone." : `Deleted “${entry.prompt ?? entry.filename}”.`;
  // The button that had focus is gone with its clip.
  libraryHeading.focus();
}

element("delete-cancel").addEventListener("click", () => deleteDialog.close());
element("delete-confirm").addEventListener("click", async () => {
  const entry = pendingDelete;
  pendingDelete = null;
  deleteDialog.close();
  if (entry === null) return;
  try {
    await deleteClip(entry);
  } catch (error) {
    showError(libraryError, error);
  }
});
deleteDialog.addEventListener("close", () => {
  // The close event is a queued task: on a busy machine, one from an Escape can come after the
  // dialog was opened again for the next clip, whose pending delete it must not clear.
  if (!deleteDialog.open) pendingDelete = null;
});

library.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  const entry = button && entries.get(button.closest("li").dataset.filename);
  if (!entry) return;
  hideError(libraryError);
  try {
    if (button.dataset.action === "play") await openClip(entry, { play: true });
    else if (button.dataset.action === "download") await saveClip(entry);
    else if (button.dataset.action === "reuse") useSettings(entry);
    else if (button.dataset.action === "delete") confirmDelete(entry);
  } catch (error) {
    showError(libraryError, error);
  }
});

let searchTimer = null;
searchInput.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => refreshLibrary(0), SEARCH_DELAY_MS);
});
formatFilter.addEventListener("change", () => refreshLibrary(0));
libraryFilter.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(searchTimer);
  refreshLibrary(0);
});

newerButton.addEventListener("click", () => refreshLibrary(Math.max(0, skip - PAGE_SIZE)));
olderButton.addEventListener("click", () => refreshLibrary(skip + PAGE_SIZE));
element("refresh").addEventListener("click", () => refreshLibrary());

// ---- Start -----------------------------------------------------------------------------------------

forgetKeyButton.hidden = storedKey() === null;
checkServer();
refreshLibrary(0);
