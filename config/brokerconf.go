package config

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/mosquitto-guard/mosquitto-guard/internal/fileread"
)

// Bounds on what ReadBrokerConfig reads: Mosquitto has none, but a reader
// run by guardctl or inside the broker must not be made to read without end.
// Depth needs no bound: Mosquitto follows include_dir in the main file only.
const (
	maxConfigFiles = 1000     // the main file and its include_dir files
	maxConfigBytes = 64 << 20 // all of them together
)

// BrokerConfig is what a mosquitto.conf says about plugins and ACLs, read the
// way Mosquitto 2.0 reads it (src/conf.c, config__read_file_core, the same in
// 2.0.11 and 2.0.20):
//   - a line whose first byte is '#' is a comment, and so is an empty one;
//     trailing CR and LF are cut, nothing else: "  # x" is the variable "#";
//   - words are separated by spaces only (not tabs);
//   - include_dir DIR, in the main file only, reads DIR's *.conf files in
//     place, sorted as Mosquitto's scmp_p sorts them (see scmp);
//   - each file starts on the default listener and without a current plugin;
//     a listener line makes a new listener current until the file ends;
//   - auth_opt_NAME and plugin_opt_NAME belong to the last auth_plugin or
//     plugin line before them in the same file; their value is the rest of
//     the line after one space, leading spaces and tabs skipped;
//   - with per_listener_settings true, acl_file and plugin lines belong to
//     the current listener, else to the whole broker.
type BrokerConfig struct {
	// Paths are the main files, in the order read: mosquitto reads each of
	// its -c arguments in turn into the same settings.
	Paths []string

	// PerListenerSettings is per_listener_settings: each listener has its
	// own plugins and acl_file.
	PerListenerSettings bool

	// Listeners are the sets of security settings, in the order Mosquitto
	// initialises their plugins. With per_listener_settings true: the
	// listener lines in the order read, then the default listener (the lines
	// of each file before its first listener line) if anything set it up.
	// Otherwise one, named "every listener", for the whole file.
	Listeners []*Listener

	// Plugins are the plugin lines in the order their plugin_init runs.
	Plugins []*Plugin

	// all holds every set of settings, whether Mosquitto uses it or not.
	all []*Listener
}

// Listener is one set of security settings: a listener's with
// per_listener_settings true, else the whole broker's.
type Listener struct {
	Name    string // "listener 1884 127.0.0.1", "default listener" or "every listener"
	ACLFile string // its acl_file, "" if none
	// PasswordFile is its password_file, "" if none: Mosquitto's own
	// password check, which backend defer leaves the passwords to.
	PasswordFile string
	Plugins      []*Plugin // its plugin lines, in order

	setUp bool // for the default listener: something makes Mosquitto create it
}

// Plugin is one auth_plugin or plugin line and its options.
type Plugin struct {
	Path string
	// Options holds its auth_opt_NAME and plugin_opt_NAME lines by NAME, with
	// the values plugin_init gets; of two lines with one NAME, the later.
	Options map[string]string
	// OptionLines holds the line number of each option in Options, in File
	// (an option belongs to a plugin line of its own file).
	OptionLines map[string]int
	File        string    // the file holding the line
	Line        int       // its line number there
	Listener    *Listener // whose settings it belongs to
}

// Where names the line, as "file:line".
func (p *Plugin) Where() string { return fmt.Sprintf("%s:%d", p.File, p.Line) }

// OptionWhere names the line of option name, as "file:line"; the plugin's
// line if the option is not given.
func (p *Plugin) OptionWhere(name string) string {
	if n, ok := p.OptionLines[name]; ok {
		return fmt.Sprintf("%s:%d", p.File, n)
	}
	return p.Where()
}

// ReadBrokerConfig reads the mosquitto.conf at each path and the files they
// include. Several paths are read as mosquitto reads several -c arguments
// (config__parse_args calls config__read for each): in order, into the same
// settings, so per_listener_settings, the listeners and whether a security
// setting was seen carry over, and each file is a main file, following its
// own include_dir lines. A relative path or include_dir is relative to the
// working directory, as for Mosquitto. The BrokerConfig is never nil: it
// holds every line read. The error, an Errors, lists each line Mosquitto
// would refuse among those it reads here (and each file it cannot read;
// past a bound, the first file not read), so a config Mosquitto starts with
// gives none, unless it is past the bounds or cannot be read by this
// process.
func ReadBrokerConfig(paths ...string) (*BrokerConfig, error) {
	r := &confReader{
		conf:   &BrokerConfig{Paths: paths},
		global: &Listener{Name: "every listener"},
		deflt:  &Listener{Name: "default listener"},
	}
	for _, path := range paths {
		r.readFile(path, 0)
	}
	r.finish()
	if len(r.errs) > 0 {
		return r.conf, r.errs
	}
	return r.conf, nil
}

