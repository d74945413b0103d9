// Falcon WebSocket client: one page that talks to the echo (/) and chat (/chat)
// endpoints of step02/step03, and explains what is wrong when step01 (plain
// HTTP, no websocket) is running instead. When a chat server says "resume" in
// its welcome (step05), the page also resumes after a reconnect and keeps what
// is typed while disconnected, so that nothing is lost and nothing shown twice.
// A server with a login (step06) answers /session: the page then shows who is
// logged in, a Log in link when nobody is, and a Log out button.
//
// Rule for this file: text that comes from the network is only ever shown
// through textContent, so a message can never become markup on this page.
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const urlInput = $('url');
  const connectBtn = $('connect');
  const disconnectBtn = $('disconnect');
  const statusEl = $('status');
  const countEl = $('count');
  const logEl = $('log');
  const messageInput = $('message');
  const accountEl = $('account');
  const loginLink = $('login');
  const logoutBtn = $('logout');

  const ENDPOINTS = { echo: '/', chat: '/chat' };
  const MAX_LOG_ENTRIES = 500;   // keep a long-running page light
  const PROBE_TIMEOUT_MS = 3000; // how long the "is anything there?" probe may take

  let socket = null;         // the current WebSocket, or null
  let userClosed = false;    // true once Disconnect was pressed: do not reconnect
  let attempt = 0;           // failed attempts since the last successful open
  let reconnectTimer = null;
  let mode = 'echo';         // endpoint of the current connection
  let myIds = new Set();     // our ids in the chat (one per connection), from each "welcome"
  let lastDiagnosis = '';    // so retries do not repeat the same log line

  // Resume (step05). All of it belongs to one chat server: resumeUrl.
  let resumeUrl = null;      // the chat URL the state below belongs to
  let resume = false;        // the server said "resume": it replays and drops resends
  let lastId = null;         // the newest event_id seen, sent back as ?last_id=
  let outbox = [];           // {msg_id, text} sent or typed, not yet acknowledged
  let welcomed = false;      // this connection's welcome came: the outbox has gone out
  let sentCount = 0;         // numbers our messages: msg_id = session + '-' + number
  // A random id per page, so that our msg_ids are nobody else's.
  const session = Array.from(crypto.getRandomValues(new Uint8Array(8)),
    (byte) => byte.toString(16).padStart(2, '0')).join('');

  // ---- Initial values: ?url=... and ?endpoint=chat override the defaults ----

  const params = new URLSearchParams(location.search);
  if (params.get('url')) {
    urlInput.value = params.get('url');
  } else if (location.protocol === 'http:' || location.protocol === 'https:') {
    // Served by the app itself: talk back to the same host and port.
    urlInput.value = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/';
  } else {
    urlInput.value = 'ws://localhost:8000/'; // opened from file://
  }
  if (params.get('endpoint') === 'chat') $('endpoint-chat').checked = true;

  // ---- Small helpers ----

  const chosenEndpoint = () => ($('endpoint-chat').checked ? 'chat' : 'echo');

  // The server URL with its path replaced by the endpoint; throws if invalid.
  function socketUrl(endpoint) {
    const url = new URL(urlInput.value.trim());
    if (url.protocol === 'http:') url.protocol = 'ws:';   // be forgiving
    if (url.protocol === 'https:') url.protocol = 'wss:';
    if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
      throw new Error('the Server URL must start with ws:// or wss://');
    }
    url.pathname = ENDPOINTS[endpoint];
    url.hash = '';
    return url.href;
  }

  // Stream ids are "milliseconds-sequence": compare the numbers, not the text.
  function isNewer(id, than) {
    const [a, b] = id.split('-').map(Number);
    const [c, d] = than.split('-').map(Number);
    return a > c || (a === c && b > d);
  }

  // A new server or endpoint: forget the last id and the unsent messages of the old one.
  function resumeStateFor(url) {
    if (url === resumeUrl) return;
    if (outbox.length) log('system', outbox.length + ' unsent message(s) dropped: new server.');
    resumeUrl = url;
    resume = false;
    lastId = null;
    outbox = [];
    myIds = new Set();
  }

  // Same address over plain HTTP, used to probe a server that refused the websocket.
  const httpUrlFor = (wsUrl) => wsUrl.replace(/^ws(s?):/, 'http$1:');

  const setStatus = (text) => { statusEl.textContent = text; };

  // kind is one of: sent, received, system, error (also the CSS class).
  function log(kind, text) {
    const li = document.createElement('li');
    li.className = kind;
    li.textContent = text;
    logEl.appendChild(li);
    while (logEl.childElementCount > MAX_LOG_ENTRIES) logEl.firstElementChild.remove();
    li.scrollIntoView({ block: 'nearest' });
  }

  function updateButtons() {
    connectBtn.disabled = socket !== null;
    disconnectBtn.disabled = socket === null && reconnectTimer === null;
  }

  // ---- Login (step06): only a page the server itself served can ask it ----

  // The server's http(s) origin when it is this page's own, else null.
  function ownOrigin(wsUrl) {
    const origin = new URL(httpUrlFor(wsUrl)).origin;
    return origin === location.origin ? origin : null;
  }

  // Ask the server who we are: 'user', 'login' (it wants one), or null (it has no login).
  async function checkSession(origin) {
    let body;
    try {
      const response = await fetch(origin + '/session', { cache: 'no-store' });
      if (response.status !== 200 && response.status !== 401) return null; // steps 02-05: 404
      body = await response.json();
    } catch (err) {
      return null;
    }
    const user = typeof body.user === 'string' ? body.user : null;
    accountEl.hidden = false;
    $('user').textContent = user ? 'Logged in as ' + user + '.' : 'Not logged in.';
    loginLink.href = origin + '/login';
    loginLink.hidden = user !== null;
    logoutBtn.hidden = user === null;
    return user ? 'user' : 'login';
  }

  // End the session on the server (which closes its sockets with 1008), then here.
  async function logout() {
    const origin = location.origin;
    try {
      await fetch(origin + '/logout', { method: 'POST' });
    } catch (err) {
      log('error', 'Log out failed: ' + err.message);
    }
    disconnect();
    checkSession(origin);
  }

  // ---- Connecting, closing and reconnecting ----

  function open() {
    let url;
    try {
      url = socketUrl(chosenEndpoint());
      mode = chosenEndpoint();
      resumeStateFor(url);
      welcomed = false;
      if (mode === 'chat' && resume && lastId) {
        const withLastId = new URL(url);
        withLastId.searchParams.set('last_id', lastId); // what we missed comes first
        url = withLastId.href;
      }
      socket = new WebSocket(url);
    } catch (err) {
      setStatus('Cannot connect: ' + err.message);
      log('error', 'Cannot connect: ' + err.message);
      socket = null;
      updateButtons();
      return;
    }
    const ws = socket;
    let opened = false;
    ws.binaryType = 'arraybuffer'; // so a binary message's size is byteLength
    setStatus('Connecting to ' + url + '…');
    updateButtons();

    ws.onopen = () => {
      opened = true;
      attempt = 0;
      lastDiagnosis = '';
      setStatus('Connected to ' + url + (mode === 'chat' ? ' (chat)' : ' (echo)'));
      log('system', 'Connected to ' + url);
    };

    ws.onmessage = (event) => {
      if (typeof event.data !== 'string') {
        log('received', '← [binary, ' + event.data.byteLength + ' bytes]');
      } else if (mode === 'chat') {
        handleChat(event.data);
      } else {
        log('received', '← ' + event.data);
      }
    };

    // The browser hides why a websocket failed; "close" always follows, so act there.
    ws.onclose = (event) => {
      if (ws !== socket) return; // an old socket we already gave up on
      socket = null;
      welcomed = false;
      countEl.textContent = '–';
      const closed = 'code ' + event.code + (event.reason ? ', reason: ' + event.reason : '');
      if (userClosed) {
        setStatus('Disconnected (' + closed + ')');
        log('system', 'Disconnected (' + closed + ')');
        updateButtons();
        return;
      }
      const delay = scheduleReconnect();
      const retry = ' Reconnecting in ' + delay / 1000 + ' s…';
      setStatus('Closed (' + closed + ').' + retry);
      if (opened) log('system', 'Connection closed (' + closed + ')');
      else probe(url, retry); // never opened: find out why
    };
  }

  function scheduleReconnect() {
    const delay = Math.min(500 * 2 ** attempt, 10000); // 0.5 s, 1 s, 2 s … 10 s
    attempt += 1;
    reconnectTimer = setTimeout(() => { reconnectTimer = null; open(); }, delay);
    updateButtons();
    return delay;
  }

  // A websocket that fails before "open" may mean no server at all, or an
  // HTTP-only server (step01). A no-cors fetch tells them apart: it resolves on
  // any HTTP answer (we cannot read it, and do not need to) and rejects if
  // nothing answers.
  async function probe(wsUrl, retry) {
    const httpUrl = httpUrlFor(wsUrl);
    const timer = reconnectTimer; // the retry this message belongs to
    const origin = ownOrigin(wsUrl);
    if (origin && await checkSession(origin) === 'login') {
      // Retrying cannot help until someone logs in.
      if (timer === reconnectTimer) {
        clearTimeout(reconnectTimer);
        reconnectTimer = null;
        updateButtons();
        setStatus('Not logged in: log in, then Connect.');
        log('error', 'This server wants a login: follow "Log in".');
      }
      return;
    }
    const abort = new AbortController();
    const timeout = setTimeout(() => abort.abort(), PROBE_TIMEOUT_MS);
    fetch(httpUrl, { mode: 'no-cors', cache: 'no-store', signal: abort.signal })
      .then(
        () => 'The server at ' + httpUrl + ' answers HTTP but does not accept WebSocket ' +
              'connections: step01 has no websocket (run step02 or step03), or the ' +
              'server refuses the origin of this page (ALLOWED_ORIGINS).',
        () => 'No server is answering at ' + httpUrl + '.')
      .then((diagnosis) => {
        clearTimeout(timeout);
        if (diagnosis !== lastDiagnosis) log('error', diagnosis);
        lastDiagnosis = diagnosis;
        // Only update the status if it still describes this attempt.
        if (timer !== null && timer === reconnectTimer) setStatus(diagnosis + retry);
      });
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (socket) return; // already connecting or connected
    userClosed = false;
    attempt = 0;
    lastDiagnosis = '';
    open();
  }

  function disconnect() {
    userClosed = true;
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (socket) {
      socket.close(1000); // "normal closure"; onclose reports the final code
      setStatus('Disconnecting…');
    } else {
      setStatus('Disconnected (reconnect cancelled).');
      log('system', 'Reconnect cancelled.');
    }
    updateButtons();
  }

  // ---- Chat: the server sends JSON objects with a "type" ----

  function handleChat(raw) {
    let msg = null;
    try { msg = JSON.parse(raw); } catch (err) { /* reported just below */ }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') {
      log('error', 'unreadable message from server: ' + raw);
      return;
    }
    if ('count' in msg) countEl.textContent = String(msg.count);
    // Keep the newest event id: a resume starts after it. Older ids are history.
    if (typeof msg.event_id === 'string' && (!lastId || isNewer(msg.event_id, lastId))) {
      lastId = msg.event_id;
    }
    const who = String(msg.id);
    switch (msg.type) {
      case 'welcome':
        myIds.add(who);
        log('system', 'You joined as ' + who + ' (' + msg.count + ' connected)');
        if (msg.resume === true) {
          resume = true;
          lastId = String(msg.last_id); // what follows is new after this point
          // What was not acknowledged goes again, in order: the server drops what it has.
          for (const message of outbox) socket.send(JSON.stringify(message));
          welcomed = true;
        } else if (resume) {
          // The same URL now serves a step without resume: start afresh.
          if (outbox.length) log('system', outbox.length + ' unsent message(s) dropped: ' +
                                           'this server does not resume.');
          resume = false;
          lastId = null;
          outbox = [];
        }
        break;
      case 'join':
        log('system', who + ' joined (' + msg.count + ' connected)');
        break;
      case 'leave':
        log('system', who + ' left (' + msg.count + ' connected)');
        break;
      case 'message':
        // Our own text comes back in the broadcast too; that is where we log it.
        if (myIds.has(who)) log('sent', who + ' (you): ' + String(msg.text));
        else log('received', who + ': ' + String(msg.text));
        break;
      case 'ack':
        outbox = outbox.filter((message) => message.msg_id !== msg.msg_id);
        break;
      case 'gap':
        log('error', 'Some messages are gone: the server keeps only its latest events. ' +
                     'The chat resumes at ' + String(msg.since) + '.');
        break;
      case 'error':
        // An error about one of our messages: sending it again would not help.
        if ('msg_id' in msg) outbox = outbox.filter((message) => message.msg_id !== msg.msg_id);
        log('error', 'Server error: ' + msg.error);
        break;
      default:
        log('error', 'unreadable message from server: ' + raw);
    }
  }

  // ---- Sending ----

  function send() {
    const text = messageInput.value;
    messageInput.focus(); // stay in the box, even after clicking Send
    if (text === '') return;
    if (mode === 'chat' && resume) {
      // Each message has its own id and stays in the outbox until the server acknowledges it.
      sentCount += 1;
      const message = { msg_id: session + '-' + sentCount, text: text };
      outbox.push(message);
      // Before the welcome, it waits: the welcome sends the whole outbox, in order.
      if (welcomed) socket.send(JSON.stringify(message));
      else if (!socket || socket.readyState !== WebSocket.OPEN) {
        log('system', 'Not connected: "' + text + '" will be sent on reconnecting.');
      }
      messageInput.value = '';
      return;
    }
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      log('system', 'Not connected: message not sent.'); // text stays in the box
      return;
    }
    // Both endpoints take plain text; in chat the server's broadcast is the log entry.
    socket.send(text);
    if (mode === 'echo') log('sent', '→ ' + text);
    messageInput.value = '';
  }

  // ---- Wiring ----

  $('connection').addEventListener('submit', (event) => {
    event.preventDefault(); // Connect button, or Enter in the Server field
    connect();
  });
  disconnectBtn.addEventListener('click', disconnect);
  logoutBtn.addEventListener('click', logout);
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault(); // Send button, or Enter in the Message field
    send();
  });
  updateButtons();
  if (location.protocol === 'http:' || location.protocol === 'https:') checkSession(location.origin);
})();
