#!/usr/bin/env node
// VM state: a notice when a VM enters one of a setting's `bad_states`.
// Topic `vm`, entities like {"id": 42, "name": "web-1", "status": "running"}.
// Setting metric: {"bad_states": ["error", "stopped"]}. Plain Node.js, no packages.
"use strict";
const readline = require("node:readline");

const HEARTBEAT = 30;
const send = (msg) => process.stdout.write(JSON.stringify(msg) + "\n");
const log = (level, text) => process.stderr.write(`${level}! ${text}\n`);

let settings = [];
let ready = false;
const vms = new Map(); // id -> last known VM

function check(id, vm, previous) {
  const status = vm && vm.status;
  const before = previous && previous.status;
  if (!status || status === before) return;
  for (const s of settings) {
    const bad = (s.metric && s.metric.bad_states) || [];
    if (bad.includes(status)) {
      send({
        type: "notice",
        severity: status === "error" ? "critical" : "warning",
        title: `VM ${vm.name || id} is ${status}`,
        body: before ? `It was ${before}.` : "",
        setting_id: s.id,
        entity: { topic: "vm", id },
        dedup_key: `vm:${id}:${status}`,
        data: { status, previous: before || null },
      });
    } else if (bad.includes(before)) {
      send({ type: "resolve", dedup_key: `vm:${id}:${before}` });
    }
  }
}

send({ type: "hello", heartbeat: HEARTBEAT });
// the event loop is the alert: if it blocks, the heartbeats stop and the wrapper restarts it
setInterval(() => send({ type: "heartbeat" }), (HEARTBEAT * 1000) / 3).unref();

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  switch (msg.type) {
    case "settings":
      settings = msg.items;
      log("I", `${settings.length} settings`);
      break;
    case "entity": {
      const previous = vms.get(msg.id);
      if (msg.op === "delete") vms.delete(msg.id);
      else vms.set(msg.id, msg.data);
      // the snapshot only builds the state; changes after `ready` are what we report
      if (ready && msg.op !== "delete") check(msg.id, msg.data, previous);
      break;
    }
    case "ready":
      ready = true;
      log("I", `watching ${vms.size} VMs`);
      break;
  }
});
rl.on("close", () => process.exit(0)); // stdin closed: the wrapper is stopping us
