// The Metatopia viewer: the region in 3-D (three.js), live from the region
// stream (docs/stream.md) or, when the node has none, by polling its state;
// walking, chat, building, scripts, people and status. Every failure a user
// causes or meets is shown in words on the page.
//
// Coordinates: the sim is z-up (x east, y north); three.js is y-up. A sim
// point (x, y, z) is drawn at (x, z, -y).
//
// Neighbour regions (`state.border`, world coordinates): their ground and
// outline are drawn beside ours, and their bodies near the border, which
// the node holds as ghosts, are drawn translucent in their place (world
// position minus our region's origin); hovering one names its region.
//
// `window.metatopia` exposes the viewer's state (the scene, the region as
// last applied, counters) for tests and for curious people.

import * as THREE from "three";
import { OrbitControls } from "three/addons/OrbitControls.js";

// The region this node hosts: from its status before the stream opens.
let REGION = 1;
const POLL_MS = 250;
const STATUS_MS = 2000;
const WALK_STEP_M = 0.5;
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const $ = id => document.getElementById(id);

const M = window.metatopia = {
  mode: "starting",     // "stream" | "poll" | "down"
  modeWhy: "",
  me: null,             // my player id
  tick: 0,
  stateHash: "",
  settings: null,
  tempAdmin: null,
  tempAdminRule: null,
  elements: new Map(),  // id -> element view
  players: new Map(),   // id -> player view
  chat: [],
  faults: [],           // my scripts' faults: {tick, element, error, suspended}
  errors: [],           // every error shown on the page, newest last
  latencies: [],        // ms from POST to its 200, newest last
  bytes: 0,             // bytes of region data received (stream frames, poll bodies)
  framesApplied: 0,
  framesDrawn: 0,
  fps: 0,
  status: null,
  meshes: new Map(),    // element id -> Object3D
  border: null,         // {origin, max, neighbours}: our box and the neighbours' (world), null without neighbours
  ghosts: new Map(),    // element id -> ghost view (neighbours' bodies near the border, world coordinates)
  ghostMeshes: new Map(), // element id -> Object3D of a ghost (or of a body just handed away)
  scene: null,
  camera: null,
  selected: null,
};

// ---------------------------------------------------------------- errors

function showError(msg) {
  const text = String(msg);
  M.errors.push(text);
  if (M.errors.length > 50) M.errors.shift();
  const p = document.createElement("p");
  p.textContent = text;
  $("err").append(p);
  while ($("err").children.length > 4) $("err").firstChild.remove();
  setTimeout(() => p.remove(), 12000);
}
window.addEventListener("error", e => showError("viewer error: " + e.message));
window.addEventListener("unhandledrejection", e => showError("viewer error: " + (e.reason && e.reason.message || e.reason)));

// ---------------------------------------------------------------- HTTP

/** POSTs an action as the node's local player; resolves to the receipt, rejects with the node's words. */
async function act(action) {
  if (!token) throw new Error("this page has no token: open the URL that `metatopia up` printed (it ends in #token=…)");
  const t0 = performance.now();
  let r;
  try {
    r = await fetch(`/api/regions/${REGION}/inputs`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
      body: JSON.stringify(action),
    });
  } catch (e) {
    throw new Error(`${action.do}: the node is unreachable (${e.message})`);
  }
  const body = await r.json().catch(() => ({ error: `answer ${r.status} is not JSON` }));
  if (r.status !== 200) throw new Error(`${action.do}: ${body.error || r.status}`);
  M.latencies.push(performance.now() - t0);
  if (M.latencies.length > 100) M.latencies.shift();
  return body;
}

const recentRefusals = [];

/** `act`, with a refusal shown on the page (and in `where`, if given) instead of thrown. */
async function tryAct(action, where) {
  try {
    const r = await act(action);
    if (where) { where.className = "mono ok"; where.textContent = `${action.do}: done at tick ${r.tick}`; }
    return r;
  } catch (e) {
    if (where) { where.className = "mono bad"; where.textContent = e.message; }
    showError(e.message);
    recentRefusals.push(e.message);
    if (recentRefusals.length > 8) recentRefusals.shift();
    return null;
  }
}

// ---------------------------------------------------------------- the region's state

const num = s => parseFloat(s);
const vec = v => ({ x: num(v.x), y: num(v.y), z: num(v.z) });

function replaceState(state) {
  M.tick = state.tick;
  M.stateHash = state.state_hash;
  M.settings = state.settings;
  M.tempAdmin = state.temp_admin;
  if (state.temp_admin_rule) M.tempAdminRule = state.temp_admin_rule;
  setBorder(state.border);
  const seen = new Set();
  for (const e of state.elements) { seen.add(e.id); upsertElement(e); }
  for (const id of [...M.elements.keys()]) if (!seen.has(id)) removeElement(id);
  const held = new Set();
  for (const g of (state.border && state.border.ghosts) || []) { held.add(g.id); upsertGhost(g); }
  for (const id of [...M.ghostMeshes.keys()]) if (!held.has(id)) removeGhost(id);
  M.players = new Map(state.players.map(p => [p.id, p]));
  M.chat = state.chat.slice();
  if (state.script_faults) {
    M.faults = state.script_faults.filter(f => f.owner === M.me)
      .map(f => ({ tick: f.tick, element: f.script, error: f.error, suspended: f.suspended }));
  }
  M.framesApplied++;
  ground();
  panelsDirty = true;
}

function applyTick(f) {
  M.tick = f.tick;
  M.stateHash = f.state_hash;
  M.tempAdmin = f.temp_admin;
  if (f.settings) { M.settings = f.settings; ground(); }
  if (f.temp_admin_rule) M.tempAdminRule = f.temp_admin_rule;
  // Ghosts first, our elements next, vanished ghosts last: a body handed
  // to us in this tick takes over its ghost's place in the same frame.
  for (const g of f.ghosts || []) upsertGhost(g);
  for (const m of f.ghosts_moved || []) moveGhost(m);
  for (const e of f.elements || []) upsertElement(e);
  for (const m of f.moved || []) moveElement(m);
  for (const id of f.removed || []) removeElement(id);
  for (const id of f.ghosts_gone || []) removeGhost(id);
  expireDeparted(f.tick);
  for (const p of f.players || []) M.players.set(p.id, p);
  if (f.chat && f.chat.length) {
    M.chat.push(...f.chat);
    const max = (M.settings && M.settings.chat_history_max) || 200;
    if (M.chat.length > max) M.chat.splice(0, M.chat.length - max);
  }
  for (const ev of f.events || []) {
    // A refusal this page already showed (its POST answered 422) is not
    // shown twice; one of another client of this player's (the CLI) is.
    if (ev.event === "rejected" && !recentRefusals.some(r => r.includes(ev.reason))) showError(`input ${ev.seq} refused: ${ev.reason}`);
    else if (ev.event === "script_fault") {
      M.faults.push({ tick: f.tick, element: ev.element, error: ev.error, suspended: ev.suspended });
      if (M.faults.length > 50) M.faults.shift();
    } else if (ev.event === "joined" || ev.event === "left") {
      const p = M.players.get(ev.player);
      M.chat.push({ tick: f.tick, from: "", name: null, text: `${p ? p.name : ev.player.slice(0, 8)} ${ev.event}`, sys: true });
    }
  }
  M.framesApplied++;
  panelsDirty = true;
}

function upsertElement(e) {
  M.elements.set(e.id, e);
  if (e.kind === "Region") return;
  drawElement(e);
}

/** A tick frame's short form for an element that only moved:
 * `[id, x, y, z]`, or `[id, x, y, z, vx, vy, vz, resting]` for a body. */
