package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode"

	"github.com/mosquitto-guard/mosquitto-guard/internal/fileread"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// RedisTLS is redis_tls and its companions: how the plugin speaks TLS to
// Redis (and to the sentinels, with redis_sentinel_master: go-redis dials
// both with one TLS configuration).
type RedisTLS struct {
	On         bool   // redis_tls
	CA         string // redis_tls_ca: PEM file of the CAs to trust; "": the system's roots
	Cert, Key  string // redis_tls_cert, redis_tls_key: a client certificate for mutual TLS
	ServerName string // redis_tls_server_name: the name checked in the server's certificate; "": the host dialled
	// Config is built from the above when On: TLS 1.2 at least. Nil when off.
	Config *tls.Config
}

// Sentinel is redis_sentinel_master and the sentinels' own credentials.
type Sentinel struct {
	Master   string // redis_sentinel_master: "" for no Sentinel
	Username string // redis_sentinel_username
	Password string // redis_sentinel_password: never logged
}

// StoreOptions are the store options o names: the Redis, or the sentinels
// and their master, the credentials and TLS; Timeout is redis_timeout.
// guardctl sets its own timeout.
func (o Options) StoreOptions() store.Options {
	return store.Options{
		Addrs: o.RedisAddrs, Username: o.RedisUsername, Password: o.RedisPassword,
		DB: o.RedisDB, Timeout: o.RedisTimeout, TLS: o.RedisTLS.Config,
		SentinelMaster: o.Sentinel.Master, SentinelUsername: o.Sentinel.Username, SentinelPassword: o.Sentinel.Password,
		ClientIDsMax: o.ClientIDsMax, Tracking: o.Conflicts.Mode != ConflictOff,
	}
}

// RedisWhere names the Redis that o points at, for log lines and errors:
// redis_addr, or with Sentinel the master's name and the sentinels.
func (o Options) RedisWhere() string {
	addrs := strings.Join(o.RedisAddrs, ",")
	if o.Sentinel.Master != "" {
		return fmt.Sprintf("master %q of the sentinels %s", o.Sentinel.Master, addrs)
	}
	return addrs
}

func parseOnOff(name string, field func(*Options) *bool) optionParser {
	return func(c *Options, v string) error {
		switch v {
		case "on":
			*field(c) = true
		case "off":
			*field(c) = false
		default:
			return &OptionError{name, v, "on or off"}
		}
		return nil
	}
}

// parseServerName accepts a host name or an IP address, as the server's
// certificate would hold it: no space or control character.
func parseServerName(c *Options, v string) error {
	if len(v) > 253 || strings.ContainsFunc(v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '/' }) {
		return &OptionError{"redis_tls_server_name", v, "a host name or IP address, as the Redis server's certificate holds it (or nothing: the host of redis_addr)"}
	}
	c.RedisTLS.ServerName = v
	return nil
}

// parseSentinelMaster accepts the name a sentinel monitors a master by: one
// word of printable characters.
func parseSentinelMaster(c *Options, v string) error {
	if len(v) > 255 || strings.ContainsFunc(v, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) {
		return &OptionError{"redis_sentinel_master", v, "the name the sentinels monitor the master by (sentinel monitor NAME ...), one word, or nothing for no Sentinel"}
	}
	c.Sentinel.Master = v
	return nil
}

