/**
 * The top-level help text: every command with its options. Each command's
 * `--help` gives the details (src/commands/client.ts, src/shell.ts, ...).
 *
 * @module
 */

export const HELP =
  `efx: secure file transfer (server authenticated by its RSA key; HMAC-SHA256 channel)

usage:
  efx upload FILE... [DIR/ | --to DIR] [--as NAME] [-f] [--resume] [-r]
                                    send files (into remote folder DIR; -r: folders);
                                    'upload - --as NAME' reads stdin
  efx download NAME|'PATTERN'... [-o PATH] [-f] [--resume] [-r] [--keep-links]
                                    fetch files (patterns with * and ? matched by the server);
                                    -o DIR/ makes DIR, -o - writes to stdout
  efx ls [NAME|PATTERN] [-l] [-h] [-r]
                                    list (a folder: its contents; -h: KiB/MiB/GiB; -r: subfolders)
  efx rm [-r] NAME...               remove files or links (-r: folders) on the server
  efx mkdir DIR...                  make folders on the server
  efx rmdir DIR...                  remove empty folders on the server
  efx mv [-f] FROM TO               rename on the server in one step (TO/: into folder TO)
  efx [shell] [--keepalive S]       interactive prompt: put, get, reput, reget, ls, cd, pwd, lcd,
                                    lpwd, lls, mkdir, rmdir, rename, rm, quit
  efx known-servers [list|remove HOST]
                                    the trusted server keys; remove forgets one (like ssh-keygen -R)
  efx serve [--port 9000] [--host 0.0.0.0] [--root ./storage] [--key keys/server.key.pem] ...
                                    run the server (see 'efx serve --help')
  efx keygen [--bits 2048|3072|4096] [--out DIR] [--force] [--client]
                                    make a server key pair (--client: a client identity)
  efx fingerprint FILE              show a key's SHA256:... fingerprint
  efx help | --help | -h            this text
  efx --version | -V                version and protocol

Transfer options:
  -f, --force      replace an existing file at the destination
  --resume         continue an interrupted transfer where it stopped (the SHA-256 of the
                   part already there is compared first; the whole file is checked at the end)
  -r, --recursive  whole folders, with empty folders, modes, mtimes and inner links
  -o, --output PATH  (download) a file, a folder, DIR/ (created), or - for stdout
  --as NAME        (upload) the name on the server
  --to DIR         (upload) the remote folder to upload into (or a last name ending in '/')
  --update         (-r) skip files whose size and mtime match; --checksum: whose SHA-256 matches
  --dry-run        (-r) list what would move; move nothing
  --exclude PAT    (-r) leave out matching entries (repeatable)
  --keep-links     (download -r) also recreate links leading outside the folder, as they are

Client commands also take: -s, --server HOST:PORT (default $EFX_SERVER or localhost:9000),
  --server-key FILE | --fingerprint SHA256:... | --known-servers FILE [--accept-new],
  -i, --identity FILE, --handshake-timeout S, -q, --quiet, -v, --verbose (both SHA-256 values).
'efx COMMAND --help' shows each command's options.

Exit codes: 0 ok, 1 transfer or remote error, 2 usage error, 3 trust/authentication failure,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).`;
