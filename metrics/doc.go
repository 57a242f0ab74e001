// Package metrics serves a Prometheus registry over HTTP from inside the
// broker (metrics_addr): a listener opened synchronously at plugin start, so
// that an address that cannot be listened on stops the broker there and then,
// served on goroutines of its own, bounded so that no scraper can hurt the
// broker, and closed at plugin cleanup.
//
// What is counted is the plugin's (plugin/metrics.go); this package knows
// nothing of it.
package metrics
