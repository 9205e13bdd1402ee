package gslb

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// DNSEndpointGVR is external-dns's DNSEndpoint resource.
var DNSEndpointGVR = schema.GroupVersionResource{Group: "externaldns.k8s.io", Version: "v1alpha1", Resource: "dnsendpoints"}

// The label and annotations on the DNSEndpoints Flotilla writes; it lists,
// changes and deletes only those.
const (
	labelManagedBy   = "app.kubernetes.io/managed-by"
	managedBy        = "flotilla"
	annotationZone   = "flotilla.io/zone"
	annotationRecord = "flotilla.io/owner"
)

// EndpointName is the name of a hostname's DNSEndpoint object.
func EndpointName(host string) string {
	n := "flotilla-" + strings.ReplaceAll(strings.TrimSuffix(host, "."), ".", "-")
	if len(n) > 253 {
		n = n[:253]
	}
	return strings.TrimRight(n, "-")
}

// externalDNS writes DNSEndpoint objects into clusters, by kubeconfig name.
type externalDNS struct {
	clients map[string]dynamic.Interface
}

// Publish makes namespace z.Namespace of the cluster hold one DNSEndpoint
// per wanted hostname of zone z (its addresses as A/AAAA targets), labelled
// as Flotilla's, and deletes Flotilla's DNSEndpoints of the zone it no
// longer wants. A same-named DNSEndpoint that is not Flotilla's is left
// alone and reported.
func (x externalDNS) Publish(ctx context.Context, z Zone, want map[string]published) (map[string]string, error) {
	dyn, ok := x.clients[z.Kubeconfig]
	if !ok {
		return nil, fmt.Errorf("kubeconfig %q is not one of flotilla server --dns-kubeconfig", z.Kubeconfig)
	}
	res := dyn.Resource(DNSEndpointGVR).Namespace(z.Namespace)
	conflicts := map[string]string{}
	for host, p := range want {
		name := EndpointName(host)
		cur, err := res.Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return conflicts, fmt.Errorf("read DNSEndpoint %s/%s: %w", z.Namespace, name, err)
		case cur.GetLabels()[labelManagedBy] != managedBy:
			conflicts[host] = fmt.Sprintf("DNSEndpoint %s/%s exists and is not Flotilla's: it is left alone", z.Namespace, name)
			continue
		}
		var endpoints []any
		for _, typ := range []string{"A", "AAAA"} {
			var targets []any
			for _, a := range p.addrs {
				if a.Is4() == (typ == "A") {
					targets = append(targets, a.String())
				}
			}
			if len(targets) > 0 {
				endpoints = append(endpoints, map[string]any{"dnsName": strings.TrimSuffix(host, "."), "recordType": typ, "targets": targets, "recordTTL": int64(p.ttl)})
			}
		}
		obj := map[string]any{
			"apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint",
			"metadata": map[string]any{"name": name, "namespace": z.Namespace,
				"labels":      map[string]any{labelManagedBy: managedBy},
				"annotations": map[string]any{annotationZone: z.Name, annotationRecord: p.fqn}},
			"spec": map[string]any{"endpoints": endpoints},
		}
		body, err := json.Marshal(obj)
		if err != nil {
			return conflicts, err
		}
		force := true
		if _, err := res.Patch(ctx, name, types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: managedBy, Force: &force}); err != nil {
			return conflicts, fmt.Errorf("write DNSEndpoint %s/%s: %w", z.Namespace, name, err)
		}
	}
	list, err := res.List(ctx, metav1.ListOptions{LabelSelector: labelManagedBy + "=" + managedBy})
	if err != nil {
		return conflicts, fmt.Errorf("list DNSEndpoints in %s: %w", z.Namespace, err)
	}
	wanted := map[string]bool{}
	for host := range want {
		wanted[EndpointName(host)] = true
	}
	for _, o := range list.Items {
		if o.GetAnnotations()[annotationZone] != z.Name || wanted[o.GetName()] {
			continue
		}
		if err := res.Delete(ctx, o.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return conflicts, fmt.Errorf("delete DNSEndpoint %s/%s: %w", z.Namespace, o.GetName(), err)
		}
	}
	return conflicts, nil
}
