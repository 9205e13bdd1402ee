import { useEffect, useState, type FormEvent } from "react";
import { identity, session, describe } from "../api";
import { navigate } from "../router";
import { finishOIDC, startOIDC } from "../oidc";

/**
 * Login trades a credential for a session: the bootstrap administrator
 * credential (fla_…) through IdentityService.Token, or an access token
 * that `flotilla login` issued, checked with WhoAmI.
 */
export function Login({ onLogin }: { onLogin: () => void }) {
  const [credential, setCredential] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const [oidc, setOIDC] = useState<{ issuer: string; clientID: string } | null>(null);
  useEffect(() => {
    identity.getLoginConfig({}).then(
      (c) => c.oidcIssuer && setOIDC({ issuer: c.oidcIssuer, clientID: c.oidcClientId }),
      () => {},
    );
  }, []);
  const loginOIDC = async () => {
    setBusy(true);
    setError("");
    try {
      await startOIDC(oidc!.issuer, oidc!.clientID, location.pathname + location.search);
    } catch (err) {
      setError(describe(err));
      setBusy(false);
    }
  };
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError("");
    try {
      const c = credential.trim();
      if (c.startsWith("fla_")) {
        const res = await identity.token({ grant: { case: "bootstrapCredential", value: c } });
        session.set(res.accessToken);
      } else {
        session.set(c);
        await identity.whoAmI({});
      }
      onLogin();
    } catch (err) {
      session.clear();
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main className="login">
      <h1>Flotilla</h1>
      {oidc && (
        <p>
          <button type="button" onClick={loginOIDC} disabled={busy}>
            Log in with OIDC
          </button>{" "}
          <span className="muted">({oidc.issuer})</span>
        </p>
      )}
      <form onSubmit={submit} aria-label="Log in">
        <label htmlFor="credential">Credential or access token</label>
        <input
          id="credential"
          type="password"
          autoComplete="off"
          value={credential}
          onChange={(e) => setCredential(e.target.value)}
          placeholder="fla_… from flotilla-data/bootstrap-admin, or a token from `flotilla login`"
          required
        />
        <button type="submit" disabled={busy}>
          {busy ? "Logging in…" : "Log in"}
        </button>
        {error && (
          <p role="alert" className="error">
            {error}
          </p>
        )}
      </form>
    </main>
  );
}

/** OIDCCallback finishes an OIDC login, then goes where the login started. */
export function OIDCCallback({ onLogin }: { onLogin: () => void }) {
  const [error, setError] = useState("");
  useEffect(() => {
    finishOIDC(new URLSearchParams(location.search)).then(
      (to) => {
        onLogin();
        navigate(to, true);
      },
      (e) => setError(describe(e)),
    );
  }, []);
  return (
    <main className="login">
      <h1>Flotilla</h1>
      {error ? (
        <p role="alert" className="error">
          {error} <a href="/">Back to the login page</a>
        </p>
      ) : (
        <p className="muted">Logging in…</p>
      )}
    </main>
  );
}
