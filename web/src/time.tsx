import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";

/** Time shows a timestamp in local time, with its UTC value on hover. */
export function Time({ ts, relative }: { ts?: Timestamp; relative?: boolean }) {
  if (!ts) return <span className="muted">never</span>;
  const d = timestampDate(ts);
  const utc = d.toISOString().replace(".000Z", "Z");
  let text = d.toLocaleString();
  if (relative) {
    const s = Math.max(0, Math.round((Date.now() - d.getTime()) / 1000));
    text = s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : d.toLocaleString();
  }
  return (
    <time dateTime={utc} title={utc + " (UTC)"}>
      {text}
    </time>
  );
}
