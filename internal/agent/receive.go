package agent

import (
	"context"
	"encoding/json"
	"fmt"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/bundle"
)

// receiveBundle decodes a bundle, stores it in the cluster, and only then
// makes it the one to reconcile: what is applied is always recoverable.
func (a *Agent) receiveBundle(ctx context.Context, m *agentv1.Bundle) error {
	var b bundle.Bundle
	if err := json.Unmarshal(m.GetContent(), &b); err != nil {
		return fmt.Errorf("decode bundle %s: %w", m.GetVersion(), err)
	}
	if got := b.Version(); got != m.GetVersion() {
		return fmt.Errorf("bundle content hashes to %s, not its version %s", got, m.GetVersion())
	}
	if err := a.cache.store(ctx, m.GetVersion(), m.GetContent()); err != nil {
		return err
	}
	a.log.Info("bundle received", "version", m.GetVersion(), "objects", len(b.Objects))
	a.setBundle(&b, m.GetVersion())
	return nil
}
