package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/bundle"
)

// assembler joins the parts of a bundle that travels in several messages.
// It belongs to one stream; parts arrive in order.
type assembler struct {
	version string
	next    int32
	buf     bytes.Buffer
}

// add takes one message and returns the whole bundle once its last part
// arrived (nil before). A part out of order, or of another version before
// the current one is complete, starts over.
func (as *assembler) add(m *agentv1.Bundle) (*agentv1.Bundle, error) {
	if m.GetParts() <= 1 {
		as.reset()
		return m, nil
	}
	if m.GetPart() == 0 {
		as.reset()
		as.version = m.GetVersion()
	}
	if m.GetVersion() != as.version || m.GetPart() != as.next {
		want := as.next
		as.reset()
		return nil, fmt.Errorf("bundle %s: part %d of %d arrived, expected part %d: dropping the partial bundle", m.GetVersion(), m.GetPart(), m.GetParts(), want)
	}
	as.buf.Write(m.GetContent())
	as.next++
	if as.next < m.GetParts() {
		return nil, nil
	}
	whole := &agentv1.Bundle{Version: m.GetVersion(), Revision: m.GetRevision(), Base: m.GetBase(), Content: bytes.Clone(as.buf.Bytes())}
	as.reset()
	return whole, nil
}

func (as *assembler) reset() {
	as.version, as.next = "", 0
	as.buf.Reset()
}

// receiveBundle decodes a whole bundle, or applies a delta to the bundle
// it is against, checks that the result hashes to its version, stores it
// in the cluster, and only then makes it the one to reconcile: what is
// applied is always recoverable.
func (a *Agent) receiveBundle(ctx context.Context, m *agentv1.Bundle) error {
	b := &bundle.Bundle{}
	content := m.GetContent()
	if base := m.GetBase(); base != "" {
		a.mu.Lock()
		have, version := a.current, a.version
		a.mu.Unlock()
		if have == nil || version != base {
			return fmt.Errorf("bundle %s is a delta against %s, but this agent holds %q", m.GetVersion(), base, version)
		}
		var d bundle.Delta
		if err := json.Unmarshal(content, &d); err != nil {
			return fmt.Errorf("decode the delta of bundle %s: %w", m.GetVersion(), err)
		}
		b = have.Apply(d)
		var err error
		if content, err = json.Marshal(b); err != nil {
			return fmt.Errorf("encode bundle %s: %w", m.GetVersion(), err)
		}
	} else if err := json.Unmarshal(content, b); err != nil {
		return fmt.Errorf("decode bundle %s: %w", m.GetVersion(), err)
	}
	if got := b.Version(); got != m.GetVersion() {
		return fmt.Errorf("bundle content hashes to %s, not its version %s", got, m.GetVersion())
	}
	if err := a.cache.store(ctx, m.GetVersion(), m.GetRevision(), content); err != nil {
		return err
	}
	a.log.Info("bundle received", "version", m.GetVersion(), "revision", m.GetRevision(), "objects", len(b.Objects), "bytes", len(m.GetContent()), "delta", m.GetBase() != "")
	a.setBundle(b, m.GetVersion(), m.GetRevision())
	return nil
}
