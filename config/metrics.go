package config

import (
	"net"
	"strconv"
	"strings"
)

// metricsAddrWant is what metrics_addr expects.
const metricsAddrWant = "host:port to serve Prometheus metrics on, such as 127.0.0.1:9466 (a port from 1 to 65535; an empty host for every interface), or nothing for no endpoint"

// parseMetricsAddr accepts "" (no endpoint) or host:port: the host an IP
// address, a name (localhost) or empty (every interface); the port a number
// from 1 to 65535 (0 would pick one at random that no scraper could know).
// Whether the address can be listened on is found at plugin start, when the
// listener is opened.
func parseMetricsAddr(c *Options, v string) error {
	c.MetricsAddr = ""
	if v == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil || !validHost(host) {
		return &OptionError{"metrics_addr", v, metricsAddrWant}
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 || port != strconv.Itoa(p) {
		return &OptionError{"metrics_addr", v, metricsAddrWant}
	}
	c.MetricsAddr = v
	return nil
}

// validHost says whether h is empty, an IP address, or a DNS name.
func validHost(h string) bool {
	if h == "" || net.ParseIP(h) != nil {
		return true
	}
	if len(h) > 253 || strings.HasPrefix(h, "-") || strings.HasPrefix(h, ".") || strings.Contains(h, "..") {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}
