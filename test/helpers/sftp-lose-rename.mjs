// An SFTP server (OpenSSH's sftp-server) whose first rename's answer is lost: it relays every
// packet between the client and the real server, and when the real server answers a rename
// (SSH_FXP_RENAME, done by then), it drops that answer and ends the session, as a connection
// cut at that moment would. Once MARKER exists it only relays.
//   node sftp-lose-rename.mjs MARKER [sftp-server's arguments...]
import { spawn } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";

const [marker, ...args] = process.argv.slice(2);
const server = spawn("/usr/lib/openssh/sftp-server", args, { stdio: ["pipe", "pipe", "inherit"] });
const RENAME = 18;
const STATUS = 101;
const renames = new Set();
let armed = !existsSync(marker);

/** Calls each(type, id) for every whole packet that chunk completes; returns the bytes left over. */
function packets(pending, chunk, each) {
  let buf = Buffer.concat([pending, chunk]);
  while (buf.length >= 9) {
    const length = buf.readUInt32BE(0);
    if (buf.length < 4 + length) break;
    each(buf[4], buf.readUInt32BE(5), buf.subarray(0, 4 + length));
    buf = buf.subarray(4 + length);
  }
  return buf;
}

let fromClient = Buffer.alloc(0);
process.stdin.on("data", (chunk) => {
  if (armed) fromClient = packets(fromClient, chunk, (type, id) => type === RENAME && renames.add(id));
  server.stdin.write(chunk);
});
process.stdin.on("end", () => server.stdin.end());

let fromServer = Buffer.alloc(0);
server.stdout.on("data", (chunk) => {
  if (!armed) {
    process.stdout.write(chunk);
    return;
  }
  fromServer = packets(fromServer, chunk, (type, id, packet) => {
    if (!armed) return void process.stdout.write(packet);
    if (type === STATUS && renames.has(id)) {
      armed = false;
      writeFileSync(marker, "");
      server.kill("SIGKILL");
      process.exit(0);
    }
    process.stdout.write(packet);
  });
});
server.on("exit", (code) => process.exit(code ?? 1));
