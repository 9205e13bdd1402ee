package apiserver

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// CreateServiceAccountKey implements IdentityService.CreateServiceAccountKey.
func (s *Identity) CreateServiceAccountKey(ctx context.Context, req *connect.Request[pb.CreateServiceAccountKeyRequest]) (*connect.Response[pb.CreateServiceAccountKeyResponse], error) {
	fqn := req.Msg.GetFqn()
	id, pubPEM, privPEM, err := authn.NewServiceAccountKey()
	if err != nil {
		return nil, internal(s.log, "create key", err)
	}
	var (
		refusal error
		rev     int64
	)
	err = s.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		chk, err := access.Checker(ctx, s.auth.Policies, tx, tx.Revision())
		if err != nil {
			return err
		}
		rec, err := tx.Get(ctx, fqn)
		if errors.Is(err, store.ErrNotFound) || err == nil && (rec.Kind != authz.KindServiceAccount || !access.CanRead(chk, rec)) {
			refusal = connect.NewError(connect.CodeNotFound, fmt.Errorf("ServiceAccount %s not found", fqn))
			return errRollback
		} else if err != nil {
			return err
		}
		// A key lets its holder act as the account: the same rule as
		// adding one to spec.keys with apply.
		if why := access.KeyGuardFull(chk, fqn, fmt.Sprintf("a new key (%s)", id)); why != "" {
			refusal = connect.NewError(connect.CodePermissionDenied, errors.New(why))
			return errRollback
		}
		var spec pb.ServiceAccountSpec
		if err := protojson.Unmarshal(rec.Spec, &spec); err != nil {
			return err
		}
		spec.Keys = append(spec.Keys, &pb.ServiceAccountKey{Id: id, PublicKey: pubPEM})
		if rec.Spec, err = resource.SpecJSON(&spec); err != nil {
			return err
		}
		if _, err := tx.Put(ctx, rec); err != nil {
			return err
		}
		rev = tx.Revision()
		return nil
	})
	if refusal != nil {
		return nil, refusal
	}
	if err != nil {
		return nil, internal(s.log, "create key", err)
	}
	return connect.NewResponse(&pb.CreateServiceAccountKeyResponse{KeyId: id, PrivateKey: privPEM, Revision: rev}), nil
}
