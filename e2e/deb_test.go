package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/buildinfo"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// debFiles are the package's files and their modes; anything else in it is
// an error.
var debFiles = map[string]int64{
	"etc/mosquitto/conf.d/guard.conf":                               0o644,
	"usr/bin/guardctl":                                              0o755,
	"usr/lib/mosquitto-guard/mosquitto_guard.so":                    0o644,
	"usr/share/doc/mosquitto-guard/README.md.gz":                    0o644,
	"usr/share/doc/mosquitto-guard/changelog.Debian.gz":             0o644,
	"usr/share/doc/mosquitto-guard/copyright":                       0o644,
	"usr/share/doc/mosquitto-guard/examples/mosquitto.conf.example": 0o644,
	"usr/share/lintian/overrides/mosquitto-guard":                   0o644,
	"usr/share/man/man1/guardctl.1.gz":                              0o644,
}

// Issue 11, section 4: make deb's package, built by packaging/build-deb.sh
// from the plugin under test, installed with dpkg into a scratch root (its own
// dpkg database, never the system's). Its files, modes, owner and mtimes are
// as listed; guard.conf changes nothing until its lines are uncommented; then
// the INSTALLED .so, loaded by a real mosquitto, accepts the right password
// and refuses a wrong one, and the installed guardctl's ban refuses a client;
// Depends names mosquitto and a libc6 no older than the binaries' symbols;
// the man page documents exactly guardctl's commands and flags; lintian
// reports no error or warning that packaging/lintian-overrides does not
// explain; dpkg --verify and --purge leave nothing behind.
func TestDebianPackage(t *testing.T) {
	testenv.Need(t, "dpkg", "dpkg-deb", "dpkg-shlibdeps", "lintian", "git", "strip", "groff", "make",
		"mosquitto", "mosquitto_passwd", "redis-server", "redis-cli")
	repo := repoRoot()
	deb, epoch := buildDeb(t, repo)

	// lintian takes seconds: it runs while the rest is checked.
	lintian := testenv.StartProcess(t, t.TempDir(), "lintian", "--allow-root", "--fail-on", "none",
		"--display-info", "--pedantic", "--show-overrides", "--tag-display-limit", "0", deb)

	checkDebContents(t, deb, epoch)
	checkDebControl(t, deb, repo)

	root := t.TempDir()
	dpkg := func(args ...string) string {
		t.Helper()
		args = append([]string{"--root=" + root, "--admindir=" + filepath.Join(root, "var/lib/dpkg"),
			"--log=/dev/null", "--force-not-root"}, args...)
		out, err := exec.Command("dpkg", args...).CombinedOutput()
		require.NoError(t, err, "dpkg %v: %s", args, out)
		return string(out)
	}
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	testenv.WriteFile(t, filepath.Join(root, "var/lib/dpkg"), "status", "")
	// mosquitto and libc6 are not in the scratch database.
	dpkg("--force-depends", "-i", deb)
	status := dpkg("-s", "mosquitto-guard")
	assert.Contains(t, status, "Status: install ok installed")
	assert.Regexp(t, `(?m)^Conffiles:\n /etc/mosquitto/conf.d/guard.conf [0-9a-f]{32}$`, status)
	assert.Empty(t, dpkg("--verify", "mosquitto-guard"), "installed files match the package's md5sums")

	checkInstalledBinaries(t, root)
	checkManPage(t, root)
	checkInstalledBroker(t, root)

	// Removal: purge takes the conffile with the rest.
	dpkg("--purge", "mosquitto-guard")
	var left []string
	require.NoError(t, filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		rel, _ := filepath.Rel(root, path)
		if err == nil && !info.IsDir() && !strings.HasPrefix(rel, "var/lib/dpkg/") {
			left = append(left, rel)
		}
		return err
	}))
	assert.Empty(t, left, "files left after dpkg --purge")

	checkLintian(t, lintian, repo)
}

