// The Connect API of the server that serves the UI: one transport for
// every service, carrying the access token of the session.
import { createClient, type Interceptor, ConnectError, Code } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { FleetService } from "./gen/flotilla/v1alpha1/fleet_pb.js";
import { ResourceService } from "./gen/flotilla/v1alpha1/service_pb.js";
import { AuditService } from "./gen/flotilla/v1alpha1/service_pb.js";
import { IdentityService } from "./gen/flotilla/v1alpha1/identity_pb.js";

const tokenKey = "flotilla.token";

/** The session's access token, kept for the browser tab only. */
export const session = {
  token: (): string | null => sessionStorage.getItem(tokenKey),
  set: (t: string) => sessionStorage.setItem(tokenKey, t),
  clear: () => sessionStorage.removeItem(tokenKey),
};

const auth: Interceptor = (next) => async (req) => {
  const t = session.token();
  if (t) req.header.set("Authorization", "Bearer " + t);
  try {
    return await next(req);
  } catch (e) {
    // An expired or revoked token: back to the login page.
    if (e instanceof ConnectError && e.code === Code.Unauthenticated && t) {
      session.clear();
      window.dispatchEvent(new Event("flotilla:logout"));
    }
    throw e;
  }
};

const transport = createConnectTransport({
  baseUrl: window.location.origin,
  useBinaryFormat: true,
  interceptors: [auth],
});

export const fleet = createClient(FleetService, transport);
export const resources = createClient(ResourceService, transport);
export const audit = createClient(AuditService, transport);
export const identity = createClient(IdentityService, transport);

/** describe turns an API error into plain words, with its field paths. */
export function describe(e: unknown): string {
  if (e instanceof ConnectError) return e.rawMessage;
  if (e instanceof Error) return e.message;
  return String(e);
}
