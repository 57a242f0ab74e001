package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// command is a subcommand: run gets the arguments after its name and returns
// the exit status.
type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands lists the subcommands by name; add new ones here.
var commands = map[string]command{
	"audit":   {"list client-ID conflict findings (CONFLICTING_CLIENT_IDS_CHECK)", runAudit},
	"explain": {"say why a client would be refused or accepted, from what Redis holds", runExplain},
	"ban":     {"ban a client ID, username, certificate, IP or range, for a time or for ever", editCommand(banEdit)},
	"unban":   {"lift a ban", editCommand(unbanEdit)},
	"allow":   {"allowlist an IP, range or certificate (every ban lifted), or a client ID or username (its bans only)", editCommand(allowEdit)},
	"unallow": {"remove an allowlist entry", editCommand(unallowEdit)},
	"list":    {"list the bans, or with --allow the allowlist", runList},
}

// quietLogger drops go-redis's own log lines: errors reach the user once,
// as the "guardctl: ..." line of the command that met them.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quietLogger{}) }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches args to a subcommand and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	}
	args = commandFirst(args)
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "guardctl: unknown command %q; run 'guardctl -h' for the list\n", args[0])
		return exitUsage
	}
	return cmd.run(args[1:], stdout, stderr)
}

// connValueFlags are the connection flags that take a value.
var connValueFlags = func() map[string]bool {
	m := map[string]bool{"config": true}
	for f := range flagOption {
		m[f] = true
	}
	return m
}()

// commandFirst moves connection flags written before the command after it
// (guardctl --config FILE ban ...), where the command's flag set reads them.
// Anything else is left as it is.
func commandFirst(args []string) []string {
	i := 0
	for i < len(args) && strings.HasPrefix(args[i], "-") {
		name, _, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !connValueFlags[name] {
			return args
		}
		i++
		if !hasValue {
			i++
		}
	}
	if i == 0 || i >= len(args) {
		return args
	}
	return append(append([]string{args[i]}, args[i+1:]...), args[:i]...)
}

// usage writes the list of subcommands to w.
func usage(w io.Writer) {
	fmt.Fprint(w, `guardctl reads and edits what the mosquitto-guard plugin keeps in Redis.

Usage:
  guardctl <command> [flags]

Commands:
`)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprint(w, `
Examples:
  guardctl ban ip 203.0.113.7 --for 1h --reason "scanner"
  guardctl ban cidr 198.51.100.0/24 --reason "abuse report 4711"
  guardctl ban clientid 'dev*'           # the client ID "dev*", nothing else
  guardctl ban cert dev-17.pem --reason "device stolen"   # or its SHA-256 ID
  guardctl allow clientid plant-gateway
  guardctl list --scope ip
  guardctl unban ip 203.0.113.7
  guardctl audit --since-last --config /etc/mosquitto/mosquitto.conf

Every command takes the connection flags: --config /etc/mosquitto/mosquitto.conf
reads the Redis address and key prefix from the plugin's lines there.
Run 'guardctl <command> -h' for a command's flags.
Exit status: 0 ok, 1 runtime error (such as Redis unreachable), 2 usage error.
`)
}

// runSub ends a subcommand whose flags parsed to parseErr: its help for -h
// (exit 0), the error and a pointer to -h for bad flags (exit 2), else
// run's error, if any (exit 1).
func runSub(name, help string, parseErr error, stdout, stderr io.Writer, run func() error) int {
	switch {
	case errors.Is(parseErr, flag.ErrHelp):
		fmt.Fprint(stdout, help)
		return exitOK
	case parseErr != nil:
		fmt.Fprintf(stderr, "guardctl: %s: %v\nRun 'guardctl %s -h' for usage.\n", name, parseErr, name)
		return exitUsage
	}
	if err := run(); err != nil {
		fmt.Fprintf(stderr, "guardctl: %v\n", err)
		return exitError
	}
	return exitOK
}
