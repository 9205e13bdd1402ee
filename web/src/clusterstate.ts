// A resource's state in a cluster, as the cluster's agent acknowledged it:
// "Applied", "Failed", or on its way ("Pending", …).

/** stateBadge is the badge class that shows a state: ok, bad, or on its way. */
export function stateBadge(state: string): string {
  return state === "Applied" ? "badge ok" : state === "Failed" ? "badge bad" : "badge warn";
}
