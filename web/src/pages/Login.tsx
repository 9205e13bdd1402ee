import { useState, type FormEvent } from "react";
import { identity, session, describe } from "../api";

/**
 * Login trades a credential for a session: the bootstrap administrator
 * credential (fla_…) through IdentityService.Token, or an access token
 * that `flotilla login` issued, checked with WhoAmI.
 */
export function Login({ onLogin }: { onLogin: () => void }) {
  const [credential, setCredential] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
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
