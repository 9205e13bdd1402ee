// A small history router: every page has a URL (deep links), and the
// browser's back and forward move between pages.
import { useEffect, useState, type ReactNode, type MouseEvent } from "react";

const changed = "flotilla:navigate";

/** navigate moves to a path of the UI, adding a history entry. */
export function navigate(to: string, replace = false) {
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  window.dispatchEvent(new Event(changed));
}

/** useLocation returns the current path and query, following navigation. */
export function useLocation(): { path: string; query: URLSearchParams } {
  const read = () => ({ path: location.pathname, query: new URLSearchParams(location.search) });
  const [loc, setLoc] = useState(read);
  useEffect(() => {
    const on = () => setLoc(read());
    window.addEventListener("popstate", on);
    window.addEventListener(changed, on);
    return () => {
      window.removeEventListener("popstate", on);
      window.removeEventListener(changed, on);
    };
  }, []);
  return loc;
}

/** Link is an anchor that navigates without reloading the page. */
export function Link(props: { to: string; children: ReactNode; className?: string; "aria-label"?: string }) {
  const onClick = (e: MouseEvent<HTMLAnchorElement>) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(props.to);
  };
  return (
    <a href={props.to} onClick={onClick} className={props.className} aria-label={props["aria-label"]}>
      {props.children}
    </a>
  );
}
