package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// edit describes one of the commands that write or remove a list key: ban,
// unban, allow, unallow.
type edit struct {
	name   string    // the command: "ban"
	kind   keys.Kind // the list it edits
	remove bool      // DEL rather than SET
	done   string    // what the output says was done: "banned"
}

var (
	banEdit     = edit{name: "ban", kind: keys.Block, done: "banned"}
	unbanEdit   = edit{name: "unban", kind: keys.Block, remove: true, done: "unbanned"}
	allowEdit   = edit{name: "allow", kind: keys.Allow, done: "allowed"}
	unallowEdit = edit{name: "unallow", kind: keys.Allow, remove: true, done: "unallowed"}
)

const scopeUsage = `SCOPE and VALUE:
  clientid ID       a client ID, taken exactly as given: any bytes; ':', '*',
                    '?', '[' and spaces are literal, nothing is a pattern
  username NAME     a username, taken exactly as given
  ip ADDRESS        one IPv4 or IPv6 address, written in the form the plugin
                    matches: ::ffff:192.0.2.1 as 192.0.2.1, IPv6 lower-case
                    and shortened (RFC 5952), any %zone dropped
  cidr NETWORK      a range with its host bits zero, in canonical form:
                    203.0.113.0/24, 2001:db8::/32 (203.0.113.5/24 is refused,
                    with the form expected)
  cert ID|FILE      a client certificate: its ID, the SHA-256 of its DER in
                    hex (as openssl x509 -noout -fingerprint -sha256 prints
                    it; colons and upper case are taken), or the path of a
                    PEM file holding it (the first CERTIFICATE block is
                    used), whose ID is computed
Flags may come before or after SCOPE VALUE; a VALUE starting with '-' goes
after '--': guardctl CMD clientid -- -dev-1

`

// usage returns the text of guardctl <e.name> -h.
func (e edit) usage() string {
	what := "a ban"
	if e.kind == keys.Allow {
		what = "an allowlist entry"
	}
	scopes := strings.Replace(scopeUsage, "CMD", e.name, 1)
	var b strings.Builder
	if e.remove {
		fmt.Fprintf(&b, "Usage: guardctl %s SCOPE VALUE [connection flags]\n\n", e.name)
		fmt.Fprintf(&b, "Delete the key <prefix>%s:SCOPE:VALUE (%s)\n", e.kind, what)
		b.WriteString("and publish its name on <prefix>changes, so every broker's replica drops it\n" +
			"at once. Says whether the key existed; exits 0 either way.\n\n")
		b.WriteString(scopes)
		return b.String()
	}
	fmt.Fprintf(&b, "Usage: guardctl %s SCOPE VALUE [--for DURATION] [--reason TEXT] [connection flags]\n\n", e.name)
	fmt.Fprintf(&b, "Write the key <prefix>%s:SCOPE:VALUE (%s), its value the\n", e.kind, what)
	b.WriteString("reason, and publish its name on <prefix>changes, so every broker's replica\n" +
		"has it at once, even where Redis keyspace notifications are off.\n")
	if e.kind == keys.Block {
		b.WriteString("Clients matching the ban are refused from then on, and those connected are\n" +
			"disconnected (allowlisted clients excepted: allow wins over block). An\n" +
			"existing ban of the same key, automatic or not, is replaced: its reason and\n" +
			"its end are those given now (without --for: for ever).\n")
	} else {
		b.WriteString("What it lifts depends on its scope (the README's \"The allowlist: proof\n" +
			"and claims\"): an ip, cidr or cert entry (proof) lifts every ban and keeps\n" +
			"the client's failures from being counted or limited; a clientid or\n" +
			"username entry (a claim: anyone can make it) lifts only clientid and\n" +
			"username bans, and the client's failures count like anyone's. The\n" +
			"password is still checked. An existing entry is replaced.\n")
	}
	b.WriteString("\n" + scopes)
	fmt.Fprintf(&b, `Flags:
  --for DURATION    remove the key after DURATION: a Go duration, or days with
                    a d suffix: 90s, 10m, 1h30m, 7d, 1d12h (default: for ever)
  --reason TEXT     the key's value, shown in the broker's log (default
                    "operator: %s with guardctl by $USER"); must not be
                    empty, nor start with "auto:", which marks the plugin's
                    automatic bans

`, e.done)
	return b.String()
}