function moveElement(m) {
  const old = M.elements.get(m[0]);
  if (!old) {
    // Cannot happen after a snapshot; if it does, start over from a fresh one.
    showError(`stream: element ${m[0]} moved but was never sent; reconnecting for a fresh snapshot`);
    if (ws) ws.close(4000, "unknown element moved");
    return;
  }
  const e = { ...old, pos: { x: m[1], y: m[2], z: m[3] } };
  if (m.length === 8 && old.body) e.body = { ...old.body, vel: { x: m[4], y: m[5], z: m[6] }, resting: m[7] };
  upsertElement(e);
}

function removeElement(id) {
  const e = M.elements.get(id);
  M.elements.delete(id);
  const mesh = M.meshes.get(id);
  if (mesh) {
    removeMesh(mesh);
    M.meshes.delete(id);
    // A body gone into a neighbour's box was most likely handed over: its
    // ghost comes from the neighbour a tick later. Until then (at most
    // DEPART_TICKS) it stays drawn as a ghost where it was.
    const into = e && e.body && neighbourAt(mesh.position.x, -mesh.position.z);
    if (into) departGhost(e, mesh.position, into);
  }
  if (M.selected === id) select(null);
}

const me = () => M.me && M.players.get(M.me);
const myAvatar = () => { const p = me(); return p && p.avatar ? M.elements.get(p.avatar) : null; };
const isAdmin = () => { const p = me(); return !!p && (p.role === "Admin" || M.tempAdmin === M.me); };

// ---------------------------------------------------------------- the scene

const canvas = $("scene");
/** Whether WebGL runs on a software renderer (SwiftShader, llvmpipe): then antialiasing costs more than it gives. */
function softwareGl() {
  try {
    const g = document.createElement("canvas").getContext("webgl2") || document.createElement("canvas").getContext("webgl");
    if (!g) return false;
    const d = g.getExtension("WEBGL_debug_renderer_info");
    const name = String(d ? g.getParameter(d.UNMASKED_RENDERER_WEBGL) : g.getParameter(g.RENDERER));
    g.getExtension("WEBGL_lose_context")?.loseContext();
    return /swiftshader|llvmpipe|software/i.test(name);
  } catch (e) {
    return false;
  }
}
M.softwareGl = softwareGl();
let renderer;
try {
  renderer = new THREE.WebGLRenderer({ canvas, antialias: !M.softwareGl, powerPreference: "high-performance" });
} catch (e) {
  renderer = null;
  M.noWebGl = "this browser cannot draw 3-D (WebGL is off or unsupported: " + e.message + "); the map, chat and panels still work";
}
renderer?.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x9cc4e4);
scene.fog = new THREE.Fog(0x9cc4e4, 150, 500);
const camera = new THREE.PerspectiveCamera(55, 1, 0.1, 2000);
const controls = new OrbitControls(camera, canvas);
controls.target.set(128, 1, -128);
camera.position.set(128, 8, -114);
controls.maxPolarAngle = Math.PI * 0.49;
controls.enableDamping = false;
scene.add(new THREE.HemisphereLight(0xddeeff, 0x445533, 1.6));
const sun = new THREE.DirectionalLight(0xffffff, 1.6);
sun.position.set(60, 120, 40);
scene.add(sun);
M.scene = scene;
M.camera = camera;
M.controls = controls;
M.renderer = renderer;

let groundMesh = null, gridMesh = null, groundSize = "";
function ground() {
  if (!M.settings) return;
  const sx = num(M.settings.size.x), sy = num(M.settings.size.y);
  const key = sx + "x" + sy;
  if (key === groundSize) return;
  groundSize = key;
  if (groundMesh) scene.remove(groundMesh, gridMesh);
  groundMesh = new THREE.Mesh(new THREE.PlaneGeometry(sx, sy), new THREE.MeshLambertMaterial({ color: 0x5f7f4a }));
  groundMesh.rotation.x = -Math.PI / 2;
  groundMesh.position.set(sx / 2, 0, -sy / 2);
  groundMesh.userData.ground = true;
  gridMesh = new THREE.GridHelper(Math.max(sx, sy), Math.max(sx, sy) / 8, 0x46603a, 0x52703f);
  gridMesh.position.set(sx / 2, 0.01, -sy / 2);
  scene.add(groundMesh, gridMesh);
}

const materials = new Map();
/** A shared material; `ghost`: translucent, for a neighbour's body. */
function material(color, ghost = false) {
  const key = color + (ghost ? "g" : "");
  if (!materials.has(key)) {
    materials.set(key, ghost
      ? new THREE.MeshLambertMaterial({ color, transparent: true, opacity: 0.4, depthWrite: false })
      : new THREE.MeshLambertMaterial({ color }));
  }
  return materials.get(key);
}
const unitBox = new THREE.BoxGeometry(1, 1, 1);
const unitBall = new THREE.SphereGeometry(1, 14, 10);
const avatarBody = new THREE.CapsuleGeometry(0.3, 0.9, 3, 10);
const avatarHead = new THREE.SphereGeometry(0.22, 10, 8);

function hue(id) {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return (h % 360) / 360;
}

function label(text, color) {
  const c = document.createElement("canvas");
  const g = c.getContext("2d");
  g.font = "bold 28px system-ui, sans-serif";
  const w = Math.ceil(g.measureText(text).width) + 16;
  c.width = w; c.height = 40;
  g.font = "bold 28px system-ui, sans-serif";
  g.fillStyle = "rgba(0,0,0,0.55)"; g.fillRect(0, 0, w, 40);
  g.fillStyle = color; g.fillText(text, 8, 29);
  const tex = new THREE.CanvasTexture(c);
  tex.colorSpace = THREE.SRGBColorSpace;
  // Constant size on screen: readable far away, not huge up close.
  const s = new THREE.Sprite(new THREE.SpriteMaterial({ map: tex, depthTest: false, sizeAttenuation: false }));
  s.scale.set(0.035 * w / 40, 0.035, 1);
  s.renderOrder = 10;
  return s;
}

/** What an element looks like, as a key: a mesh is rebuilt when it changes. */
function looks(e) {
  const shape = e.body ? JSON.stringify(e.body.spec.shape) : "";
  return [e.kind, e.name, e.owner === M.me, !!e.script, shape].join("|");
}

/**
 * An element's look: a proxy (an Object3D outside the scene) holding its
 * position, and the parts drawn for it, each an instance in a shared
 * InstancedMesh (one draw call per shape and colour, whatever the number
 * of elements). Avatars also get a name label (a sprite in the scene).
 */
function build(e) {
  const proxy = new THREE.Object3D();
  const part = (shape, geometry, color, scale, offset = new THREE.Vector3(), tint = null) =>
    ({ shape, geometry, color, scale, offset, tint });
  if (e.kind === "Avatar") {
    const mine = e.owner === M.me;
    const tint = new THREE.Color().setHSL(hue(e.owner || e.id), 0.6, mine ? 0.55 : 0.45);
    proxy.userData.parts = [
      part("avatar", avatarBody, 0xffffff, new THREE.Vector3(1, 1, 1), new THREE.Vector3(0, 0.75, 0), tint),
      part("head", avatarHead, 0xf0d0b0, new THREE.Vector3(1, 1, 1), new THREE.Vector3(0, 1.62, 0)),
    ];
    proxy.userData.extent = new THREE.Vector3(0.7, 1.9, 0.7);
    proxy.userData.centre = new THREE.Vector3(0, 0.95, 0);
    proxy.userData.label = label(e.name + (mine ? " (you)" : ""), mine ? "#ffe680" : "#ffffff");
    return proxy;
  }
  if (e.body) {
    const sh = e.body.spec.shape;
    if (sh.Ball) {
      const r = num(sh.Ball.radius);
      proxy.userData.parts = [part("ball", unitBall, 0xe08a3c, new THREE.Vector3(r, r, r))];
      proxy.userData.extent = new THREE.Vector3(2 * r, 2 * r, 2 * r);
      return proxy;
    }
    if (sh.Cuboid) {
      const h = vec(sh.Cuboid.half);
      const size = new THREE.Vector3(2 * h.x, 2 * h.z, 2 * h.y);
      proxy.userData.parts = [part("box", unitBox, 0xb07a4a, size)];
      proxy.userData.extent = size;
      return proxy;
    }
  }
  const size = e.kind === "Part" ? 0.5 : 1;
  const color = e.script ? 0x3cb0a0 : e.owner === M.me ? 0x7a8fd0 : 0x9a9a9a;
  const scale = new THREE.Vector3(size, size, size);
  proxy.userData.parts = [part("box", unitBox, color, scale)];
  proxy.userData.extent = scale;
  proxy.userData.lift = size / 2;
  return proxy;
}

