/**
 * A store's `place`: one name for every spelling of a place, and a place inside another named
 * by the other's and "/" (the mirror refuses its repository itself, and a place inside it).
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore } from "../../src/storage/fs.js";
import { S3Store } from "../../src/storage/s3.js";
import { SftpStore } from "../../src/storage/sftp.js";
import { ByteRate, limitBandwidth } from "../../src/storage/bandwidth.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const inside = (a: { place?: string }, b: { place?: string }): boolean => (a.place ?? "").startsWith(`${b.place ?? "?"}/`);

describe("a store's place", () => {
  it("a folder: the same through a trailing slash, '..' or a symlink, and one below it inside", async () => {
    const dir = tmp("place");
    const repo = path.join(dir, "repo");
    await fsp.mkdir(repo);
    await fsp.symlink(repo, path.join(dir, "link"));
    const place = new FsStore(repo).place;
    for (const spelled of [`${repo}/`, path.join(repo, "..", "repo"), path.join(dir, "link"), path.join(dir, "link", "")]) expect(new FsStore(spelled).place, spelled).toBe(place);
    expect(inside(new FsStore(path.join(dir, "link", "sub", "new")), new FsStore(repo))).toBe(true);
    expect(inside(new FsStore(path.join(dir, "repo2")), new FsStore(repo))).toBe(false);
  });

  it("S3: the same with or without a trailing slash, per endpoint; a longer prefix inside", () => {
    const at = { endpoint: "http://127.0.0.1:7480" };
    const place = new S3Store("s3://vmb/site1", at).place;
    expect(new S3Store("s3://vmb/site1/", at).place).toBe(place);
    expect(new S3Store("s3://vmb/site1", { endpoint: "http://127.0.0.1:7481" }).place).not.toBe(place);
    expect(inside(new S3Store("s3://vmb/site1/sub", at), new S3Store("s3://vmb/site1", at))).toBe(true);
    expect(inside(new S3Store("s3://vmb/site1/sub", at), new S3Store("s3://vmb", at))).toBe(true);
    expect(inside(new S3Store("s3://vmb/site10", at), new S3Store("s3://vmb/site1", at))).toBe(false);
  });

  it("SFTP: the login folder's paths below it, absolute ones apart; a bandwidth limit keeps the place", () => {
    const home = new SftpStore("sftp://backup@127.0.0.1:2222/");
    expect(new SftpStore("sftp://backup@127.0.0.1:2222/vault").place).toBe("sftp backup@127.0.0.1:2222 ~/vault");
    expect(inside(new SftpStore("sftp://backup@127.0.0.1:2222/vault/sub"), new SftpStore("sftp://backup@127.0.0.1:2222/vault"))).toBe(true);
    expect(inside(new SftpStore("sftp://backup@127.0.0.1:2222/vault"), home)).toBe(true);
    expect(new SftpStore("sftp://backup@127.0.0.1:2222//srv/vault").place).toBe("sftp backup@127.0.0.1:2222 /srv/vault");
    const limited = limitBandwidth(new FsStore(tmp("limited")), { upload: new ByteRate(1024) });
    expect(limited.place).toMatch(/^file \//);
  });
});
