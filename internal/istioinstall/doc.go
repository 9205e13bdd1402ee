// Package istioinstall renders Istio's control plane for one cluster from an
// IstioInstallation: Istio's own Helm charts, embedded with the Istio module
// this binary is built with, rendered by Helm's engine with the values that
// the installation and the cluster give.
//
//	IstioInstallationSpec + Cluster{Name, Network, MeshID}
//	        │  Check: version shipped, revision without dots, values known to the charts
//	        ▼
//	  values per chart: global (hub, tag, meshID, clusterName, network) + the user's
//	        │
//	        ▼
//	  base (CRDs, default validation)       when the installation is the cluster's base
//	  istiod (revision, tags, meshConfig)   always
//	  gateway, per IstioGateway             ingress, eastwest (networkGateway), egress
//	  istio-cni, ztunnel                    ambient profile, with base
//	        │
//	        ▼
//	  []*unstructured.Unstructured          what the compiler hands the applier
//
// Rendering does no I/O beyond reading the embedded charts, which are parsed
// once per process and never changed; equal input gives equal output.
package istioinstall
