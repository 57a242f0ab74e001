// Package logline writes the plugin's event lines (refusals, bans,
// throttles, kicks, findings) in one key=value shape, logfmt, so that a log
// shipper parses every kind of line with one rule:
//
//	mosquitto-guard: event=refused ip=203.0.113.7 rule="guard:block:ip:203.0.113.7" origin=operator expires=never client_id="sensor-17" username="alice" reason="scanner"
//
// A line is the prefix "mosquitto-guard: ", then space-separated key=value
// pairs. The first key is always event; the second, on every line about a
// client, is ip. A value is bare when it is a plain token (printable ASCII
// without space, '"', '=' or '\'), else double-quoted with Go's escapes
// (strconv.Quote), so a quoted value never contains an unescaped '"' or a
// raw control byte, and cannot end its line or start a key of its own.
//
// Fields the plugin decides (event, ip, rule, origin, expires, ...) come
// before every value a client chose (client_id, username, cert_subject,
// reason), so a pattern anchored at the start of the line, such as
// fail2ban's "event=refused ip=<HOST> ", cannot be met by a hostile client
// ID. Values a client chose are cut at 200 bytes, at a character boundary;
// a cut value is followed by KEY_bytes=N, its full length.
//
// Parse reads a line back; the tests hold every event line to it.
package logline
