// Package rediserr tells Redis's error replies apart: an answer (a reply)
// from no answer (a lost connection, a timeout), and among replies those
// about what one key holds, which say nothing of Redis's health. The store,
// the plugin and the limits ask it.
package rediserr
