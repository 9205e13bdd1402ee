package istio

import (
	"strings"
	"testing"
)

func TestLoadCRDsSkipsEmptyDocuments(t *testing.T) {
	crds, err := LoadCRDs("testdata/two-crds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range crds {
		names = append(names, c.GetName())
	}
	if got, want := strings.Join(names, ","), "widgets.example.com,gadgets.example.com"; got != want {
		t.Errorf("loaded %s, want %s", got, want)
	}
}

func TestLoadCRDsRejectsOtherKindsNamingTheDocument(t *testing.T) {
	_, err := LoadCRDs("testdata/not-a-crd.yaml")
	if err == nil || !strings.Contains(err.Error(), "document 1") || !strings.Contains(err.Error(), "ConfigMap") {
		t.Fatalf("got error %v, want one naming document 1 and kind ConfigMap", err)
	}
}