// repoRoot returns the repository's top directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// buildDeb runs packaging/build-deb.sh on the plugin under test and a
// guardctl built by the Makefile's rule (make build's when fresh), and
// returns the .deb and the SOURCE_DATE_EPOCH it was built with: the last
// commit's time.
func buildDeb(t *testing.T, repo string) (deb string, epoch int64) {
	t.Helper()
	out, err := exec.Command("git", "-C", repo, "log", "-1", "--format=%ct").Output()
	require.NoError(t, err)
	epoch, err = strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	require.NoError(t, err)

	gobin, err := exec.LookPath("go") // go test puts its go first on PATH
	require.NoError(t, err)
	cmd := exec.Command(filepath.Join(repo, "packaging/build-deb.sh"), pluginPath, debGuardctl(t, repo), t.TempDir())
	cmd.Env = append(withoutEnv("SOURCE_DATE_EPOCH", "DEB_VERSION"), "GO="+gobin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err = cmd.Output()
	require.NoError(t, err, "build-deb.sh: %s", stderr.String())
	t.Logf("build-deb.sh: %s", time.Since(start).Round(time.Millisecond))
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	deb = lines[len(lines)-1]
	require.FileExists(t, deb)
	return deb, epoch
}

// withoutEnv returns the environment without the named variables.
func withoutEnv(names ...string) []string {
	var env []string
next:
	for _, kv := range os.Environ() {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		env = append(env, kv)
	}
	return env
}

// debGuardctl returns make build's guardctl (next to $GUARD_PLUGIN) when it
// is newer than every source file, else builds one with the Makefile's rule
// (its hardening flags) into a temporary directory.
func debGuardctl(t *testing.T, repo string) string {
	t.Helper()
	if os.Getenv("GUARD_PLUGIN") != "" {
		built := filepath.Join(filepath.Dir(pluginPath), "guardctl")
		if fi, err := os.Stat(built); err == nil && !fi.ModTime().Before(newestSource(t, repo)) {
			return built
		}
	}
	dir := t.TempDir()
	out, err := exec.Command("make", "-s", "-C", repo, "BUILD="+dir, filepath.Join(dir, "guardctl")).CombinedOutput()
	require.NoError(t, err, "make guardctl: %s", out)
	return filepath.Join(dir, "guardctl")
}

// newestSource returns the latest modification time of the files make build
// builds from.
func newestSource(t *testing.T, repo string) time.Time {
	t.Helper()
	var newest time.Time
	require.NoError(t, filepath.WalkDir(repo, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || path == filepath.Join(repo, "build")) {
			return filepath.SkipDir
		}
		switch filepath.Ext(path) {
		case ".go", ".c", ".h", ".mod", ".sum":
		default:
			if d.Name() != "Makefile" {
				return nil
			}
		}
		if fi, err := d.Info(); err == nil && fi.ModTime().After(newest) {
			newest = fi.ModTime()
		}
		return nil
	}))
	return newest
}

// checkDebContents reads the package's file tree with dpkg-deb
// --fsys-tarfile: exactly debFiles, with their modes, directories 0755,
// everything root:root with the last commit's time.
func checkDebContents(t *testing.T, deb string, epoch int64) {
	t.Helper()
	data, err := exec.Command("dpkg-deb", "--fsys-tarfile", deb).Output()
	require.NoError(t, err)
	tr := tar.NewReader(bytes.NewReader(data))
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		assert.True(t, h.Uid == 0 && h.Gid == 0 && h.Uname == "root" && h.Gname == "root",
			"%s owned by %s:%s (%d:%d), want root:root", h.Name, h.Uname, h.Gname, h.Uid, h.Gid)
		assert.Equal(t, epoch, h.ModTime.Unix(), "%s: mtime is not the last commit's (SOURCE_DATE_EPOCH)", h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			assert.EqualValues(t, 0o755, h.Mode&0o7777, "directory %s mode %o", h.Name, h.Mode)
		case tar.TypeReg:
			mode, ok := debFiles[name]
			if assert.True(t, ok, "unexpected file %s in the package", h.Name) {
				assert.Equal(t, mode, h.Mode&0o7777, "%s mode %o, want %o", h.Name, h.Mode, mode)
			}
			seen[name] = true
		default:
			t.Errorf("unexpected %c entry %s in the package", h.Typeflag, h.Name)
		}
	}
	for name := range debFiles {
		assert.True(t, seen[name], "%s missing from the package", name)
	}
}