// Instance pools: one InstancedMesh per shape and colour, grown by
// doubling. A slot is one instance: {proxy, part, index}.
const pools = new Map();
const tmpMatrix = new THREE.Matrix4(), tmpVec = new THREE.Vector3(), noRotation = new THREE.Quaternion();
const LABEL_HEIGHT_M = 2.25;

function poolOf(part) {
  const key = part.shape + "|" + part.color + (part.ghost ? "|ghost" : "");
  let p = pools.get(key);
  if (!p) {
    p = { geometry: part.geometry, material: material(part.color, part.ghost), slots: [], mesh: null, tinted: !!part.tint };
    growPool(p, 64);
    pools.set(key, p);
  }
  return p;
}

function growPool(p, capacity) {
  const m = new THREE.InstancedMesh(p.geometry, p.material, capacity);
  m.instanceMatrix.setUsage(THREE.DynamicDrawUsage);
  // Instances move: no stale bounding sphere may cull them.
  m.frustumCulled = false;
  m.userData.pool = p;
  if (p.mesh) {
    m.instanceMatrix.array.set(p.mesh.instanceMatrix.array.subarray(0, p.slots.length * 16));
    scene.remove(p.mesh);
    p.mesh.dispose();
  }
  m.count = p.slots.length;
  p.mesh = m;
  scene.add(m);
  if (p.tinted && p.slots.length) { for (const slot of p.slots) m.setColorAt(slot.index, slot.part.tint); m.instanceColor.needsUpdate = true; }
}

function writeSlot(slot) {
  const p = slot.pool;
  tmpVec.copy(slot.proxy.position).add(slot.part.offset);
  tmpMatrix.compose(tmpVec, noRotation, slot.part.scale);
  p.mesh.setMatrixAt(slot.index, tmpMatrix);
  p.mesh.instanceMatrix.needsUpdate = true;
  p.mesh.boundingSphere = null; // recomputed when picking
}

/** Draws a proxy where it is now: its instances and its label. */
function writeInstance(proxy) {
  for (const slot of proxy.userData.slots) writeSlot(slot);
  const lab = proxy.userData.label;
  if (lab) lab.position.copy(proxy.position).y += LABEL_HEIGHT_M;
}

function poolAdd(proxy) {
  proxy.userData.slots = proxy.userData.parts.map(part => {
    const p = poolOf(part);
    if (p.slots.length === p.mesh.instanceMatrix.count) growPool(p, p.slots.length * 2);
    const slot = { proxy, part, pool: p, index: p.slots.length };
    p.slots.push(slot);
    p.mesh.count = p.slots.length;
    if (part.tint) { p.mesh.setColorAt(slot.index, part.tint); p.mesh.instanceColor.needsUpdate = true; }
    return slot;
  });
  if (proxy.userData.label) scene.add(proxy.userData.label);
  writeInstance(proxy);
}

function poolRemove(proxy) {
  for (const slot of proxy.userData.slots) {
    const p = slot.pool, i = slot.index;
    const last = p.slots.pop();
    if (last !== slot) {
      p.slots[i] = last;
      last.index = i;
      writeSlot(last);
      if (last.part.tint) { p.mesh.setColorAt(i, last.part.tint); p.mesh.instanceColor.needsUpdate = true; }
    }
    p.mesh.count = p.slots.length;
    p.mesh.boundingSphere = null;
  }
  proxy.userData.slots = [];
  const lab = proxy.userData.label;
  if (lab) { scene.remove(lab); lab.material.map.dispose(); lab.material.dispose(); }
}

const moving = new Set();
const labelled = new Set();
const LABEL_RANGE_M = 60;
let expectedStepMs = 50, lastApplyAt = 0;

function drawElement(e) {
  let mesh = M.meshes.get(e.id);
  const key = looks(e);
  if (mesh && mesh.userData.looks !== key) {
    const at = mesh.position.clone();
    removeMesh(mesh);
    mesh = null;
    M.meshes.delete(e.id);
    mesh = build(e);
    mesh.position.copy(at);
    addMesh(e, mesh, key);
  }
  const p = vec(e.pos);
  const lift = mesh ? mesh.userData.lift || 0 : 0;
  const to = new THREE.Vector3(p.x, p.z + lift, -p.y);
  if (!mesh) {
    mesh = build(e);
    // A body handed to us from a neighbour starts where its ghost is drawn
    // (and the ghost goes in the same frame): no gap, no jump.
    const was = takeGhostPlace(e.id);
    mesh.position.copy(was || new THREE.Vector3(p.x, p.z + (mesh.userData.lift || 0), -p.y));
    addMesh(e, mesh, key);
    if (!was) return;
  }
  // Interpolate from where it is drawn now to the new position over about
  // one update interval (one tick when streaming).
  glide(mesh, to);
}

// ---------------------------------------------------------------- neighbours and their ghosts

// Two seconds: the neighbour's ghost of a body handed to it comes a tick
// after the switch when its border sets are in time, but a loaded machine
// drops some sets (session 13: about 8 % missed, two single-member groups
// and six browsers on two cores), and 10 ticks left gaps.
const DEPART_TICKS = 40;
const departed = new Map(); // element id -> tick after which its placeholder goes
const neighbourGrounds = [];

/** A world point (sim coordinates, strings) in our drawing frame: relative to our region's origin. */
function local(v) {
  const o = M.border ? vec(M.border.origin) : { x: 0, y: 0, z: 0 };
  const p = vec(v);
  return { x: p.x - o.x, y: p.y - o.y, z: p.z - o.z };
}

/** The neighbour whose box holds the local point (x, y), or null. */
function neighbourAt(x, y) {
  for (const n of (M.border && M.border.neighbours) || []) {
    const a = local(n.min), b = local(n.max);
    if (x >= a.x - 1 && x <= b.x + 1 && y >= a.y - 1 && y <= b.y + 1) return n.region;
  }
  return null;
}

/** Our box and the neighbours' (`state.border` without its ghosts); draws their ground and names. */
function setBorder(b) {
  const next = b ? { origin: b.origin, max: b.max, neighbours: b.neighbours } : null;
  if (JSON.stringify(next) === JSON.stringify(M.border)) return;
  M.border = next;
  for (const m of neighbourGrounds.splice(0)) scene.remove(m);
  for (const n of (next && next.neighbours) || []) {
    const a = local(n.min), z = local(n.max);
    const w = z.x - a.x, d = z.y - a.y;
    const g = new THREE.Mesh(new THREE.PlaneGeometry(w, d), new THREE.MeshLambertMaterial({ color: 0x566f47 }));
    g.rotation.x = -Math.PI / 2;
    g.position.set(a.x + w / 2, -0.02, -(a.y + d / 2));
    const edge = new THREE.LineSegments(new THREE.EdgesGeometry(new THREE.BoxGeometry(w, 0.05, d)), new THREE.LineBasicMaterial({ color: 0xc8d8a0 }));
    edge.position.set(a.x + w / 2, 0.03, -(a.y + d / 2));
    const name = label(`region ${n.region}`, "#c8d8a0");
    name.position.set(a.x + w / 2, 3, -(a.y + d / 2));
    scene.add(g, edge, name);
    neighbourGrounds.push(g, edge, name);
  }
}

