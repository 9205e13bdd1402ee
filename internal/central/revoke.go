package central

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// RevokeCluster implements FleetService.RevokeCluster. It takes Write on
// the Cluster, as onboarding does: it undoes what onboarding issued (the
// power to act as the cluster), and who may hand that power out may take it
// back. It grants nobody anything, so it needs no SetPolicy; and Read is
// not enough, or any reader could cut a cluster off its configuration.
func (f Fleet) RevokeCluster(ctx context.Context, req *connect.Request[pb.RevokeClusterRequest]) (*connect.Response[pb.RevokeClusterResponse], error) {
	_, fqn, err := f.target(resource.KindCluster, req.Msg.GetFqn(), req.Msg.GetMetadata())
	if err != nil {
		return nil, err
	}
	var (
		missing bool
		denied  error
		deleted int
	)
	err = f.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		chk, err := access.Checker(ctx, f.Policies, tx, tx.Revision())
		if err != nil {
			return err
		}
		rec, err := tx.Get(ctx, fqn)
		if errors.Is(err, store.ErrNotFound) || err == nil && (rec.Kind != resource.KindCluster || !access.CanRead(chk, rec)) {
			missing = true
			return nil
		} else if err != nil {
			return err
		}
		if ok, reason := chk.Can(authz.Write, resource.KindCluster, fqn); !ok {
			denied = connect.NewError(connect.CodePermissionDenied, errors.New("permission denied: revoking takes the cluster's credential away, as onboarding issues it; "+reason))
			return nil
		}
		for _, k := range agentKinds {
			n, err := tx.CountCredentials(ctx, fqn, k)
			if err != nil {
				return err
			}
			if err := tx.DeleteCredentials(ctx, fqn, k); err != nil {
				return err
			}
			deleted += n
		}
		return nil
	})
	if err != nil {
		return nil, f.internal("revoke the cluster's credentials", err)
	}
	if denied != nil {
		return nil, denied
	}
	if missing {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("cluster %s does not exist: check the name with `flotilla get clusters`", fqn))
	}
	// Committed: the credential no longer opens a stream anywhere. The
	// stream here ends now; on other replicas, at its next recheck.
	ended := f.endStream(fqn, "the cluster's credentials were revoked")
	f.log.Info("cluster credentials revoked", "cluster", fqn, "by", access.Actor(ctx), "credentials", deleted, "streamEnded", ended)
	return connect.NewResponse(&pb.RevokeClusterResponse{Cluster: fqn, Credentials: uint32(deleted), StreamEnded: ended}), nil
}
