package fleetapi

import (
	"context"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
)

// ListServices lists the fleet's services from the registry, with only the
// instances the caller sees: those in namespaces of workspaces it may read,
// or of no workspace in clusters it may read (access.View). A service with
// no such instance is left out, and only settings it may read are named as
// exposing it.
func (s *Server) ListServices(ctx context.Context, req *connect.Request[pb.ListServicesRequest]) (*connect.Response[pb.ListServicesResponse], error) {
	v, err := s.caller(ctx)
	if err != nil {
		return nil, s.internal("list services", err)
	}
	out := &pb.ListServicesResponse{}
	// The caller's view reads nothing: it may be asked under the registry's lock.
	services := s.cp.Services(v.SeesCluster, registry.Filter{Namespace: req.Msg.GetNamespace(), Name: req.Msg.GetName()})
	kept := services[:0]
	for _, svc := range services {
		ins := svc.Instances[:0]
		for _, in := range svc.Instances {
			if v.Sees(in.Cluster, svc.Namespace) {
				ins = append(ins, in)
			}
		}
		if svc.Instances = ins; len(ins) > 0 {
			kept = append(kept, svc)
		}
	}
	services = kept
	exposed := s.cp.ExposedBy(services)
	for i, svc := range services {
		var by []string
		for _, fqn := range exposed[i] {
			if v.SeesObject(resource.KindWorkspaceSetting, fqn) {
				by = append(by, fqn)
			}
		}
		info := &pb.FleetServiceInfo{Namespace: svc.Namespace, Name: svc.Name, Conflicts: svc.Conflicts, ExposedBy: by}
		for _, p := range svc.Ports {
			info.Ports = append(info.Ports, &pb.FleetServicePort{Name: p.Name, Number: p.Number, Protocol: p.Protocol})
		}
		for _, in := range svc.Instances {
			si := &pb.ServiceInstance{Cluster: in.Cluster, Ready: in.Ready, Stale: in.Stale, LastSeen: timestamppb.New(in.LastSeen)}
			for _, l := range in.Localities {
				si.Endpoints = append(si.Endpoints, &pb.LocalityCount{Region: l.GetRegion(), Zone: l.GetZone(), Ready: l.GetReady()})
			}
			info.Instances = append(info.Instances, si)
		}
		out.Services = append(out.Services, info)
	}
	return connect.NewResponse(out), nil
}
