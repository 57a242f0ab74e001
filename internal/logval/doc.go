// Package logval renders hostile strings (client IDs, usernames, addresses,
// reasons: whatever a client or a key in Redis says) for log lines and
// guardctl's tables: escaped with strconv.Quote, so on one line whatever
// the bytes, and cut at a stated length, at a character boundary, with a
// note of the full size. It is the one definition of that rendering.
package logval
