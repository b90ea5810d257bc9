import { NotFoundError, SourceError, UsageError } from "../errors.js";
import { parseDomain, type DomainDefinition } from "./domain.js";

/**
 * A domain's definition and state from libvirt, through `virsh` (libvirt's own client, so every
 * connection URI and authentication libvirt supports works, LIBVIRT_DEFAULT_URI included).
 */

export interface LibvirtDomain {
  /** `virsh dumpxml --inactive --security-info`: the persistent definition, as `virsh define` takes it. */
  readonly xml: string;
  /** `virsh domstate`: "shut off", "paused", "running", ... */
  readonly state: string;
}

/** States in which a domain's disks do not change while a backup reads them. */
const QUIET_STATES = new Set(["shut off", "paused"]);

/** Runs virsh; its standard output, or the error it ended with. */
async function virsh(args: readonly string[], uri: string | undefined): Promise<string> {
  const { execFile } = process.getBuiltinModule("node:child_process");
  const argv = [...(uri === undefined ? [] : ["--connect", uri]), "--quiet", ...args];
  return new Promise((resolve, reject) => {
    execFile("virsh", argv, { encoding: "utf8", maxBuffer: 16 * 1024 * 1024, env: { ...process.env, LC_ALL: "C" } }, (error, stdout, stderr) => {
      if (error === null) {
        resolve(stdout);
        return;
      }
      if ((error as NodeJS.ErrnoException).code === "ENOENT") {
        reject(new UsageError("virsh was not found", "install libvirt's client (Debian: libvirt-clients), or give the definition with --domain-xml FILE"));
        return;
      }
      const said = stderr.trim().replace(/^error:\s*/gm, "").split("\n").filter((l) => l !== "").join("; ");
      reject(new VirshError(said === "" ? error.message : said));
    });
  });
}

class VirshError extends Error {}

/**
 * The domain's persistent definition and its state. Refuses a domain whose disks may be written
 * while a backup reads them (running): the copy would mix moments, which no check could tell.
 */
export async function readLibvirtDomain(name: string, uri?: string): Promise<LibvirtDomain> {
  let state: string;
  try {
    state = (await virsh(["domstate", "--", name], uri)).trim();
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    if (/failed to get domain|domain not found|no domain with matching name/i.test(e.message)) {
      throw new NotFoundError(`libvirt has no domain named ${name}${uri === undefined ? "" : ` at ${uri}`}`, "list them with virsh list --all");
    }
    throw new SourceError("E_SOURCE", `cannot ask libvirt${uri === undefined ? "" : ` at ${uri}`} about domain ${name}: ${e.message}`, "check the connection URI (--libvirt-uri) and that libvirtd runs");
  }
  if (!QUIET_STATES.has(state)) {
    throw new UsageError(
      `domain ${name} is ${state}: its disks may change while they are read`,
      `shut it down or pause it for the backup (virsh suspend ${name}, then virsh resume ${name})`,
    );
  }
  let xml: string;
  try {
    xml = await virsh(["dumpxml", "--inactive", "--security-info", "--", name], uri);
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    throw new SourceError("E_SOURCE", `cannot read the definition of domain ${name}: ${e.message}`);
  }
  return { xml: xml.trim() + "\n", state };
}

/** Where a backup's domain definition comes from (BackupOptions): given, or asked of libvirt. */
export interface DomainChoice {
  readonly domainXml?: string | undefined;
  readonly libvirtDomain?: string | undefined;
  readonly libvirtUri?: string | undefined;
}

/** The domain a backup takes, if any. */
export async function backupDomain(o: DomainChoice): Promise<DomainDefinition | undefined> {
  if (o.domainXml !== undefined && o.libvirtDomain !== undefined) throw new UsageError("give a domain definition or a libvirt domain, not both");
  if (o.libvirtUri !== undefined && o.libvirtDomain === undefined) throw new UsageError("a libvirt URI goes with a libvirt domain");
  if (o.domainXml !== undefined) return parseDomain(o.domainXml);
  if (o.libvirtDomain === undefined) return undefined;
  const { xml } = await readLibvirtDomain(o.libvirtDomain, o.libvirtUri);
  return parseDomain(xml, `libvirt's definition of ${o.libvirtDomain}`);
}
