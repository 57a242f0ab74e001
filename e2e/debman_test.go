package e2e

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// manPending are commands guardctl.1 documents before guardctl has them, each
// with where it is being added; delete an entry once that is merged (the
// command is then checked as every other).
var manPending = map[string]string{}

// flagName matches a long flag in help text, or in roff once \- is -.
var flagName = regexp.MustCompile(`--([a-z][a-z0-9-]*)`)

// checkManPage checks the installed guardctl.1.gz: groff formats it without a
// warning, it carries the package's version, and it documents exactly the
// commands of the installed guardctl's -h and, for each, exactly the flags of
// its -h (its own under COMMANDS, the shared ones under CONNECTION FLAGS).
func checkManPage(t *testing.T, root string) {
	t.Helper()
	src := gunzip(t, filepath.Join(root, "usr/share/man/man1/guardctl.1.gz"))
	assert.NotContains(t, src, "@VERSION@")
	assert.NotContains(t, src, "@DATE@")

	groff := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	groff.Stdin = strings.NewReader(src)
	var warn bytes.Buffer
	groff.Stderr = &warn
	require.NoError(t, groff.Run(), "groff: %s", warn.String())
	assert.Empty(t, warn.String(), "groff warnings on guardctl.1")

	commands, conn := manSections(src)
	require.NotEmpty(t, conn, "guardctl.1 has no CONNECTION FLAGS")
	guardctl := filepath.Join(root, "usr/bin/guardctl")
	help := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(guardctl, args...).CombinedOutput()
		require.NoError(t, err, "guardctl %v: %s", args, out)
		return string(out)
	}
	have := helpCommands(help("-h"))
	require.NotEmpty(t, have, "no commands in guardctl -h")
	for _, name := range have {
		own, ok := commands[name]
		if !ok {
			t.Errorf("guardctl.1 does not document the command %s (add a .SS under COMMANDS)", name)
			continue
		}
		documented := union(own, conn)
		helpFlags := flagSet(help(name, "-h"))
		if missing := minus(helpFlags, documented); len(missing) > 0 {
			t.Errorf("guardctl.1 does not document %s's flags %v (a .TP under its .SS, or under CONNECTION FLAGS if every command takes it)", name, missing)
		}
		if extra := minus(documented, helpFlags); len(extra) > 0 {
			t.Errorf("guardctl.1 documents flags %v for %s, which guardctl %s -h does not know", extra, name, name)
		}
	}
	for name := range commands {
		if contains(have, name) {
			continue
		}
		if where, ok := manPending[name]; ok {
			t.Logf("guardctl.1 documents %s, not in this guardctl yet (%s)", name, where)
			continue
		}
		t.Errorf("guardctl.1 documents the command %s, which guardctl -h does not list", name)
	}
}

// manSections returns, from guardctl.1's roff, the flags of each command
// (its .SS under COMMANDS, to the next .SS or .SH) and those under
// CONNECTION FLAGS.
func manSections(src string) (commands map[string]map[string]bool, conn map[string]bool) {
	commands, conn = map[string]map[string]bool{}, map[string]bool{}
	var section string
	var cur map[string]bool
	for _, line := range strings.Split(src, "\n") {
		line = strings.ReplaceAll(line, `\-`, "-")
		switch {
		case strings.HasPrefix(line, ".SH "):
			section, cur = strings.Trim(strings.TrimPrefix(line, ".SH "), `"`), nil
			if section == "CONNECTION FLAGS" {
				cur = conn
			}
			continue
		case strings.HasPrefix(line, ".SS ") && section == "COMMANDS":
			name := strings.Fields(strings.Trim(strings.TrimPrefix(line, ".SS "), `"`))[0]
			cur = map[string]bool{}
			commands[name] = cur
		}
		if cur != nil && !strings.HasPrefix(line, `.\"`) {
			for _, m := range flagName.FindAllStringSubmatch(line, -1) {
				cur[m[1]] = true
			}
		}
	}
	return commands, conn
}

// helpCommands returns the command names listed under "Commands:" in
// guardctl -h.
func helpCommands(help string) []string {
	_, rest, ok := strings.Cut(help, "\nCommands:\n")
	if !ok {
		return nil
	}
	var names []string
	for _, line := range strings.Split(rest, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			break
		}
		names = append(names, f[0])
	}
	return names
}

func flagSet(text string) map[string]bool {
	s := map[string]bool{}
	for _, m := range flagName.FindAllStringSubmatch(text, -1) {
		s[m[1]] = true
	}
	return s
}

func union(a, b map[string]bool) map[string]bool {
	u := map[string]bool{}
	for k := range a {
		u[k] = true
	}
	for k := range b {
		u[k] = true
	}
	return u
}

// minus returns the sorted names in a and not in b.
func minus(a, b map[string]bool) []string {
	var d []string
	for k := range a {
		if !b[k] {
			d = append(d, "--"+k)
		}
	}
	sort.Strings(d)
	return d
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
