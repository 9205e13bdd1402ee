// OIDC login from the browser: authorization code with PKCE (RFC 7636)
// against the issuer the server names (GetLoginConfig), then the ID token
// is exchanged for the server's own access token (IdentityService.Token).
import { identity, session } from "./api";

const pending = "flotilla.oidc";
export const callbackPath = "/login/callback";

type Discovery = { authorization_endpoint: string; token_endpoint: string };

async function discover(issuer: string): Promise<Discovery> {
  const res = await fetch(issuer.replace(/\/$/, "") + "/.well-known/openid-configuration");
  if (!res.ok) throw new Error(`the OIDC issuer ${issuer} answered ${res.status} for its discovery document`);
  return res.json();
}

function random(bytes: number): string {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  return base64url(b);
}

function base64url(b: Uint8Array): string {
  return btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** startOIDC sends the browser to the issuer's login page. */
export async function startOIDC(issuer: string, clientID: string, returnTo: string): Promise<void> {
  const d = await discover(issuer);
  const verifier = random(32);
  const challenge = base64url(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier))));
  const state = random(16);
  sessionStorage.setItem(pending, JSON.stringify({ verifier, state, issuer, clientID, returnTo }));
  const q = new URLSearchParams({
    response_type: "code",
    client_id: clientID,
    redirect_uri: location.origin + callbackPath,
    scope: "openid email profile groups",
    code_challenge: challenge,
    code_challenge_method: "S256",
    state,
  });
  location.assign(d.authorization_endpoint + "?" + q.toString());
}

/** finishOIDC completes a login on the callback page and returns where to go. */
export async function finishOIDC(query: URLSearchParams): Promise<string> {
  const raw = sessionStorage.getItem(pending);
  sessionStorage.removeItem(pending);
  if (query.get("error")) throw new Error(`the OIDC issuer refused the login: ${query.get("error")} ${query.get("error_description") ?? ""}`);
  if (!raw) throw new Error("no login was started in this tab: start again from the login page");
  const p = JSON.parse(raw) as { verifier: string; state: string; issuer: string; clientID: string; returnTo: string };
  if (query.get("state") !== p.state) throw new Error("the login's state does not match: start again from the login page");
  const d = await discover(p.issuer);
  const res = await fetch(d.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: query.get("code") ?? "",
      redirect_uri: location.origin + callbackPath,
      client_id: p.clientID,
      code_verifier: p.verifier,
    }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok || !body.id_token) throw new Error(`the OIDC issuer did not give an ID token: ${body.error ?? res.status} ${body.error_description ?? ""}`);
  const t = await identity.token({ grant: { case: "oidcIdToken", value: body.id_token } });
  session.set(t.accessToken);
  return p.returnTo || "/";
}