// checkDebControl checks the control fields dpkg-deb --info shows.
func checkDebControl(t *testing.T, deb, repo string) {
	t.Helper()
	info, err := exec.Command("dpkg-deb", "--info", deb).Output()
	require.NoError(t, err)
	field := func(name string) string {
		m := regexp.MustCompile(`(?m)^ ` + name + `: (.*)$`).FindStringSubmatch(string(info))
		require.NotNil(t, m, "no %s field in dpkg-deb --info:\n%s", name, info)
		return m[1]
	}
	arch, err := exec.Command("dpkg", "--print-architecture").Output()
	require.NoError(t, err)
	hash, err := exec.Command("git", "-C", repo, "rev-parse", "--short=7", "HEAD").Output()
	require.NoError(t, err)

	assert.Equal(t, "mosquitto-guard", field("Package"))
	assert.Equal(t, strings.TrimSpace(string(arch)), field("Architecture"))
	version := field("Version")
	assert.Regexp(t, `^[0-9][A-Za-z0-9.+~]*-1$`, version)
	assert.Contains(t, version, strings.TrimSpace(string(hash)), "the version names the commit")
	assert.Equal(t, "net", field("Section"))
	assert.Equal(t, "optional", field("Priority"))
	assert.NotEmpty(t, field("Maintainer"))
	assert.NotEmpty(t, field("Description"))
	assert.Equal(t, filepath.Base(deb), "mosquitto-guard_"+version+"_"+field("Architecture")+".deb")

	depends := field("Depends")
	assert.Contains(t, depends, "mosquitto (>= 2.0)")
	m := regexp.MustCompile(`libc6 \(>= ([0-9.]+)\)`).FindStringSubmatch(depends)
	require.NotNil(t, m, "Depends %q has no versioned libc6", depends)
	// No older than the newest glibc symbol version either binary imports.
	data, err := exec.Command("dpkg-deb", "--fsys-tarfile", deb).Output()
	require.NoError(t, err)
	tr := tar.NewReader(bytes.NewReader(data))
	need := "2.0"
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		if !strings.HasSuffix(h.Name, "/guardctl") && !strings.HasSuffix(h.Name, ".so") {
			continue
		}
		body, err := io.ReadAll(tr)
		require.NoError(t, err)
		f, err := elf.NewFile(bytes.NewReader(body))
		require.NoError(t, err, h.Name)
		syms, err := f.ImportedSymbols()
		require.NoError(t, err, h.Name)
		for _, s := range syms {
			if v, ok := strings.CutPrefix(s.Version, "GLIBC_"); ok && versionLess(need, v) {
				need = v
			}
		}
		// Versions needed without a symbol: the packed relative
		// relocations (-z pack-relative-relocs) need glibc 2.36's loader.
		needs, err := f.DynamicVersionNeeds()
		require.NoError(t, err, h.Name)
		for _, n := range needs {
			for _, d := range n.Needs {
				if d.Dep == "GLIBC_ABI_DT_RELR" && versionLess(need, "2.36") {
					need = "2.36"
				}
			}
		}
	}
	assert.False(t, versionLess(m[1], need), "Depends libc6 (>= %s), but the binaries use GLIBC_%s symbols", m[1], need)
}

// versionLess compares dotted numeric versions.
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// checkInstalledBinaries: stripped, and every Go module linked in has its
// paragraph in the copyright file.
func checkInstalledBinaries(t *testing.T, root string) {
	t.Helper()
	copyright, err := os.ReadFile(filepath.Join(root, "usr/share/doc/mosquitto-guard/copyright"))
	require.NoError(t, err)
	for _, bin := range []string{"usr/bin/guardctl", "usr/lib/mosquitto-guard/mosquitto_guard.so"} {
		path := filepath.Join(root, bin)
		f, err := elf.Open(path)
		require.NoError(t, err)
		assert.Nil(t, f.Section(".symtab"), "%s is not stripped", bin)
		assert.Nil(t, f.Section(".debug_info"), "%s keeps debug information", bin)
		f.Close()
		bi, err := buildinfo.ReadFile(path)
		require.NoError(t, err, bin)
		for _, dep := range bi.Deps {
			assert.Contains(t, string(copyright), "\nFiles: "+dep.Path+"/*\n", "copyright lacks %s, linked into %s", dep.Path, bin)
		}
	}
}