/** What a ghost looks like: its body's shape, translucent. */
function ghostLooks(g) {
  return "ghost|" + JSON.stringify(g.spec.shape);
}

/** Draws a new ghost of `id` (its `shape`, owned by `region`) at `at` (drawing frame). */
function placeGhost(id, shape, region, at) {
  const mesh = buildGhost(shape, region, id);
  mesh.position.copy(at);
  mesh.userData.looks = "ghost|" + JSON.stringify(shape);
  mesh.userData.to = at.clone();
  M.ghostMeshes.set(id, mesh);
  poolAdd(mesh);
  return mesh;
}

function buildGhost(shape, region, id) {
  const proxy = new THREE.Object3D();
  const part = (name, geometry, color, scale) => ({ shape: name, geometry, color, scale, offset: new THREE.Vector3(), tint: null, ghost: true });
  if (shape.Cuboid) {
    const h = vec(shape.Cuboid.half);
    const size = new THREE.Vector3(2 * h.x, 2 * h.z, 2 * h.y);
    proxy.userData.parts = [part("box", unitBox, 0xb07a4a, size)];
    proxy.userData.extent = size;
  } else {
    const r = shape.Ball ? num(shape.Ball.radius) : 0.5;
    proxy.userData.parts = [part("ball", unitBall, 0xe08a3c, new THREE.Vector3(r, r, r))];
    proxy.userData.extent = new THREE.Vector3(2 * r, 2 * r, 2 * r);
  }
  proxy.userData.ghost = region;
  proxy.userData.id = id;
  return proxy;
}

/** A ghost from the node (whole view): drawn, or moved, or rebuilt if its shape changed. */
function upsertGhost(g) {
  M.ghosts.set(g.id, g);
  departed.delete(g.id);
  const p = local(g.pos);
  const to = new THREE.Vector3(p.x, p.z, -p.y);
  const key = ghostLooks(g);
  let mesh = M.ghostMeshes.get(g.id);
  if (mesh && mesh.userData.looks !== key) {
    const at = mesh.position.clone();
    poolRemove(mesh); moving.delete(mesh);
    mesh = placeGhost(g.id, g.spec.shape, g.region, at);
  }
  if (!mesh) {
    placeGhost(g.id, g.spec.shape, g.region, to);
    return;
  }
  mesh.userData.ghost = g.region;
  glide(mesh, to);
}

/** A tick frame's short form for a ghost that only moved: `[id, x, y, z, vx, vy, vz]` (world). */
function moveGhost(m) {
  const old = M.ghosts.get(m[0]);
  if (!old) {
    showError(`stream: ghost ${m[0]} moved but was never sent; reconnecting for a fresh snapshot`);
    if (ws) ws.close(4000, "unknown ghost moved");
    return;
  }
  upsertGhost({ ...old, pos: { x: m[1], y: m[2], z: m[3] }, vel: { x: m[4], y: m[5], z: m[6] } });
}

function removeGhost(id) {
  M.ghosts.delete(id);
  departed.delete(id);
  const mesh = M.ghostMeshes.get(id);
  if (!mesh) return;
  poolRemove(mesh);
  moving.delete(mesh);
  M.ghostMeshes.delete(id);
}

/** Keeps a body handed away drawn as a ghost where it was until the neighbour's ghost of it comes. */
function departGhost(e, at, region) {
  if (M.ghostMeshes.has(e.id)) return;
  placeGhost(e.id, e.body.spec.shape, region, at);
  departed.set(e.id, M.tick + DEPART_TICKS);
}

/** Placeholders of bodies handed away whose ghost never came go after DEPART_TICKS. */
function expireDeparted(tick) {
  for (const [id, until] of departed) if (tick > until && !M.ghosts.has(id)) removeGhost(id);
}

/** Where the ghost of `id` is drawn, removing it (its body is ours now), or null. */
function takeGhostPlace(id) {
  const mesh = M.ghostMeshes.get(id);
  if (!mesh) return null;
  const at = mesh.position.clone();
  removeGhost(id);
  return at;
}

/** Interpolates a drawn proxy from where it is to `to` over one update interval. */
function glide(mesh, to) {
  if (mesh.userData.to && mesh.userData.to.equals(to)) return;
  mesh.userData.from = mesh.position.clone();
  mesh.userData.to = to;
  mesh.userData.t0 = performance.now();
  moving.add(mesh);
}

function addMesh(e, mesh, key) {
  mesh.userData.id = e.id;
  mesh.userData.looks = key;
  mesh.userData.to = mesh.position.clone();
  M.meshes.set(e.id, mesh);
  poolAdd(mesh);
  if (mesh.userData.label) labelled.add(mesh);
}

function removeMesh(mesh) {
  poolRemove(mesh);
  moving.delete(mesh);
  labelled.delete(mesh);
}

function animate(now) {
  for (const mesh of moving) {
    const a = Math.min(1, (now - mesh.userData.t0) / expectedStepMs);
    mesh.position.lerpVectors(mesh.userData.from, mesh.userData.to, a);
    writeInstance(mesh);
    if (a >= 1) moving.delete(mesh);
  }
  const av = myAvatar();
  const avMesh = av && M.meshes.get(av.id);
  if (avMesh && $("follow").checked) {
    const want = avMesh.position.clone().add(new THREE.Vector3(0, 1, 0));
    const delta = want.sub(controls.target);
    controls.target.add(delta);
    camera.position.add(delta);
  }
  // Name labels of avatars near the camera only (readable, and cheaper).
  for (const m of labelled) m.userData.label.visible = m.position.distanceTo(camera.position) < LABEL_RANGE_M;
  if (M.selected && selBox.visible) {
    const sm = M.meshes.get(M.selected);
    if (sm) selBox.box.setFromCenterAndSize(tmpVec.copy(sm.position).add(sm.userData.centre || new THREE.Vector3()), sm.userData.extent);
  }
  controls.update();
  renderer?.render(scene, camera);
}

const selBox = new THREE.Box3Helper(new THREE.Box3(), 0xffee55);
selBox.visible = false;
scene.add(selBox);

// Dynamic resolution: below 30 fps the scene is drawn with fewer pixels
// (down to a quarter), above 50 fps with more again (up to the screen's).
const pixelRatioMax = Math.min(window.devicePixelRatio || 1, 2);
M.renderScale = 1;
function adaptResolution() {
  if (!renderer) return;
  const before = M.renderScale;
  if (M.fps < 30 && M.renderScale > 0.5) M.renderScale = Math.max(0.5, M.renderScale - 0.125);
  else if (M.fps > 50 && M.renderScale < 1) M.renderScale = Math.min(1, M.renderScale + 0.125);
  if (M.renderScale !== before) {
    renderer.setPixelRatio(pixelRatioMax * M.renderScale);
    renderer.setSize(canvas.clientWidth, canvas.clientHeight, false);
  }
}

function resize() {
  if (!renderer) return;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.floor(w * renderer.getPixelRatio()) || canvas.height !== Math.floor(h * renderer.getPixelRatio())) {
    renderer.setSize(w, h, false);
    camera.aspect = w / Math.max(1, h);
    camera.updateProjectionMatrix();
  }
}

let frames = 0, fpsAt = performance.now(), panelsDirty = false, panelsAt = 0;
const PANELS_MS = 200;
function loop(now) {
  resize();
  animate(now);
  M.framesDrawn++;
  // The side panels follow the region at most every PANELS_MS (the DOM is
  // slower than the scene); the scene follows every frame.
  if (panelsDirty && now - panelsAt >= PANELS_MS) {
    panelsDirty = false; panelsAt = now;
    renderPanels();
  }
  frames++;
  if (now - fpsAt >= 1000) {
    M.fps = Math.round(frames * 1000 / (now - fpsAt));
    frames = 0; fpsAt = now;
    adaptResolution();
  }
  requestAnimationFrame(loop);
}
requestAnimationFrame(loop);