// footer returns the exit statuses and examples of guardctl <e.name> -h.
func (e edit) footer() string {
	var ex string
	switch e {
	case banEdit:
		ex = `Examples:
  guardctl ban ip 203.0.113.7 --for 1h --reason "scanner"
  guardctl ban cidr 198.51.100.0/24 --reason "abuse report 4711"
  guardctl ban username alice --for 7d --config /etc/mosquitto/mosquitto.conf
  guardctl ban clientid 'dev*'          # only the client ID "dev*" itself
  guardctl ban cert /etc/fleet/dev-17.pem --reason "device stolen"
  guardctl ban cert 7c00eaf1c8b25a4ae1609a14c1188535a9e626602a51fd34d3ea1458419ebfb0
`
	case unbanEdit:
		ex = `Examples:
  guardctl unban ip 203.0.113.7
  guardctl unban clientid 'sensor 17' --config /etc/mosquitto/mosquitto.conf
  guardctl unban cert /etc/fleet/dev-17.pem
`
	case allowEdit:
		ex = `Examples:
  guardctl allow clientid plant-gateway
  guardctl allow cidr 10.0.0.0/8 --reason "office network"
  guardctl allow ip 192.0.2.50 --for 2h --reason "load test"
  guardctl allow cert gateway.pem --reason "plant gateway"   # lifts every ban
`
	case unallowEdit:
		ex = `Examples:
  guardctl unallow clientid plant-gateway
`
	}
	return "\nExit status: 0 ok, 1 runtime error (such as Redis unreachable), 2 usage error.\n\n" + ex
}

// editFlags are the parsed arguments of ban, unban, allow or unallow.
type editFlags struct {
	conn      connFlags
	ttl       ttlFlag // zero: for ever
	reason    string
	reasonSet bool
	scope     keys.Scope
	value     string // as written in the key: normalised for ip
	given     string // VALUE as given
}

// ttlFlag is --for: a positive duration, days allowed, at least 1ms.
type ttlFlag struct{ d time.Duration }

func (f *ttlFlag) String() string {
	if f.d == 0 {
		return ""
	}
	return formatSince(f.d)
}

func (f *ttlFlag) Set(v string) error {
	d, err := parseSince(v)
	if err != nil {
		return err
	}
	if d < time.Millisecond {
		return fmt.Errorf("bad duration %q: expected at least 1ms", v)
	}
	f.d = d
	return nil
}

