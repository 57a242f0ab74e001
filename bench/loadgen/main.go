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
	"fleet":       cmdFleet,
	"callgrind":   cmdCallgrind,
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
