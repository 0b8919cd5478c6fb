/**
 * A small S3 client for the S3 storage backend: path-style requests signed
 * with SigV4 (`npm:aws4fetch`), retries with backoff for idempotent calls,
 * and every store failure turned into one {@linkcode StorageError} line that
 * names the cause (unreachable endpoint, refused credentials, missing bucket,
 * a 5xx answer), never a server path or a stack trace.
 *
 * Only what the backend needs: HEAD/GET/PUT/DELETE of one object, a copy,
 * and ListObjectsV2 (with or without a delimiter). Object bodies are sent
 * with a known length (`Uint8Array`), never as a chunked stream (RGW and AWS
 * answer 411 to that).
 *
 * @module
 */
import { AwsClient } from "aws4fetch";
import { StorageError } from "./errors.ts";

/** Where the objects are and how to sign for them. */
export interface S3Config {
  /** `http(s)://host:port` of the store (path-style addressing). */
  endpoint: string;
  region: string;
  bucket: string;
  /** Key prefix inside the bucket ("" or ending in "/"). */
  prefix: string;
  accessKey: string;
  secretKey: string;
  /** Attempts for an idempotent call (default 5). */
  attempts?: number;
  /** First backoff in ms, doubled each attempt (default 100). */
  backoffMs?: number;
}

/** Parses `s3://BUCKET[/PREFIX]` into bucket and prefix ("" or ending in "/"). */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (!m) throw new StorageError("bad-name", `not an s3://BUCKET[/PREFIX] address: ${url}`);
  const bucket = m[1];
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new StorageError("bad-name", `invalid bucket name in ${url}`);
  }
  let prefix = (m[2] ?? "").replace(/\/+$/, "");
  if (prefix.split("/").some((p) => p === "" || p === "." || p === "..") && prefix !== "") {
    throw new StorageError("bad-name", `invalid key prefix in ${url}`);
  }
  if (prefix !== "") prefix += "/";
  return { bucket, prefix };
}

/** One object of a listing. */
export interface ListedObject {
  key: string;
  size: number;
  etag: string;
  lastModified: number;
}

/** Options of one request. */
interface Call {
  /** Query string parameters (values unencoded). */
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  /** Retried on network errors and 5xx (default: GET/HEAD/DELETE). */
  idempotent?: boolean;
  /** Statuses that are answers, not failures (default 2xx only). */
  ok?: number[];
  /** The object the call is about, for error messages (a client name or a description). */
  what?: string;
}

/** Statuses the store may answer that are worth a retry. */
const RETRY_STATUS = new Set([500, 502, 503, 504, 429]);

/** Signed requests against one bucket. */
export class S3Client {
  readonly config: S3Config;
  #aws: AwsClient;
  #base: string;

