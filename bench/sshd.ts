/**
 * A throwaway OpenSSH server on 127.0.0.1 for benchmarking scp against efx.
 *
 * `startSshd()` installs openssh-server if needed (apt-get, Debian), creates a
 * temp dir with a fresh ed25519 host key, a fresh ed25519 user key, an
 * authorized_keys file, a known_hosts file and an sshd_config, and runs
 * `/usr/sbin/sshd -D -e -f <dir>/sshd_config` on a free loopback port. It
 * listens on 127.0.0.1 only. `stop()` kills it and removes the temp dir.
 *
 * Gotcha: OpenSSH >= 9.0 `scp` speaks the SFTP protocol by default, so the
 * config enables the sftp subsystem; pass "-O" in scpArgs() extras for the
 * legacy scp/rcp protocol.
 *
 * Gotcha: commands and the sftp subsystem are started through the user's
 * login shell; see SshdOptions.shellRc for why SHLVL is preset by default.
 *
 * The client argv (scpArgs/sshArgs) uses `-F /dev/null` so that no
 * ~/.ssh/config (ControlMaster, ciphers, …) skews the figures.
 */

import { freePort } from "./measure.ts";

export interface SshdHandle {
  port: number;
  /** pid of the listening sshd (watchRss(pid) covers its per-connection children too). */
  pid: number;
  user: string;
  identityFile: string;
  knownHostsFile: string;
  /** The temp dir holding keys, config and pid file; removed by stop(). Free for scratch use. */
  dir: string;
  /** OpenSSH version string of the client (from `ssh -V`), for the results table. */
  version: string;
  /**
   * argv prefix for scp to this server: ["scp", "-q", "-F", "/dev/null", "-P", port, "-i", identity,
   * "-o", "UserKnownHostsFile=…", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", …, ...extra]
   */
  scpArgs(extra?: string[]): string[];
  /** argv prefix for ssh to this server, ending with the destination "user@127.0.0.1". */
  sshArgs(extra?: string[]): string[];
  /** remote spec "user@127.0.0.1:" + path */
  remote(path: string): string;
  stop(): Promise<void>;
}

const SSHD = "/usr/sbin/sshd";
const SFTP_SERVER = "/usr/lib/openssh/sftp-server";

