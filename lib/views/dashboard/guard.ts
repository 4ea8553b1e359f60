/**
 * Who may ask the dashboard what, and how much: the `Host` allow-list against DNS rebinding (as webpack-dev-server
 * and Vite check it), same-origin only for the JSON and the event stream (no CORS), a token off loopback (as
 * Jupyter's, compared in constant time, then kept in a cookie), a request-rate limit per client and caps on open
 * event streams, and the security headers every response carries.
 */
import { timingSafeEqual } from "node:crypto";

/** What a dashboard bears before it refuses: event streams per client and in all, and /api/ requests per second. */
export interface Limits {
  streamsPerClient: number;
  streams: number;
  /** Sustained /api/ requests per second per client, and the burst allowed above it. */
  ratePerS: number;
  burst: number;
}

/** The defaults: a few tabs per user (browsers open 6 connections per origin), a page's loads many times over. */
export const LIMITS: Limits = { streamsPerClient: 16, streams: 64, ratePerS: 100, burst: 300 };

/** Sent with every response: only the page's own scripts and styles run, nothing is sniffed, no referrer leaks. */
export const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; " +
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; " +
    "frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

/** Whether `host` (an address or name to listen on) is this machine's loopback. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

const isWildcard = (host: string) => ["0.0.0.0", "::", "[::]", ""].includes(host);
const isIpLiteral = (name: string) => /^\d+\.\d+\.\d+\.\d+$/.test(name) || name.startsWith("[");
const bracket = (h: string) => (h.includes(":") && !h.startsWith("[") ? `[${h}]` : h);

/** Splits a `Host` header into its lowercased name (IPv6 in brackets) and port ("" when none). */
function splitHost(value: string): { name: string; port: string } {
  const v = value.trim().toLowerCase();
  const end = v.startsWith("[")
    ? v.indexOf("]") + 1
    : v.indexOf(":") < 0
    ? v.length
    : v.indexOf(":");
  return { name: v.slice(0, end), port: v.slice(end + 1) };
}

/** Equal strings, in a time that does not depend on where they differ. */
function sameSecret(given: string, token: string): boolean {
  const a = new TextEncoder().encode(given), b = new TextEncoder().encode(token);
  return a.length === b.length ? timingSafeEqual(a, b) : (timingSafeEqual(b, b), false);
}

/** What {@link Guard} needs to know of its server. */
export interface GuardOptions {
  host: string;
  port: number;
  /** Names besides loopback and the listening address that may appear in `Host` (a reverse proxy's). */
  allowedHosts?: string[];
  /** The token every request must carry; null on loopback without `--token`. */
  token?: string | null;
  limits?: Partial<Limits>;
}

/** The access checks and load limits of one dashboard. */
export class Guard {
  readonly limits: Limits;
  private names: Set<string>;
  private extra: Set<string>;
  private buckets = new Map<string, { tokens: number; at: number }>();
  private open = new Map<string, number>();
  private total = 0;
  /** The cookie that carries the token after the first visit (per port: cookies ignore ports). */
  readonly cookie: string;

  constructor(private opts: GuardOptions) {
    this.limits = { ...LIMITS, ...opts.limits };
    this.names = new Set(["localhost", "127.0.0.1", "[::1]", bracket(opts.host.toLowerCase())]);
    this.extra = new Set((opts.allowedHosts ?? []).map((h) => h.toLowerCase()));
    this.cookie = `gpt-ts-dashboard-${opts.port}`;
  }

  /**
   * The refusal for `req`, or null to serve it: 403 for a foreign `Host` or a cross-origin read of /api/, 401
   * without the token.
   */
  check(req: Request): Response | null {
    if (!this.hostAllowed(req.headers.get("host") ?? "")) return refuse(403);
    if (this.opts.token && !this.tokenOf(req)) {
      return refuse(
        401,
        "this dashboard needs its token: open the URL it printed when it started\n",
      );
    }
    const api = new URL(req.url).pathname.startsWith("/api/");
    if (api && !sameOrigin(req)) return refuse(403);
    return null;
  }

  /** Takes one request from `client`'s allowance; false when it is spent (answer 429). */
  take(client: string): boolean {
    const now = performance.now(), { ratePerS, burst } = this.limits;
    if (!this.buckets.has(client) && this.buckets.size >= 4096) this.buckets.clear();
    const b = this.buckets.get(client) ?? { tokens: burst, at: now };
    b.tokens = Math.min(burst, b.tokens + (now - b.at) / 1000 * ratePerS), b.at = now;
    this.buckets.set(client, b);
    if (b.tokens < 1) return false;
    b.tokens--;
    return true;
  }

  /** Admits one more event stream of `client`: its release, or null past a cap (answer 503). */
  admitStream(client: string): (() => void) | null {
    const n = this.open.get(client) ?? 0;
    if (n >= this.limits.streamsPerClient || this.total >= this.limits.streams) return null;
    this.open.set(client, n + 1), this.total++;
    let done = false;
    return () => {
      if (done) return;
      done = true, this.total--;
      const left = this.open.get(client)! - 1;
      left ? this.open.set(client, left) : this.open.delete(client);
    };
  }

  /** When `req` brought the token in its URL: a redirect to the same URL without it that sets the cookie. */
  adoptToken(req: Request): Response | null {
    const url = new URL(req.url);
    if (!this.opts.token || !url.searchParams.has("token")) return null;
    url.searchParams.delete("token");
    const cookie = `${this.cookie}=${this.opts.token}; Path=/; HttpOnly; SameSite=Lax`;
    return new Response(null, {
      status: 303,
      headers: { location: url.pathname + url.search, "set-cookie": cookie, ...SECURITY_HEADERS },
    });
  }

  private hostAllowed(value: string): boolean {
    const { name, port } = splitHost(value);
    if (this.extra.has(name) || this.extra.has(`${name}:${port}`)) return true;
    if (port !== String(this.opts.port)) return false;
    // listening on every address: the machine's own addresses are fine (rebinding needs a name)
    return this.names.has(name) || (isWildcard(this.opts.host) && isIpLiteral(name));
  }

  private tokenOf(req: Request): boolean {
    const token = this.opts.token!;
    const given = [
      new URL(req.url).searchParams.get("token"),
      req.headers.get("authorization")?.match(/^Bearer (\S+)$/i)?.[1],
      ...(req.headers.get("cookie") ?? "").split(/;\s*/).filter((c) =>
        c.startsWith(`${this.cookie}=`)
      ).map((c) => c.slice(this.cookie.length + 1)),
    ];
    return given.some((g) => g != null && sameSecret(g, token));
  }
}

/** Whether a browser says the request comes from the page itself (clients without these headers pass). */
function sameOrigin(req: Request): boolean {
  const origin = req.headers.get("origin"), site = req.headers.get("sec-fetch-site");
  if (site !== null && site !== "same-origin" && site !== "none") return false;
  if (origin === null) return true;
  try {
    return new URL(origin).host === (req.headers.get("host") ?? "").toLowerCase();
  } catch {
    return false;
  }
}

/** A refusal with the security headers and, where it helps a person, one line of why. */
export function refuse(
  status: number,
  why?: string,
  headers: Record<string, string> = {},
): Response {
  return new Response(why ?? null, {
    status,
    headers: { ...SECURITY_HEADERS, ...(why ? { "content-type": "text/plain" } : {}), ...headers },
  });
}
