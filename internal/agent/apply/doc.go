// Package apply is the agent's applier: it makes a cluster's Kubernetes API
// hold exactly the native Istio objects that the compiler produced for it, and
// keeps them there.
//
//	compiled objects ([]*unstructured.Unstructured, labelled and owner-annotated)
//	        |
//	        v
//	  Apply(ctx, desired) ------------------------------------------+
//	        |  1. prepare: GVK -> GVR (discovery RESTMapper),          |
//	        |     content hash -> flotilla.io/hash annotation          |
//	        |  2. list managed objects of every known kind             |
//	        |  3. per object: skip if the live hash and content match, |
//	        |     refuse if the live object is not Flotilla's,         |
//	        |     else server-side apply (field manager, force)        |
//	        |  4. prune managed, owner-annotated objects not desired   |
//	        v                                                          |
//	     Report (one ObjectResult per object, sorted)                  |
//	                                                                   | desired set
//	  Run(ctx): dynamic informers on managed objects of known kinds <--+
//	        |  event -> workqueue -> compare with desired
//	        |  deleted or modified -> re-apply (same path) -> OnDrift(Drift)
//	        v
//	     cluster converged again within seconds
//
// Objects are identified by group, kind, namespace and name: the API version
// is how the applier talks about an object, not part of its identity, so a
// kind that moves from v1beta1 to v1 is updated, not deleted and re-created.
//
// The applier only ever writes objects that carry the label
// app.kubernetes.io/managed-by=flotilla, and only ever deletes those that
// also carry the flotilla.io/owner annotation. An object that a user created
// under the same name is reported as a failure and left alone.
package apply
