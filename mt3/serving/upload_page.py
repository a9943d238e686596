"""The upload page of `mt3 serve`: plain HTML + JS (no CDN), a piano roll drawn on a canvas.

Why its own module: the page is a user interface with its own logic (axes, legend, request state, error display) and
would crowd the server's request handling. It shows what the PNG piano roll shows (`mt3.plotting`): time in seconds
across the whole audio, pitch with note names, and a legend of GM instrument names in GM program order (drums last)
with the PNG's colours (`plotting.distinct_colours`: none repeated), both filled in from the Python side so the page
and the PNG never disagree. After a transcription it offers what `mt3 transcribe` writes: NAME.mid, NAME.notes.csv,
NAME.notes.json and NAME.png (all from the one request), and shows the command line's warnings for the file. While a
request is in flight the button is disabled; every error (a JSON `detail`, a plain-text proxy error, a network
failure) is shown on one line, the full text in the tooltip.
"""

from __future__ import annotations


def render(*, max_upload_mb: float, max_audio_seconds: float) -> str:
    """The page with its limits, GM instrument names and colours filled in (names and colours as the PNG's)."""
    import json

    from mt3 import plotting

    names = [plotting.instrument_label(program, False) for program in range(128)]
    page = PAGE_HTML
    for key, value in {"{{GM_NAMES}}": json.dumps(names), "{{DRUMS_LABEL}}": json.dumps(plotting.DRUMS_LABEL),
                       "{{COLOURS}}": json.dumps(plotting.distinct_colours(129)), "{{MAX_MB}}": f"{max_upload_mb:g}",
                       "{{MAX_SECONDS}}": f"{max_audio_seconds:g}"}.items():
        page = page.replace(key, value)
    return page


PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mt3 transcription</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }
 #roll { border: 1px solid #ccc; width: 100%; height: 460px; display: block; margin-top: 0.5em; }
 #go:disabled { cursor: progress; }
 #status { display: block; margin-top: 0.6em; min-height: 1.3em; white-space: nowrap; overflow: hidden;
           text-overflow: ellipsis; }
 #status.error { color: #b00020; }
 #legend span { margin-right: 1em; white-space: nowrap; display: inline-block; }
 #legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }
 #download a { margin-right: 1em; }
 #warnings { color: #8a5a00; }