// confReader holds the state Mosquitto keeps across files.
type confReader struct {
	conf        *BrokerConfig
	perListener bool
	global      *Listener   // the security settings without per_listener_settings
	deflt       *Listener   // the default listener's
	listeners   []*Listener // one per listener line, in order
	security    bool        // a security setting was read (cur_security_options set)
	files       int
	bytes       int64
	bounded     bool // a bound was met: no more files are read
	errs        Errors
}

// fileState is what Mosquitto keeps per file: config__read_file_core's locals.
type fileState struct {
	path     string
	level    int       // 0 for the main file
	listener *Listener // cur_listener
	plugin   *Plugin   // cur_auth_plugin_config
}

func (r *confReader) errorf(f *fileState, n int, format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s:%d: "+format, append([]any{f.path, n}, args...)...))
}

// readFile reads one file at include level level; none once a bound is met.
func (r *confReader) readFile(path string, level int) {
	if r.bounded {
		return
	}
	data, err := r.load(path)
	if err != nil {
		r.errs = append(r.errs, err)
		return
	}
	f := &fileState{path: path, level: level, listener: r.deflt}
	for n, line := range strings.Split(string(data), "\n") {
		r.line(f, n+1, line)
	}
}

// load returns a whole file, whatever the length of its lines (Mosquitto's
// fgets_extending reads lines of any length), within the bounds.
func (r *confReader) load(path string) ([]byte, error) {
	r.files++
	if r.files > maxConfigFiles {
		r.bounded = true
		return nil, fmt.Errorf("%s and any file after it: not read: more than %d config files", path, maxConfigFiles)
	}
	// O_NONBLOCK: opening a FIFO without a writer returns at once rather
	// than blocking the broker's start; reading a regular file ignores it.
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err // names the file
	}
	defer fh.Close()
	// Only a regular file: a FIFO or a device could block or never end.
	if st, err := fh.Stat(); err != nil || !st.Mode().IsRegular() {
		what := "not a regular file"
		if err == nil && st.IsDir() {
			what = "a directory" // Mosquitto: "Config file %s is a directory."
		}
		return nil, fmt.Errorf("%s: %s", path, what)
	}
	// Raw reads: a pseudo-file such as /proc/kmsg is regular by its mode,
	// and Go's reads of it would wait for data.
	data, err := fileread.ReadAll(fh, maxConfigBytes-r.bytes)
	if errors.Is(err, fileread.ErrTooLarge) {
		r.bounded = true
		return nil, fmt.Errorf("%s and any file after it: not read: config files over %d bytes in all", path, maxConfigBytes)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r.bytes += int64(len(data))
	return data, nil
}

// line handles line n of f as config__read_file_core does.
func (r *confReader) line(f *fileState, n int, line string) {
	// C strings end at the first NUL; only trailing CR and LF are cut.
	if i := strings.IndexByte(line, 0); i >= 0 {
		line = line[:i]
	}
	if line == "" || line[0] == '#' || line[0] == '\r' {
		return
	}
	line = strings.TrimRight(line, "\r\n")
	// strtok_r(buf, " "): the first word; rest starts after the one space
	// that ends it (nothing if the line ends there).
	word, rest, _ := strings.Cut(strings.TrimLeft(line, " "), " ")
	if word == "" {
		return
	}
	switch {
	case strings.HasPrefix(word, "auth_opt_"), strings.HasPrefix(word, "plugin_opt_"):
		r.option(f, n, word, rest)
	case word == "auth_plugin", word == "plugin":
		r.plugin(f, n, rest)
	case word == "acl_file":
		sec := r.securityLine(f, n, word)
		path := trimBlanks(rest)
		switch {
		case path == "":
			r.errorf(f, n, "empty acl_file value")
		case sec.ACLFile != "":
			r.errorf(f, n, "duplicate acl_file value")
		default:
			sec.ACLFile = path
		}
	case word == "password_file", word == "psk_file":
		sec := r.securityLine(f, n, word)
		sec.setUp = true
		if word == "password_file" {
			sec.PasswordFile = trimBlanks(rest)
		}
	case slices.Contains([]string{"allow_anonymous", "allow_zero_length_clientid", "auto_id_prefix", "check_retain_source"}, word):
		r.securityLine(f, n, word)
	case word == "per_listener_settings":
		r.perListenerLine(f, n, rest)
	case word == "listener":
		r.listener(f, n, rest)
	case word == "port":
		r.deflt.setUp = true
	case word == "include_dir":
		r.includeDir(f, n, rest)
	}
}

