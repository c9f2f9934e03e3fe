/* transformer_nb docs: search when the site is opened from disk.
 *
 * Browsers refuse to start a Web Worker from a file:// page, and the theme's search runs in one.
 * On file:// only, this replaces `Worker` with a stand-in that runs the worker script in a hidden
 * same-origin iframe and passes messages both ways, so search works without a web server.
 * (Served over http(s) nothing changes.) Written for this project; no code is fetched from anywhere.
 */
(function () {
  if (location.protocol !== 'file:') return;

  class IFrameWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.onerror = null;
      this._queue = [];
      this._ready = false;
      const frame = document.createElement('iframe');
      frame.hidden = true;
      frame.setAttribute('aria-hidden', 'true');
      frame.title = 'search worker';
      document.body.appendChild(frame);
      this._frame = frame;
      const win = frame.contentWindow, doc = frame.contentDocument;
      // what the worker script sees as its global scope: postMessage answers us, importScripts loads in order
      win.postMessage = (data) => setTimeout(() => this._emit(new MessageEvent('message', { data })));
      win.importScripts = (...urls) => urls.reduce((p, src) => p.then(() => new Promise((ok, fail) => {
        const s = doc.createElement('script');
        s.src = new URL(src, url).href; s.onload = ok; s.onerror = fail;
        doc.head.appendChild(s);
      })), Promise.resolve());
      const script = doc.createElement('script');
      script.src = new URL(url, location.href).href;
      script.onload = () => { this._ready = true; this._queue.splice(0).forEach((d) => this.postMessage(d)); };
      script.onerror = () => this._emit(new ErrorEvent('error', { message: 'cannot load ' + url }));
      doc.head.appendChild(script);
    }
    _emit(event) {
      this.dispatchEvent(event);
      const handler = this['on' + event.type];
      if (typeof handler === 'function') handler.call(this, event);
    }
    postMessage(data) {
      if (!this._ready) { this._queue.push(data); return; }
      const win = this._frame.contentWindow;
      setTimeout(() => win.dispatchEvent(new win.MessageEvent('message', { data })));
    }
    terminate() { this._frame.remove(); }
  }

  window.IFrameWorker = IFrameWorker;
  window.Worker = IFrameWorker;
})();