/** Where an element is drawn on the screen (CSS pixels), and whether it is in front of the camera: for tests. */
M.screenPos = (id, up = 1) => {
  const mesh = M.meshes.get(id) || M.ghostMeshes.get(id);
  if (!mesh) return null;
  scene.updateMatrixWorld();
  camera.updateMatrixWorld();
  const v = mesh.position.clone().add(new THREE.Vector3(0, up, 0)).project(camera);
  return { x: (v.x + 1) / 2 * canvas.clientWidth, y: (1 - v.y) / 2 * canvas.clientHeight, visible: v.z < 1 && Math.abs(v.x) <= 1 && Math.abs(v.y) <= 1 };
};

// ---------------------------------------------------------------- picking

const ray = new THREE.Raycaster();
function pick(clientX, clientY) {
  const r = canvas.getBoundingClientRect();
  const ndc = new THREE.Vector2((clientX - r.left) / r.width * 2 - 1, -(clientY - r.top) / r.height * 2 + 1);
  // Matrices as of now, not of the last frame (the camera may have moved since).
  scene.updateMatrixWorld();
  camera.updateMatrixWorld();
  ray.setFromCamera(ndc, camera);
  const hit = ray.intersectObjects([...pools.values()].map(p => p.mesh), false)[0];
  if (hit) {
    const proxy = hit.object.userData.pool.slots[hit.instanceId].proxy;
    return proxy.userData.ghost ? { ghost: proxy.userData.id } : { element: proxy.userData.id };
  }
  if (groundMesh) {
    const g = ray.intersectObject(groundMesh)[0];
    if (g) return { ground: { x: g.point.x, y: -g.point.z } };
  }
  return null;
}

M.pick = pick;

/** What the pointer at (clientX, clientY) is over, in words, for the canvas's tooltip ("" if nothing to say). */
function hoverText(clientX, clientY) {
  const hit = pick(clientX, clientY);
  if (hit && hit.ghost) {
    const mesh = M.ghostMeshes.get(hit.ghost);
    const g = M.ghosts.get(hit.ghost);
    const shape = g && g.spec.shape.Cuboid ? "box" : "ball";
    return `${shape} ${hit.ghost}, region ${mesh.userData.ghost}'s (a ghost: region ${mesh.userData.ghost} simulates it)`;
  }
  if (hit && hit.element) { const e = M.elements.get(hit.element); return e ? `${e.name} (${e.id})` : ""; }
  return "";
}
M.hoverText = hoverText;
let hoverAt = 0;
canvas.addEventListener("pointermove", e => {
  const now = performance.now();
  if (now - hoverAt < 150 || e.buttons) return;
  hoverAt = now;
  canvas.title = hoverText(e.clientX, e.clientY);
});
let downAt = null;
canvas.addEventListener("pointerdown", e => { downAt = { x: e.clientX, y: e.clientY }; });
canvas.addEventListener("pointerup", e => {
  if (!downAt || Math.hypot(e.clientX - downAt.x, e.clientY - downAt.y) > 5 || e.button !== 0) return;
  downAt = null;
  const hit = pick(e.clientX, e.clientY);
  if (!hit || hit.ghost) return;
  if (hit.element) {
    select(hit.element);
    const el = M.elements.get(hit.element);
    if (!e.shiftKey && el && el.kind !== "Avatar") tryAct({ do: "touch", element: hit.element });
  } else if (hit.ground) {
    goTo(hit.ground);
  }
});

// ---------------------------------------------------------------- walking

const held = new Set();
let goal = null, walking = false;
const KEYS = { w: [0, 1], arrowup: [0, 1], s: [0, -1], arrowdown: [0, -1], a: [-1, 0], arrowleft: [-1, 0], d: [1, 0], arrowright: [1, 0] };

function typing(e) {
  const t = e.target;
  return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
}
window.addEventListener("keydown", e => {
  const k = e.key.toLowerCase();
  if (!KEYS[k] || typing(e)) return;
  e.preventDefault();
  held.add(k);
  goal = null;
  walk();
});
window.addEventListener("keyup", e => held.delete(e.key.toLowerCase()));
window.addEventListener("blur", () => held.clear());

/** The camera's forward and right directions on the ground, in sim coordinates. */
function cameraAxes() {
  const d = new THREE.Vector3();
  camera.getWorldDirection(d);
  let fx = d.x, fy = -d.z;
  const n = Math.hypot(fx, fy) || 1;
  fx /= n; fy /= n;
  return { fwd: [fx, fy], right: [fy, -fx] };
}

function clampToRegion(x, y) {
  const sx = M.settings ? num(M.settings.size.x) : 256, sy = M.settings ? num(M.settings.size.y) : 256;
  return [Math.min(Math.max(x, 0), sx), Math.min(Math.max(y, 0), sy)];
}

function goTo(p) {
  goal = p;
  walk();
}

/** One move in flight at a time: the next step leaves when the last one committed. */
async function walk() {
  if (walking) return;
  const av0 = myAvatar();
  if (!av0) { showError(token ? "join first (the bar above the tabs), then walk" : "this page has no token: open the URL `metatopia up` printed"); held.clear(); goal = null; return; }
  walking = true;
  try {
    let at = vec(av0.pos);
    while (held.size || goal) {
      let nx, ny;
      if (held.size) {
        const { fwd, right } = cameraAxes();
        let dx = 0, dy = 0;
        for (const k of held) { const [r, f] = KEYS[k]; dx += f * fwd[0] + r * right[0]; dy += f * fwd[1] + r * right[1]; }
        const n = Math.hypot(dx, dy);
        if (n < 1e-6) break;
        nx = at.x + dx / n * WALK_STEP_M; ny = at.y + dy / n * WALK_STEP_M;
      } else {
        // Going somewhere: twice the walking step, the last one exact.
        const dx = goal.x - at.x, dy = goal.y - at.y, n = Math.hypot(dx, dy), step = 2 * WALK_STEP_M;
        if (n <= step) { nx = goal.x; ny = goal.y; goal = null; }
        else { nx = at.x + dx / n * step; ny = at.y + dy / n * step; }
      }
      [nx, ny] = clampToRegion(nx, ny);
      const r = await tryAct({ do: "move", element: "me", to: `${nx.toFixed(3)},${ny.toFixed(3)},${at.z.toFixed(3)}` });
      if (!r) { goal = null; held.clear(); break; }
      at = { x: nx, y: ny, z: at.z };
    }
  } finally {
    walking = false;
  }
}

// ---------------------------------------------------------------- the overview map

