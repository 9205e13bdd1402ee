//go:build tools

package main

// Importing a package of istio.io/api keeps the module in go.mod, and so pins
// the version whose kubernetes/customresourcedefinitions.gen.yaml `make fleet`
// copies to bin/istio-crds.yaml. The tools build tag keeps it out of the binary.
import _ "istio.io/api/networking/v1"