// checkRedisTLS checks redis_tls's companions against it, and reads the
// files they name: each problem is one error naming its option and path.
// It builds RedisTLS.Config when every check passes.
func (c *Options) checkRedisTLS(failed map[string]bool) Errors {
	t := &c.RedisTLS
	files := []struct{ name, value string }{
		{"redis_tls_ca", t.CA}, {"redis_tls_cert", t.Cert}, {"redis_tls_key", t.Key}, {"redis_tls_server_name", t.ServerName},
	}
	var errs Errors
	if failed["redis_tls"] {
		return nil
	}
	if !t.On {
		for _, f := range files {
			if f.value != "" {
				errs = append(errs, &OptionError{f.name, f.value, "nothing while redis_tls is off (set redis_tls on to use it)"})
			}
		}
		return errs
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CA != "" {
		pool, err := readCAs(t.CA)
		if err != nil {
			errs = append(errs, err)
		}
		cfg.RootCAs = pool
	}
	switch {
	case t.Cert != "" && t.Key == "":
		errs = append(errs, &OptionError{"redis_tls_key", "", "the PEM file of the key of redis_tls_cert (a client certificate needs its key)"})
	case t.Cert == "" && t.Key != "":
		errs = append(errs, &OptionError{"redis_tls_cert", "", "the PEM file of the client certificate whose key is redis_tls_key (a key needs its certificate)"})
	case t.Cert != "":
		pair, err := readKeyPair(t.Cert, t.Key)
		if err != nil {
			errs = append(errs, err...)
		} else {
			cfg.Certificates = []tls.Certificate{pair}
		}
	}
	if len(errs) == 0 {
		t.Config = cfg
	}
	return errs
}

// maxPEMFile bounds what readPEM reads: a CA bundle is some 200 KB.
const maxPEMFile = 4 << 20

// readPEM reads a TLS file: a regular file (a FIFO or a device named by
// mistake would block the broker's start, or never end) of at most
// maxPEMFile bytes. Its error says why, without the path it repeats.
func readPEM(path string) ([]byte, error) {
	b, err := fileread.Read(path, maxPEMFile) // never waits: a pseudo-file such as /proc/kmsg is refused too
	var pe *os.PathError
	if errors.As(err, &pe) {
		return nil, errors.New(pathError(err))
	}
	return b, err
}

// readCAs reads a PEM file of CA certificates.
func readCAs(path string) (*x509.CertPool, error) {
	const want = "a PEM file of CA certificates readable by the broker's user"
	b, err := readPEM(path)
	if err != nil {
		return nil, &OptionError{"redis_tls_ca", path, want + " (" + err.Error() + ")"}
	}
	certs, err := pemCertificates(b)
	if err != nil {
		return nil, &OptionError{"redis_tls_ca", path, want + " (" + err.Error() + ")"}
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// readKeyPair reads a client certificate and its key. Its errors name the
// files, never what the key file holds.
func readKeyPair(certPath, keyPath string) (tls.Certificate, Errors) {
	var errs Errors
	certPEM, err := readPEM(certPath)
	if err != nil {
		errs = append(errs, &OptionError{"redis_tls_cert", certPath, "a PEM file of a client certificate readable by the broker's user (" + err.Error() + ")"})
	} else if _, err := pemCertificates(certPEM); err != nil {
		errs = append(errs, &OptionError{"redis_tls_cert", certPath, "a PEM file of a client certificate (" + err.Error() + ")"})
	}
	keyPEM, err := readPEM(keyPath)
	if err != nil {
		errs = append(errs, &OptionError{"redis_tls_key", keyPath, "a PEM file of the client certificate's private key readable by the broker's user (" + err.Error() + ")"})
	} else if !hasPrivateKey(keyPEM) {
		errs = append(errs, &OptionError{"redis_tls_key", keyPath, "a PEM file of the client certificate's private key (no PRIVATE KEY block in it)"})
	}
	if len(errs) > 0 {
		return tls.Certificate{}, errs
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// crypto/tls's messages name what is wrong, never the key's bytes;
		// they are still not echoed, only classified.
		why := "a private key in PEM that Go can read (PKCS#1, PKCS#8 or SEC 1)"
		if strings.Contains(err.Error(), "does not match") {
			why = "the private key of the certificate in redis_tls_cert (this key does not match it)"
		}
		return tls.Certificate{}, Errors{&OptionError{"redis_tls_key", keyPath, why}}
	}
	return pair, nil
}

// PEMCertificates returns every CERTIFICATE block of b, parsed; other
// blocks (a key among them) are passed over. The error names the first
// block X.509 cannot parse. guardctl reads a device's certificate file with
// it too.
func PEMCertificates(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return certs, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d cannot be parsed: %v", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
}

// pemCertificates is PEMCertificates with none an error.
func pemCertificates(b []byte) ([]*x509.Certificate, error) {
	certs, err := PEMCertificates(b)
	if err == nil && len(certs) == 0 {
		err = errors.New("no CERTIFICATE block in it")
	}
	return certs, err
}

// hasPrivateKey says whether b holds a PEM block of a private key.
func hasPrivateKey(b []byte) bool {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return false
		}
		if strings.HasSuffix(blk.Type, "PRIVATE KEY") {
			return true
		}
	}
}

// pathError is what an os error says, without the path it repeats.
func pathError(err error) string {
	if u := errors.Unwrap(err); u != nil {
		return u.Error()
	}
	return err.Error()
}

// checkSentinel checks the sentinels' credentials against
// redis_sentinel_master, and redis_addr's form under it.
func (c *Options) checkSentinel(opts map[string]string, failed map[string]bool) Errors {
	if failed["redis_sentinel_master"] || c.Sentinel.Master != "" {
		return nil
	}
	var errs Errors
	if len(c.RedisAddrs) > 1 && c.RedisDB != 0 && !failed["redis_db"] && !failed["redis_addr"] {
		// go-redis's cluster client has no database: it was ignored
		// (atk59), while one cluster node as redis_addr stops the start.
		errs = append(errs, &OptionError{"redis_db", strings.TrimSpace(opts["redis_db"]),
			"0: several redis_addr name a Redis Cluster's nodes, and a cluster has database 0 only"})
	}
	for _, name := range []string{"redis_sentinel_username", "redis_sentinel_password"} {
		if v := strings.TrimSpace(opts[name]); v != "" {
			errs = append(errs, &OptionError{name, v, "nothing unless redis_sentinel_master is set (the sentinels' own credentials)"})
		}
	}
	return errs
}

// TLSOptionError names the option to fix for the TLS fault te met with
// the settings of cfg, its value and what it should be, with the reason
// crypto/tls gave (which names certificates and hosts, never a key).
func TLSOptionError(cfg Options, te *store.TLSError) error {
	t, where := cfg.RedisTLS, cfg.RedisWhere()
	why := " (" + store.OneLine(te.Err) + ")"
	switch te.Fault {
	case store.TLSUnknownAuthority:
		want := "the PEM file of the CA that signed the certificate of the Redis at " + where
		if t.CA == "" {
			want += " (none given: the system's CAs do not)"
		}
		return &OptionError{Option: "redis_tls_ca", Value: t.CA, Expected: want + why}
	case store.TLSBadName:
		want := "a name that the certificate of the Redis at " + where + " holds"
		if t.ServerName == "" {
			want += " (none given: the host dialled was checked)"
		}
		return &OptionError{Option: "redis_tls_server_name", Value: t.ServerName, Expected: want + why}
	case store.TLSInvalid:
		return &OptionError{Option: "redis_tls_ca", Value: t.CA,
			Expected: "a CA whose certificates for the Redis at " + where + " are valid now, for a server" + why}
	case store.TLSRefused:
		return &OptionError{Option: "redis_tls_cert", Value: t.Cert,
			Expected: "a client certificate (and its redis_tls_key) that the Redis at " + where + " accepts" + why}
	}
	return &OptionError{Option: "redis_tls", Value: "on",
		Expected: "off for the Redis at " + where + ", which speaks no TLS there (or a redis_addr naming its TLS port)" + why}
}

// SettingsOptionError names the option to fix for the fault se that Redis's
// first answer showed with the settings of cfg, its value (a password's
// never: ShownValue) and what it should be, with Redis's own words (which
// never hold the password).
func SettingsOptionError(cfg Options, se *store.SettingsError) error {
	where := cfg.RedisWhere()
	why := " (Redis said: " + store.OneLine(se.Err) + ")"
	switch se.Fault {
	case store.SettingsWrongPass:
		want := "the password that the Redis at " + where + " accepts"
		if cfg.RedisUsername != "" {
			want += " for redis_username " + ShownValue("redis_username", cfg.RedisUsername) + " (or fix redis_username)"
		}
		if cfg.Sentinel.Master != "" {
			want += "; or redis_sentinel_password, if the sentinels refused theirs"
		}
		return &OptionError{Option: "redis_password", Value: cfg.RedisPassword, Expected: want + why}
	case store.SettingsNoAuth:
		want := "a password: the Redis at " + where + " requires one"
		if cfg.Sentinel.Master != "" {
			want += "; or redis_sentinel_password, if the sentinels require theirs"
		}
		return &OptionError{Option: "redis_password", Value: cfg.RedisPassword, Expected: want + why}
	case store.SettingsNoAuthCommand:
		return &OptionError{Option: "redis_password", Value: cfg.RedisPassword,
			Expected: "none: the Redis at " + where + " has no AUTH command (renamed or disabled), so a password cannot be given" + why}
	case store.SettingsProtected:
		return &OptionError{Option: "redis_addr", Value: strings.Join(cfg.RedisAddrs, ","),
			Expected: "a Redis that accepts this host: the one at " + where + " is in protected mode (give it a password, or bind it to this host's interface)" + why}
	case store.SettingsNoSelect:
		return &OptionError{Option: "redis_db", Value: fmt.Sprint(cfg.RedisDB),
			Expected: "a database that redis_username may SELECT on the Redis at " + where + " (or 0, or a user with +select)" + why}
	case store.SettingsSelectRefused:
		return &OptionError{Option: "redis_db", Value: fmt.Sprint(cfg.RedisDB),
			Expected: "0: the Redis at " + where + " selects no other database (cluster mode, or SELECT renamed)" + why}
	case store.SettingsNoPing:
		return &OptionError{Option: "redis_username", Value: cfg.RedisUsername,
			Expected: "a user that the Redis at " + where + " lets run PING (+ping): the plugin's health probe asks it every 200 ms, and a refusal reads as Redis down" + why}
	case store.SettingsKeyPerm:
		return &OptionError{Option: "redis_username", Value: cfg.RedisUsername,
			Expected: "a user that the Redis at " + where + " lets " + keyRights(cfg) + " (its ACL key patterns)" + why}
	case store.SettingsSentinelsAsCluster:
		return &OptionError{Option: "redis_sentinel_master", Value: "",
			Expected: "the name of the master that the sentinels at " + where + " monitor: these addresses know no CLUSTER command, so they are no Redis Cluster" + why}
	case store.SettingsReplica:
		return &OptionError{Option: "redis_addr", Value: strings.Join(cfg.RedisAddrs, ","),
			Expected: "the master's address, or sentinels with redis_sentinel_master: the plugin writes" + why}
	case store.SettingsClusterNode:
		return &OptionError{Option: "redis_addr", Value: strings.Join(cfg.RedisAddrs, ","),
			Expected: "two or more of the Redis Cluster's masters, comma-separated: one address is taken for a single Redis, which must serve every key" + why}
	case store.SettingsNoPerm:
		opt, user := "redis_username", cfg.RedisUsername
		if cfg.Sentinel.Master != "" && strings.Contains(strings.ToLower(se.Err.Error()), "'sentinel") {
			opt, user = "redis_sentinel_username", cfg.Sentinel.Username
		}
		return &OptionError{Option: opt, Value: user,
			Expected: "a user that the Redis at " + where + " lets run the commands the plugin needs with this configuration (its first connection, its reads, writes and scripts: the README's Managed Redis section)" + why}
	case store.SettingsNoScripting:
		return &OptionError{Option: "redis_addr", Value: strings.Join(cfg.RedisAddrs, ","),
			Expected: "a Redis with Lua scripting (EVAL, EVALSHA), which the failure counts and automatic bans run: the one at " + where + " has it renamed or disabled" + why}
	case store.SettingsNoCommand:
		return &OptionError{Option: "redis_addr", Value: strings.Join(cfg.RedisAddrs, ","),
			Expected: "a Redis with the commands the plugin runs: the one at " + where + " has one renamed or disabled" + why}
	case store.SettingsNoPingCommand:
		return &OptionError{Option: "redis_addr", Value: strings.Join(cfg.RedisAddrs, ","),
			Expected: "a Redis that knows PING, which the health probe asks every 200 ms: the one at " + where + " has it renamed or disabled" + why}
	case store.SettingsWantsTLS:
		return &OptionError{Option: "redis_tls", Value: "off",
			Expected: "on: the Redis at " + where + " speaks only TLS there (" + store.OneLine(se.Err) + ")"}
	case store.SettingsDB:
		return &OptionError{Option: "redis_db", Value: fmt.Sprint(cfg.RedisDB),
			Expected: "a database number that the Redis at " + where + " has (0 to its databases setting - 1)" + why}
	case store.SettingsNotCluster:
		return &OptionError{Option: "redis_addr", Value: strings.Join(cfg.RedisAddrs, ","),
			Expected: "one address: several name a Redis Cluster's nodes, and this Redis has cluster support disabled" + why}
	case store.SettingsUnknownMaster:
		return &OptionError{Option: "redis_sentinel_master", Value: cfg.Sentinel.Master,
			Expected: "a master name that the sentinels at " + strings.Join(cfg.RedisAddrs, ",") + " monitor" + why}
	case store.SettingsNotSentinel:
		return &OptionError{Option: "redis_addr", Value: strings.Join(cfg.RedisAddrs, ","),
			Expected: "the sentinels' addresses, with redis_sentinel_master: a server there is no sentinel" + why}
	}
	return &OptionError{Option: "redis_sentinel_master", Value: "",
		Expected: "the name of the master that the sentinel at " + where + " monitors: redis_addr names a sentinel, not a Redis" + why}
}

// keyRights is what the plugin, with cfg, needs of the keys: read only
// (backend defer, clientid_conflict off), or read and write, and with
// failures counted redis_rate's keys too (atk66).
func keyRights(cfg Options) string {
	prefix := ShownValue("key_prefix", cfg.KeyPrefix)
	switch {
	case cfg.Backend != BackendDefer:
		return "read and write the keys under key_prefix " + prefix + " and under " + ShownValue("key_prefix", "rate:"+cfg.KeyPrefix) + " (redis_rate's)"
	case cfg.Conflicts.Mode != ConflictOff:
		return "read and write the keys under key_prefix " + prefix
	}
	return "read the keys under key_prefix " + prefix
}