const map = $("map");
function drawMap() {
  if (!M.settings) return;
  const w = map.clientWidth, h = map.clientHeight;
  map.width = w; map.height = h;
  const g = map.getContext("2d");
  const sx = num(M.settings.size.x), sy = num(M.settings.size.y);
  // The map spans our region and its neighbours (our frame: our origin at 0, 0).
  const boxes = ((M.border && M.border.neighbours) || []).map(n => ({ region: n.region, a: local(n.min), b: local(n.max) }));
  let x0 = 0, y0 = 0, x1 = sx, y1 = sy;
  for (const n of boxes) { x0 = Math.min(x0, n.a.x); y0 = Math.min(y0, n.a.y); x1 = Math.max(x1, n.b.x); y1 = Math.max(y1, n.b.y); }
  const k = Math.min(w / (x1 - x0), h / (y1 - y0)) * 0.94;
  const ox = (w - (x1 - x0) * k) / 2 - x0 * k, oy = (h - (y1 - y0) * k) / 2 - (sy - y1) * k;
  g.font = "10px system-ui, sans-serif";
  for (const n of boxes) {
    g.setLineDash([4, 3]); g.strokeStyle = "#8a9a6a";
    g.strokeRect(ox + n.a.x * k, oy + (sy - n.b.y) * k, (n.b.x - n.a.x) * k, (n.b.y - n.a.y) * k);
    g.setLineDash([]); g.fillStyle = "#8a9a6a";
    g.fillText(`region ${n.region}`, ox + n.a.x * k + 4, oy + (sy - n.b.y) * k + 12);
  }
  g.strokeStyle = "#46603a"; g.strokeRect(ox, oy, sx * k, sy * k);
  g.fillStyle = "rgba(224,138,60,0.45)";
  for (const mesh of M.ghostMeshes.values()) g.fillRect(ox + mesh.position.x * k - 1.5, oy + (sy + mesh.position.z) * k - 1.5, 3, 3);
  const av = myAvatar();
  for (const e of M.elements.values()) {
    if (e.kind === "Region") continue;
    const mesh = M.meshes.get(e.id);
    const x = mesh ? mesh.position.x : num(e.pos.x), y = mesh ? -mesh.position.z : num(e.pos.y);
    g.fillStyle = e.kind === "Avatar" ? (av && e.id === av.id ? "#ffe680" : "#8cf") : e.body ? "#e08a3c" : "#aaa";
    const r = e.kind === "Avatar" ? 3 : 1.5;
    g.fillRect(ox + x * k - r, oy + (sy - y) * k - r, 2 * r, 2 * r);
  }
  const t = controls.target;
  g.strokeStyle = "#fff"; g.strokeRect(ox + t.x * k - 4, oy + (sy + t.z) * k - 4, 8, 8);
  map.dataset.k = JSON.stringify({ k, ox, oy, sy });
}
setInterval(drawMap, 200);
map.addEventListener("click", e => {
  if (!map.dataset.k) return;
  const { k, ox, oy, sy } = JSON.parse(map.dataset.k);
  const r = map.getBoundingClientRect();
  goTo({ x: (e.clientX - r.left - ox) / k, y: sy - (e.clientY - r.top - oy) / k });
});

// ---------------------------------------------------------------- panels

for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => {
    for (const o of document.querySelectorAll("#tabs button")) o.classList.toggle("on", o === b);
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("on", t.id === "tab-" + b.dataset.tab);
  });
}

const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const nameOf = id => { const p = M.players.get(id); return p ? p.name : id ? id.slice(0, 8) + "…" : "nobody"; };

let chatShown = -1, chatTickShown = -1;
function renderPanels() {
  if (!M.settings) return;
  document.title = `${M.settings.name} · Metatopia`;
  $("title").textContent = M.settings.name;
  document.body.dataset.tick = M.tick;
  const mine = me();
  $("joinbar").hidden = !token || (mine && mine.online);
  document.body.dataset.joined = !!(mine && mine.online);
  const av = myAvatar();
  if (av) document.body.dataset.avatar = av.id; else delete document.body.dataset.avatar;
  document.body.dataset.avatars = [...M.elements.values()].filter(e => e.kind === "Avatar").length;

  // Chat: redrawn when it changed.
  const lastTick = M.chat.length ? M.chat[M.chat.length - 1].tick : -1;
  if (M.chat.length !== chatShown || lastTick !== chatTickShown) {
    chatShown = M.chat.length; chatTickShown = lastTick;
    const box = $("chat");
    box.replaceChildren(...M.chat.map(l => {
      if (l.sys) return el("p", l.text, "sys");
      const p = el("p");
      p.append(el("b", (l.name || l.from.slice(0, 8)) + ": "), l.text);
      return p;
    }));
    box.scrollTop = box.scrollHeight;
  }

  renderSelected();
  renderFaults();
  renderPeople();
  renderStatus();
}

function renderStatus() {
  const lines = [];
  lines.push(`tick ${M.tick}  ${M.stateHash.slice(0, 16)}…`);
  if (tickMs !== null) lines.push(`tick duration ${tickMs.toFixed(2)} ms (mean over the last ${STATUS_MS / 1000} s)`);
  const g = M.status && M.status.group;
  if (g) {
    const cp = g.checkpoints && g.checkpoints[0];
    const agree = cp ? (cp.agree ? `hashes agree at tick ${cp.tick} (${cp.signed} signed)` : `HASHES DIFFER at tick ${cp.tick}`) : "no checkpoint yet";
    lines.push(`group of ${g.members.length}${g.observer ? " (this node observes)" : ""}: ${agree}${g.desync ? "; desync: " + JSON.stringify(g.desync) : ""}`);
  }
  const b = M.status && M.status.border;
  if (b) {
    for (const n of b.neighbours) {
      const t = n.sets;
      lines.push(`region ${n.region}: ${n.ghosts} ghosts; border sets ${t.sent} sent, ${t.included} delivered, ${t.late} late, ${t.missed} missed`);
    }
    lines.push(`hand-offs ${b.handoffs_out} out, ${b.handoffs_in} in; messages ${b.messages.delivered} delivered, ${b.messages.refused} refused`);
  }
  if (M.latencies.length) {
    const last = M.latencies[M.latencies.length - 1], mean = M.latencies.reduce((a, b) => a + b, 0) / M.latencies.length;
    lines.push(`input→commit ${last.toFixed(0)} ms (mean ${mean.toFixed(0)} ms over ${M.latencies.length})`);
  }
  lines.push(`${M.fps} fps${M.renderScale < 1 ? ` at ${Math.round(M.renderScale * 100)}% resolution` : ""}${M.softwareGl ? " (software WebGL)" : ""} · ${(bytesRate / 1024).toFixed(1)} KiB/s received`);
  $("status").textContent = lines.join("\n");
}

function renderSelected() {
  const box = $("selected");
  const e = M.selected && M.elements.get(M.selected);
  for (const b of ["touch", "push", "delete"]) $(b).disabled = !e;
  $("scripttarget").textContent = !e ? "select an object (click it; shift-click selects without touching)"
    : `target: ${e.name} (${e.id})${e.script ? ", script " + e.script.slice(0, 12) + "…" : ", no script"}${e.owner === M.me || isAdmin() ? "" : " (not yours: the node will refuse)"}`;
  if (!e) { box.textContent = "nothing selected: click an object"; selBox.visible = false; return; }
  const lines = [`${e.name} (${e.kind}, ${e.id})`, `owner: ${e.owner ? nameOf(e.owner) : "nobody"}`,
    `at ${vec(e.pos).x.toFixed(2)}, ${vec(e.pos).y.toFixed(2)}, ${vec(e.pos).z.toFixed(2)}`];
  if (e.body) lines.push(`body: ${Object.keys(e.body.spec.shape)[0]}, ${e.body.spec.kind}${e.body.resting ? ", resting" : ""}`);
  if (e.script) {
    lines.push(`script: ${e.script}`);
    const s = e.script_status;
    if (s) lines.push(s.suspended ? `SUSPENDED after ${s.faults} faults: ${s.last_error || ""} (${s.resume || ""})` : s.faults ? `${s.faults} faults in a row; last: ${s.last_error}` : "running");
  }
  box.textContent = lines.join("\n");
  $("push").disabled = !e.body;
  $("delete").disabled = !(e.owner === M.me || isAdmin());
}

function select(id) {
  M.selected = id;
  selBox.visible = !!id;
  renderSelected();
}
M.select = select;

function renderFaults() {
  const box = $("faults");
  if (!M.faults.length) { box.replaceChildren(el("p", "none", "ok")); return; }
  box.replaceChildren(...M.faults.slice(-10).reverse().map(f => {
    const e = M.elements.get(f.element);
    return el("p", `tick ${f.tick}: ${e ? e.name : "element"} ${f.element}: ${f.error}${f.suspended ? " (suspended: push a new version to resume)" : ""}`);
  }));
}

