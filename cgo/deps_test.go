package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Issue 12 bounds the plugin's idle cost (12 MB of the broker's RSS), most
// of which is the shared object's own pages: the packages below made it
// 5.2 MB larger and an idle broker 2.2 MB bigger, for what the plugin's
// metrics package does in a few hundred lines (metrics/registry.go). They
// must not come back into the plugin by way of a new import.
func TestPluginLeavesOutHeavyPackages(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	require.NoError(t, err)
	for _, pkg := range strings.Fields(string(out)) {
		for _, heavy := range []string{"net/http", "google.golang.org/protobuf/", "github.com/prometheus/", "expvar", "html/template", "text/template"} {
			assert.False(t, pkg == heavy || strings.HasPrefix(pkg, heavy), "the plugin links %s", pkg)
		}
	}
}
