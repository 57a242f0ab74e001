// Command loadgen drives mosquitto-guard's benchmark (bench/run.sh): it
// generates MQTT connection load from many 127.x source addresses, measures
// how fast a ban set in Redis takes effect, fills Redis with block keys,
// writes mosquitto_passwd files, and prints the final table. Every
// subcommand prints one JSON line on stdout; diagnostics go to stderr.
//
//	loadgen connect      connect → CONNACK → DISCONNECT loops; connects/s, latency
//	loadgen propagation  SET guard:block:clientid:<id> → first refused CONNECT
//	loadgen kick         SET guard:block:clientid:<id> → connected client closed
//	loadgen loadkeys     fill Redis with N block keys, M of them ranges
//	loadgen genpasswd    N users in mosquitto_passwd's $7$ format
//	loadgen waitlog      wait for a line in a log file
//	loadgen procmem      VmRSS and VmHWM of a process
//	loadgen freeport     a free TCP port on 127.0.0.1
//	loadgen report       the markdown table from the JSON lines of a run
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
)

var commands = map[string]func(args []string) error{
	"connect":     cmdConnect,
	"propagation": cmdPropagation,
	"kick":        cmdKick,
	"loadkeys":    cmdLoadKeys,
	"genpasswd":   cmdGenPasswd,
	"waitlog":     cmdWaitLog,
	"procmem":     cmdProcMem,
	"freeport":    cmdFreePort,
	"report":      cmdReport,
}

func main() {
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		names := make([]string, 0, len(commands))
		for n := range commands {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: loadgen <command> [flags]\ncommands: %v\n", names)
		os.Exit(2)
	}
	if err := commands[os.Args[1]](os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// emit prints v as one JSON line.
func emit(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", b)
	return err
}