async function run(
  argv: string[],
  env?: Record<string, string>,
): Promise<{ ok: boolean; out: string }> {
  try {
    const o = await new Deno.Command(argv[0], {
      args: argv.slice(1),
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { ok: o.success, out: (dec.decode(o.stdout) + dec.decode(o.stderr)).trim() };
  } catch (e) {
    return { ok: false, out: String(e) };
  }
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function tail(s: string, lines = 8): string {
  return s.split("\n").slice(-lines).join("\n");
}

/**
 * Installs openssh-server via apt-get when /usr/sbin/sshd is missing.
 * Returns null on success, or the reason it could not.
 */
async function ensureSshdInstalled(): Promise<string | null> {
  if (exists(SSHD)) return null;
  if (Deno.uid() !== 0) {
    return `${SSHD} missing and not root: cannot apt-get install openssh-server`;
  }
  if (!exists("/usr/bin/apt-get")) return `${SSHD} missing and no apt-get to install it`;
  // Keep dpkg from starting a system sshd on 0.0.0.0:22 during install:
  // policy-rc.d exiting 101 means "action forbidden" to invoke-rc.d.
  const policy = "/usr/sbin/policy-rc.d";
  const ownPolicy = !exists(policy);
  if (ownPolicy) Deno.writeTextFileSync(policy, "#!/bin/sh\nexit 101\n", { mode: 0o755 });
  try {
    const env = { DEBIAN_FRONTEND: "noninteractive" };
    const install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "openssh-server"];
    let r = await run(install, env);
    if (!r.ok) {
      const u = await run(["apt-get", "update", "-q"], env);
      if (!u.ok) return `apt-get update failed:\n${tail(u.out)}`;
      r = await run(install, env);
    }
    if (!r.ok) return `apt-get install openssh-server failed:\n${tail(r.out)}`;
    if (!exists(SSHD)) return `openssh-server installed but ${SSHD} is still missing`;
    return null;
  } finally {
    if (ownPolicy) {
      try {
        Deno.removeSync(policy);
      } catch { /* ignore */ }
    }
  }
}

async function keygen(path: string, comment: string): Promise<string | null> {
  const r = await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path]);
  return r.ok ? null : `ssh-keygen failed: ${r.out}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface SshdOptions {
  /**
   * Let the remote login shell read its start-up files as stock sshd does
   * (default false: sshd sets SHLVL=1 so Debian's bash skips ~/.bashrc, whose
   * `pyenv init` on this machine costs ~150 ms per connection).
   */
  shellRc?: boolean;
}

/**
 * Starts a throwaway sshd on 127.0.0.1:<free port>; see the module doc.
 * Returns { skipped: reason } when it cannot.
 */
export async function startSshd(
  opts: SshdOptions = {},
): Promise<SshdHandle | { skipped: string }> {
  const why = await ensureSshdInstalled();
  if (why) return { skipped: why };
  for (const tool of ["ssh", "scp", "ssh-keygen"]) {
    const r = await run(["sh", "-c", `command -v ${tool}`]);
    if (!r.ok) return { skipped: `${tool} not found (install openssh-client)` };
  }
  // Privilege separation directory; Debian's sshd refuses to start without it.
  try {
    Deno.mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  } catch (e) {
    return { skipped: `cannot create /run/sshd: ${e}` };
  }

  const user = (await run(["id", "-un"])).out || "root";
  const version = (await run(["ssh", "-V"])).out;
  const dir = await Deno.makeTempDir({ prefix: "efx-sshd-" });
  const cleanupDir = () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* ignore */ }
  };
  const hostKey = `${dir}/ssh_host_ed25519_key`;
  const identityFile = `${dir}/id_ed25519`;
  const authorizedKeys = `${dir}/authorized_keys`;
  const knownHostsFile = `${dir}/known_hosts`;
  const config = `${dir}/sshd_config`;
  for (const [p, c] of [[hostKey, "efx-bench-host"], [identityFile, "efx-bench-user"]]) {
    const err = await keygen(p, c);
    if (err) {
      cleanupDir();
      return { skipped: err };
    }
  }
  Deno.copyFileSync(`${identityFile}.pub`, authorizedKeys);
  const hostPub = Deno.readTextFileSync(`${hostKey}.pub`).trim().split(/\s+/).slice(0, 2).join(" ");

  const sftp = exists(SFTP_SERVER) ? SFTP_SERVER : "internal-sftp";
  const baseConfig = (port: number) =>
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${hostKey}`,
      `PidFile ${dir}/sshd.pid`,
      `AuthorizedKeysFile ${authorizedKeys}`,
      "StrictModes no",
      "UsePAM no",
      "PubkeyAuthentication yes",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "PermitRootLogin prohibit-password",
      "PrintMotd no",
      "PrintLastLog no",
      "UseDNS no",
      "X11Forwarding no",
      "AllowTcpForwarding no",
      "MaxStartups 100:30:200",
      "MaxSessions 100",
      "LogLevel ERROR",
      "PermitUserRC no",
      `Subsystem sftp ${sftp}`,
      "",
    ].join("\n");

  // Optional lines, each kept only if this sshd version accepts it:
  // - OpenSSH >= 9.8 penalises sources after failed/aborted connections, which
  //   a benchmark that kills clients could trip over.
  // - Debian's bash sources ~/.bashrc for commands run by sshd (it sees
  //   SSH_CLIENT) unless SHLVL is already set; this machine's root .bashrc runs
  //   `pyenv init`, which added ~150 ms to every ssh/scp connection (the sftp
  //   subsystem is started through the login shell too). Presetting SHLVL
  //   skips it, so scp is measured rather than this box's shell start-up files.
  const optional = ["PerSourcePenalties no"];
  if (!opts.shellRc) optional.push("SetEnv SHLVL=1");
  let extra = "";
  for (const line of optional) {
    Deno.writeTextFileSync(config, baseConfig(22) + line + "\n");
    const t = await run([SSHD, "-t", "-f", config]);
    if (t.ok) extra += line + "\n";
  }

  // The port is added by the callers: -p for ssh, -P for scp.
  const common = () => [
    "-F",
    "/dev/null",
    "-i",
    identityFile,
    "-o",
    `UserKnownHostsFile=${knownHostsFile}`,
    "-o",
    "GlobalKnownHostsFile=/dev/null",
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "LogLevel=ERROR",
  ];

  let lastErr = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    Deno.writeTextFileSync(config, baseConfig(port) + extra);
    Deno.writeTextFileSync(knownHostsFile, `[127.0.0.1]:${port} ${hostPub}\n`);
    const t = await run([SSHD, "-t", "-f", config]);
    if (!t.ok) {
      cleanupDir();
      return { skipped: `sshd -t rejected the config: ${t.out}` };
    }

    const child = new Deno.Command(SSHD, {
      args: ["-D", "-e", "-f", config],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let stderrText = "";
    const stderrDone = (async () => {
      const dec = new TextDecoder();
      for await (const chunk of child.stderr) {
        // Keep only the tail to bound memory for long runs.
        stderrText = (stderrText + dec.decode(chunk, { stream: true })).slice(-16384);
      }
    })();
    let exited = false;
    const statusP = child.status.then((s) => {
      exited = true;
      return s;
    });

    const sshArgs = (extra: string[] = []) => [
      "ssh",
      ...common(),
      "-p",
      String(port),
      ...extra,
      `${user}@127.0.0.1`,
    ];

    // Wait until it accepts connections and a real login works.
    const deadline = performance.now() + 15000;
    let up = false;
    while (!exited && performance.now() < deadline) {
      try {
        const c = await Deno.connect({ hostname: "127.0.0.1", port });
        c.close();
      } catch {
        await sleep(50);
        continue;
      }
      const r = await run([...sshArgs(["-o", "ConnectTimeout=5"]), "true"]);
      if (r.ok) {
        up = true;
        break;
      }
      lastErr = `ssh login test failed: ${r.out}`;
      await sleep(200);
    }

    if (!up) {
      if (!exited) {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }
      await statusP;
      await stderrDone;
      lastErr = `${lastErr}\nsshd stderr:\n${tail(stderrText)}`.trim();
      // Port taken between freePort() and bind: try another one.
      if (/Address already in use|Bind to port/i.test(stderrText)) continue;
      cleanupDir();
      return { skipped: `sshd did not come up: ${lastErr}` };
    }

    // If the script dies without calling stop(), still kill sshd and remove keys.
    const onUnload = () => {
      if (!exited) {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }
      cleanupDir();
    };
    globalThis.addEventListener("unload", onUnload);

    let stopped: Promise<void> | undefined;
    const handle: SshdHandle = {
      port,
      pid: child.pid,
      user,
      identityFile,
      knownHostsFile,
      dir,
      version,
      scpArgs: (extra: string[] = []) => [
        "scp",
        "-q",
        ...common(),
        "-P",
        String(port),
        ...extra,
      ],
      sshArgs,
      remote: (path: string) => `${user}@127.0.0.1:${path}`,
      stop: () => {
        stopped ??= (async () => {
          globalThis.removeEventListener("unload", onUnload);
          if (!exited) {
            try {
              child.kill("SIGTERM");
            } catch { /* gone */ }
            const timer = setTimeout(() => {
              try {
                child.kill("SIGKILL");
              } catch { /* gone */ }
            }, 3000);
            await statusP;
            clearTimeout(timer);
          }
          await stderrDone;
          await Deno.remove(dir, { recursive: true }).catch(() => {});
        })();
        return stopped;
      },
    };
    return handle;
  }
  cleanupDir();
  return { skipped: `sshd did not come up after 3 port attempts: ${lastErr}` };
}
