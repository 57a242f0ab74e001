// Command guardctl is the operator's tool for mosquitto-guard, the Mosquitto
// security plugin: it reads what the plugin keeps in Redis.
//
// Its first subcommand, audit, lists the client-ID conflict findings the
// plugin reported (the analogue of AWS IoT Device Defender's
// CONFLICTING_CLIENT_IDS_CHECK), for an on-demand look or a cron job:
//
//	guardctl audit --config /etc/mosquitto/mosquitto.conf
//	guardctl audit --since-last --json --config /etc/mosquitto/mosquitto.conf
//
// Exit status: 0 ok, 1 runtime error (such as Redis unreachable), 2 usage error.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"

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
	"audit": {"list client-ID conflict findings (CONFLICTING_CLIENT_IDS_CHECK)", runAudit},
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
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "guardctl: unknown command %q; run 'guardctl -h' for the list\n", args[0])
		return exitUsage
	}
	return cmd.run(args[1:], stdout, stderr)
}

// usage writes the list of subcommands to w.
func usage(w io.Writer) {
	fmt.Fprint(w, `guardctl reads what the mosquitto-guard plugin keeps in Redis.

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
Run 'guardctl <command> -h' for a command's flags.
Exit status: 0 ok, 1 runtime error (such as Redis unreachable), 2 usage error.
`)
}
