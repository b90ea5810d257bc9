import { errorCodeOf } from "../errors.js";

/** Whether a process with this ID runs on this host (one of another user's counts: EPERM). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errorCodeOf(e) === "EPERM";
  }
}