</style></head>
<body>
<h1>mt3: audio to multitrack MIDI</h1>
<p>Upload an audio file (wav, flac, mp3, ogg; at most {{MAX_MB}} MB and {{MAX_SECONDS}} s).</p>
<form id="form"><input type="file" id="file" name="file" accept="audio/*,.wav,.flac,.mp3,.ogg">
<button type="submit" id="go">Transcribe</button></form>
<span id="status" role="status"></span>
<p id="download"></p>
<ul id="warnings"></ul>
<div id="legend"></div>
<canvas id="roll" width="1100" height="460"></canvas>
<script>
// GM names and colours are the PNG piano roll's (mt3.plotting), filled in by the server.
const GM_NAMES = {{GM_NAMES}}, DRUMS = {{DRUMS_LABEL}}, COLOURS = {{COLOURS}};
const PITCH_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
const MARGIN = { left: 56, right: 12, top: 10, bottom: 42 }, MIN_BAR = 0.05;
function label(n) { return n.is_drum ? DRUMS : GM_NAMES[n.program]; }
function noteName(p) { return PITCH_NAMES[p % 12] + (Math.floor(p / 12) - 1); }
function niceStep(span, maxTicks) {
  for (const step of [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600]) if (span / step <= maxTicks) return step;
  return Math.ceil(span / maxTicks / 600) * 600;
}
function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = String(text).replace(/\\s+/g, " ").trim();  // one line, whatever the server sent
  status.title = status.textContent;
  status.className = isError ? "error" : "";
}
function drawRoll(notes, seconds) {
  const canvas = document.getElementById("roll"), ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, plotW = W - MARGIN.left - MARGIN.right;
  const plotH = H - MARGIN.top - MARGIN.bottom;
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
  // legend: GM program order, drums last (as the PNG)
  const keys = [...new Set(notes.map(n => n.is_drum ? 1000 : n.program))].sort((a, b) => a - b);
  const labels = keys.map(k => k === 1000 ? DRUMS : GM_NAMES[k]);
  const colour = Object.fromEntries(labels.map((l, i) => [l, COLOURS[i]]));
  const counts = {};
  for (const n of notes) counts[label(n)] = (counts[label(n)] || 0) + 1;
  document.getElementById("legend").innerHTML = labels.map(l => '<span title="' + counts[l] + ' notes"><i ' +
    'style="background:' + colour[l] + '"></i>' + l + "</span>").join("");
  // axes: time (s) along x over the whole audio, pitch along y over the notes' range
  const tEnd = Math.max(seconds || 0, ...notes.map(n => Math.max(n.offset, n.onset + MIN_BAR)), 0.1);
  let lo = 59, hi = 73;
  if (notes.length) { lo = Math.min(...notes.map(n => n.pitch)) - 1; hi = Math.max(...notes.map(n => n.pitch)) + 1; }
  const sx = plotW / tEnd, sy = plotH / (hi - lo + 1);
  const x = t => MARGIN.left + t * sx, y = p => MARGIN.top + (hi - p) * sy;
  ctx.font = "12px system-ui, sans-serif"; ctx.strokeStyle = "#e4e4e4"; ctx.fillStyle = "#333"; ctx.lineWidth = 1;
  const xTicks = [], yTicks = [], step = niceStep(tEnd, 12);
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (let t = 0; t <= tEnd + 1e-9; t += step) {
    const text = String(Math.round(t * 10) / 10);
    xTicks.push(text);
    ctx.beginPath(); ctx.moveTo(x(t), MARGIN.top); ctx.lineTo(x(t), MARGIN.top + plotH); ctx.stroke();
    ctx.fillText(text, x(t), MARGIN.top + plotH + 4);
  }
  ctx.fillText("time (s)", MARGIN.left + plotW / 2, H - 16);
  const pitchStep = hi - lo > 36 ? 12 : hi - lo > 12 ? 4 : 2;
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let p = Math.ceil(lo / pitchStep) * pitchStep; p <= hi; p += pitchStep) {
    yTicks.push(noteName(p));
    const yc = y(p) + sy / 2;
    ctx.beginPath(); ctx.moveTo(MARGIN.left, yc); ctx.lineTo(MARGIN.left + plotW, yc); ctx.stroke();
    ctx.fillText(noteName(p), MARGIN.left - 6, yc);
  }
  ctx.save(); ctx.translate(14, MARGIN.top + plotH / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
  ctx.fillText("pitch", 0, 0); ctx.restore();
  ctx.strokeStyle = "#888"; ctx.strokeRect(MARGIN.left, MARGIN.top, plotW, plotH);
  for (const n of notes) {
    ctx.fillStyle = colour[label(n)];
    const w = Math.max((Math.max(n.offset, n.onset + MIN_BAR) - n.onset) * sx, 2);
    ctx.fillRect(x(n.onset), y(n.pitch), w, Math.max(sy - 1, 1));
  }
  if (!notes.length) {
    ctx.fillStyle = "#888"; ctx.textAlign = "center";
    ctx.fillText("(no notes)", MARGIN.left + plotW / 2, MARGIN.top + plotH / 2);
  }
  Object.assign(canvas.dataset, { drawn: String(notes.length), xLabel: "time (s)", yLabel: "pitch",
                                  xTicks: xTicks.join(","), yTicks: yTicks.join(",") });
}
function clearResult() {
  const canvas = document.getElementById("roll");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.drawn = "";
  document.getElementById("legend").innerHTML = "";
  document.getElementById("download").innerHTML = "";
  document.getElementById("warnings").innerHTML = "";
}
function downloadLink(id, name, blob) {
  const link = document.createElement("a");
  link.id = id; link.download = name; link.href = URL.createObjectURL(blob); link.textContent = name;
  return link;
}
function bytesOf(base64) { return Uint8Array.from(atob(base64), c => c.charCodeAt(0)); }
async function errorDetail(response) {
  const text = await response.text();
  try {
    const detail = JSON.parse(text).detail;
    if (typeof detail === "string") return detail;
    if (detail !== undefined) return JSON.stringify(detail);
  } catch (err) { /* not JSON: a proxy's or the server's plain-text error */ }
  return text.slice(0, 300) || response.statusText || "HTTP " + response.status;
}
document.getElementById("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("file"), button = document.getElementById("go");
  const download = document.getElementById("download");
  if (!input.files.length) { setStatus("Choose an audio file first.", true); return; }
  const file = input.files[0], body = new FormData();
  body.append("file", file);
  button.disabled = true;
  setStatus("Transcribing " + file.name + " ...", false);
  clearResult();
  try {
    const response = await fetch("transcribe?format=json&midi=true&csv=true&png=true", { method: "POST", body });
    if (!response.ok) { setStatus("Error: " + await errorDetail(response), true); return; }
    const result = await response.json();
    drawRoll(result.notes, result.seconds);
    const stem = file.name.replace(/\\.[^.]*$/, "") || "transcription";
    // the files `mt3 transcribe --png --json --csv` writes, from this one request
    download.replaceChildren("Download: ",
      downloadLink("midi-link", stem + ".mid", new Blob([bytesOf(result.midi_base64)], { type: "audio/midi" })),
      downloadLink("csv-link", stem + ".notes.csv", new Blob([result.csv], { type: "text/csv" })),
      downloadLink("json-link", stem + ".notes.json",
                   new Blob([JSON.stringify(result.notes, null, 1) + "\\n"], { type: "application/json" })),
      downloadLink("png-link", stem + ".png", new Blob([bytesOf(result.png_base64)], { type: "image/png" })),
      " (" + result.notes.length + " notes, " + result.seconds + " s, " + result.invalid_events + " invalid / " +
      result.dropped_events + " dropped events)");
    document.getElementById("warnings").replaceChildren(...result.warnings.map(w => {
      const item = document.createElement("li"); item.textContent = "Warning: " + w; return item;
    }));
    setStatus("Done: " + file.name, false);
  } catch (err) {
    setStatus("Error: " + (err && err.message ? err.message : err), true);
  } finally {
    button.disabled = false;
  }
});
</script>
</body></html>
"""