// securityLine returns the settings a security line of f belongs to
// (conf__set_cur_security_options).
func (r *confReader) securityLine(f *fileState, n int, word string) *Listener {
	r.security = true
	if !r.perListener {
		return r.global
	}
	if word == "password_file" || word == "psk_file" || word == "auth_plugin" || word == "plugin" {
		f.listener.setUp = true
	}
	return f.listener
}

func (r *confReader) plugin(f *fileState, n int, rest string) {
	sec := r.securityLine(f, n, "plugin")
	path := trimBlanks(rest)
	if path == "" {
		r.errorf(f, n, "empty auth_plugin value")
		f.plugin = nil
		return
	}
	p := &Plugin{Path: path, Options: map[string]string{}, OptionLines: map[string]int{}, File: f.path, Line: n, Listener: sec}
	sec.Plugins = append(sec.Plugins, p)
	f.plugin = p
}

// shownWord is an option line's first word as an error may show it: up to
// its first tab or control character, after which a value (a password) may
// sit (atk61).
func shownWord(word string) string {
	if head, cut := NameHead(word); cut {
		return quoteOdd(head) + "..."
	}
	return quoteOdd(word)
}

func (r *confReader) option(f *fileState, n int, word, rest string) {
	prefix := "auth_opt_"
	if strings.HasPrefix(word, "plugin_opt_") {
		prefix = "plugin_opt_"
	}
	name := word[len(prefix):]
	value := strings.TrimLeft(rest, " \t")
	switch {
	case f.plugin == nil:
		r.errorf(f, n, "%s: no auth_plugin or plugin line before it in this file", shownWord(word))
	case len(name) < 3:
		r.errorf(f, n, "%s: invalid option name", shownWord(word))
	case value == "":
		// Mosquitto names the option without its prefix; the value may hide
		// behind a tab, which does not separate words.
		// What follows a tab may be the value, a password: not shown.
		if head, cut := NameHead(name); cut {
			r.errorf(f, n, "empty %s... value (a tab does not separate an option from its value; the rest of the line is not shown)", quoteOdd(head))
		} else {
			r.errorf(f, n, "empty %s value (a tab does not separate an option from its value)", quoteOdd(name))
		}
	default:
		f.plugin.Options[name], f.plugin.OptionLines[name] = value, n
	}
}

func (r *confReader) perListenerLine(f *fileState, n int, rest string) {
	v, _, _ := strings.Cut(strings.TrimLeft(rest, " "), " ")
	switch v {
	case "true", "1":
		if r.security {
			r.errorf(f, n, "per_listener_settings must be set before any other security settings")
		}
		r.perListener = true
	case "false", "0":
		r.perListener = false
	default:
		r.errorf(f, n, "invalid per_listener_settings value %q", v)
	}
}

// listener starts a new listener: "listener PORT [ADDRESS]".
func (r *confReader) listener(f *fileState, n int, rest string) {
	words := strings.FieldsFunc(rest, func(c rune) bool { return c == ' ' })
	if len(words) == 0 {
		r.errorf(f, n, "empty listener value")
		return
	}
	name := "listener " + words[0]
	if len(words) > 1 && words[1][0] != '#' {
		name += " " + words[1]
	}
	l := &Listener{Name: name}
	r.listeners = append(r.listeners, l)
	f.listener = l
}

// trimBlanks is misc__trimblanks: C isspace bytes off both ends.
func trimBlanks(s string) string { return strings.Trim(s, " \t\n\v\f\r") }

// finish orders the listeners and plugins as Mosquitto initialises them.
func (r *confReader) finish() {
	c := r.conf
	c.PerListenerSettings = r.perListener
	c.all = append([]*Listener{r.global}, r.listeners...)
	c.all = append(c.all, r.deflt)
	if r.perListener {
		c.Listeners = append(c.Listeners, r.listeners...)
		if r.deflt.setUp {
			c.Listeners = append(c.Listeners, r.deflt)
		}
	} else {
		c.Listeners = []*Listener{r.global}
	}
	for _, l := range c.Listeners {
		c.Plugins = append(c.Plugins, l.Plugins...)
	}
}