// checkInstalledBroker: guard.conf as installed loads nothing; with its lines
// uncommented (paths into the scratch root, the test's Redis and password
// file) a real mosquitto loads the installed .so, which checks passwords;
// the installed guardctl, given the broker's mosquitto.conf, bans a client.
func checkInstalledBroker(t *testing.T, root string) {
	t.Helper()
	installed, err := os.ReadFile(filepath.Join(root, "etc/mosquitto/conf.d/guard.conf"))
	require.NoError(t, err)
	for i, line := range strings.Split(string(installed), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			t.Errorf("guard.conf line %d is not a comment: %q (installing would change the broker)", i+1, line)
		}
	}
	// Debian's mosquitto.conf includes conf.d: the installed file adds no plugin.
	main := testenv.WriteFile(t, t.TempDir(), "mosquitto.conf", "include_dir "+filepath.Join(root, "etc/mosquitto/conf.d")+"\n")
	conf, err := config.ReadBrokerConfig(main)
	require.NoError(t, err)
	assert.Empty(t, conf.Plugins, "the installed guard.conf loads a plugin")

	e := &env{t: t, dir: t.TempDir()}
	e.redis = testenv.StartRedis(t)
	e.passwd = filepath.Join(e.dir, "passwd")
	e.addUser("alice", "alice-pw")
	// What the README tells the operator to do: uncomment the plugin's lines.
	enabled, n := uncommentPluginLines(string(installed), map[string]string{
		"/usr/lib/mosquitto-guard/": filepath.Join(root, "usr/lib/mosquitto-guard") + "/",
		"127.0.0.1:6379":            e.redis.Addr,
		"/etc/mosquitto/passwd":     e.passwd,
	})
	require.Equal(t, 3, n, "guard.conf's commented plugin lines (auth_plugin, redis_addr, password_file)")
	confd := filepath.Join(e.dir, "conf.d")
	require.NoError(t, os.Mkdir(confd, 0o755))
	testenv.WriteFile(t, confd, "guard.conf", enabled)
	e.broker = testenv.StartMosquitto(t, "persistence false\ninclude_dir "+confd+"\n")
	require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 5*time.Second), "the installed plugin did not report ready")
	assert.Contains(t, e.broker.Output(), filepath.Join(root, "usr/lib/mosquitto-guard/mosquitto_guard.so"))

	assert.EqualValues(t, accepted, e.connect(as("127.0.61.1", "deb-1", "alice", "alice-pw")))
	assert.EqualValues(t, refused, e.connect(as("127.0.61.2", "deb-2", "alice", "wrong-pw")))

	guardctl := filepath.Join(root, "usr/bin/guardctl")
	out, err := exec.Command(guardctl, "--config", e.broker.ConfPath, "ban", "ip", "127.0.61.3", "--reason", "deb test").CombinedOutput()
	require.NoError(t, err, "installed guardctl ban: %s", out)
	require.Eventually(t, func() bool {
		return e.connect(as("127.0.61.3", "deb-3", "alice", "alice-pw")) == refused
	}, 5*time.Second, 50*time.Millisecond, "the installed guardctl's ban did not refuse the client")
	out, err = exec.Command(guardctl, "list", "--json", "--redis-addr", e.redis.Addr).CombinedOutput()
	require.NoError(t, err, "installed guardctl list: %s", out)
	assert.Contains(t, string(out), `"guard:block:ip:127.0.61.3"`)
}

// uncommentPluginLines returns conf with its commented auth_ lines
// uncommented and each key of repl replaced by its value, and how many
// lines it uncommented.
func uncommentPluginLines(conf string, repl map[string]string) (string, int) {
	lines := strings.Split(conf, "\n")
	n := 0
	for i, l := range lines {
		if !strings.HasPrefix(l, "#auth_") {
			continue
		}
		l = strings.TrimPrefix(l, "#")
		for from, to := range repl {
			l = strings.ReplaceAll(l, from, to)
		}
		lines[i] = l
		n++
	}
	return strings.Join(lines, "\n"), n
}

// checkLintian waits for lintian and fails on every error or warning it
// printed: an overridden tag shows as O:, with the override's comment.
// Every override must say why (a comment above it).
func checkLintian(t *testing.T, p *testenv.Process, repo string) {
	t.Helper()
	err, done := p.Wait(2 * time.Minute)
	require.True(t, done, "lintian still running after 2 minutes")
	out := p.Output()
	require.NoError(t, err, "lintian failed:\n%s", out)
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "W: ") {
			t.Errorf("lintian: %s (fix it, or override it with a reason in packaging/lintian-overrides)", line)
		} else if line != "" {
			t.Logf("lintian: %s", line)
		}
	}
	overrides, err := os.ReadFile(filepath.Join(repo, "packaging/lintian-overrides"))
	require.NoError(t, err)
	commented := false
	for _, line := range strings.Split(string(overrides), "\n") {
		switch l := strings.TrimSpace(line); {
		case l == "":
			commented = false
		case strings.HasPrefix(l, "#"):
			commented = true
		case !commented:
			t.Errorf("lintian override %q has no comment above it saying why", l)
		}
	}
}

// gunzip returns the decompressed content of a .gz file.
func gunzip(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	b, err := io.ReadAll(zr)
	require.NoError(t, err)
	return string(b)
}
