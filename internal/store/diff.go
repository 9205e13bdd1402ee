package store

import (
	"bytes"
	"encoding/json"
	"sort"
	"strconv"
)

// Diff returns the field-level changes from old to new over the parts a user
// writes: metadata.labels, metadata.annotations and spec. A zero Record
// stands for "absent", so Diff(Record{}, r) lists every field of r as added.
// Paths are dotted; list elements are compared whole, by position, as
// path[i]. The result is sorted by path.
func Diff(old, new Record) []Change {
	var out []Change
	walk("metadata.labels", stringMapValue(old.Labels), stringMapValue(new.Labels), &out)
	walk("metadata.annotations", stringMapValue(old.Annotations), stringMapValue(new.Annotations), &out)
	walk("spec", rawValue(old.Spec), rawValue(new.Spec), &out)
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

func stringMapValue(m map[string]string) any {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func rawValue(raw json.RawMessage) any {
	if len(raw) == 0 {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return string(raw)
	}
	return v
}

// walk appends the changes between a and b at path. nil means absent.
func walk(path string, a, b any, out *[]Change) {
	am, aIsMap := a.(map[string]any)
	bm, bIsMap := b.(map[string]any)
	switch {
	case aIsMap && bIsMap:
		keys := make(map[string]bool, len(am)+len(bm))
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		for k := range keys {
			walk(path+"."+k, am[k], bm[k], out)
		}
		return
	case aIsMap && b == nil:
		for k, v := range am {
			walk(path+"."+k, v, nil, out)
		}
		return
	case a == nil && bIsMap:
		for k, v := range bm {
			walk(path+"."+k, nil, v, out)
		}
		return
	}
	al, aIsList := a.([]any)
	bl, bIsList := b.([]any)
	if aIsList && bIsList && len(al) == len(bl) {
		for i := range al {
			walk(path+"["+strconv.Itoa(i)+"]", al[i], bl[i], out)
		}
		return
	}
	ja, jb := marshal(a), marshal(b)
	if bytes.Equal(ja, jb) {
		return
	}
	*out = append(*out, Change{Path: path, Old: ja, New: jb})
}

func marshal(v any) json.RawMessage {
	if v == nil {
		return nil
	}
	b, _ := json.Marshal(v) // values came from JSON; they marshal
	return b
}
