// The avatar as a floating bubble on any website:
//
//   <script src="https://AVATAR-SERVER/static/widget.js" data-position="bottom-right"
//           data-size="360" data-color="#3a6ff7" data-avatar="astronaut"
//           data-greeting="Hello! Ask me anything." async></script>
//
// A click opens a panel with the avatar (a frame of the server's /embed page, so the page's own
// scripts and the avatar never mix); the server lets only the sites in its --allowed-origins
// show it. Attributes: data-position (bottom-right | bottom-left), data-size (panel width, px),
// data-color (accent), data-background, data-avatar, data-greeting, data-key, data-mic ("1": the
// visitor can talk too), data-label (the bubble's text).
(function () {
  "use strict";
  const script = document.currentScript;
  if (!script) return;
  const server = new URL(script.src).origin;
  const data = script.dataset;
  const color = /^#[0-9a-fA-F]{3,8}$/.test(data.color || "") ? data.color : "#3a6ff7";
  const background = /^#[0-9a-fA-F]{3,8}$/.test(data.background || "") ? data.background : "#16181c";
  const width = Math.max(240, Math.min(720, parseInt(data.size || "360", 10) || 360));
  const side = data.position === "bottom-left" ? "left" : "right";

  const host = document.createElement("div");
  host.setAttribute("data-avatar-widget", "");
  const root = host.attachShadow({ mode: "open" });  // the site's CSS cannot reach in, ours cannot leak out
  root.innerHTML = `
    <style>
      .bubble { position: fixed; bottom: 20px; ${side}: 20px; z-index: 2147483000; border: 0; border-radius: 28px;
                padding: 14px 18px; background: ${color}; color: #fff; font: 600 15px system-ui, sans-serif;
                box-shadow: 0 6px 20px rgba(0,0,0,.3); cursor: pointer; }
      .panel { position: fixed; bottom: 84px; ${side}: 20px; z-index: 2147483000; width: min(${width}px, calc(100vw - 40px));
               height: min(${Math.round(width * 1.45)}px, calc(100vh - 110px)); border-radius: 14px; overflow: hidden;
               box-shadow: 0 10px 30px rgba(0,0,0,.35); background: ${background}; display: none; }
      .panel.open { display: block; }
      iframe { width: 100%; height: 100%; border: 0; }
    </style>
    <div class="panel" part="panel"></div>
    <button class="bubble" part="bubble"></button>`;
  const bubble = root.querySelector(".bubble");
  const panel = root.querySelector(".panel");
  bubble.textContent = data.label || "Talk to us";
  let frame = null;
  bubble.addEventListener("click", () => {
    if (!frame) {
      const query = new URLSearchParams();
      for (const [name, value] of [["avatar", data.avatar], ["greeting", data.greeting], ["key", data.key],
                                   ["mic", data.mic], ["accent", color], ["bg", background]]) {
        if (value) query.set(name, value);
      }
      frame = document.createElement("iframe");
      frame.src = `${server}/embed?${query}`;
      frame.allow = "microphone; autoplay";
      frame.title = "Avatar";
      panel.appendChild(frame);
    }
    panel.classList.toggle("open");
  });
  (document.body || document.documentElement).appendChild(host);
  window.avatarWidget = { host, open: () => bubble.click(), get frame() { return frame; } };
})();
