import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { identity, session } from "./api";
import { Link, useLocation } from "./router";
import { Login, OIDCCallback } from "./pages/Login";
import { callbackPath } from "./oidc";
import { Overview } from "./pages/Overview";
import { ClusterPage } from "./pages/Cluster";
import { AuditPage } from "./pages/Audit";
import { ApplyPage, ConfigBrowser, ObjectPage } from "./pages/Config";
import { ServicesPage } from "./pages/Services";
import "./styles.css";

function App() {
  const [authed, setAuthed] = useState(() => session.token() !== null);
  const [subject, setSubject] = useState("");
  const { path } = useLocation();
  useEffect(() => {
    const out = () => setAuthed(false);
    window.addEventListener("flotilla:logout", out);
    return () => window.removeEventListener("flotilla:logout", out);
  }, []);
  useEffect(() => {
    if (authed) identity.whoAmI({}).then((r) => setSubject(r.subject), () => {});
  }, [authed]);
  if (path === callbackPath) return <OIDCCallback onLogin={() => setAuthed(true)} />;
  if (!authed) return <Login onLogin={() => setAuthed(true)} />;

  let page;
  if (path === "/" || path === "") page = <Overview />;
  else if (path.startsWith("/clusters/")) page = <ClusterPage fqn={decodeURIComponent(path.slice("/clusters/".length))} />;
  else if (path === "/audit") page = <AuditPage />;
  else if (path === "/config") page = <ConfigBrowser />;
  else if (path === "/services") page = <ServicesPage />;
  else if (path === "/apply") page = <ApplyPage />;
  else if (path.startsWith("/config/")) {
    const rest = decodeURIComponent(path.slice("/config/".length));
    const slash = rest.indexOf("/");
    page = <ObjectPage kind={rest.slice(0, slash)} fqn={rest.slice(slash + 1)} />;
  }
  else
    page = (
      <section>
        <h1>Not found</h1>
        <p>
          No page at {path}. <Link to="/">Go to the fleet.</Link>
        </p>
      </section>
    );
  const logout = () => {
    session.clear();
    setAuthed(false);
  };
  return (
    <>
      <header className="top">
        <nav aria-label="Main">
          <strong>Flotilla</strong>
          <Link to="/">Fleet</Link>
          <Link to="/services">Services</Link>
          <Link to="/config">Configuration</Link>
          <Link to="/audit">Audit log</Link>
        </nav>
        <div>
          <span className="muted" data-testid="subject">
            {subject}
          </span>{" "}
          <button type="button" onClick={logout}>
            Log out
          </button>
        </div>
      </header>
      <main>{page}</main>
    </>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
