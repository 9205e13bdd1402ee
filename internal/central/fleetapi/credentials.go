package fleetapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// DefaultTokenTTL is how long a join token lives unless asked otherwise.
const DefaultTokenTTL = time.Hour

// clusterToWrite reads the cluster fqn in tx for a caller who must take
// Write on it: missing when there is none (or the caller may not read it:
// both answer alike), else the reason it may not write it ("" when it may).
func (s *Server) clusterToWrite(ctx context.Context, tx store.Tx, fqn string) (missing bool, refusal string, err error) {
	chk, err := access.Checker(ctx, s.policies, tx, tx.Revision())
	if err != nil {
		return false, "", err
	}
	rec, err := tx.Get(ctx, fqn)
	if errors.Is(err, store.ErrNotFound) || err == nil && (rec.Kind != resource.KindCluster || !access.CanRead(chk, rec)) {
		return true, "", nil
	} else if err != nil {
		return false, "", err
	}
	if ok, why := chk.Can(authz.Write, resource.KindCluster, fqn); !ok {
		return false, why, nil // a refusal always says why
	}
	return false, "", nil
}

// Onboard implements FleetService.Onboard.
func (s *Server) Onboard(ctx context.Context, req *connect.Request[pb.OnboardRequest]) (*connect.Response[pb.OnboardResponse], error) {
	_, fqn, err := s.target(resource.KindCluster, req.Msg.GetFqn(), req.Msg.GetMetadata())
	if err != nil {
		return nil, err
	}
	ttl := DefaultTokenTTL
	if req.Msg.GetTtl() != nil {
		ttl = req.Msg.GetTtl().AsDuration()
		if ttl <= 0 || ttl > 7*24*time.Hour {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("ttl %s: give a duration between 1s and 168h", ttl))
		}
	}
	kind := agentcred.KindJoin
	if req.Msg.GetForce() {
		kind = agentcred.KindJoinForce
	}
	token, hash := agentcred.NewJoinToken()
	expires := s.now().Add(ttl).UTC()
	var (
		missing bool
		denied  error
	)
	err = s.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		// A join token lets its holder act as the cluster: it takes Write.
		var reason string
		if missing, reason, err = s.clusterToWrite(ctx, tx, fqn); err != nil || missing {
			return err
		}
		if reason != "" {
			denied = connect.NewError(connect.CodePermissionDenied, errors.New("permission denied: onboarding issues the cluster's credential; "+reason))
			return nil
		}
		// Only now, to one who may onboard it: whether its agent is there.
		if s.cp.AgentConnected(fqn) && !req.Msg.GetForce() {
			denied = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s has a connected agent: a new join would replace its credential; pass --force to move the cluster to a new agent", fqn))
			return nil
		}
		for _, k := range []string{agentcred.KindJoin, agentcred.KindJoinForce} {
			if err := tx.DeleteCredentials(ctx, fqn, k); err != nil {
				return err
			}
		}
		return tx.PutCredential(ctx, store.Credential{Hash: hash, Cluster: fqn, Kind: kind, Expires: expires})
	})
	if err != nil {
		return nil, s.internal("onboard", err)
	}
	if denied != nil {
		return nil, denied
	}
	if missing {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("cluster %s does not exist: apply a Cluster resource first", fqn))
	}
	return connect.NewResponse(&pb.OnboardResponse{Cluster: fqn, Token: token, ExpireTime: timestamppb.New(expires)}), nil
}

// RevokeCluster implements FleetService.RevokeCluster. It takes Write on
// the Cluster, as onboarding does: it undoes what onboarding issued (the
// power to act as the cluster), and who may hand that power out may take it
// back. It grants nobody anything, so it needs no SetPolicy; and Read is
// not enough, or any reader could cut a cluster off its configuration.
func (s *Server) RevokeCluster(ctx context.Context, req *connect.Request[pb.RevokeClusterRequest]) (*connect.Response[pb.RevokeClusterResponse], error) {
	_, fqn, err := s.target(resource.KindCluster, req.Msg.GetFqn(), req.Msg.GetMetadata())
	if err != nil {
		return nil, err
	}
	var (
		missing bool
		denied  error
		deleted int
	)
	err = s.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		var reason string
		if missing, reason, err = s.clusterToWrite(ctx, tx, fqn); err != nil || missing {
			return err
		}
		if reason != "" {
			denied = connect.NewError(connect.CodePermissionDenied, errors.New("permission denied: revoking takes the cluster's credential away, as onboarding issues it; "+reason))
			return nil
		}
		for _, k := range agentcred.Kinds() {
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
		return nil, s.internal("revoke the cluster's credentials", err)
	}
	if denied != nil {
		return nil, denied
	}
	if missing {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("cluster %s does not exist: check the name with `flotilla get clusters`", fqn))
	}
	// Committed: the credential no longer opens a stream anywhere. The
	// stream here ends now; on other replicas, at its next recheck.
	ended := s.cp.EndStream(fqn, "the cluster's credentials were revoked")
	s.log.Info("cluster credentials revoked", "cluster", fqn, "by", access.Actor(ctx), "credentials", deleted, "streamEnded", ended)
	return connect.NewResponse(&pb.RevokeClusterResponse{Cluster: fqn, Credentials: uint32(deleted), StreamEnded: ended}), nil
}