// parseEditFlags parses the arguments of e. It returns flag.ErrHelp for -h,
// and any other error for a usage error.
func parseEditFlags(e edit, args []string) (*editFlags, error) {
	a := &editFlags{}
	fs := flag.NewFlagSet(e.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if !e.remove {
		fs.Var(&a.ttl, "for", "lifetime")
		fs.StringVar(&a.reason, "reason", "", "reason")
	}
	a.conn.register(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) { a.reasonSet = a.reasonSet || f.Name == "reason" })
	switch {
	case len(pos) < 2:
		return nil, fmt.Errorf("expected SCOPE VALUE, got %s", plural(len(pos), "argument"))
	case len(pos) > 2:
		return nil, fmt.Errorf("unexpected argument %s after SCOPE VALUE (quote a VALUE holding spaces)", strconv.Quote(pos[2]))
	}
	if a.scope, err = keys.ParseScope(pos[0]); err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "keys: "))
	}
	a.given = pos[1]
	if a.value, err = listValue(a.scope, pos[1]); err != nil {
		return nil, err
	}
	if a.reasonSet {
		if err := checkReason(a.reason); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// parseInterspersed parses the flags of args wherever they stand and returns
// the other arguments, in order. Everything after "--" is an argument.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case len(a) > 1 && a[0] == '-':
			flags = append(flags, a)
			name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
			if strings.Contains(name, "=") {
				continue
			}
			if f := fs.Lookup(name); f != nil && !isBoolFlag(f) && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		default:
			pos = append(pos, a)
		}
	}
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 { // cannot happen: every element of flags is a flag or its value
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return pos, nil
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// listValue checks VALUE for scope and returns it as the key holds it.
func listValue(scope keys.Scope, value string) (string, error) {
	if value == "" {
		return "", fmt.Errorf("empty VALUE: expected %s", expected(scope))
	}
	switch scope {
	case keys.IP:
		ip, err := keys.NormalizeIP(value)
		if err != nil {
			hint := ""
			if strings.Contains(value, "/") {
				hint = "; for a range use scope cidr"
			}
			return "", fmt.Errorf("bad ip %s: expected %s%s", strconv.Quote(value), expected(scope), hint)
		}
		return ip.String(), nil
	case keys.CIDR:
		if _, err := keys.ParseCIDR(value); err != nil {
			msg := strings.TrimPrefix(err.Error(), "keys: ")
			if !strings.Contains(value, "/") {
				msg += "; for one address use scope ip"
			}
			return "", errors.New(msg)
		}
	case keys.Cert:
		return certValue(value)
	}
	return value, nil
}

// certFileMax bounds the PEM file guardctl reads for a certificate's ID.
const certFileMax = 1 << 20

// certValue returns the certificate ID value names: the ID it spells
// (keys.ParseCertID), or else that of the certificate in the file it names.
// An ID wins over a file of the same name: a ban by ID must not depend on
// the working directory.
func certValue(value string) (string, error) {
	if id, err := keys.ParseCertID(value); err == nil {
		return id, nil
	}
	if fi, err := os.Stat(value); err == nil && fi.Mode().IsRegular() {
		return certFileID(value)
	}
	return "", fmt.Errorf("bad cert %s: expected %s", strconv.Quote(value), expected(keys.Cert))
}

// certFileID returns the ID of the one certificate in the PEM file path
// (other blocks, a key among them, are passed over), read up to
// certFileMax bytes. A block that is no certificate X.509 can parse is
// refused, and so is a file of several certificates (a chain, a bundle):
// guessing which one is the device's would ban the wrong one, the CA's
// perhaps, and match no client.
func certFileID(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, certFileMax+1))
	if err != nil {
		return "", err
	}
	if len(data) > certFileMax {
		return "", fmt.Errorf("cert file %s: over %d bytes; expected a PEM certificate", strconv.Quote(path), certFileMax)
	}
	certs, err := config.PEMCertificates(data)
	if err != nil {
		return "", fmt.Errorf("cert file %s: a CERTIFICATE block X.509 cannot parse (%v)", strconv.Quote(path), err)
	}
	switch len(certs) {
	case 0:
		return "", fmt.Errorf("cert file %s: no PEM CERTIFICATE block; expected a PEM certificate (-----BEGIN CERTIFICATE-----)", strconv.Quote(path))
	case 1:
		return keys.CertID(certs[0].Raw), nil
	}
	var subjects []string
	for _, c := range certs {
		subjects = append(subjects, strconv.Quote(c.Subject.String()))
	}
	return "", fmt.Errorf("cert file %s: %d certificates (%s); expected a file holding the device's certificate alone, or its ID",
		strconv.Quote(path), len(certs), strings.Join(subjects, ", "))
}

// expected says what a VALUE of scope must be.
func expected(scope keys.Scope) string {
	switch scope {
	case keys.IP:
		return "an IPv4 or IPv6 address such as 192.0.2.1 or 2001:db8::1"
	case keys.CIDR:
		return "a network such as 203.0.113.0/24 or 2001:db8::/32"
	case keys.Username:
		return "a username"
	case keys.Cert:
		return "a certificate ID (64 hex digits, the SHA-256 of the certificate's DER, colons allowed) or the path of a PEM certificate file"
	}
	return "a client ID"
}

// checkReason refuses a --reason the plugin would misread.
func checkReason(r string) error {
	switch {
	case r == "":
		return errors.New("--reason: expected a text, not an empty one")
	case keys.IsAutoBan(r):
		return fmt.Errorf("--reason %s: must not start with %q, which marks the plugin's automatic bans", strconv.Quote(r), keys.AutoBanMarker)
	}
	return nil
}

// defaultReason is the value written without --reason.
func defaultReason(e edit, getenv func(string) string) string {
	return "operator: " + e.done + " with guardctl by " + operator(getenv)
}

