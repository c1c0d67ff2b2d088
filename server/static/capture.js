// The capture page's script: camera → JPEG frames over the session's WebSocket; the server decides, this only
// shows what it says. One frame in flight at a time (the next is sent when the server has answered the last),
// at most five a second.
"use strict";
(function () {
  const texts = JSON.parse(document.getElementById("texts").textContent);
  const $ = (id) => document.getElementById(id);
  const video = $("video"), instruction = $("instruction"), progress = $("progress"), outcome = $("outcome");
  const next = $("next"), start = $("start");
  const WIDTH = 640, HEIGHT = 480, MIN_INTERVAL_MS = 200, JPEG_QUALITY = 0.85;
  const canvas = document.createElement("canvas");
  canvas.width = WIDTH;
  canvas.height = HEIGHT;
  const drawing = canvas.getContext("2d");
  let socket = null, stream = null, lastSent = 0, finished = false;

  function say(element, text) { element.textContent = text || ""; }

  function finish(result, nextStep) {
    if (finished) return;
    finished = true;
    document.body.dataset.outcome = result;
    say(instruction, "");
    say(progress, "");
    say(outcome, texts[result] || texts.error);
    next.replaceChildren();
    const lines = [];
    if (result === "not_live") lines.push(texts.not_live_hint);
    if (nextStep === "try_again" || result === "unavailable" || result === "error" || result === "camera") {
      lines.push(texts.try_again);
    }
    if (result !== "match") lines.push(texts.use_code);
    for (const line of lines) {
      const p = document.createElement("p");
      p.textContent = line;
      next.appendChild(p);
    }
    if (stream) stream.getTracks().forEach((track) => track.stop());
    if (socket && socket.readyState === WebSocket.OPEN) socket.close();
  }

  function showStep(message) {
    document.body.dataset.step = String(message.step);
    say(instruction, texts["pose_" + message.pose]);
    say(progress, texts.step_of.replace("{step}", message.step + 1).replace("{steps}", message.steps));
    const wait = Math.max(0, lastSent + MIN_INTERVAL_MS - performance.now());
    setTimeout(sendFrame, wait);
  }

  function sendFrame() {
    if (finished || !socket || socket.readyState !== WebSocket.OPEN) return;
    drawing.drawImage(video, 0, 0, WIDTH, HEIGHT);  // the camera's own picture, not the mirrored preview
    canvas.toBlob((blob) => {
      if (!blob || finished) return;
      blob.arrayBuffer().then((bytes) => {
        if (finished || socket.readyState !== WebSocket.OPEN) return;
        lastSent = performance.now();
        socket.send(bytes);
      });
    }, "image/jpeg", JPEG_QUALITY);
  }

  async function begin() {
    start.disabled = true;
    say(instruction, texts.connecting);
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: WIDTH, height: HEIGHT }, audio: false });
      video.srcObject = stream;
      await video.play();
    } catch (error) {
      finish("camera", "try_again");
      return;
    }
    const url = new URL(window.location.pathname.replace(/\/$/, "") + "/ws", window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "step") showStep(message);
      else if (message.type === "outcome") finish(message.outcome, message.next);
    };
    socket.onclose = () => finish("error", "try_again");  // no-op once an outcome arrived
  }

  start.addEventListener("click", begin);
})();
