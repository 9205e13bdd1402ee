package central

import (
	"context"
	"encoding/json"
	"maps"
	"time"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/central/discovery"
	"flotilla.io/flotilla/internal/central/intent"
)

// The bundles' multicluster slices are package discovery's, under its own
// lock: a registry change is turned into slices outside c.mu, which is
// taken only to move the changed clusters' versions and wake their
// streams.
//
//	registry change ─┐
//	input change ────┴─(50 ms)─▶ discovery.Update (its lock) ─▶ changed clusters ─(c.mu)─▶ versions, wake

// moveVersions moves the versions of the clusters whose slice changed, and
// adds those that moved to moved. Callers hold c.mu.
func (c *Central) moveVersions(changed map[string]bool, moved map[string]string) {
	for fqn := range changed {
		if cl := c.clusters[fqn]; cl != nil {
			if v := c.version(fqn); v != cl.version {
				cl.version, moved[fqn] = v, v
			}
		}
	}
}

// updateSlices brings the slices up to date at once, moves the versions of
// the clusters whose slice changed (adding them to moved), and returns
// those clusters. Callers hold c.mu, tell the status store what moved, and
// wake the clusters' streams (wake) once they want them to send.
func (c *Central) updateSlices(moved map[string]string) map[string]bool {
	changed := c.disc.Update(c.idx.Reach)
	c.moveVersions(changed, moved)
	return changed
}

// wake wakes the streams of the given clusters. Callers hold c.mu.
func (c *Central) wake(fqns map[string]bool) {
	for fqn := range fqns {
		if cl := c.clusters[fqn]; cl != nil && cl.conn != nil {
			cl.conn.poke()
		}
	}
}

// multiclusterDebounce gathers a burst of registry changes into one
// update.
const multiclusterDebounce = 50 * time.Millisecond

// runMulticluster updates the slices after every registry or input
// change, until ctx ends.
func (c *Central) runMulticluster(ctx context.Context) {
	for {
		select {
		case <-c.services.Changed():
		case <-c.disc.Wake():
		case <-ctx.Done():
			return
		}
		select {
		case <-time.After(multiclusterDebounce):
		case <-ctx.Done():
			return
		}
		// The edge slices need the groups' reach: copied under c.mu, for
		// the few groups edges name.
		var reach map[string]map[string]bool
		if groups := c.disc.EdgeGroups(); len(groups) > 0 {
			reach = map[string]map[string]bool{}
			c.mu.Lock()
			for _, g := range groups {
				reach[g] = maps.Clone(c.idx.Reach(g))
			}
			c.mu.Unlock()
		}
		start := time.Now()
		changed := c.disc.Update(func(g string) map[string]bool { return reach[g] })
		c.metrics.discovery.Observe(time.Since(start).Seconds())
		// Store the runtime state before the streams send what was made of
		// it: a server that restarts then never knows less than its clusters
		// were sent (and other replicas' clusters need it now, not at the
		// next flush tick).
		if err := c.status.FlushRuntime(ctx); err != nil && ctx.Err() == nil {
			c.log.Error("write runtime snapshots", "err", err)
		}
		c.mu.Lock()
		moved := map[string]string{}
		c.moveVersions(changed, moved)
		c.status.SetDesired(c.rev, moved)
		c.wake(changed)
		c.mu.Unlock()
	}
}

// version is the cluster's bundle version: its intent's, with its
// multicluster slice. Callers hold c.mu.
func (c *Central) version(fqn string) string {
	return c.disc.Version(c.idx.Version(fqn), fqn)
}

// contentWith is the cluster's bundle as JSON, with mc as its slice.
// Callers hold c.mu.
func (c *Central) contentWith(fqn string, mc *bundle.Multicluster) ([]byte, error) {
	out, err := c.idx.Content(fqn)
	if err != nil || mc == nil {
		return out, err
	}
	raw, err := json.Marshal(mc)
	if err != nil {
		return nil, err
	}
	// The intent's JSON object ends in "}": add the slice as its last field.
	out = append(out[:len(out)-1:len(out)-1], `,"multicluster":`...)
	out = append(out, raw...)
	return append(out, '}'), nil
}

// content is the cluster's bundle as JSON, with its multicluster slice.
// Callers hold c.mu.
func (c *Central) content(fqn string) ([]byte, error) {
	return c.contentWith(fqn, c.disc.Slice(fqn))
}

// sentBundle is what a stream delivered to its agent: the intent by group
// (see index.sent), and its place in the slice's changes.
type sentBundle struct {
	groups map[string]intent.SentGroup
	mc     *discovery.Mark
}

// outgoing is what a stream sends now of a cluster's bundle: its version
// and content, whole or as a delta against what the stream delivered
// (nil: whole), and what it will then have delivered (nil unless deltas).
// The version and the slice are read together, under the discovery's
// lock, so they always agree. Callers hold c.mu.
func (c *Central) outgoing(fqn string, delivered *sentBundle, deltas bool) (version string, content []byte, next *sentBundle, err error) {
	intent := c.idx.Version(fqn)
	if intent == "" {
		return "", nil, nil, nil
	}
	var since *discovery.Mark
	if delivered != nil {
		since = delivered.mc
	}
	send := c.disc.Next(fqn, since)
	version = intent
	if send.Has {
		version = bundle.WithMulticlusterDigest(intent, send.Digest)
	}
	if delivered != nil {
		d := c.idx.Delta(fqn, delivered.groups)
		if send.SetWhole {
			d.SetMulticluster, d.Multicluster = true, send.Whole
		} else {
			d.MulticlusterPatch = send.Patch
		}
		content, err = json.Marshal(d)
	} else {
		content, err = c.contentWith(fqn, send.Whole)
	}
	if deltas {
		next = &sentBundle{groups: c.idx.Sent(fqn), mc: send.Mark}
	}
	return version, content, next, err
}

// bundleOf is the cluster's bundle, with its multicluster slice. Callers
// hold c.mu.
func (c *Central) bundleOf(fqn string) *bundle.Bundle {
	b := c.idx.Bundle(fqn)
	if b != nil {
		b.Multicluster = c.disc.Slice(fqn)
	}
	return b
}
