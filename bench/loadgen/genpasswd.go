package main

import (
	"bufio"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

// mosquitto_passwd's $7$ format (Mosquitto 2.0, apps/mosquitto_passwd and
// src/password_mosq.c): PBKDF2-HMAC-SHA512, 101 iterations, a 12-byte random
// salt, a 64-byte key; salt and key in standard padded base64.
const (
	pwIterations = 101
	pwSaltLen    = 12
	pwKeyLen     = 64
)

// passwdLine returns "user:$7$101$<salt>$<hash>" for salt.
func passwdLine(user, password string, salt []byte) (string, error) {
	key, err := pbkdf2.Key(sha512.New, password, salt, pwIterations, pwKeyLen)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s:$7$%d$%s$%s", user, pwIterations,
		base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(key)), nil
}

// GenPasswdResult is the JSON line of `loadgen genpasswd`.
type GenPasswdResult struct {
	Cmd      string   `json:"cmd"`
	Users    int      `json:"users"`
	File     string   `json:"file"`
	Plain    string   `json:"plain"`
	Seconds  float64  `json:"seconds"`
	Verified []string `json:"verified_with"`
}

// cmdGenPasswd writes n users u00000... with passwords to -out in
// mosquitto_passwd's format, and the plain user:password pairs to -plain
// (for `connect -users`). It checks its output with the plugin's
// backends/hashes and, when mosquitto_passwd is installed, checks its
// derivation against a line the real tool wrote.
func cmdGenPasswd(args []string) error {
	fs := flag.NewFlagSet("genpasswd", flag.ContinueOnError)
	n := fs.Int("n", 10000, "users")
	out := fs.String("out", "", "password file to write")
	plain := fs.String("plain", "", "user:password list to write")
	prefix := fs.String("prefix", "u", "user name prefix")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *plain == "" || *n < 1 || *n > 1_000_000 {
		return fmt.Errorf("need -out, -plain and 1 <= -n <= 1000000")
	}
	t0 := time.Now()
	res := GenPasswdResult{Cmd: "genpasswd", Users: *n, File: *out, Plain: *plain}
	if err := checkAgainstTool(); err != nil {
		return err
	} else if _, lerr := exec.LookPath("mosquitto_passwd"); lerr == nil {
		res.Verified = append(res.Verified, "mosquitto_passwd")
	}
	var pw, pl strings.Builder
	var first, firstPass string
	for i := 0; i < *n; i++ {
		user := fmt.Sprintf("%s%05d", *prefix, i)
		pass := "pw-" + user
		salt := make([]byte, pwSaltLen)
		if _, err := rand.Read(salt); err != nil {
			return err
		}
		line, err := passwdLine(user, pass, salt)
		if err != nil {
			return err
		}
		if i == 0 {
			first, firstPass = line, pass
		}
		pw.WriteString(line + "\n")
		pl.WriteString(user + ":" + pass + "\n")
	}
	// The plugin's own verifier must accept the first line, and refuse a
	// wrong password.
	enc := first[strings.IndexByte(first, ':')+1:]
	v := hashes.Verifier{}
	ok, err := v.Verify(enc, []byte(firstPass))
	if err != nil || !ok {
		return fmt.Errorf("backends/hashes does not accept the generated line: ok=%v err=%v", ok, err)
	}
	if bad, _ := v.Verify(enc, []byte(firstPass+"x")); bad {
		return errors.New("backends/hashes accepts a wrong password for the generated line")
	}
	res.Verified = append(res.Verified, "backends/hashes")
	// Mosquitto runs as root here (bench/run.sh sets `user root`), but
	// keep the file readable for a broker that drops to its own user.
	if err := os.WriteFile(*out, []byte(pw.String()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(*plain, []byte(pl.String()), 0o600); err != nil {
		return err
	}
	res.Seconds = round3(time.Since(t0).Seconds())
	return emit(res)
}

// checkAgainstTool has mosquitto_passwd write a line, then derives the hash
// again from its salt here: they must be equal. Skipped when the tool is
// missing.
func checkAgainstTool() error {
	if _, err := exec.LookPath("mosquitto_passwd"); err != nil {
		return nil
	}
	dir, err := os.MkdirTemp("", "loadgen-passwd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "passwd")
	const user, pass = "tool-check", "tool-check-pw"
	if out, err := exec.Command("mosquitto_passwd", "-c", "-b", file, user, pass).CombinedOutput(); err != nil {
		return fmt.Errorf("mosquitto_passwd: %v: %s", err, out)
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return errors.New("mosquitto_passwd wrote nothing")
	}
	line := sc.Text()
	fields := strings.Split(line, "$")
	if len(fields) != 5 || fields[1] != "7" || fields[2] != fmt.Sprint(pwIterations) {
		return fmt.Errorf("mosquitto_passwd wrote an unexpected format: %q", strings.SplitN(line, "$", 3)[0:2])
	}
	salt, err := base64.StdEncoding.DecodeString(fields[3])
	if err != nil || len(salt) != pwSaltLen {
		return fmt.Errorf("mosquitto_passwd's salt is not %d bytes of base64", pwSaltLen)
	}
	mine, err := passwdLine(user, pass, salt)
	if err != nil {
		return err
	}
	if mine != line {
		return errors.New("the $7$ derivation here differs from mosquitto_passwd's")
	}
	return nil
}
