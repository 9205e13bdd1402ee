package apply

import (
	"cmp"
	"errors"
	"slices"
)

// Action is what the applier did to one object.
type Action string

// The actions of an ObjectResult.
const (
	// Created: the object did not exist and was created.
	Created Action = "Created"
	// Updated: the object existed with other content and was server-side applied.
	Updated Action = "Updated"
	// Unchanged: the live object already matched; nothing was written.
	Unchanged Action = "Unchanged"
	// Deleted: the object was managed by Flotilla, no longer desired, and pruned.
	Deleted Action = "Deleted"
	// Released: no longer desired, but its resource policy says keep
	// (KeepAnnotation): Flotilla's label and annotations were removed instead.
	Released Action = "Released"
	// Held: desired with HoldAnnotation, so not moved to its new content
	// yet: it is kept at the content the applier last made it hold, or, if
	// there is none, left as it is (or absent) and not pruned. Message says
	// what it waits for.
	Held Action = "Held"
	// Failed: the object could not be made to match; Message says why.
	Failed Action = "Failed"
)

// ObjectResult is the outcome for one object that Apply touched or examined.
// A Failed result with an empty Name concerns a whole kind (for example a
// list for pruning that the API server refused).
type ObjectResult struct {
	// Owner is the FQN of the Flotilla resource the object belongs to
	// (its flotilla.io/owner annotation); empty if unknown.
	Owner      string
	APIVersion string
	Kind       string
	Namespace  string
	Name       string
	Action     Action
	// Message explains a failure; it is empty for the other actions.
	Message string
}

// Report is the outcome of one Apply: one result per object, sorted by API
// version, kind, namespace and name. The applier does not keep a reference to
// it; callers may modify it.
type Report struct {
	Results []ObjectResult
}

// Failed returns the failed results, in report order.
func (r Report) Failed() []ObjectResult {
	var out []ObjectResult
	for _, res := range r.Results {
		if res.Action == Failed {
			out = append(out, res)
		}
	}
	return out
}

// Count returns how many results have action a.
func (r Report) Count(a Action) int {
	n := 0
	for _, res := range r.Results {
		if res.Action == a {
			n++
		}
	}
	return n
}

// ByOwner groups the results by owner FQN, each group in report order.
// Results without an owner are grouped under "".
func (r Report) ByOwner() map[string][]ObjectResult {
	out := map[string][]ObjectResult{}
	for _, res := range r.Results {
		out[res.Owner] = append(out[res.Owner], res)
	}
	return out
}

// Err returns nil if nothing failed, else an error joining every failure's
// message.
func (r Report) Err() error {
	var errs []error
	for _, res := range r.Failed() {
		errs = append(errs, errors.New(res.Message))
	}
	return errors.Join(errs...)
}

// sortResults orders results deterministically.
func sortResults(results []ObjectResult) {
	slices.SortFunc(results, func(a, b ObjectResult) int {
		return cmp.Or(
			cmp.Compare(a.APIVersion, b.APIVersion),
			cmp.Compare(a.Kind, b.Kind),
			cmp.Compare(a.Namespace, b.Namespace),
			cmp.Compare(a.Name, b.Name),
			cmp.Compare(a.Action, b.Action),
			cmp.Compare(a.Message, b.Message),
		)
	})
}

// Change is how a managed object drifted from its desired state.
type Change string

// The changes of a Drift.
const (
	// ChangeDeleted: the object was deleted by someone else.
	ChangeDeleted Change = "deleted"
	// ChangeModified: the object's content no longer matches the desired content.
	ChangeModified Change = "modified"
)

// Drift reports that a desired object was changed behind the applier's back,
// and whether the applier restored it.
type Drift struct {
	Owner      string
	APIVersion string
	Kind       string
	Namespace  string
	Name       string
	Change     Change
	// Restored is true once the desired content is back in the cluster.
	Restored bool
	// Message explains a failed restore; it is empty when Restored.
	Message string
}
