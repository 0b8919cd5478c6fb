/**
 * The top-level help text.
 *
 * @module
 */

export const HELP =
  `efx: secure file transfer (server authenticated by its RSA key; HMAC-SHA256 channel)

usage:
  efx keygen [--bits 2048|3072|4096] [--out DIR] [--force] [--client]
  efx fingerprint FILE
  efx serve [--port 9000] [--host 0.0.0.0] [--root ./storage] [--key keys/server.key.pem]
  efx upload FILE... [--as NAME] [--force]
  efx download NAME... [-o PATH] [--force]
  efx ls [PATTERN] [-r]
  efx rm NAME...
  efx known-servers [list|remove HOST]   trusted server keys; remove forgets one
  efx [shell]                       interactive prompt: put, get, ls, rm, help, quit

Client commands take: --server HOST:PORT (default $EFX_SERVER or localhost:9000),
  --server-key FILE | --fingerprint SHA256:... | --known-servers FILE [--accept-new],
  --quiet, --verbose. 'efx COMMAND --help' shows each command's options.

Exit codes: 0 ok, 1 transfer or remote error, 2 usage error, 3 trust/authentication failure.`;