function renderPeople() {
  const box = $("people");
  const ps = [...M.players.values()].sort((a, b) => (b.online - a.online) || a.name.localeCompare(b.name));
  const admin = isAdmin();
  box.replaceChildren(...ps.map(p => {
    const row = el("p");
    row.append(el("span", p.name + (p.id === M.me ? " (you)" : "")));
    if (p.role === "Admin") row.append(el("span", "admin", "badge"));
    if (p.id === M.tempAdmin) row.append(el("span", "temp admin", "badge temp"));
    row.append(el("span", p.online ? " online" : " away", p.online ? "ok" : "mono"));
    if (p.id !== M.me) {
      const acts = el("div", undefined, "acts");
      for (const what of ["kick", "ban", "unban", p.role === "Admin" ? "revoke" : "grant"]) {
        const b = el("button", what);
        b.title = admin ? `${what} ${p.name}` : `${what} ${p.name} (you are not an admin: the region will refuse)`;
        b.dataset.act = what; b.dataset.player = p.id;
        acts.append(b);
      }
      row.append(acts);
    }
    return row;
  }));
  $("rule").textContent = M.tempAdminRule ? "Temp-admin rule: " + M.tempAdminRule.summary : "";
  if (document.activeElement && document.activeElement.closest("#settings")) return;
  $("set-name").value = M.settings.name;
  $("set-absence").value = M.settings.temp_admin_absence_days;
  $("set-recent").value = M.settings.temp_admin_recent_days;
}

$("people").addEventListener("click", e => {
  const b = e.target.closest("button[data-act]");
  if (b) tryAct({ do: b.dataset.act, player: b.dataset.player }, $("adminmsg"));
});
$("settings").addEventListener("submit", e => {
  e.preventDefault();
  const days = id => { const v = $(id).value.trim(); return v === "" ? undefined : Number(v); };
  const action = { do: "settings", name: $("set-name").value, temp_admin_absence_days: days("set-absence"), temp_admin_recent_days: days("set-recent") };
  for (const k of ["temp_admin_absence_days", "temp_admin_recent_days"]) {
    if (action[k] !== undefined && !(Number.isInteger(action[k]) && action[k] >= 0)) {
      $("adminmsg").className = "mono bad"; $("adminmsg").textContent = `settings: ${k} must be a whole number of days`; return;
    }
  }
  tryAct(action, $("adminmsg"));
});

// ---------------------------------------------------------------- chat, join, build

$("say").addEventListener("submit", async e => {
  e.preventDefault();
  const input = $("text");
  if (!input.value.trim()) return;
  if (await tryAct({ do: "say", text: input.value })) input.value = "";
});
$("join").addEventListener("submit", e => {
  e.preventDefault();
  tryAct({ do: "join", name: $("joinname").value.trim() || "viewer" });
});

/** A point `dist` metres in front of my avatar (or the region's centre), in sim coordinates. */
function inFront(dist) {
  const av = myAvatar();
  const { fwd } = cameraAxes();
  const p = av ? vec(av.pos) : M.settings ? { x: num(M.settings.size.x) / 2, y: num(M.settings.size.y) / 2, z: 0 } : { x: 128, y: 128, z: 0 };
  const [x, y] = clampToRegion(p.x + fwd[0] * dist, p.y + fwd[1] * dist);
  return { x, y, z: p.z };
}
const xyz = (x, y, z) => `${x.toFixed(3)},${y.toFixed(3)},${z.toFixed(3)}`;

$("create").addEventListener("click", () => {
  const p = inFront(3);
  tryAct({ do: "create", name: $("newname").value.trim() || "Object", pos: xyz(p.x, p.y, p.z) });
});
$("spawnball").addEventListener("click", () => {
  const p = inFront(3);
  tryAct({ do: "spawn_body", name: "Ball", pos: xyz(p.x, p.y, p.z + 2), shape: "ball:0.5" });
});
$("spawnbox").addEventListener("click", () => {
  const p = inFront(3);
  tryAct({ do: "spawn_body", name: "Box", pos: xyz(p.x, p.y, p.z + 2), shape: "box:0.5,0.5,0.5" });
});
$("touch").addEventListener("click", () => M.selected && tryAct({ do: "touch", element: M.selected }));
$("delete").addEventListener("click", () => M.selected && tryAct({ do: "delete", element: M.selected }));
$("push").addEventListener("click", () => {
  if (!M.selected) return;
  const f = Number($("pushforce").value);
  if (!Number.isFinite(f)) { showError("push: the impulse must be a number (N·s)"); return; }
  const { fwd } = cameraAxes();
  tryAct({ do: "push", element: M.selected, impulse: xyz(fwd[0] * f, fwd[1] * f, f * 0.3) });
});

// ---------------------------------------------------------------- scripts

const source = $("source"), gutter = $("gutter");
source.value = `-- SPDX-License-Identifier: AGPL-3.0-or-later
-- Touch the object: it counts and says so.
function on_touch(by, element)
  state.n = (state.n or 0) + 1
  say("touched " .. state.n .. " times")
end
`;
function numberLines() {
  const n = source.value.split("\n").length;
  gutter.textContent = Array.from({ length: n }, (_, i) => i + 1).join("\n");
  gutter.scrollTop = source.scrollTop;
}
source.addEventListener("input", numberLines);
source.addEventListener("scroll", () => { gutter.scrollTop = source.scrollTop; });
source.addEventListener("keydown", e => {
  if (e.key === "Tab") { e.preventDefault(); source.setRangeText("  ", source.selectionStart, source.selectionEnd, "end"); numberLines(); }
});
numberLines();

// The editor: CodeMirror 6 (vendored) with Lua highlighting; if its modules
// cannot load, the text area with line numbers above, and a note saying so.
const editor = M.editor = {
  get: () => source.value,
  set: text => { source.value = text; numberLines(); },
  kind: "textarea",
};
async function startCodeMirror() {
  try {
    const [view, state, language, commands, luaMode, hl] = await Promise.all([
      import("@codemirror/view"), import("@codemirror/state"), import("@codemirror/language"),
      import("@codemirror/commands"), import("@codemirror/legacy-modes/mode/lua"), import("@lezer/highlight"),
    ]);
    const t = hl.tags;
    const style = language.HighlightStyle.define([
      { tag: t.keyword, color: "#c792ea" }, { tag: t.comment, color: "#6b9f6b", fontStyle: "italic" },
      { tag: t.string, color: "#e5c07b" }, { tag: t.number, color: "#f78c6c" },
      { tag: [t.bool, t.null, t.atom], color: "#f78c6c" }, { tag: t.operator, color: "#89ddff" },
      { tag: [t.variableName, t.name], color: "#dde" }, { tag: t.standard(t.variableName), color: "#82aaff" },
    ]);
    const theme = view.EditorView.theme({
      "&": { height: "100%", backgroundColor: "#0f1216", color: "#dde", fontSize: "12px" },
      ".cm-content": { fontFamily: "ui-monospace, monospace", caretColor: "#fff" },
      ".cm-gutters": { backgroundColor: "#161a20", color: "#567", border: "none" },
      ".cm-activeLine": { backgroundColor: "#161c24" }, ".cm-activeLineGutter": { backgroundColor: "#1b222c" },
      "&.cm-focused .cm-selectionBackground, .cm-selectionBackground": { backgroundColor: "#2b4060" },
      ".cm-scroller": { overflow: "auto" },
    }, { dark: true });
    const cm = new view.EditorView({
      parent: $("editor"),
      state: state.EditorState.create({
        doc: source.value,
        extensions: [
          view.lineNumbers(), view.highlightActiveLine(), view.highlightActiveLineGutter(), view.drawSelection(),
          commands.history(), language.indentOnInput(), language.bracketMatching(),
          language.StreamLanguage.define(luaMode.lua), language.syntaxHighlighting(style), theme,
          state.EditorState.tabSize.of(2),
          view.keymap.of([...commands.defaultKeymap, ...commands.historyKeymap, commands.indentWithTab]),
        ],
      }),
    });
    gutter.remove();
    source.remove();
    cm.dom.style.flex = "1";
    editor.get = () => cm.state.doc.toString();
    editor.set = text => cm.dispatch({ changes: { from: 0, to: cm.state.doc.length, insert: text } });
    editor.kind = "codemirror";
    editor.view = cm;
  } catch (e) {
    $("editornote").textContent = "the code editor (CodeMirror) did not load (" + e.message + "): a plain text area instead";
    showError($("editornote").textContent);
  }
}
startCodeMirror();

