// Command flotilla operates a fleet of Istio service meshes: `flotilla
// server` runs the management plane; the other verbs are its client.
package main

import (
	"os"

	"flotilla.io/flotilla/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