// operator names who runs guardctl: $USER, $LOGNAME or the account name.
func operator(getenv func(string) string) string {
	for _, v := range []string{"USER", "LOGNAME"} {
		if u := getenv(v); u != "" {
			return u
		}
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "an unknown user"
}

// runEdit is guardctl ban, unban, allow or unallow.
func runEdit(e edit, args []string, stdout, stderr io.Writer) int {
	a, err := parseEditFlags(e, args)
	return runSub(e.name, e.usage()+connUsage+e.footer(), err, stdout, stderr,
		func() error { return a.run(context.Background(), e, os.Getenv, stdout, stderr) })
}

// run connects, writes or deletes the key, publishes the change and says
// what it did.
func (a *editFlags) run(ctx context.Context, e edit, getenv func(string) string, stdout, stderr io.Writer) error {
	st, addrs, err := a.conn.store(getenv)
	if err != nil {
		return err
	}
	defer st.Close()
	if a.value != a.given {
		fmt.Fprintf(stderr, "guardctl: %s %s written as %s\n", a.scope, strconv.Quote(a.given), a.value)
	}
	ctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	if e.remove {
		key, existed, err := st.DeleteEntry(ctx, e.kind, a.scope, a.value)
		if err != nil {
			return redisError(addrs, err)
		}
		// An automatic ban of a client ID or username over 256 bytes, or
		// starting with "sha256:", names it by its tracking form
		// (keys.FailKey): unban lifts that one too (atk48: it said "did not
		// exist" and the client stayed banned), but only if it is an
		// automatic ban: that form is also a client ID or username of its
		// own, which an operator may have banned (left, and said so).
		var tkey string
		var texisted bool
		var kept store.Kept
		if t := keys.Tracking(a.value); e.kind == keys.Block && (a.scope == keys.ClientID || a.scope == keys.Username) && t != a.value {
			if tkey, texisted, kept, err = st.DeleteAutoEntry(ctx, e.kind, a.scope, t); err != nil {
				return redisError(addrs, err)
			}
		}
		tother := kept != store.KeptNothing
		var why string
		switch kept {
		case store.KeptOperators:
			why = "not an automatic ban (an operator's ban of that value itself)"
		case store.KeptAnotherType:
			why = "not a ban (a key of another type than a string)"
		}
		if tother {
			if _, err := fmt.Fprintf(stdout, "left %s: %s\n", showKey(tkey), why); err != nil {
				return err
			}
		}
		switch {
		case existed || texisted:
			for _, k := range []struct {
				key string
				ok  bool
			}{{key, existed}, {tkey, texisted}} {
				if k.ok {
					if _, err := fmt.Fprintf(stdout, "%s %s\n", e.done, showKey(k.key)); err != nil {
						return err
					}
				}
			}
		case tother:
			_, err = fmt.Fprintf(stdout, "%s did not exist; nothing to %s\n", showKey(key), e.name)
		case tkey != "":
			_, err = fmt.Fprintf(stdout, "%s did not exist, nor %s (its automatic bans' form); nothing to %s\n", showKey(key), showKey(tkey), e.name)
		default:
			_, err = fmt.Fprintf(stdout, "%s did not exist; nothing to %s\n", showKey(key), e.name)
		}
		return err
	}
	reason := a.reason
	if !a.reasonSet {
		reason = defaultReason(e, getenv)
	}
	key, err := st.SetEntry(ctx, e.kind, a.scope, a.value, reason, a.ttl.d)
	if err != nil {
		return redisError(addrs, err)
	}
	until := "for ever"
	if a.ttl.d > 0 {
		until = "until " + time.Now().Add(a.ttl.d).UTC().Round(time.Second).Format(time.RFC3339)
	}
	_, err = fmt.Fprintf(stdout, "%s %s %s\n", e.done, showKey(key), until)
	return err
}

// redisError words an error met talking to Redis as audit does: the
// error go-redis gave, without the store's wording around it.
func redisError(addrs string, err error) error {
	var re *store.RedisError
	if errors.As(err, &re) {
		err = re.Err
	}
	return fmt.Errorf("redis at %s: %s", addrs, strings.TrimPrefix(store.OneLine(err), "redis: "))
}

// showKey shows a key as it is when it is plain (printable ASCII, no space,
// quote or backslash), else quoted in Go syntax, never cut.
func showKey(k string) string {
	for i := 0; i < len(k); i++ {
		if b := k[i]; b <= ' ' || b >= 0x7f || b == '"' || b == '\\' {
			return strconv.Quote(k)
		}
	}
	return k
}

// editCommand returns the run function of e.
func editCommand(e edit) func(args []string, stdout, stderr io.Writer) int {
	return func(args []string, stdout, stderr io.Writer) int { return runEdit(e, args, stdout, stderr) }
}