function scriptMsg(text, ok) {
  $("scriptmsg").className = "mono " + (ok ? "ok" : "bad");
  $("scriptmsg").textContent = text;
}

$("pushscript").addEventListener("click", async () => {
  if (!M.selected) { scriptMsg("select an object you own first (click it; shift-click selects without touching)", false); return; }
  if (!token) { scriptMsg("this page has no token: open the URL that `metatopia up` printed", false); return; }
  $("scriptmsg").className = "mono";
  $("scriptmsg").textContent = `pushing to ${M.selected}…`;
  let r;
  try {
    r = await fetch(`/api/scripts?object=${encodeURIComponent(M.selected)}`, {
      method: "PUT", headers: { "Authorization": "Bearer " + token, "Content-Type": "text/x-lua" }, body: editor.get(),
    });
  } catch (e) { scriptMsg("push: the node is unreachable: " + e.message, false); return; }
  const body = await r.json().catch(() => ({ error: `answer ${r.status} is not JSON` }));
  if (r.status !== 200) { scriptMsg("refused: " + (body.error || r.status), false); return; }
  const att = body.attached ? ` and attached to ${M.selected} at tick ${body.attached.tick !== undefined ? body.attached.tick : JSON.stringify(body.attached)}` : "";
  scriptMsg(`published ${body.hash} (${body.licence})${att}`, true);
});

$("readscript").addEventListener("click", async () => {
  const e = M.selected && M.elements.get(M.selected);
  if (!e || !e.script) { scriptMsg("select an object that has a script", false); return; }
  try {
    const r = await fetch(`/scripts/${e.script}`);
    if (r.status !== 200) { const b = await r.json().catch(() => ({})); scriptMsg(`cannot read ${e.script}: ${b.error || r.status}`, false); return; }
    editor.set(await r.text());
    scriptMsg(`source of ${e.name}'s script ${e.script}`, true);
  } catch (err) { scriptMsg("the node is unreachable: " + err.message, false); }
});

// ---------------------------------------------------------------- connection: stream, else polling

const banner = $("conn");
function setMode(mode, why) {
  M.mode = mode; M.modeWhy = why || "";
  document.body.dataset.mode = mode;
  banner.classList.toggle("bad", mode !== "stream");
  banner.textContent = mode === "stream" ? "live: region stream"
    : mode === "poll" ? `polling every ${POLL_MS} ms (fallback): ${why}`
    : `disconnected: ${why}; retrying`;
}

function streamUrl() {
  const q = token ? `?token=${encodeURIComponent(token)}` : "";
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/regions/${REGION}/stream${q}`;
}

/** Why the WebSocket could not open, in words (asks the same URL over plain HTTP). */
async function whyNoStream() {
  try {
    const r = await fetch(streamUrl().replace(/^ws/, "http"));
    const b = await r.json().catch(() => ({}));
    if (r.status === 404) return "this node serves no region stream";
    if (r.status === 401) return "the stream refused this page's token: " + (b.error || "401");
    return `the stream answered ${r.status}${b.error ? ": " + b.error : ""}`;
  } catch (e) {
    return "the node is unreachable";
  }
}

let ws = null, streamRetryMs = 1000;

/** One stream frame (text). Also `metatopia.onFrame`, so a benchmark can feed frames in the stream's format. */
function onFrame(text) {
  M.bytes += text.length;
  let f;
  try { f = JSON.parse(text); } catch (e) { showError("stream: a frame is not JSON: " + e.message); return; }
  noteApply();
  if (f.type === "snapshot") {
    if (f.you) M.me = f.you;
    streamRetryMs = 1000;
    setMode("stream");
    replaceState(f.state);
  } else if (f.type === "tick") {
    applyTick(f);
  } else {
    showError(`stream: unknown frame type ${JSON.stringify(f.type)}`);
  }
}
M.onFrame = onFrame;
function openStream() {
  let opened = false;
  ws = new WebSocket(streamUrl());
  ws.onopen = () => { opened = true; };
  ws.onmessage = ev => onFrame(ev.data);
  ws.onclose = async ev => {
    ws = null;
    let why;
    if (!opened) why = await whyNoStream();
    else if (ev.code === 1006) why = "the connection to the node was lost (1006)";
    else why = `the stream closed (${ev.code}${ev.reason ? ": " + ev.reason : ""})`;
    if (opened && ev.code !== 1000) showError(why);
    setMode(why === "the node is unreachable" ? "down" : "poll", why);
    setTimeout(openStream, streamRetryMs);
    streamRetryMs = Math.min(streamRetryMs * 2, 10000);
    poll();
  };
}

let etag = null, polling = false;
async function poll() {
  if (polling || M.mode === "stream") return;
  polling = true;
  try {
    while (M.mode !== "stream") {
      try {
        const r = await fetch(`/api/regions/${REGION}/state`, { headers: etag ? { "If-None-Match": etag } : {} });
        if (r.status === 200) {
          const text = await r.text();
          M.bytes += text.length;
          etag = r.headers.get("ETag");
          noteApply();
          if (M.mode !== "stream") replaceState(JSON.parse(text));
        } else if (r.status !== 304) {
          const b = await r.json().catch(() => ({}));
          showError(`reading the region: ${r.status} ${b.error || ""}`);
        }
        if (M.mode === "down") setMode("poll", "reconnected; the stream is being retried");
      } catch (e) {
        if (M.mode !== "down") setMode("down", "the node is unreachable (" + e.message + ")");
      }
      await new Promise(res => setTimeout(res, POLL_MS));
    }
  } finally {
    polling = false;
  }
}

/** Interpolation spans the time between updates: one tick when streaming. */
function noteApply() {
  const now = performance.now();
  if (M.mode === "stream" && M.settings) expectedStepMs = 1000 / (M.settings.tick_rate_hz || 20);
  else if (lastApplyAt) expectedStepMs = Math.min(500, Math.max(50, now - lastApplyAt));
  lastApplyAt = now;
}

// ---------------------------------------------------------------- status and metrics

let tickMs = null, lastMetrics = null, bytesRate = 0, lastBytes = 0;
async function statusLoop() {
  try {
    const r = await fetch("/api/status");
    if (r.status === 200) {
      const s = await r.json();
      M.status = s;
      if (!M.me) M.me = s.node.player;
      const reg = s.regions && s.regions[0];
      if (reg && reg.temp_admin_rule) M.tempAdminRule = reg.temp_admin_rule;
      if (reg) REGION = reg.id;
    }
    const m = await fetch("/metrics");
    if (m.status === 200) {
      const text = await m.text();
      const val = name => { const x = text.match(new RegExp("^" + name + " ([0-9.e+-]+)$", "m")); return x ? Number(x[1]) : null; };
      const now = { ticks: val("metatopia_ticks_total"), secs: val("metatopia_tick_seconds_total") };
      if (lastMetrics && now.ticks !== null && now.secs !== null && now.ticks > lastMetrics.ticks) {
        tickMs = (now.secs - lastMetrics.secs) / (now.ticks - lastMetrics.ticks) * 1000;
      }
      lastMetrics = now;
    }
  } catch (e) {
    // The connection banner says the node is unreachable.
  }
  bytesRate = (M.bytes - lastBytes) / (STATUS_MS / 1000);
  lastBytes = M.bytes;
  M.bytesPerSecond = bytesRate;
  renderPanels();
  setTimeout(statusLoop, STATUS_MS);
}

// ---------------------------------------------------------------- start

if (M.noWebGl) showError(M.noWebGl);
if (!token) showError("no token in this page's URL: you can watch, but not act. Open the URL that `metatopia up` printed (it ends in #token=…)");
await statusLoop();
openStream();
