import { parentPort, workerData } from "node:worker_threads";
import { loadBulkCrypto } from "../crypto/bulk.js";
import { TaskRunner } from "./tasks.js";
import { transferList, type FromWorker, type ToWorker, type WorkerData } from "./protocol.js";

/**
 * A pipeline worker thread: loads its crypto at once (a prestarted worker does so before any
 * pool exists), then gets the compression level, keys (transferred bytes, zeroed on close) and
 * tasks; answers each task with its result, transferring its buffers.
 */
const port = parentPort;
if (port === null) throw new Error("pipeline worker started outside a worker thread");
let runner: TaskRunner | undefined;
const pendingKeys: { name: string; bytes: Uint8Array }[] = [];
const data = workerData as WorkerData | null;
const bulkCrypto = loadBulkCrypto(data?.backend ?? "auto", data?.chunkHash === undefined ? {} : { chunkHash: data.chunkHash });
let ready: Promise<TaskRunner> | undefined;
/** Whether the chunk-ID hasher this worker chose was sent (with an answer) to the main thread. */
let hasherSent = false;

function send(message: FromWorker, transfer: ArrayBuffer[] = []): void {
  port?.postMessage(message, transfer);
}

port.on("message", (message: ToWorker) => {
  switch (message.type) {
    case "init":
      ready = bulkCrypto.then((bulk) => {
        runner = new TaskRunner(bulk, message.compression);
        for (const k of pendingKeys.splice(0)) runner.setKey(k.name, k.bytes);
        send({ type: "ready", backend: runner.backend });
        return runner;
      });
      break;
    case "key":
      if (runner === undefined) pendingKeys.push({ name: message.name, bytes: message.bytes });
      else runner.setKey(message.name, message.bytes);
      break;
    case "task": {
      const r = runner;
      if (r === undefined) {
        send({ type: "failed", id: message.id, message: "worker not initialised" });
        break;
      }
      try {
        const result = r.run(message.task);
        // The main thread adopts this choice: a worker, which runs only tasks, measures both
        // libraries with less noise than the main thread between its I/O and planning.
        const hasher = hasherSent ? undefined : r.chunkHasher;
        if (hasher !== undefined) hasherSent = true;
        send({ type: "done", id: message.id, result, ...(hasher === undefined ? {} : { hasher }) }, transferList(result));
      } catch (e) {
        send({ type: "failed", id: message.id, message: e instanceof Error ? e.message : String(e) });
      }
      break;
    }
    case "close":
      runner?.dispose();
      for (const k of pendingKeys.splice(0)) k.bytes.fill(0);
      send({ type: "closed" });
      port.close();
      break;
  }
});
void ready;