  constructor(config: S3Config) {
    this.config = config;
    this.#aws = new AwsClient({
      accessKeyId: config.accessKey,
      secretAccessKey: config.secretKey,
      service: "s3",
      region: config.region,
      retries: 0, // retries are ours: only idempotent calls, with our error mapping
    });
    this.#base = config.endpoint.replace(/\/+$/, "") + "/" + encodeURIComponent(config.bucket);
  }

  /** Full key of `rel` (a path below the configured prefix). */
  key(rel: string): string {
    return this.config.prefix + rel;
  }

  #url(key: string, query?: Record<string, string>): string {
    const path = key === "" ? "" : "/" + key.split("/").map(encodeSegment).join("/");
    const q = query
      ? Object.entries(query).map(([k, v]) =>
        v === "" ? encodeSegment(k) : `${encodeSegment(k)}=${encodeSegment(v)}`
      )
        .join("&")
      : "";
    return this.#base + path + (q ? `?${q}` : "");
  }

  /**
   * Sends one request; returns the response for 2xx and the `ok` statuses,
   * else throws a {@linkcode StorageError}. Idempotent calls are retried on
   * network errors and 5xx with exponential backoff.
   */
  async request(method: string, key: string, call: Call = {}): Promise<Response> {
    const idempotent = call.idempotent ?? (method === "GET" || method === "HEAD" ||
      method === "DELETE");
    const attempts = idempotent ? (this.config.attempts ?? 5) : 1;
    let delay = this.config.backoffMs ?? 100;
    let last: StorageError | undefined;
    for (let i = 0; i < attempts; i++) {
      if (i > 0) {
        await new Promise((r) => setTimeout(r, delay));
        delay *= 2;
      }
      let res: Response;
      try {
        res = await this.#aws.fetch(this.#url(key, call.query), {
          method,
          headers: call.headers,
          body: call.body as BodyInit | undefined,
        });
      } catch (err) {
        last = this.#networkError(err);
        continue;
      }
      if ((res.status >= 200 && res.status < 300) || call.ok?.includes(res.status)) return res;
      const text = method === "HEAD" ? "" : await res.text().catch(() => "");
      last = this.#statusError(res.status, text, call.what ?? key);
      if (!RETRY_STATUS.has(res.status)) throw last;
    }
    throw last!;
  }

  #networkError(err: unknown): StorageError {
    const msg = err instanceof Error ? err.message : String(err);
    const why = /refused/i.test(msg)
      ? "connection refused"
      : /timed? ?out/i.test(msg)
      ? "timed out"
      : /dns|lookup|resolve/i.test(msg)
      ? "name not resolved"
      : /NotCapable|permission/i.test(msg) || (err instanceof Error && err.name === "NotCapable")
      ? "not allowed by this server's network permissions"
      : "connection failed";
    return new StorageError("io", `object store unreachable at ${this.config.endpoint} (${why})`);
  }

  #statusError(status: number, body: string, what: string): StorageError {
    const code = /<Code>([^<]*)<\/Code>/.exec(body)?.[1] ?? "";
    if (code === "NoSuchBucket") {
      return new StorageError(
        "io",
        `object store: bucket ${this.config.bucket} does not exist at ${this.config.endpoint}`,
      );
    }
    if (
      code === "InvalidAccessKeyId" || code === "SignatureDoesNotMatch" ||
      (status === 403 && (code === "" || code === "AccessDenied"))
    ) {
      return new StorageError(
        "permission",
        `object store refused this server's credentials (${code || `HTTP ${status}`})`,
      );
    }
    if (status === 404) return new StorageError("not-found", `no such file on the server: ${what}`);
    if (status === 412) return new StorageError("exists", `${what} already exists on the server`);
    if (status === 413 || code === "EntityTooLarge") {
      return new StorageError("too-large", `${what} is too large for the object store`);
    }
    if (code === "KeyTooLongError") {
      return new StorageError("bad-name", `${what}: name too long for the object store`);
    }
    if (status >= 500) {
      return new StorageError(
        "io",
        `object store error (HTTP ${status}${code ? ` ${code}` : ""}); try again later`,
      );
    }
    return new StorageError(
      "io",
      `object store refused a request (HTTP ${status}${code ? ` ${code}` : ""})`,
    );
  }

  /** Headers of an object, or null when absent. */
  async head(key: string, what?: string): Promise<Headers | null> {
    const res = await this.request("HEAD", key, { ok: [404], what });
    await res.body?.cancel();
    return res.status === 404 ? null : res.headers;
  }

  /** Body and headers of an object (bounded by the caller), or null when absent. */
  async getSmall(
    key: string,
    max: number,
    what?: string,
  ): Promise<{ headers: Headers; body: Uint8Array } | null> {
    const res = await this.request("GET", key, { ok: [404], what });
    if (res.status === 404) {
      await res.body?.cancel();
      return null;
    }
    const len = Number(res.headers.get("content-length") ?? "0");
    if (len > max) {
      await res.body?.cancel();
      throw new StorageError("io", `object store: ${what ?? key} is larger than expected`);
    }
    return { headers: res.headers, body: new Uint8Array(await res.arrayBuffer()) };
  }

  /** Deletes an object (absent is fine). */
  async delete(key: string): Promise<void> {
    const res = await this.request("DELETE", key, { ok: [404] });
    await res.body?.cancel();
  }

  /**
   * Lists keys under `prefix`: with `delimiter` "/" one level (folders as
   * `prefixes`), without it everything below. Pages through the results.
   */
  async *list(
    prefix: string,
    delimiter?: string,
    maxKeys = 1000,
  ): AsyncGenerator<{ objects: ListedObject[]; prefixes: string[] }> {
    let token: string | undefined;
    for (let page = 0; page < 1_000_000; page++) {
      const query: Record<string, string> = {
        "list-type": "2",
        prefix,
        "encoding-type": "url",
        "max-keys": String(maxKeys),
      };
      if (delimiter) query.delimiter = delimiter;
      if (token) query["continuation-token"] = token;
      const res = await this.request("GET", "", { query, what: "a listing" });
      const xml = await res.text();
      const objects: ListedObject[] = [];
      for (const m of xml.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)) {
        const c = m[1];
        objects.push({
          key: decodeKey(tag(c, "Key")),
          size: Number(tag(c, "Size")),
          etag: unquote(xmlText(tag(c, "ETag"))),
          lastModified: Date.parse(tag(c, "LastModified")),
        });
      }
      const prefixes: string[] = [];
      for (const m of xml.matchAll(/<CommonPrefixes>([\s\S]*?)<\/CommonPrefixes>/g)) {
        prefixes.push(decodeKey(tag(m[1], "Prefix")));
      }
      yield { objects, prefixes };
      if (tag(xml, "IsTruncated") !== "true") return;
      token = xmlText(tag(xml, "NextContinuationToken"));
      if (!token) return;
    }
  }
}

/** An ETag without its quotes (this RGW compares If-Match against the bare value). */
export function unquote(etag: string | null): string {
  return (etag ?? "").replace(/^W\//, "").replace(/^"|"$/g, "");
}

function tag(xml: string, name: string): string {
  const m = new RegExp(`<${name}>([\\s\\S]*?)</${name}>`).exec(xml);
  return m ? m[1] : "";
}

function xmlText(s: string): string {
  return s.replace(
    /&(lt|gt|amp|quot|apos|#(\d+)|#x([0-9a-fA-F]+));/g,
    (_m, n, d, h) =>
      n === "lt"
        ? "<"
        : n === "gt"
        ? ">"
        : n === "amp"
        ? "&"
        : n === "quot"
        ? '"'
        : n === "apos"
        ? "'"
        : String.fromCodePoint(d ? Number(d) : parseInt(h, 16)),
  );
}

/** A key from a listing with `encoding-type=url` (form-encoded: "+" is a space). */
function decodeKey(s: string): string {
  return decodeURIComponent(xmlText(s).replace(/\+/g, "%20"));
}

/** RFC 3986 encoding of one path segment or query part. */
function encodeSegment(s: string): string {
  return encodeURIComponent(s).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}
